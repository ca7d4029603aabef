"""``curate_flow``: the end-to-end run, ingest → pretrain → embed → cluster → select → publish.

Every stage is safe to re-run and skips finished work on its own markers (ingest: manifest parts;
pretrain: ``last.pt``/``encoder.pt``; embed: per-shard parts; cluster: fingerprint; publish:
content hash), so a failed or repeated run resumes where it stopped, across flow runs — no
reliance on Prefect's result cache, which only spans one flow run by default.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from lakelabel.data_specs.layout import Layout
from lakelabel.flows.cluster import cluster_flow
from lakelabel.flows.embed import embed_flow
from lakelabel.flows.ingest import ingest_flow
from lakelabel.flows.pretrain import pretrain_flow
from lakelabel.flows.progress import stage_done, stage_started
from lakelabel.flows.publish import publish_labels_flow
from lakelabel.flows.report import report_flow
from lakelabel.flows.select import select_flow
from lakelabel.pipeline.config import LakelabelConfig
from lakelabel.pipeline.demo import demo_seed_csv, demo_truth_csv, make_demo_lake


@flow(name="curate", persist_result=False)
def curate_flow(config: LakelabelConfig | None = None) -> dict:
    """Run every stage on ``config`` (the embedded demo lake when ``source`` is unset)."""
    config = (config or LakelabelConfig()).model_copy(deep=True)
    logger = get_run_logger()
    root = config.root
    source = config.source
    if source is None:
        lake = make_demo_lake(Path(root).parent / "lake")
        source = str(lake)
        if not config.select.seed_labels:
            config.select.seed_labels = [str(demo_seed_csv(lake))]
        config.select.truth = config.select.truth or str(demo_truth_csv(lake))
    if config.embed.encoder == "default" and config.pretrain is not None:
        config.embed.encoder = config.pretrain.run_name
    timings: dict[str, float] = {}

    def stage(name: str, run):
        start = time.perf_counter()
        stage_started(name)
        result = run()
        timings[name] = round(time.perf_counter() - start, 2)
        stage_done(name)
        logger.info("stage %s done in %.1f s", name, timings[name])
        return result

    ingest = stage("ingest", lambda: ingest_flow(source, root, config.ingest, config.runner))
    encoder = Layout(root).checkpoint(config.pretrain.run_name if config.pretrain else "").encoder
    if config.pretrain is None:  # a pretrained encoder, frozen: no SSL
        pretrain = {"skipped": True, "encoder": config.embed.encoder}
        timings["pretrain"] = 0.0
    elif config.reuse_encoder and encoder.exists() and config.embed.encoder == config.pretrain.run_name:
        pretrain = {"skipped": True, "encoder": str(encoder)}
        timings["pretrain"] = 0.0
    else:
        pretrain = stage("pretrain", lambda: pretrain_flow(root, config.pretrain))
    embed = stage("embed", lambda: embed_flow(root, config.embed, config.runner))
    clusters = stage("cluster", lambda: cluster_flow(root, config.cluster, embed["encoder"], config.runner))
    config.select.embeddings = config.select.embeddings or embed["encoder"]
    selection = stage("select", lambda: select_flow(root, config.select, config.runner))
    published = stage(
        "publish", lambda: publish_labels_flow(root, config.select.run_name, config.labels_dest)
    )
    labels_dest = config.labels_dest or str(Layout(root).labels)
    report = stage(
        "report",
        lambda: report_flow(
            root, published["run_id"], config.labels_dest, config.select.truth, dict(timings)
        ),
    )
    metrics = selection.get("metrics") or {}
    if config.pretrain is None:
        pretrain_result = "none: " + config.embed.encoder
    else:
        pretrain_result = "reused" if pretrain.get("skipped") else f"{pretrain.get('steps')} steps"
    lines = [
        "# lakelabel curate run",
        f"- source: `{source}`",
        f"- root: `{root}`",
        f"- labels: `{labels_dest}` run `{published['run_id']}`",
        f"- encoder: `{embed['encoder']}` ({embed['encoder_sha256'][:12]})",
        f"- report: [{report['html']}]({Path(report['html']).resolve().as_uri()})",
        "",
        "| stage | seconds | result |",
        "|---|---|---|",
        f"| ingest | {timings['ingest']} | {ingest['sharded']} sharded, {ingest['duplicate']} duplicate, "
        f"{ingest['rejected']} rejected, {ingest['skipped']} skipped |",
        f"| pretrain | {timings['pretrain']} | {pretrain_result} |",
        f"| embed | {timings['embed']} | {embed['shards_embedded']} shards embedded, "
        f"{embed['shards_skipped']} skipped |",
        f"| cluster | {timings['cluster']} | K={clusters['k']}: {', '.join(clusters['methods'])}"
        f"{' (unchanged, skipped)' if clusters['skipped'] else ''} |",
        f"| select | {timings['select']} | {selection['roles']} |",
        f"| publish | {timings['publish']} | {published['rows']} "
        f"rows{' (unchanged)' if published['skipped'] else ''} |",
        f"| report | {timings['report']} | {report['images_inlined']} figures |",
    ]
    if metrics:
        lines += [
            "",
            f"Against ground truth: precision {metrics['precision']} at coverage {metrics['coverage']}, "
            f"accuracy at full coverage {metrics['accuracy_full_coverage']}.",
        ]
    lines += [f"**Warning: {w}**" for w in selection.get("warnings", [])]
    for warning in selection.get("warnings", []):
        logger.warning("labels: %s", warning)
    create_markdown_artifact("\n".join(lines), key="curate-summary", description="lakelabel run summary")
    # positive labels per class: the publish subflow's `label-counts` table artifact
    logger.info("labels: %s (run %s)", labels_dest, published["run_id"])
    return {
        "ingest": ingest,
        "pretrain": pretrain,
        "embed": embed,
        "cluster": clusters,
        "select": selection,
        "publish": published,
        "timings": timings,
        "labels": labels_dest,
        "label_run": published["run_id"],
        "report": report["html"],
        "shards": str(Layout(root).shards),
        "manifest": str(Layout(root).manifest),
    }
