"""``cluster_flow``: the clustering methods (k-means, Sinkhorn-Knopp, SeLa heads, SCAN) on ROOT's
embeddings, as a Prefect flow: progress per method, then per assigned part."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import stage_task
from lakelabel.pipeline.cluster import cluster
from lakelabel.pipeline.config import ClusterConfig


@stage_task("cluster-embeddings", retries=1)
def cluster_task(root: str, config: ClusterConfig, embeddings: str | None) -> dict:
    progress, finished = StageProgress("cluster", "method", total=len(config.methods)), []
    parts = StageProgress("cluster", "part")

    def log(record: dict) -> None:
        # a method's training records, {"method", "seconds"} at its end, then one record per part
        if "assigned_parts" in record:
            parts(record["assigned_parts"], record["of"])
        elif "method" in record and "seconds" in record:
            finished.append(record["method"])
            progress(len(finished))
        else:
            progress.note("%s %s", config.methods[min(len(finished), len(config.methods) - 1)], record)

    return cluster(root, config, embeddings, log=log)


@flow(name="cluster", persist_result=False)
def cluster_flow(root: str, config: ClusterConfig | None = None, embeddings: str | None = None) -> dict:
    """Cluster the newest embeddings of ``root`` (or those of encoder ``embeddings``); skipped when
    unchanged."""
    summary = cluster_task(root, config or ClusterConfig(), embeddings)
    get_run_logger().info("clusters: %s (skipped=%s)", summary["clusters"], summary["skipped"])
    return summary
