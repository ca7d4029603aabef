"""``select_flow``: UPS pseudo-label selection as a Prefect flow, with a markdown artifact of the rounds."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import stage_task
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.select import select


@stage_task("ups-select", retries=1)
def select_task(root: str, config: SelectConfig) -> dict:
    progress = StageProgress("select", "round", total=config.rounds)
    return select(root, config, log=lambda record: progress(int(record["round"]) + 1))


@flow(name="select", persist_result=False)
def select_flow(root: str, config: SelectConfig | None = None) -> dict:
    """Select pseudo-labels on ``root``'s embeddings (from its clusters or seed labels)."""
    summary = select_task(root, config or SelectConfig())
    lines = ["| round | positives | negative-only | negative labels |", "|---|---|---|---|"]
    lines += [
        f"| {r['round']} | {r['positives']} | {r['negative_only']} | {r['negative_labels']} |"
        for r in summary["rounds"]
    ]
    lines += ["", "| role | images |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary["roles"].items()]
    create_markdown_artifact(
        "\n".join(lines), key="ups-selection", description="UPS selection rounds and roles"
    )
    return summary
