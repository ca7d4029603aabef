"""``cluster_flow``: the clustering methods (k-means, Sinkhorn-Knopp, SeLa heads, SCAN) on ROOT's
embeddings, as a Prefect flow: one task fits the methods (a bounded sample, reductions over the parts),
groups of parts are assigned by tasks mapped over the task runner (threads, processes or Dask
workers), and one task commits the run once every part is in."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import make_task_runner, stage_task
from lakelabel.pipeline.cluster import ClusterFit, PartDone, assign_parts, commit_clusters, fit_clusters
from lakelabel.pipeline.config import ClusterConfig, RunnerConfig


@stage_task("cluster-fit", retries=1)
def fit_task(root: str, config: ClusterConfig, embeddings: str | None) -> ClusterFit:
    progress, finished = StageProgress("cluster", "method", total=len(config.methods)), []

    def log(record: dict) -> None:  # a method's training records, then {"method", "seconds"} at its end
        if "method" in record and "seconds" in record:
            finished.append(record["method"])
            progress(len(finished))
        else:
            progress.note("%s %s", config.methods[min(len(finished), len(config.methods) - 1)], record)

    return fit_clusters(root, config, embeddings, log=log)


@stage_task("cluster-assign-parts", retries=2)
def assign_task(fit: ClusterFit, indices: list[int]) -> list[PartDone]:
    return assign_parts(fit, indices)


@stage_task("cluster-commit", retries=1)
def commit_task(fit: ClusterFit, done: list[PartDone], seconds: float) -> dict:
    return commit_clusters(fit, done, seconds)


@flow(name="cluster-parts", persist_result=False)
def _cluster_parts(root: str, config: ClusterConfig, embeddings: str | None, parts_per_task: int) -> dict:
    fit = fit_task(root, config, embeddings)
    if fit.skipped is not None:
        return fit.skipped
    groups = [fit.parts[i : i + parts_per_task] for i in range(0, len(fit.parts), parts_per_task)]
    progress = StageProgress("cluster", "part", total=len(fit.parts))
    start, done = time.perf_counter(), []
    for future in [assign_task.submit(fit, group) for group in groups]:
        done += future.result()
        progress(len(done))
    return commit_task(fit, done, time.perf_counter() - start)


@flow(name="cluster", persist_result=False)
def cluster_flow(
    root: str,
    config: ClusterConfig | None = None,
    embeddings: str | None = None,
    runner: RunnerConfig | None = None,
) -> dict:
    """Cluster the newest embeddings of ``root`` (or those of encoder ``embeddings``); skipped when
    unchanged. The parts are assigned in groups of ``cluster.parts_per_task`` over ``runner``."""
    config = config or ClusterConfig()
    summary = _cluster_parts.with_options(task_runner=make_task_runner(runner or RunnerConfig()))(
        root, config, embeddings, config.parts_per_task
    )
    get_run_logger().info("clusters: %s (skipped=%s)", summary["clusters"], summary["skipped"])
    return summary
