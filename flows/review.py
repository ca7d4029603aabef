"""``review_flow``: the human-in-the-loop round. When a person has filled a review batch (every image
answered on the review page) that no selection has learned from yet, select again, with the batch's
labels as seeds, and publish a new label version whose lineage names the batch. Otherwise it does
nothing, so a deployment may run it often (prefect.yaml: ``relabel-on-review``)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from lakelabel.data_specs.batches import list_batches, read_batch
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.selections import read_selection_summary
from lakelabel.flows.publish import publish_labels_flow
from lakelabel.flows.select import select_flow
from lakelabel.pipeline.atomic import file_sha256
from lakelabel.pipeline.config import LakelabelConfig
from lakelabel.pipeline.demo import demo_seed_csv


def filled_batches(root: str | Path, selection_run: str) -> list[str]:
    """Batches every image of which is answered, with a label among them, that the selection run
    ``selection_run`` did not learn from (by the batch file's sha256)."""
    learned = set()
    if Layout(root).selections(selection_run).summary.is_file():
        learned = {s["sha256"] for s in read_selection_summary(root, selection_run).get("seed_sources", [])}
    out = []
    for batch in list_batches(root):
        table = read_batch(batch)
        done = len(table) and (table.answer != "").all() and (table.answer == "label").any()
        if done and file_sha256(batch.csv) not in learned:
            out.append(batch.name)
    return out


@flow(name="review", persist_result=False)
def review_flow(config: LakelabelConfig | None = None) -> dict:
    """Select and publish again when a review batch has been filled since the last selection."""
    config = (config or LakelabelConfig()).model_copy(deep=True)
    logger = get_run_logger()
    root = config.root
    if config.source is None and not config.select.seed_labels:  # the demo lake's seeds, as curate
        config.select.seed_labels = [str(demo_seed_csv(Path(root).parent / "lake"))]
    if not config.select.reviewed_batches:
        raise ValueError("review_flow needs select.reviewed_batches: true (it learns from the batches)")
    batches = filled_batches(root, config.select.run_name)
    if not batches:
        logger.info("no newly filled review batch under %s: nothing to do", Layout(root).batches_dir)
        return {"skipped": True, "batches": []}
    logger.info("filled review batches %s: selecting again", ", ".join(batches))
    selection = select_flow(root, config.select, config.runner)
    published = publish_labels_flow(root, config.select.run_name, config.labels_dest)
    logger.info("label run %s; next review batch: %s", published["run_id"], selection["review"]["batch"])
    return {
        "skipped": False,
        "batches": batches,
        "label_run": published["run_id"],
        "version": published.get("version"),
        "next_batch": selection["review"]["batch"],
        "metrics": selection.get("metrics"),
    }
