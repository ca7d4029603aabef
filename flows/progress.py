"""A stage's progress where its operator looks: a line in the Prefect log at most every
:data:`EVERY` seconds, named by the stage, and a bar on the terminal of ``lakelabel run`` (the sink
it installs with :func:`set_sink`; tasks in other processes or on Dask only log)."""

from __future__ import annotations

import time
from collections.abc import Callable

#: seconds between two progress lines of one stage in the Prefect log
EVERY = 5.0

#: ``sink(stage, done, total, unit)``; ``done=None`` ends the stage's bar
Sink = Callable[[str, "int | None", "int | None", str], None]
_SINK: Sink | None = None


def set_sink(sink: Sink | None) -> None:
    """Send every stage's progress in this process to ``sink`` too (``lakelabel run``'s bars)."""
    global _SINK
    _SINK = sink


class StageProgress:
    """``progress(done, total)`` of one stage (the callback the stages take)."""

    def __init__(self, stage: str, unit: str, total: int | None = None, bar: bool = True):
        from prefect import get_run_logger

        self.stage, self.unit, self.total, self.bar = stage, unit, total, bar
        self.logger, self.last = get_run_logger(), 0.0

    def __call__(self, done: int, total: int | None = None) -> None:
        total = total if total is not None else self.total
        if self.bar and _SINK is not None:
            _SINK(self.stage, done, total, self.unit)
        now = time.monotonic()
        if now - self.last >= EVERY or (total is not None and done >= total):
            self.last = now
            of = f" of {total:,}" if total is not None else ""
            self.logger.info("%s: %s%s %ss", self.stage, f"{done:,}", of, self.unit)

    def note(self, message: str, *args: object) -> None:
        """A free-form line (a training record), at most every :data:`EVERY` seconds."""
        now = time.monotonic()
        if now - self.last >= EVERY:
            self.last = now
            self.logger.info(f"{self.stage}: {message}", *args)


def stage_started(stage: str) -> None:
    """Open ``stage``'s bar (one step, until the stage reports finer progress)."""
    if _SINK is not None:
        _SINK(stage, 0, 1, "step")


def stage_done(stage: str) -> None:
    """Complete and end ``stage``'s bar (its result is in)."""
    if _SINK is not None:
        _SINK(stage, None, None, "")
