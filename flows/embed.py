"""``embed_flow``: embed ROOT's shards, groups of shards mapped over the task runner (one task per
group; a retried or re-run task skips the shards already committed)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import make_task_runner, stage_task
from lakelabel.pipeline.config import EmbedConfig, RunnerConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.shard_data import list_shards


@stage_task("embed-shards", retries=2)
def embed_shards_task(root: str, config: EmbedConfig, shards: list[str]) -> dict:
    return embed(root, config, shards=shards, progress=StageProgress("embed", "image", bar=False))


@flow(name="embed-shard-groups", persist_result=False)
def _embed_groups(root: str, config: EmbedConfig) -> dict:
    shards = list_shards(root)
    groups = [shards[i : i + config.shards_per_task] for i in range(0, len(shards), config.shards_per_task)]
    results, in_flight = [], []
    progress = StageProgress("embed", "shard", total=len(shards))
    for group in groups:
        in_flight.append((len(group), embed_shards_task.submit(root, config, group)))
        if len(in_flight) >= config.parallel_tasks:
            results.append(in_flight.pop(0)[1].result())
            progress(sum(r["shards_embedded"] + r["shards_skipped"] for r in results))
    for _, future in in_flight:
        results.append(future.result())
        progress(sum(r["shards_embedded"] + r["shards_skipped"] for r in results))
    summary = {
        "embeddings": results[0]["embeddings"],
        "encoder": results[0]["encoder"],
        "encoder_sha256": results[0]["encoder_sha256"],
        "shards": len(shards),
        "tasks": len(groups),
        "shards_embedded": sum(r["shards_embedded"] for r in results),
        "shards_skipped": sum(r["shards_skipped"] for r in results),
        "images_embedded": sum(r["images_embedded"] for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 2),
    }
    get_run_logger().info("embed summary: %s", summary)
    return summary


@flow(name="embed", persist_result=False)
def embed_flow(root: str, config: EmbedConfig | None = None, runner: RunnerConfig | None = None) -> dict:
    """Embed every committed shard of ``root`` not yet embedded by this encoder."""
    return _embed_groups.with_options(task_runner=make_task_runner(runner or RunnerConfig()))(
        root, config or EmbedConfig()
    )
