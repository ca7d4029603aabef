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
import json
import os
import resource
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_specs.manifest import MANIFEST_SCHEMA, validate_manifest
from data_specs.shards import SHARD_NAME_RE, key_for_sha256, shard_name
from pipeline.atomic import atomic_write, atomic_write_bytes, temp_path
from pipeline.config import IngestConfig
from pipeline.ingest_worker import BatchResult, WorkerOptions, process_batch
from pipeline.lake import LakeFile, SourceSpec, iter_lake, resolve_source
from pipeline.tario import END_OF_ARCHIVE

MANIFEST_PART_RE = SHARD_NAME_RE.pattern.replace("shard-", "part-").replace(r"\.tar", r"\.parquet")
WorkItem = tuple[str, str | None, bytes | None]


class IngestError(RuntimeError):
    """The ingest cannot run (bad root, root locked by another ingest, ...)."""


def new_run_id(prefix: str = "ingest") -> str:
    """Sortable, unique run id: ``ingest-20261123T214500Z-1a2b3c``."""
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def manifest_part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class LakeState:
    """What earlier runs committed under ROOT (read at start-up, after crash recovery)."""

    next_index: int = 0
    done_uris: set[str] = field(default_factory=set)
    #: key of every kept image → its shard index
    kept: dict[str, int] = field(default_factory=dict)
    removed_orphans: list[str] = field(default_factory=list)


def recover(root: Path) -> LakeState:
    """Clean up after a crash and load the committed state of ROOT (creating the folders)."""
    shards, manifest = root / "shards", root / "manifest"
    for folder in (shards, manifest, manifest / "_runs"):
        folder.mkdir(parents=True, exist_ok=True)
    state = LakeState()
    for folder in (shards, manifest, manifest / "_runs"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
            state.removed_orphans.append(str(tmp))
    committed = {int(p.name[5:11]) for p in manifest.glob("part-*.parquet")}
    for shard in shards.glob("shard-*.tar"):
        match = SHARD_NAME_RE.match(shard.name)
        if match and int(match.group(1)) not in committed:
            shard.unlink()  # renamed, but its manifest part never landed: redo the unit
            state.removed_orphans.append(str(shard))
    if committed:
        state.next_index = max(committed) + 1
        table = pq.read_table(
            manifest, columns=["source_uri", "status", "sha256", "shard"], schema=MANIFEST_SCHEMA
        )
        state.done_uris = set(table.column("source_uri").to_pylist())
        for status, sha, shard in zip(
            table.column("status").to_pylist(),
            table.column("sha256").to_pylist(),
            table.column("shard").to_pylist(),
            strict=True,
        ):
            if status == "sharded":
                state.kept[key_for_sha256(sha)] = int(shard[6:-4])
    return state


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


#: Manifest columns filled per row (``run_id`` and ``ingested_at`` are set per unit at commit).
_ROW_COLUMNS = tuple(name for name in MANIFEST_SCHEMA.names if name not in ("run_id", "ingested_at"))


class _UnitRows:
    """Manifest rows of the open unit, as column-wise chunks (slices of worker batches)."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, list]] = []
        self.n = 0

    def add_chunk(self, chunk: dict[str, list]) -> None:
        self.chunks.append(chunk)
        self.n += len(chunk["source_uri"])

    def __len__(self) -> int:
        return self.n

    def source_uris(self) -> Iterator[str]:
        for chunk in self.chunks:
            yield from chunk["source_uri"]

    def table(self, run_id: str, at: datetime) -> pa.Table:
        arrays = []
        for name in _ROW_COLUMNS:
            values: list = []
            for chunk in self.chunks:
                values.extend(chunk[name])
            arrays.append(pa.array(values, type=MANIFEST_SCHEMA.field(name).type))
        arrays.append(pa.array([run_id] * self.n, pa.string()))
        arrays.append(pa.array([at] * self.n, MANIFEST_SCHEMA.field("ingested_at").type))
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


class ShardCommitter:
    """Single writer: de-duplicates, appends samples to the open shard, commits units atomically."""

    def __init__(self, root: Path, run_id: str, state: LakeState, config: IngestConfig):
        self.root, self.run_id, self.state, self.config = root, run_id, state, config
        self.counts = IngestCounts()
        self._open_unit()

    def _open_unit(self) -> None:
        self.index = self.state.next_index
        self.shard = shard_name(self.index)
        self.final_path = self.root / "shards" / self.shard
        self.tmp_path = temp_path(self.final_path)
        self.tar = None  # opened lazily: a unit may hold only rejected/duplicate rows
        self.samples = 0
        self.nbytes = 0
        self.rows = _UnitRows()

    def skip(self, uri: str, reason: str) -> None:
        row = dict.fromkeys(_ROW_COLUMNS, [None])
        row.update(source_uri=[uri], status=["skipped"], reason=[reason])
        self.rows.add_chunk(row)
        self.counts.skipped += 1
        self.counts.found += 1
        self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def _write(self, data: memoryview) -> None:
        if self.tar is None:
            self.tar = open(self.tmp_path, "wb", buffering=0)  # noqa: SIM115 - closed in commit()
        self.tar.write(data)

    def _take_rows(self, batch: BatchResult, status: list, shard: list, a: int, b: int) -> None:
        if a < b:
            chunk = {
                "source_uri": batch.uris[a:b],
                "status": status[a:b],
                "reason": batch.reasons[a:b],
                "key": batch.keys[a:b],
                "shard": shard[a:b],
                "width": batch.width[a:b],
                "height": batch.height[a:b],
                "bytes": batch.nbytes[a:b],
                "sha256": batch.sha256[a:b],
                "format": batch.formats[a:b],
                "reencoded": batch.reencoded[a:b],
            }
            self.rows.add_chunk(chunk)

    def add_batch(self, batch: BatchResult) -> None:
        """Record a worker's batch: rejections, duplicates (of earlier runs or this one), new samples.

        Samples are appended to the open shard in contiguous runs of the batch's blob; a unit is
        committed whenever the next sample would break the shard's count or byte bound.
        """
        n = len(batch)
        counts, kept, config = self.counts, self.state.kept, self.config
        blob, ends, keys = memoryview(batch.blob), batch.ends, batch.keys
        status: list[str | None] = [None] * n
        shard: list[str | None] = [None] * n
        first_row = write_from = prev_end = 0
        for i in range(n):
            key = keys[i]
            if key is None:
                status[i] = "rejected"
                continue
            end = ends[i]
            kept_index = kept.get(key)
            if kept_index is not None:
                status[i], shard[i] = "duplicate", shard_name(kept_index)
                if prev_end > write_from:
                    self._write(blob[write_from:prev_end])
                write_from = prev_end = end
                continue
            size = end - prev_end
            if self.samples and (
                self.samples >= config.shard_max_count or self.nbytes + size > config.shard_max_bytes
            ):
                if prev_end > write_from:
                    self._write(blob[write_from:prev_end])
                    write_from = prev_end
                self._take_rows(batch, status, shard, first_row, i)
                first_row = i
                self.commit()
            status[i], shard[i] = "sharded", self.shard
            kept[key] = self.index
            self.samples += 1
            self.nbytes += size
            prev_end = end
        if prev_end > write_from:
            self._write(blob[write_from:prev_end])
        self._take_rows(batch, status, shard, first_row, n)
        counts.found += n
        n_dup = status.count("duplicate")
        n_rej = status.count("rejected")
        counts.duplicate += n_dup
        counts.rejected += n_rej
        counts.sharded += n - n_dup - n_rej
        if n_rej:
            for reason in batch.reasons:
                if reason is not None:
                    counts.reasons[reason] = counts.reasons.get(reason, 0) + 1

    def commit(self) -> None:
        """Close the open unit: shard rename first, then its manifest part (the commit marker)."""
        if not len(self.rows):
            return
        if self.tar is not None:
            self.tar.write(END_OF_ARCHIVE)
            os.fsync(self.tar.fileno())
            self.tar.close()
            os.replace(self.tmp_path, self.final_path)
            self.counts.shards_written += 1
        rows = self.rows
        table = rows.table(self.run_id, datetime.now(timezone.utc))
        part = self.root / "manifest" / manifest_part_name(self.index)
        atomic_write(part, lambda f: pq.write_table(table, f, compression="zstd"))
        _fsync_dir(self.root / "shards")
        _fsync_dir(self.root / "manifest")
        self.state.done_uris.update(rows.source_uris())
        self.state.next_index = self.index + 1
        self._open_unit()


def pending_batches(
    files: Iterable[LakeFile], committer: ShardCommitter, batch_size: int
) -> Iterator[list[WorkItem]]:
    """Group the lake files still to do into work batches; record skips on the way."""
    done = committer.state.done_uris
    batch: list[WorkItem] = []
    for lake_file in files:
        if lake_file.uri in done:
            committer.counts.already_ingested += 1
            continue
        if lake_file.skip_reason is not None:
            committer.skip(lake_file.uri, lake_file.skip_reason)
            continue
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
    fn: Callable, batches: Iterable, workers: int, initializer: Callable | None = None, initargs: tuple = ()
) -> Iterator:
    """``map(fn, batches)`` over ``workers`` processes, in order, with a bounded window.

    Workers are forked when :func:`fork_is_safe` (a fresh CLI process: no start-up imports to
    repeat), else spawned. At most ``4 × workers`` batches are in flight, so memory does not grow
    with the lake.
    """
    if workers <= 0:
        if initializer:
            initializer(*initargs)
        yield from map(fn, batches)
        return
    window = 4 * workers
    with ProcessPoolExecutor(
        workers, mp_context=get_context("fork" if fork_is_safe() else "spawn"), initializer=initializer, initargs=initargs
    ) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_WORKER: dict = {}


def exit_with_parent() -> None:
    """Make this worker process exit when its parent dies (even by SIGKILL), leaving no orphans."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _init_worker(spec: SourceSpec, options: WorkerOptions) -> None:
    exit_with_parent()
    _WORKER["spec"], _WORKER["options"] = spec, options


def _work(batch: list[WorkItem]) -> BatchResult:
    return process_batch(_WORKER["spec"], _WORKER["options"], batch)


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
        self, src: str, root: str | Path, config: IngestConfig | None = None, run_id: str | None = None
    ):
        self.config = config or IngestConfig()
        self.spec = resolve_source(src, self.config.storage_options)
        self.root = Path(root).expanduser().resolve()
        if self.spec.kind == "local":
            src_root = Path(self.spec.root).resolve()
            if self.root == src_root or src_root in self.root.parents:
                raise IngestError(
                    f"output root {str(self.root)!r} must not be inside the source {self.spec.url!r}"
                )
        self.run_id = run_id or new_run_id()
        self.options = WorkerOptions(
            run_id=self.run_id,
            max_pixels=self.config.max_pixels,
            max_side=self.config.max_side,
            jpeg_quality=self.config.jpeg_quality,
            mtime=int(time.time()),
        )
        self._lock = RootLock(self.root)
        self.started = 0.0

    def __enter__(self) -> IngestSession:
        self._lock.__enter__()
        self.started = time.perf_counter()
        self.state = recover(self.root)
        self.committer = ShardCommitter(self.root, self.run_id, self.state, self.config)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    def batches(self) -> Iterator[list[WorkItem]]:
        return pending_batches(iter_lake(self.spec), self.committer, self.config.batch_size)

    def add(self, results: BatchResult) -> None:
        self.committer.add_batch(results)

    def finish(self) -> dict:
        """Commit the last unit, write the run summary (the run's done-marker) and return it."""
        self.committer.commit()
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
            self.root / "manifest" / "_runs" / f"{self.run_id}.json", json.dumps(summary, indent=1).encode()
        )
        return summary


def run_ingest(
    src: str,
    root: str | Path,
    config: IngestConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Ingest ``src`` into ``root`` with a local process pool; return the run summary."""
    with IngestSession(src, root, config) as session:
        workers = session.config.resolved_workers()
        for results in map_ordered(
            _work, session.batches(), workers, _init_worker, (session.spec, session.options)
        ):
            session.add(results)
            if progress:
                progress(len(results))
        return session.finish()


def read_manifest(root: str | Path) -> pa.Table:
    """The whole manifest of ROOT (every committed unit), validated against the contract."""
    return validate_manifest(pq.read_table(Path(root) / "manifest", schema=MANIFEST_SCHEMA))
