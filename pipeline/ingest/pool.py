"""A process pool for ingest's workers: forked when safe, else spawned, fed through one pipe each,
in order, with a bounded window; workers die with their parent."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from lakelabel.pipeline.ingest.recovery import IngestError
from lakelabel.pipeline.ingest.worker import (
    set_parent_death_signal,
)

if TYPE_CHECKING:
    pass


#: Modules whose thread pools do not survive a fork: a forked child calling into them can hang.
FORK_UNSAFE_MODULES: tuple[str, ...] = ("faiss", "torch")


def fork_is_safe() -> bool:
    """True when this process has one thread and has not loaded FAISS or torch.

    A fork copies only the calling thread: a lock another thread holds (or an OpenMP pool, once
    FAISS ran) stays taken in the child forever. The ``lakelabel ingest`` command meets neither;
    a long-lived process (a Prefect worker, a notebook) often does, and then gets spawned workers.
    """
    return threading.active_count() == 1 and not any(m in sys.modules for m in FORK_UNSAFE_MODULES)


def map_ordered(
    fn: Callable,
    batches: Iterable,
    workers: int,
    initializer: Callable | None = None,
    initargs: tuple = (),
    window: int | None = None,
) -> Iterator:
    """``map(fn, batches)`` over ``workers`` processes (a :class:`LocalPool`), in order, with a
    bounded window; ``workers`` <= 0 runs in this process."""
    if workers <= 0:
        if initializer:
            initializer(*initargs)
        yield from map(fn, batches)
        return
    yield from LocalPool(fn, workers, initializer, initargs, window).results(batches)


class LocalPool:
    """Worker processes fed through one pipe each by the calling thread.

    Workers are forked when :func:`fork_is_safe` (a fresh CLI process: no start-up imports to
    repeat), else spawned. At most ``window`` (default ``4 × workers``) batches are in flight, so
    memory does not grow with the lake. The calling thread sends pickled batches (to the worker
    with the fewest in flight) and reads pickled results itself. There are no feeder or result
    threads and no futures: with ``ProcessPoolExecutor`` their hand-offs took the GIL from the
    writer, and the 60k-file ingest ran ~10 % slower; ``multiprocessing.Pool.imap`` (with a
    semaphore for the window) ran it 22 % slower (0.37× tar against 0.47×, benchmarks/ingest.py,
    2026-12-01) and waits forever when a worker is killed. A worker's exception is re-raised here; a
    worker that dies raises :class:`IngestError`; if the caller stops early, the workers are
    terminated.
    """

    def __init__(
        self,
        fn: Callable,
        workers: int,
        initializer: Callable | None = None,
        initargs: tuple = (),
        window: int | None = None,
    ):
        context = get_context("fork" if fork_is_safe() else "spawn")
        self.window = window or 4 * workers
        self.conns: list = []
        self.procs: list = []
        self.in_flight: list[deque[int]] = [deque() for _ in range(workers)]  # batch numbers, per worker
        self.finished: dict[int, tuple[bool, object]] = {}
        self.sent = self.returned = 0
        self.closed = False
        try:
            for n in range(workers):
                ours, theirs = context.Pipe()
                proc = context.Process(
                    target=_pool_worker,
                    args=(theirs, fn, initializer, initargs),
                    name=f"ingest-worker-{n}",
                    daemon=True,
                )
                proc.start()
                theirs.close()
                self.conns.append(ours)
                self.procs.append(proc)
        except BaseException:
            self.close(abort=True)
            raise

    def has_room(self) -> bool:
        return self.sent - self.returned < self.window

    def submit(self, batch) -> None:
        """Send one batch to the worker with the fewest in flight."""
        worker = min(range(len(self.procs)), key=lambda w: len(self.in_flight[w]))
        try:
            self.conns[worker].send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            self._died(worker)
        self.in_flight[worker].append(self.sent)
        self.sent += 1

    def _died(self, worker: int):
        proc = self.procs[worker]
        proc.join(1.0)
        raise IngestError(f"ingest worker {proc.pid} died (exit code {proc.exitcode})") from None

    def next_result(self):
        """The result of the oldest batch not yet returned (waits for it); re-raises its error."""
        while self.returned not in self.finished:
            for conn in wait([self.conns[w] for w in range(len(self.procs)) if self.in_flight[w]]):
                worker = self.conns.index(conn)
                try:
                    message = conn.recv_bytes()
                except (EOFError, OSError):
                    self._died(worker)
                self.finished[self.in_flight[worker].popleft()] = pickle.loads(message)
        ok, value = self.finished.pop(self.returned)
        self.returned += 1
        if not ok:
            raise value
        return value

    def results(self, batches: Iterable) -> Iterator:
        """Submit ``batches`` (after any submitted already) and yield every result in order;
        the pool is closed at the end, and terminated if the caller stops early or fails."""
        try:
            source, exhausted = iter(batches), False
            while True:
                while not exhausted and self.has_room():
                    batch = next(source, _NO_BATCH)
                    if batch is _NO_BATCH:
                        exhausted = True
                    else:
                        self.submit(batch)
                if self.returned == self.sent:
                    return
                yield self.next_result()
        except BaseException:  # an error here or in the caller (or the caller stopped early)
            self.close(abort=True)
            raise
        finally:
            self.close()

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their batch in hand, or at once (``abort``: terminated)."""
        if self.closed:
            return
        self.closed = True
        if abort:
            for proc in self.procs:
                proc.terminate()  # the batches in hand are abandoned: no need to wait for them
        for conn in self.conns:
            with suppress(OSError):
                conn.send_bytes(b"")  # done: stop
        for proc in self.procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self.conns:
            conn.close()


_NO_BATCH = object()


def _pool_worker(conn, fn: Callable, initializer: Callable | None, initargs: tuple) -> None:
    """A :class:`LocalPool` worker: run ``fn`` on each pickled batch until an empty message.

    Two threads move the bytes, so this process computes while the parent is busy: one drains the
    pipe into a queue as batches arrive (the parent never blocks on a send while this process
    blocks on one), one sends the results as they are made (a result never waits for the parent
    to read the one before: a pipe holds only ~200 KB, a few results).
    """
    if initializer is not None:
        initializer(*initargs)
    batches: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    replies: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def receive() -> None:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                message = b""
            batches.put(message)
            if not message:
                return

    def send() -> None:
        while (reply := replies.get()) is not None:
            try:
                conn.send_bytes(reply)
            except OSError:  # the parent is gone
                return

    threading.Thread(target=receive, name="ingest-worker-receive", daemon=True).start()
    sender = threading.Thread(target=send, name="ingest-worker-send", daemon=True)
    sender.start()
    while message := batches.get():
        try:
            reply = pickle.dumps((True, fn(pickle.loads(message))), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
            try:
                reply = pickle.dumps((False, exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                reply = pickle.dumps((False, IngestError(f"in an ingest worker: {exc!r}")))
        replies.put(reply)
    replies.put(None)
    sender.join()


def exit_with_parent() -> None:
    """Make this worker process exit when its parent dies (even by SIGKILL), leaving no orphans."""
    parent = os.getppid()
    set_parent_death_signal(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
