"""``curate_flow``: the end-to-end run. Stages are wired in as they land (today: ingest)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.ingest import ingest_flow
from pipeline.config import LakelabelConfig
from pipeline.demo import make_demo_lake


@flow(name="curate", persist_result=False)
def curate_flow(config: LakelabelConfig | None = None) -> dict:
    """Run every available stage on ``config`` (the embedded demo lake when ``source`` is unset)."""
    config = config or LakelabelConfig()
    source = config.source
    if source is None:
        source = str(make_demo_lake(Path(config.root).parent / "lake"))
    ingest = ingest_flow(source, config.root, config.ingest, config.runner)
    lines = [
        "# lakelabel curate run",
        f"- source: `{source}`",
        f"- root: `{config.root}`",
        "",
        "| stage | found | sharded | duplicate | rejected | skipped | shards | seconds |",
        "|---|---|---|---|---|---|---|---|",
        f"| ingest | {ingest['found']} | {ingest['sharded']} | {ingest['duplicate']} | {ingest['rejected']} "
        f"| {ingest['skipped']} | {ingest['shards_written']} | {ingest['seconds']} |",
    ]
    create_markdown_artifact("\n".join(lines), key="curate-summary", description="lakelabel run summary")
    get_run_logger().info("shards under %s/shards, manifest under %s/manifest", config.root, config.root)
    return {
        "ingest": ingest,
        "shards": str(Path(config.root) / "shards"),
        "manifest": str(Path(config.root) / "manifest"),
    }
