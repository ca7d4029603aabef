"""A temporary Prefect API server for one ``lakelabel run`` that dies with it.

Without ``PREFECT_API_URL`` Prefect starts its own temporary server, a child process that lives on
when its parent is killed with SIGKILL (nothing runs in the parent to stop it: 220 MB each, still
listening). This one is Prefect's same server (its app factory under uvicorn, UI off), started
with a parent-death signal, so the kernel stops it whenever ``lakelabel run`` ends, however it ends.
Start it before Prefect is imported: Prefect reads ``PREFECT_API_URL`` once, at import.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from lakelabel.pipeline.ingest.worker import set_parent_death_signal

#: what Prefect's own temporary server runs with: no UI, only the services a temporary server needs
EPHEMERAL_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
#: the server of this process, if it started one (stopped at exit, or by Ctrl-C's handler)
SERVER: subprocess.Popen | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with(parent: int):
    def preexec() -> None:  # in the child, before exec: SIGTERM when the parent dies
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was set
            os._exit(1)

    return preexec


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_temporary_server(timeout: float = 120.0) -> str | None:
    """Point this process at a temporary Prefect API server that dies with it, unless
    ``PREFECT_API_URL`` names one already; returns the URL it set (None when one was set)."""
    global SERVER
    if os.environ.get("PREFECT_API_URL"):
        return None
    deadline = time.monotonic() + timeout
    while True:
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        SERVER = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
            + ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **EPHEMERAL_ENV},
            preexec_fn=_die_with(os.getpid()),
            stdin=subprocess.DEVNULL,
        )
        while SERVER.poll() is None and not _up(url):
            if time.monotonic() > deadline:
                stop_temporary_server()
                raise RuntimeError(f"the temporary Prefect server did not start within {timeout:.0f} s")
            time.sleep(0.1)
        if SERVER.poll() is None:
            break
        if SERVER.returncode != 3:  # (3: the port was taken meanwhile: try another)
            raise RuntimeError(f"the temporary Prefect server exited with code {SERVER.returncode}")
    os.environ["PREFECT_API_URL"] = url
    # at exit, after Prefect's own exit handlers (registered later, run earlier) sent their last logs
    atexit.register(stop_temporary_server)
    return url


def stop_temporary_server() -> None:
    """Stop the server :func:`start_temporary_server` started (a no-op if none)."""
    global SERVER
    if SERVER is not None and SERVER.poll() is None:
        SERVER.terminate()
        try:
            SERVER.wait(timeout=10)
        except subprocess.TimeoutExpired:
            SERVER.kill()
    SERVER = None
