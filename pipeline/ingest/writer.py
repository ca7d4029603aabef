"""The single writer of an ingest: de-duplicates each worker batch against the index, appends kept
samples to the open shard and commits each unit (shard, then manifest part: the commit marker)."""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.shards import KEY_HEX_CHARS, shard_name
from lakelabel.pipeline.atomic import atomic_write, fsync_dir, temp_path
from lakelabel.pipeline.ingest.recovery import IngestError, LakeState, manifest_part_name
from lakelabel.pipeline.ingest.rows import DUPLICATE, REJECTED, SHARDED, IngestCounts, _UnitRows, _write_part
from lakelabel.pipeline.ingest.worker import (
    END,
    NUMBERS_PER_FILE,
    START,
    BatchResult,
)
from lakelabel.pipeline.lake_index import IndexedUnit
from lakelabel.pipeline.tario import END_OF_ARCHIVE

if TYPE_CHECKING:
    import numpy as np

    from lakelabel.pipeline.config import IngestConfig


@dataclass
class _ClosedUnit:
    """A full unit handed to the commit thread: its temp shard, its rows, its kept keys."""

    index: int
    tar: object | None
    tmp_path: Path
    final_path: Path
    rows: _UnitRows | None  # None once its manifest part is written
    keys: list[str]  # kept in its shard (a list: 8 bytes a key while it waits for the index)
    indexed: threading.Event = field(default_factory=threading.Event)


def _no_copy_file_range(*args, **kwargs) -> int:
    raise OSError("copy_file_range is not available here")


_copy_file_range = getattr(os, "copy_file_range", _no_copy_file_range)  # Linux only


class _Samples:
    """A batch's samples, inline (``blob``) or spooled to a file: copies byte ranges into a shard.

    A spooled range goes file to file inside the kernel (``copy_file_range``); the spool file is
    deleted on exit, unless its worker reuses it.
    """

    def __init__(self, batch: BatchResult):
        self.spool, self.keep_spool = batch.spool, batch.spool_kept
        self.blob = memoryview(batch.blob)
        self.fd = -1 if self.spool is None else os.open(self.spool, os.O_RDONLY | os.O_CLOEXEC)

    def __enter__(self) -> _Samples:
        return self

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            if not self.keep_spool:  # a worker's reused spool file is removed after the run
                os.unlink(self.spool)
            self.fd = -1

    def copy_to(self, out, start: int, end: int) -> None:
        if self.fd < 0:
            out.write(self.blob[start:end])
            return
        fd_out = out.fileno()
        while start < end:
            try:
                copied = _copy_file_range(self.fd, fd_out, end - start, offset_src=start)
            except OSError:  # a file system, kernel or OS without it: plain reads and writes
                copied = os.write(fd_out, os.pread(self.fd, min(end - start, 1 << 22), start))
            if copied <= 0:
                raise IngestError(f"spool file {self.spool} is shorter than its samples ({start} < {end})")
            start += copied


class ShardCommitter:
    """Single writer: de-duplicates, appends samples to the open shard, commits units atomically.

    Committing a unit (fsync, rename, the manifest part, the index) runs on one background
    thread, in unit order, while the next unit fills: the disk waits leave the critical path. At
    most ``_MAX_CLOSED_UNITS`` units wait for it. Units go into the index several at a time, as one
    sorted run (see :attr:`INDEX_BATCH_ROWS`); until a unit is indexed its keys stay in
    ``_pending_keys`` and still count for de-duplication.
    """

    _MAX_CLOSED_UNITS = 2
    #: index rows (kept keys + URIs) gathered into one index run
    INDEX_BATCH_ROWS = 100_000

    def __init__(self, root: Path, run_id: str, state: LakeState, config: IngestConfig):
        self.root, self.run_id, self.state, self.config = root, run_id, state, config
        self.counts = IngestCounts()
        self.lake_index = state.index
        self._closed: deque[_ClosedUnit] = deque()  # handed to the commit thread, maybe not yet indexed
        self._pending_keys: dict[str, int] = {}  # keys of the units in _closed (main thread only)
        self._queue: queue.Queue[_ClosedUnit | None] = queue.Queue(self._MAX_CLOSED_UNITS)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._open_unit()

    def _open_unit(self) -> None:
        self.index = self.state.next_index
        self.shard = shard_name(self.index)
        self.final_path = Layout(self.root).shard(self.shard)
        self.tmp_path = temp_path(self.final_path)
        self.tar = None  # opened lazily: a unit may hold only rejected/duplicate rows
        self.samples = 0
        self.nbytes = 0
        self.rows = _UnitRows()
        self.unit_keys: dict[str, int] = {}  # keys kept in the open unit (not yet in the index)

    def skip(self, uri: str, reason: str) -> None:
        self.rows.add_skip(uri, reason)
        self.counts.skipped += 1
        self.counts.found += 1
        self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def _write(self, samples: _Samples, start: int, end: int) -> None:
        if self.tar is None:
            self.tar = open(self.tmp_path, "wb", buffering=0)  # noqa: SIM115 - closed in commit()
        samples.copy_to(self.tar, start, end)

    def add_batch(self, batch: BatchResult) -> None:
        """Record a worker's batch: rejections, duplicates (of earlier runs or this one), new samples.

        Samples are appended to the open shard in contiguous runs of the batch's samples; a unit is
        committed whenever the next sample would break the shard's count or byte bound.
        """
        with _Samples(batch) as samples:
            self._add_batch(batch, samples)

    def _add_batch(self, batch: BatchResult, samples: _Samples) -> None:
        import numpy as np

        n = len(batch)
        counts, config = self.counts, self.config
        # Kept keys come from three places: the open unit (a new one after a mid-batch commit),
        # the closed units the index does not hold yet (a committed unit's keys move there), and
        # the index (one lookup per batch, asked after the indexed units left _pending_keys).
        pending_keys = self._pending_keys
        self._raise_commit_error()
        while self._closed and self._closed[0].indexed.is_set():  # now in the index: forget them
            for key in self._closed.popleft().keys:
                del pending_keys[key]
        valid = [i for i, reason in enumerate(batch.reasons) if reason is None]
        text = batch.hexes.decode("ascii")
        keys = [text[i * 64 : i * 64 + KEY_HEX_CHARS] for i in valid]
        rows = np.array(valid, dtype=np.intp)
        # The key filter holds every key kept so far (the index's, and this run's as each batch
        # is taken): only the keys it may hold need the exact checks below.
        raw_keys = _key_bytes(batch.hexes, rows)
        key_filter = self.lake_index.key_filter
        maybe = key_filter.maybe_contains_raw(raw_keys)
        candidates = [key for key, m in zip(keys, maybe.tolist(), strict=True) if m] if maybe.any() else []
        indexed = self.lake_index.shards_of(candidates) if candidates else {}
        numbers = np.frombuffer(batch.numbers, dtype=np.int64).reshape(n, NUMBERS_PER_FILE)
        starts, ends = numbers[rows, START], numbers[rows, END]
        total = int((ends - starts).sum())
        status = np.full(n, REJECTED, dtype=np.int8)
        shard = np.full(n, -1, dtype=np.int32)
        k = len(keys)
        key_filter.add_raw(raw_keys)
        if (
            not indexed
            and len(set(keys)) == k
            and self.unit_keys.keys().isdisjoint(candidates)
            and pending_keys.keys().isdisjoint(candidates)
            and self.samples + k <= config.shard_max_count
            and self.nbytes + total <= config.shard_max_bytes
        ):  # the common case: every valid file is new, and the open unit takes them all
            breaks = (np.flatnonzero(starts[1:] != ends[:-1]) + 1).tolist() if k else [k]
            for a, b in zip([0, *breaks], [*breaks, k], strict=True):  # contiguous runs of samples
                if a < b:
                    self._write(samples, int(starts[a]), int(ends[b - 1]))
            status[rows] = SHARDED
            shard[rows] = self.index
            self.unit_keys.update(dict.fromkeys(keys, self.index))
            self.samples += k
            self.nbytes += total
            self.rows.add_rows(batch, 0, n, status.tobytes(), shard.tobytes())
        else:
            spans = zip(valid, keys, starts.tolist(), ends.tolist(), strict=True)
            self._add_rows_one_by_one(batch, samples, spans, indexed, status, shard)
        counts.found += n
        n_dup = int(np.count_nonzero(status == DUPLICATE))
        n_rej = n - k
        counts.duplicate += n_dup
        counts.rejected += n_rej
        counts.sharded += k - n_dup
        if n_rej:
            for reason in batch.reasons:
                if reason is not None:
                    counts.reasons[reason] = counts.reasons.get(reason, 0) + 1

    def _add_rows_one_by_one(
        self,
        batch: BatchResult,
        samples: _Samples,
        spans: Iterable[tuple[int, str, int, int]],
        indexed: dict[str, int],
        status,
        shard,
    ) -> None:
        """The general case of :meth:`_add_batch`: duplicates, or a unit boundary in the batch.

        ``spans`` are (row, key, sample start, sample end) of the batch's valid files, in order.
        """
        config, pending_keys = self.config, self._pending_keys
        first_row = run_from = run_to = 0  # [run_from, run_to): kept samples not yet written
        for i, key, start, end in spans:
            kept_index = self.unit_keys.get(key)
            if kept_index is None:
                kept_index = pending_keys.get(key)
                if kept_index is None:
                    kept_index = indexed.get(key)
            if kept_index is not None:
                status[i], shard[i] = DUPLICATE, kept_index
                continue
            size = end - start
            if self.samples and (
                self.samples >= config.shard_max_count or self.nbytes + size > config.shard_max_bytes
            ):
                if run_to > run_from:
                    self._write(samples, run_from, run_to)
                run_from = run_to = start
                self.rows.add_rows(
                    batch, first_row, i, status[first_row:i].tobytes(), shard[first_row:i].tobytes()
                )
                first_row = i
                self.commit()
            if start != run_to:
                if run_to > run_from:
                    self._write(samples, run_from, run_to)
                run_from = start
            run_to = end
            status[i], shard[i] = SHARDED, self.index
            self.unit_keys[key] = self.index
            self.samples += 1
            self.nbytes += size
        if run_to > run_from:
            self._write(samples, run_from, run_to)
        n = len(batch)
        self.rows.add_rows(batch, first_row, n, status[first_row:n].tobytes(), shard[first_row:n].tobytes())

    def commit(self) -> None:
        """Close the open unit and hand it to the commit thread; open the next unit."""
        if not len(self.rows):
            return
        self._raise_commit_error()
        keys = list(self.unit_keys)
        unit = _ClosedUnit(self.index, self.tar, self.tmp_path, self.final_path, self.rows, keys)
        if self._thread is None:
            self._thread = threading.Thread(target=self._commit_loop, name="ingest-commit", daemon=True)
            self._thread.start()
        self._closed.append(unit)
        self._pending_keys.update(self.unit_keys)  # (the key filter took them batch by batch)
        self.state.next_index = self.index + 1
        self._open_unit()
        self._queue.put(unit)  # blocks while _MAX_CLOSED_UNITS units wait: bounded memory

    def close(self) -> None:
        """Commit the open unit and wait until every unit is on disk; re-raise a commit error."""
        self.commit()
        self.stop()
        self._raise_commit_error()

    def stop(self) -> None:
        """Let the commit thread finish the units handed to it, then end it (the open unit stays
        uncommitted: its temp shard is removed by the next run's recovery)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self.tar is not None and not self.tar.closed:
            self.tar.close()

    def _raise_commit_error(self) -> None:
        if self._error is not None:
            raise IngestError(f"committing a unit failed: {self._error!r}") from self._error

    def _commit_loop(self) -> None:
        waiting: list[_ClosedUnit] = []  # on disk, not yet indexed
        prepared: list[IndexedUnit] = []
        rows = 0
        while True:
            unit = self._queue.get()
            if unit is not None:
                waiting.append(unit)
                if self._error is None:
                    try:
                        self._commit_unit(unit)
                        prepared.append(
                            IndexedUnit(
                                unit.index, bytes.fromhex("".join(unit.keys)), unit.rows.uri_digests()
                            )
                        )
                        rows += prepared[-1].n_keys + prepared[-1].n_uris
                        unit.rows = None  # the manifest part holds them now
                    except BaseException as exc:  # noqa: BLE001 - handed to the ingest thread
                        self._error = exc
            if unit is None or self._error is not None or rows >= self.INDEX_BATCH_ROWS:
                if prepared and self._error is None:
                    try:
                        self.lake_index.add_units(prepared)
                    except BaseException as exc:  # noqa: BLE001 - handed to the ingest thread
                        self._error = exc
                for done in waiting:
                    done.indexed.set()
                waiting, prepared, rows = [], [], 0
            if unit is None:
                return

    def _commit_unit(self, unit: _ClosedUnit) -> None:
        """Shard rename first, then its manifest part (the commit marker); the index follows."""
        if unit.tar is not None:
            unit.tar.write(END_OF_ARCHIVE)
            os.fsync(unit.tar.fileno())
            unit.tar.close()
            os.replace(unit.tmp_path, unit.final_path)
            self.counts.shards_written += 1
        table = unit.rows.table(self.run_id, datetime.now(timezone.utc))
        part = Layout(self.root).manifest / manifest_part_name(unit.index)
        atomic_write(part, lambda f: _write_part(table, f))
        fsync_dir(Layout(self.root).shards)
        fsync_dir(Layout(self.root).manifest)


@functools.cache
def _hex_digit_values() -> np.ndarray:
    """ASCII code → value of that (lower-case) hex digit."""
    import numpy as np

    table = np.zeros(256, dtype=np.uint8)
    for value, digit in enumerate(b"0123456789abcdef"):
        table[digit] = value
    return table


def _key_bytes(hexes: bytes, rows: np.ndarray) -> bytes:
    """The 16 bytes of the key of each of ``rows`` (``hexes`` holds 64 hex digits per file)."""
    import numpy as np

    digits = _hex_digit_values()[np.frombuffer(hexes, dtype=np.uint8).reshape(-1, 64)[rows, :KEY_HEX_CHARS]]
    return ((digits[:, 0::2] << 4) | digits[:, 1::2]).tobytes()
