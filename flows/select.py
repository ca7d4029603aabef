"""``select_flow``: UPS pseudo-label selection as a Prefect flow: one task runs the rounds on the working
sample, groups of parts are selected by tasks mapped over the task runner (threads, processes or Dask
workers), one task commits the run; a markdown artifact shows the rounds and roles."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import make_task_runner, stage_task
from lakelabel.pipeline.config import RunnerConfig, SelectConfig
from lakelabel.pipeline.select import PartDone, SelectFit, apply_parts, commit_selection, fit_selection


@stage_task("select-fit", retries=1)
def fit_task(root: str, config: SelectConfig) -> SelectFit:
    progress = StageProgress("select", "round", total=config.rounds)
    return fit_selection(root, config, log=lambda record: progress(int(record["round"]) + 1))


@stage_task("select-apply-parts", retries=2)
def apply_task(fit: SelectFit, indices: list[int]) -> list[PartDone]:
    return apply_parts(fit, indices)


@stage_task("select-commit", retries=1)
def commit_task(fit: SelectFit, done: list[PartDone], seconds: float) -> dict:
    return commit_selection(fit, done, seconds)


@flow(name="select-parts", persist_result=False)
def _select_parts(root: str, config: SelectConfig) -> dict:
    fit = fit_task(root, config)
    per = config.parts_per_task
    groups = [fit.parts[i : i + per] for i in range(0, len(fit.parts), per)]
    progress = StageProgress("select", "part", total=len(fit.parts))
    start, done = time.perf_counter(), []
    for future in [apply_task.submit(fit, group) for group in groups]:
        done += future.result()
        progress(len(done))
    return commit_task(fit, done, time.perf_counter() - start)


@flow(name="select", persist_result=False)
def select_flow(root: str, config: SelectConfig | None = None, runner: RunnerConfig | None = None) -> dict:
    """Select pseudo-labels on ``root``'s embeddings (from its clusters or seed labels); the parts are
    selected in groups of ``select.parts_per_task`` over ``runner``."""
    config = config or SelectConfig()
    summary = _select_parts.with_options(task_runner=make_task_runner(runner or RunnerConfig()))(root, config)
    lines = ["| round | positives | negative-only | negative labels |", "|---|---|---|---|"]
    lines += [
        f"| {r['round']} | {r['positives']} | {r['negative_only']} | {r['negative_labels']} |"
        for r in summary["rounds"]
    ]
    lines += ["", "| role | images |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["roles"].items()]
    create_markdown_artifact(
        "\n".join(lines), key="ups-selection", description="UPS selection rounds and roles"
    )
    get_run_logger().info("selection: %s (%s parts reused)", summary["selection"], summary["parts_reused"])
    return summary
