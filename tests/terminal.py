"""Run a command with stderr on a pseudo-terminal (what a user at a terminal sees of bars and lines)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios


def run_on_a_terminal(argv: list[str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, bytes]:
    """``argv`` with stdout piped and stderr on an 80 × 24 pseudo-terminal: (the process, what it drew)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 × 0
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=follower, timeout=timeout)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO once the follower side is closed and drained
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return proc, drawn
