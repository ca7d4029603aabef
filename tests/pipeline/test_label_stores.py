"""The contract every label store of the registry (``pipeline/label_stores``) keeps: publish through
it, list and read its runs (commit order), skip a repeat, vacuum, and a migrate that is a no-op."""

from __future__ import annotations

import pytest

from lakelabel.data_specs.labels import LabelsNotFound
from lakelabel.pipeline.label_stores import STORES, LabelStore, open_store
from lakelabel.pipeline.labels import build_label_table, publish_labels
from tests.pipeline.conftest import RUNS


@pytest.mark.parametrize("kind", sorted(STORES))
def test_a_label_store_keeps_the_contract(kind, selected_root, tmp_path) -> None:
    store = open_store(str(tmp_path / "labels"), kind=kind)
    assert isinstance(store, LabelStore) and store.kind == kind
    with pytest.raises(LabelsNotFound):
        store.runs()
    records = [publish_labels(selected_root, run, store.dest) for run in RUNS]
    assert [r["run_id"] for r in store.runs()] == [r["run_id"] for r in records]
    assert [r["rows"] for r in store.runs()] == [400, 400, 400]
    assert store.read().column("run_id")[0].as_py() == records[-1]["run_id"]
    assert store.read(records[0]["run_id"]).num_rows == 400
    assert store.read(version=records[0]["version"]).column("run_id")[0].as_py() == records[0]["run_id"]
    again = publish_labels(selected_root, RUNS[0], store.dest)
    assert again["skipped"] and again["run_id"] == records[0]["run_id"]
    assert store.vacuum(1)["kept"] == [records[-1]["run_id"]]
    assert [r["run_id"] for r in store.runs()] == [records[-1]["run_id"]]
    assert store.migrate()["already_delta" if kind == "delta" else "migrated"] in (True, [])
    with pytest.raises(ValueError, match="unknown label store"):
        open_store(store.dest, kind="nope")
    assert build_label_table(selected_root, RUNS[0]).num_rows == 400
