"""The human-in-the-loop round in Prefect (real temp server): a curate run leaves a review batch; once
a person has filled it, review_flow selects again and publishes a label version naming the batch;
with nothing newly filled it does nothing."""

from __future__ import annotations

import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from lakelabel.data_specs.batches import read_batch
from lakelabel.data_specs.labels import list_runs, read_labels
from lakelabel.data_specs.layout import Layout
from lakelabel.flows.curate import curate_flow
from lakelabel.flows.review import review_flow
from lakelabel.pipeline.demo import demo_truth_csv
from lakelabel.pipeline.review.batch import BatchAnswers
from lakelabel.pipeline.truth import attach_keys
from tests.flows.test_curate_flow import tiny_config


@pytest.mark.slow
def test_a_filled_batch_triggers_a_new_label_version(tmp_path):
    root = tmp_path / "demo" / "root"
    config = tiny_config(root)
    config.select.labels_from = "seed"
    with prefect_test_harness(server_startup_timeout=120):
        first = curate_flow(config)
        assert review_flow(config) == {"skipped": True, "batches": []}  # nothing answered yet
        batch = Layout(root).batch(first["select"]["review"]["batch"])
        truth = attach_keys(root, pd.read_csv(demo_truth_csv(root.parent / "lake"))).set_index("key")
        answers = BatchAnswers(batch)
        keys = read_batch(batch).key.tolist()
        for key in keys[:-1]:
            answers.answer(key, "label", int(truth.label[key]))
        answers.answer(keys[-1], "skip")
        second = review_flow(config)
        assert second["skipped"] is False and second["batches"] == [batch.name]
        runs = list_runs(first["labels"])
        assert len(runs) == 2
        assert [s["batch"] for s in runs[-1]["seed_sources"] if "batch" in s] == [batch.name]
        labels = read_labels(first["labels"], runs[-1]["run_id"]).to_pandas().set_index("key")
        reviewed = labels.loc[keys[:-1]]
        assert reviewed.is_seed.all() and (reviewed.label.astype(int) == truth.label[keys[:-1]]).all()
        again = review_flow(config)  # the batch is learned from: nothing to do
        assert again == {"skipped": True, "batches": []} and len(list_runs(first["labels"])) == 2
