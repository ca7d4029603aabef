"""``report_flow``: the HTML report of a label run, linked from the Prefect UI as an artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact

from lakelabel.flows.runners import stage_task
from lakelabel.pipeline.report import build_report


@stage_task("build-report", retries=1)
def report_task(
    root: str, labels_run: str | None, dest: str | None, truth: str | None, timings: dict | None
) -> dict:
    return build_report(root, labels_run=labels_run, dest=dest, truth=truth, timings=timings)


@flow(name="report", persist_result=False)
def report_flow(
    root: str,
    labels_run: str | None = None,
    dest: str | None = None,
    truth: str | None = None,
    timings: dict | None = None,
) -> dict:
    """Write ``ROOT/reports/<run>/report.html`` and link it (``file://``) as the ``label-report`` artifact."""
    meta = report_task(root, labels_run, dest, truth, timings)
    create_link_artifact(
        link=Path(meta["html"]).resolve().as_uri(),
        link_text=f"report of label run {meta['run_id']}",
        key="label-report",
        description="lakelabel report: montages, histograms, per-class counts, metrics",
    )
    return meta
