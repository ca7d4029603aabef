"""``ingest_flow``: the ingest stage as a Prefect flow.

Listing partitions are mapped over a task runner (threads, processes or Dask: the CPU-heavy read,
hash and decode); the flow itself is the single writer that de-duplicates and commits shards,
exactly as ``lakelabel ingest`` does with its local process pool. Re-running resumes.
"""

from __future__ import annotations

from collections import deque

from prefect import flow, get_run_logger

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import make_task_runner, stage_task
from lakelabel.pipeline.config import IngestConfig, RunnerConfig
from lakelabel.pipeline.ingest import IngestSession, pending_batches
from lakelabel.pipeline.ingest.worker import BatchResult, WorkerOptions, process_batch
from lakelabel.pipeline.lake import SourceSpec, iter_lake_chunks


@stage_task("validate-partition", retries=2, retry_delay_seconds=2)
def validate_partition(spec: SourceSpec, options: WorkerOptions, items: list) -> BatchResult:
    """Read, hash, decode and encode one partition of the listing."""
    return process_batch(spec, options, items)


@flow(name="ingest-partitions", persist_result=False)
def _ingest_partitions(source: str, root: str, config: IngestConfig) -> dict:
    logger = get_run_logger()
    with IngestSession(source, root, config) as session:
        window = 4 * max(1, config.resolve_flow_window())
        in_flight: deque = deque()
        partitions = pending_batches(
            iter_lake_chunks(session.spec), session.committer, config.flow_partition_size
        )
        progress, done = StageProgress("ingest", "file"), 0

        def commit_oldest() -> int:
            result = in_flight.popleft().result()
            session.add(result)
            return len(result)

        for items in partitions:
            in_flight.append(validate_partition.submit(session.spec, session.options, items))
            if len(in_flight) >= window:
                done += commit_oldest()
                progress(done)
        while in_flight:
            done += commit_oldest()
            progress(done)
        summary = session.finish()
    logger.info("ingest summary: %s", summary)
    return summary


@flow(name="ingest", persist_result=False)
def ingest_flow(
    source: str, root: str, config: IngestConfig | None = None, runner: RunnerConfig | None = None
) -> dict:
    """Ingest ``source`` into ``root``; partitions mapped over the configured task runner."""
    config = config or IngestConfig()
    task_runner = make_task_runner(runner or RunnerConfig())
    return _ingest_partitions.with_options(task_runner=task_runner)(source, root, config)
