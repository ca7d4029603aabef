"""Ingest: lake → validated, de-duplicated WebDataset shards plus a Parquet manifest.

Layout under ROOT::

    shards/shard-000000.tar      WebDataset samples <key>.jpg + <key>.json
    manifest/part-000000.parquet one row per source file resolved in the unit of shard 000000
    manifest/_runs/<run_id>.json run summary (written last: the run's done-marker)

Commit protocol (crash-safe): a *unit* is one shard plus the manifest rows of every file resolved
while it was open (sharded, duplicates, rejected, skipped). The shard is written to a temp name and
renamed when complete; then the unit's manifest part is written to a temp name and renamed. The
manifest part is the unit's commit marker: at start-up, temp files and any shard without its
manifest part (a crash between the two renames) are removed, and every file already in the manifest
is skipped. So after a SIGKILL at any moment a re-run loses nothing and duplicates nothing, and a
re-run over a grown lake ingests only the new files, into new shards.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import json
import os
import pickle
import queue
import resource
import secrets
import signal
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.shards import KEY_HEX_CHARS, SHARD_NAME_RE, shard_name
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes, fsync_dir, temp_path
from lakelabel.pipeline.ingest_worker import (
    END,
    HEIGHT,
    NBYTES,
    NO_SHA256,
    NUMBERS_PER_FILE,
    START,
    UNDECIDED_NUMBERS,
    WIDTH,
    BatchResult,
    WorkerOptions,
    process_batch,
    set_parent_death_signal,
)
from lakelabel.pipeline.lake import (
    LakeFile,
    SourceSpec,
    file_uri,
    iter_lake_chunks,
    resolve_source,
    stored_uris,
)
from lakelabel.pipeline.lake_index import INDEX_DIR, IndexedUnit, LakeIndex, uri_digests
from lakelabel.pipeline.tario import END_OF_ARCHIVE

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from lakelabel.pipeline.config import IngestConfig

MANIFEST_PART_RE = SHARD_NAME_RE.pattern.replace("shard-", "part-").replace(r"\.tar", r"\.parquet")
WorkItem = tuple[str, str | None, bytes | None]
_FILE_PREFIX = file_uri("")


class IngestError(RuntimeError):
    """The ingest cannot run (bad root, root locked by another ingest, ...)."""


def new_run_id(prefix: str = "ingest") -> str:
    """Sortable, unique run id: ``ingest-20261123T214500Z-1a2b3c``."""
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def manifest_part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


@dataclass
class LakeState:
    """What earlier runs committed under ROOT (read at start-up, after crash recovery)."""

    index: LakeIndex
    next_index: int = 0
    removed_orphans: list[str] = field(default_factory=list)
    #: manifest parts the index had to take in at start-up, and whether it was rebuilt
    index_sync: dict[str, int] = field(default_factory=dict)


def recover(root: Path) -> LakeState:
    """Clean up after a crash, bring ROOT's index up to its manifest, return the committed state.

    Memory does not grow with the lake: the index lives on disk (:mod:`lakelabel.pipeline.lake_index`);
    only the part numbers are listed.
    """
    layout = Layout(root)
    shards, manifest = layout.shards, layout.manifest
    for folder in (shards, manifest, layout.ingest_runs):
        folder.mkdir(parents=True, exist_ok=True)
    removed: list[str] = []
    for folder in (shards, manifest, layout.ingest_runs):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
            removed.append(str(tmp))
    committed = sorted(int(p.name[5:11]) for p in manifest.glob("part-*.parquet"))
    committed_set = set(committed)
    for shard in shards.glob("shard-*.tar"):
        match = SHARD_NAME_RE.match(shard.name)
        if match and int(match.group(1)) not in committed_set:
            shard.unlink()  # renamed, but its manifest part never landed: redo the unit
            removed.append(str(shard))
    index = LakeIndex(manifest / INDEX_DIR)
    sync = index.sync(manifest, committed)
    return LakeState(
        index=index,
        next_index=committed[-1] + 1 if committed else 0,
        removed_orphans=removed,
        index_sync=sync,
    )


class RootLock:
    """Exclusive lock on ROOT so two ingests never write the same shards."""

    def __init__(self, root: Path):
        self.path = root / ".lakelabel.lock"
        self._fd: int | None = None

    def __enter__(self) -> RootLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise IngestError(f"another ingest holds the lock on {self.path.parent}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Manifest columns filled per row (``run_id`` and ``ingested_at`` are set per unit at commit).
#: (The manifest contract loads pyarrow; ingest imports it when it first writes or reads a part,
#: after the workers have started: tests/pipeline/test_ingest.py checks these names against it.)
_ROW_COLUMNS = (
    "source_uri",
    "status",
    "reason",
    "key",
    "shard",
    "width",
    "height",
    "bytes",
    "sha256",
    "format",
    "reencoded",
)

#: Row status codes, in the order of the manifest contract's ``STATUSES`` (the writer keeps a
#: status per row as one byte; tests/pipeline/test_ingest.py checks the order against it).
STATUS_CODES = ("sharded", "duplicate", "rejected", "skipped")
SHARDED, DUPLICATE, REJECTED, SKIPPED = range(4)
_NUMBERS_ROW_BYTES = NUMBERS_PER_FILE * 8
_NO_SHARD = array("i", [-1]).tobytes()  # a row's shard number when it has none


class _UnitRows:
    """Manifest rows of the open unit, column-wise: row ranges of worker batches, and skips.

    A batch chunk is ``(batch, a, b, status, shard)``: rows ``a:b`` of ``batch`` with their
    status codes (int8 bytes) and shard numbers (int32 bytes, -1 for none). Consecutive skipped
    files gather in one chunk ``(uris, reasons)``. The Arrow table is built from these buffers
    at commit, with no per-row Python for the packed columns.
    """

    def __init__(self) -> None:
        self.chunks: list[tuple] = []
        self.n = 0

    def add_rows(self, batch: BatchResult, a: int, b: int, status: bytes, shard: bytes) -> None:
        if a < b:
            self.chunks.append((batch, a, b, status, shard))
            self.n += b - a

    def add_skip(self, uri: str, reason: str) -> None:
        if not self.chunks or len(self.chunks[-1]) != 2:
            self.chunks.append(([], []))
        uris, reasons = self.chunks[-1]
        uris.append(uri)
        reasons.append(reason)
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def uri_digests(self) -> bytes:
        """The index's digest of each row's source URI, in row order (the workers computed most)."""
        parts = []
        for chunk in self.chunks:
            if len(chunk) == 2:
                parts.append(uri_digests(chunk[0]))
            else:
                batch, a, b = chunk[:3]
                digests = batch.uri_digests
                parts.append(
                    digests[a * 16 : b * 16] if digests is not None else uri_digests(batch.uris[a:b])
                )
        return b"".join(parts)

    def table(self, run_id: str, at: datetime) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from lakelabel.data_specs.columns import (
            arrow_array,
            fixed_width_strings,
            integers,
            repeated_string,
            strings_by_code,
        )
        from lakelabel.data_specs.manifest import MANIFEST_SCHEMA, validate_manifest

        n = self.n
        uris: list[str] = []
        reasons: list[str | None] = []
        formats: list[str | None] = []
        reencoded: list[bool | None] = []
        hexes, numbers, status, shard = [], [], [], []
        for chunk in self.chunks:
            if len(chunk) == 2:
                k = len(chunk[0])
                uris += chunk[0]
                reasons += chunk[1]
                formats += [None] * k
                reencoded += [None] * k
                hexes.append(NO_SHA256 * k)
                numbers.append(UNDECIDED_NUMBERS * k)
                status.append(bytes([SKIPPED]) * k)
                shard.append(_NO_SHARD * k)
                continue
            batch, a, b, chunk_status, chunk_shard = chunk
            uris += batch.uris[a:b]
            reasons += batch.reasons[a:b]
            formats += batch.formats[a:b]
            reencoded += batch.reencoded[a:b]
            hexes.append(batch.hexes[a * 64 : b * 64])
            numbers.append(batch.numbers[a * _NUMBERS_ROW_BYTES : b * _NUMBERS_ROW_BYTES])
            status.append(chunk_status)
            shard.append(chunk_shard)
        hex_data = b"".join(hexes)
        nums = np.frombuffer(b"".join(numbers), dtype=np.int64).reshape(n, NUMBERS_PER_FILE)
        codes = np.frombuffer(b"".join(status), dtype=np.int8)
        shards = np.frombuffer(b"".join(shard), dtype=np.int32)
        has_sha = np.frombuffer(hex_data, dtype=np.uint8)[::64] != 0
        has_key = codes <= DUPLICATE
        used = np.unique(shards[shards >= 0])
        columns = {
            "source_uri": arrow_array(uris, pa.string()),
            "status": strings_by_code(STATUS_CODES, codes.astype(np.int32)),
            "reason": arrow_array(reasons, pa.string()),
            "key": fixed_width_strings(
                np.frombuffer(hex_data, dtype=np.uint8).reshape(n, 64)[:, :KEY_HEX_CHARS].tobytes(),
                KEY_HEX_CHARS,
                has_key,
            ),
            "shard": strings_by_code(
                [shard_name(int(i)) for i in used], np.where(shards >= 0, np.searchsorted(used, shards), -1)
            ),
            "width": integers(nums[:, WIDTH], pa.int32()),
            "height": integers(nums[:, HEIGHT], pa.int32()),
            "bytes": integers(nums[:, NBYTES], pa.int64()),
            "sha256": fixed_width_strings(hex_data, 64, has_sha),
            "format": arrow_array(formats, pa.string()),
            "reencoded": arrow_array(reencoded, pa.bool_()),
        }
        arrays = [columns[name] for name in _ROW_COLUMNS]
        arrays.append(repeated_string(run_id, n))
        at_ms = (at - _EPOCH) // timedelta(milliseconds=1)
        at_column = integers(np.full(n, at_ms, dtype=np.int64), pa.int64(), null=None)
        arrays.append(at_column.view(MANIFEST_SCHEMA.field("ingested_at").type))
        return validate_manifest(pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA))


@dataclass
class IngestCounts:
    found: int = 0
    already_ingested: int = 0
    sharded: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    shards_written: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


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


def pending_batches(
    chunks: Iterable[tuple[list[str], list[LakeFile]]], committer: ShardCommitter, batch_size: int
) -> Iterator[list[WorkItem]]:
    """Group the lake files still to do into work batches; record skips on the way.

    ``chunks`` come from :func:`~lakelabel.pipeline.lake.iter_lake_chunks`. Files that earlier runs
    resolved are dropped, a chunk at a time against the index (a fresh ROOT skips the lookup).
    Files committed during this run are never listed twice.
    """
    lake_index, counts = committer.lake_index, committer.counts
    check_done = lake_index.has_uris()
    batch: list[WorkItem] = []
    for plain, others in chunks:
        if plain:
            items = [
                (uri, path, None) for uri, path in zip(stored_uris(_FILE_PREFIX, plain), plain, strict=True)
            ]
            if check_done:
                done = lake_index.resolved([item[0] for item in items])
                items = [item for item, d in zip(items, done, strict=True) if not d]
                counts.already_ingested += len(done) - len(items)
            at = 0  # by offset: a folder of millions of files must not be re-sliced per batch
            while at < len(items):
                room = batch_size - len(batch)
                batch += items[at : at + room]
                at += room
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if not others:
            continue
        done = lake_index.resolved([f.uri for f in others]) if check_done else None
        for j, lake_file in enumerate(others):
            if done is not None and done[j]:
                counts.already_ingested += 1
            elif lake_file.skip_reason is not None:
                committer.skip(lake_file.uri, lake_file.skip_reason)
            else:
                batch.append((lake_file.uri, lake_file.path, lake_file.data))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
    if batch:
        yield batch


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


#: Files the local pool keeps in flight (in batches, at least 4 per worker). The writer stalls
#: at start-up (it loads NumPy, then pyarrow on its first commit: ~0.1 s holding the GIL); a deep
#: queue keeps the workers busy meanwhile. Bounded: ~40 MiB of spooled samples, ~3 MiB of URIs.
IN_FLIGHT_FILES = 16_384


_WORKER: dict = {}


def exit_with_parent() -> None:
    """Make this worker process exit when its parent dies (even by SIGKILL), leaving no orphans."""
    parent = os.getppid()
    set_parent_death_signal(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _init_worker(spec: SourceSpec, options: WorkerOptions) -> None:
    exit_with_parent()
    _WORKER["spec"], _WORKER["options"] = spec, options


def _work(batch: list[WorkItem]) -> BatchResult:
    result = process_batch(_WORKER["spec"], _WORKER["options"], batch)
    result.uris = None  # the writer has them (run_ingest puts them back): not pickled twice
    return result


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child, in MiB."""
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


class IngestSession:
    """One ingest run over ROOT: recovery, listing, committing, summary.

    The CLI drives it with a local process pool (:func:`run_ingest`); the Prefect flow drives the
    same session with its task runner (threads, processes or Dask) doing :func:`process_batch`.
    """

    def __init__(
        self,
        src: str,
        root: str | Path,
        config: IngestConfig | None = None,
        run_id: str | None = None,
    ):
        if config is None:
            from lakelabel.pipeline.config import IngestConfig

            config = IngestConfig()
        self.config = config
        self.spec = resolve_source(src, self.config.storage_options)
        self.root = Path(root).expanduser().resolve()
        if self.spec.kind == "local":
            src_root = Path(self.spec.root).resolve()
            if self.root == src_root or src_root in self.root.parents:
                raise IngestError(
                    f"output root {str(self.root)!r} must not be inside the source {self.spec.url!r}"
                )
        self.run_id = run_id or new_run_id()
        self.options = _worker_options(self.run_id, self.config)
        self._lock = RootLock(self.root)
        self.started = 0.0

    def __enter__(self) -> IngestSession:
        self._lock.__enter__()
        self.started = time.perf_counter()
        try:
            self.state = recover(self.root)
        except BaseException:
            self._lock.__exit__()
            raise
        self.committer = ShardCommitter(self.root, self.run_id, self.state, self.config)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.committer.stop()
        finally:
            self.state.index.close()
            self._lock.__exit__(*exc)

    def batches(self) -> Iterator[list[WorkItem]]:
        return pending_batches(iter_lake_chunks(self.spec), self.committer, self.config.batch_size)

    def add(self, results: BatchResult) -> None:
        self.committer.add_batch(results)

    def finish(self) -> dict:
        """Commit the last unit, write the run summary (the run's done-marker) and return it."""
        self.committer.close()
        seconds = time.perf_counter() - self.started
        c = self.committer.counts
        summary = {
            "run_id": self.run_id,
            "source": self.spec.url,
            "root": str(self.root),
            "found": c.found,
            "sharded": c.sharded,
            "duplicate": c.duplicate,
            "rejected": c.rejected,
            "skipped": c.skipped,
            "already_ingested": c.already_ingested,
            "shards_written": c.shards_written,
            "reasons": dict(sorted(c.reasons.items())),
            "recovered_orphans": len(self.state.removed_orphans),
            "seconds": round(seconds, 3),
            "files_per_s": round(c.found / seconds, 1) if seconds > 0 else None,
            **peak_rss_mb(),
        }
        atomic_write_bytes(
            Layout(self.root).ingest_runs / f"{self.run_id}.json", json.dumps(summary, indent=1).encode()
        )
        return summary


@contextmanager
def _few_gc_passes() -> Iterator[None]:
    """Run the cyclic garbage collector rarely, over the objects made during the ingest.

    Ingest makes many short-lived tuples and lists and no cycles of its own; at Python's
    default threshold the collector ran hundreds of times, scanning every object alive
    (~5 % of the writer's CPU). The objects alive before (imports) are frozen out of its scans.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _worker_options(run_id: str, values: IngestConfig) -> WorkerOptions:
    """The options a run's workers get from its config."""
    return WorkerOptions(
        run_id=run_id,
        max_pixels=values.max_pixels,
        max_side=values.max_side,
        jpeg_quality=values.jpeg_quality,
        mtime=int(time.time()),
        compiled=values.compiled_core,
    )


def _spooling(options: WorkerOptions, root: Path, window: int) -> WorkerOptions:
    """``options`` for local workers: they spool their samples next to the shards (recovery
    removes strays), each reusing a ring of files longer than the window, so a file is
    rewritten only after the writer copied its samples (it copies a result before asking for
    the next)."""
    return replace(options, spool_dir=str(Layout(root).shards), spool_slots=window + 1)


def _window(workers: int, batch_size: int) -> int:
    """Batches in flight: :data:`IN_FLIGHT_FILES`, at least 4 per worker."""
    return max(4 * workers, IN_FLIGHT_FILES // batch_size)


def run_ingest(
    src: str,
    root: str | Path,
    config: IngestConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Ingest ``src`` into ``root`` with a local process pool; return the run summary."""
    session = IngestSession(src, root, config)
    with _few_gc_passes(), session:
        workers = session.config.resolved_workers()
        window = _window(workers, session.config.batch_size)
        if workers > 0:
            session.options = _spooling(session.options, session.root, window)
        sent: deque[list[str]] = deque()  # URIs of the batches in flight

        def batches() -> Iterator[list[WorkItem]]:
            for batch in session.batches():
                sent.append([item[0] for item in batch])
                yield batch

        pool_results = map_ordered(
            _work, batches(), workers, _init_worker, (session.spec, session.options), window=window
        )
        for results in pool_results:
            results.uris = sent.popleft()
            session.add(results)
            if progress:
                progress(len(results))
        if workers > 0:  # the workers have exited: their spool rings go (a crash leaves them)
            for spool in Layout(session.root).shards.glob(".spool-*.tmp"):
                spool.unlink(missing_ok=True)
        return session.finish()


def _write_part(table: pa.Table, f) -> None:
    """Write one manifest part (zstd; dictionary pages only for the few-valued columns: on the
    unique ones a dictionary is tried and dropped, costing time and bytes)."""
    import pyarrow.parquet as pq

    pq.write_table(table, f, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS)


#: manifest columns with few distinct values per part
_DICTIONARY_COLUMNS = ["status", "reason", "shard", "format", "reencoded", "run_id"]
