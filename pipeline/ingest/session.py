"""One ingest run: recovery, listing, the workers, the writer and the summary (``run_ingest`` drives
it with the local pool; ``flows/ingest.py`` with a Prefect task runner)."""

from __future__ import annotations

import gc
import json
import resource
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lakelabel.data_specs.layout import Layout
from lakelabel.pipeline.atomic import atomic_write_bytes
from lakelabel.pipeline.ingest.pool import exit_with_parent, map_ordered
from lakelabel.pipeline.ingest.recovery import IngestError, RootLock, new_run_id, recover
from lakelabel.pipeline.ingest.worker import (
    BatchResult,
    WorkerOptions,
    WorkItem,
    process_batch,
)
from lakelabel.pipeline.ingest.writer import ShardCommitter
from lakelabel.pipeline.lake import (
    LakeFile,
    SourceSpec,
    file_uri,
    iter_lake_chunks,
    resolve_source,
    stored_uris,
)

if TYPE_CHECKING:
    from lakelabel.pipeline.config import IngestConfig

_FILE_PREFIX = file_uri("")


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


#: Files the local pool keeps in flight (in batches, at least 4 per worker). The writer stalls
#: at start-up (it loads NumPy, then pyarrow on its first commit: ~0.1 s holding the GIL); a deep
#: queue keeps the workers busy meanwhile. Bounded: ~40 MiB of spooled samples, ~3 MiB of URIs.
IN_FLIGHT_FILES = 16_384


_WORKER: dict = {}


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
            "found": c.found + c.already_ingested,  # every file under SRC
            "new": c.found,  # of those, the files this run resolved (the rest: already_ingested)
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
