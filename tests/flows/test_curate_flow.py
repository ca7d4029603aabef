"""curate_flow end to end on the demo lake (real temp Prefect server), and its resume after a failure."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.curate import curate_flow
from pipeline.config import (
    ClusterConfig,
    EmbedConfig,
    IngestConfig,
    LakelabelConfig,
    PretrainConfig,
    SelectConfig,
)
from pipeline.faults import InjectedFault
from pipeline.labels import read_labels


def tiny_config(root) -> LakelabelConfig:
    return LakelabelConfig(
        root=str(root),
        ingest=IngestConfig(workers=0, shard_max_count=200),
        pretrain=PretrainConfig(
            method="simclr", stem="imagenet", batch_size=32, max_steps=2, workers=0, run_name="tiny"
        ),
        embed=EmbedConfig(workers=0, shards_per_task=2),
        cluster=ClusterConfig(k=4, heads=2, epochs=2),
        select=SelectConfig(rounds=1, epochs=2, min_steps=20, passes=3, hidden=32, review_per_class=2),
    )


@pytest.mark.slow
def test_curate_runs_end_to_end_and_resumes_after_a_failed_stage(tmp_path, monkeypatch):
    root = tmp_path / "demo" / "root"
    config = tiny_config(root)
    monkeypatch.setenv("LAKELABEL_FAIL_STAGE", "cluster")
    monkeypatch.setenv("LAKELABEL_FAIL_MARKER", str(tmp_path / "fault-done"))
    with prefect_test_harness(server_startup_timeout=120):
        with pytest.raises(InjectedFault):
            curate_flow(config)
        # ingest, pretrain and embed finished before the failure
        assert (root / "checkpoints" / "tiny" / "encoder.pt").exists()
        assert len(list(root.glob("embeddings/*/emb-*.parquet"))) == 3
        result = curate_flow(config)
    assert (
        result["ingest"]["found"] == 0 and result["ingest"]["already_ingested"] == 604
    )  # nothing new (600 + 1 copy + 2 bad + 1 .demo-complete)
    assert result["pretrain"]["skipped"] is True
    assert result["embed"]["shards_embedded"] == 0 and result["embed"]["shards_skipped"] == 3
    assert result["cluster"]["skipped"] is False and result["cluster"]["k"] == 4
    labels = read_labels(result["labels"], result["label_run"]).to_pandas()
    assert len(labels) == result["select"]["images"] == 600  # the copied file is a duplicate, stored once
    names = set(labels.label_name.dropna())
    assert names and names <= {"box_truck", "round_car", "tri_plane", "bar_ship"}
    assert "metrics" in result["select"]  # the demo's ground truth is used for evaluation
    assert set(result["timings"]) == {"ingest", "pretrain", "embed", "cluster", "select", "publish"}
