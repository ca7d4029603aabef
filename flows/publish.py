"""``publish_labels_flow``: commit a selection run to the label lake, with a per-class counts artifact."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from lakelabel.data_specs.labels import default_dest, read_labels
from lakelabel.flows.runners import stage_task
from lakelabel.pipeline.labels import publish_labels


@stage_task("publish-labels", retries=2)
def publish_labels_task(root: str, selection_run: str, dest: str | None) -> dict:
    return publish_labels(root, selection_run, dest)


@flow(name="publish-labels", persist_result=False)
def publish_labels_flow(root: str, selection_run: str = "default", dest: str | None = None) -> dict:
    """Publish ``root``'s selection run; a retry after a crash cleans the staging area and commits again."""
    record = publish_labels_task(root, selection_run, dest)
    table = read_labels(dest or default_dest(root), record["run_id"]).to_pandas()
    counts = table[table.role == "positive"].label_name.value_counts().sort_index()
    create_table_artifact(
        [{"class": name, "positive_labels": int(n)} for name, n in counts.items()],
        key="label-counts",
        description=f"positive labels per class in run {record['run_id']}",
    )
    return record
