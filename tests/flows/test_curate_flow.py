"""curate_flow end to end on the demo lake (real temp Prefect server), and its resume after a failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
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
from pipeline.demo import make_demo_lake
from pipeline.faults import InjectedFault
from pipeline.labels import list_runs, read_labels


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
        # a nightly run after new images arrived: only they are ingested and embedded; a new version
        more = make_demo_lake(tmp_path / "more", per_class=30, seed=1)
        shutil.copytree(more, root.parent / "lake" / "camera-new")
        nightly = curate_flow(config)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["label-report", "curate-summary", "label-counts"])
                )
            )
    data_of: dict[str, list[str]] = {}
    for artifact in artifacts:  # one version per run that created the key, in no set order
        data_of.setdefault(artifact.key, []).append(artifact.data)
    assert set(data_of) == {"label-report", "curate-summary", "label-counts"}
    assert {a.type for a in artifacts if a.key == "label-report"} == {"markdown"}  # a link, as markdown
    # positives per class, once per published version (from the publish subflow)
    assert len(data_of["label-counts"]) == 2 and all("positive_labels" in d for d in data_of["label-counts"])
    for run in (result, nightly):
        assert any(Path(run["report"]).resolve().as_uri() in d for d in data_of["label-report"])
        assert any(run["report"] in d for d in data_of["curate-summary"])
    assert Path(result["report"]).is_file() and "figures rendered" in Path(result["report"]).read_text()
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
    ingest = nightly["ingest"]
    assert (ingest["found"], ingest["sharded"], ingest["duplicate"], ingest["rejected"]) == (124, 120, 1, 2)
    assert ingest["already_ingested"] == 604
    assert nightly["embed"]["shards_embedded"] == 1 and nightly["embed"]["shards_skipped"] == 3
    assert nightly["pretrain"]["skipped"] is True and nightly["cluster"]["skipped"] is False
    runs = list_runs(nightly["labels"])
    assert [r["run_id"] for r in runs] == [result["label_run"], nightly["label_run"]]
    new_labels = read_labels(nightly["labels"], nightly["label_run"]).to_pandas()
    assert len(new_labels) == 720 and set(labels.key) < set(new_labels.key)
    assert len(read_labels(result["labels"], result["label_run"])) == 600  # the earlier version is kept
    assert set(result["timings"]) == {"ingest", "pretrain", "embed", "cluster", "select", "publish", "report"}
