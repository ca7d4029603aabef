"""Fault injection for resume tests: ``LAKELABEL_FAIL_STAGE=embed`` makes that stage fail once.

The first failure drops a marker file (``LAKELABEL_FAIL_MARKER``, default under the temp dir) so
the next attempt — a Prefect retry or a re-run — goes through.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised by :func:`maybe_fail` for the configured stage."""


def maybe_fail(stage: str) -> None:
    if os.environ.get("LAKELABEL_FAIL_STAGE") != stage:
        return
    marker = Path(
        os.environ.get("LAKELABEL_FAIL_MARKER", Path(tempfile.gettempdir()) / "lakelabel-fault-done")
    )
    if marker.exists():
        return
    marker.write_text(stage)
    raise InjectedFault(f"fault injected in stage {stage!r} (LAKELABEL_FAIL_STAGE)")
