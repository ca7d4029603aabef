"""The label lake: contract round trip, atomic commits, versions, plain readers (pandas, pyarrow, DuckDB)."""

from __future__ import annotations

import json
import shutil

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from data_specs.labels import LABELS_SCHEMA
from flows.cli import main
from pipeline.config import SelectConfig
from pipeline.labels import LabelsNotFound, latest_run, list_runs, publish_labels, read_labels
from pipeline.select import select
from tests.pipeline.conftest import clustered_copy


@pytest.fixture(scope="module")
def selected_root(cifar_root, tmp_path_factory):
    root = clustered_copy(cifar_root, tmp_path_factory.mktemp("labels"), heads=2, epochs=1)
    small = dict(rounds=1, epochs=1, min_steps=20, passes=3, hidden=32, review_per_class=2)
    select(root, SelectConfig(**small))
    select(root, SelectConfig(**small, tau_p=0.2, run_name="looser"))
    return root


def test_round_trip_and_plain_readers(selected_root, tmp_path) -> None:
    dest = str(tmp_path / "labels")
    record = publish_labels(selected_root, dest=dest)
    assert record["rows"] == 400 and record["skipped"] is False
    table = read_labels(dest)
    assert table.schema.equals(LABELS_SCHEMA, check_metadata=False)
    assert table.schema.metadata[b"lakelabel.schema_version"] == b"1"
    df = table.to_pandas()
    assert df.key.is_unique and (df.run_id == record["run_id"]).all()
    assert df[df.role == "positive"].label.notna().all() and df[df.role != "positive"].label.isna().all()
    assert all(len(h) == 2 for h in df.cluster_heads)  # two SeLa heads
    assert all(s.startswith(k) for s, k in zip(df.sha256, df.key, strict=True))  # key = sha256[:32]
    # readers that know nothing of lakelabel
    run_dir = f"{dest}/run_id={record['run_id']}"
    assert len(pd.read_parquet(run_dir)) == 400
    dataset = ds.dataset(dest, format="parquet", partitioning="hive")
    assert dataset.count_rows() == 400 and "run_id" in dataset.schema.names
    counts = duckdb.sql(
        f"SELECT label_name, count(*) AS n FROM read_parquet('{run_dir}/*.parquet') GROUP BY label_name"
    ).df()
    assert counts.n.sum() == 400
    latest_file = tmp_path / "labels" / "_latest"
    assert latest_file.read_text() == record["run_id"]  # no newline: the documented snippet works as is
    with open(latest_file) as f:  # the documented snippet
        assert len(pd.read_parquet(f"{dest}/run_id={f.read()}")) == 400
    # unchanged selection → no new version
    assert publish_labels(selected_root, dest=dest)["skipped"] is True
    assert len(list_runs(dest)) == 1


def test_crash_keeps_previous_version_and_two_runs_coexist(selected_root, tmp_path) -> None:
    dest = str(tmp_path / "labels")
    first = publish_labels(selected_root, dest=dest)
    with pytest.raises(RuntimeError, match="fault injected"):
        publish_labels(selected_root, "looser", dest=dest, fail_before_commit=True)
    assert latest_run(dest) == first["run_id"]
    assert read_labels(dest).num_rows == 400
    assert ds.dataset(dest, format="parquet", partitioning="hive").count_rows() == 400  # staging invisible
    second = publish_labels(selected_root, "looser", dest=dest)
    assert not (tmp_path / "labels" / "_staging").exists()
    assert [r["run_id"] for r in list_runs(dest)] == [first["run_id"], second["run_id"]]
    assert latest_run(dest) == second["run_id"]
    # a crash between the second commit marker and `_latest`: the markers decide, not `_latest`
    (tmp_path / "labels" / "_latest").write_text(first["run_id"] + "\n")
    assert latest_run(dest) == second["run_id"] and read_labels(dest).num_rows == 400
    old, new = read_labels(dest, first["run_id"]).to_pandas(), read_labels(dest).to_pandas()
    assert (new.role == "positive").sum() >= (old.role == "positive").sum()  # the looser threshold
    with pytest.raises(LabelsNotFound, match="not committed"):
        read_labels(dest, "nope")
    assert pq.read_metadata(f"{dest}/run_id={first['run_id']}/part-00000.parquet").num_rows == 400


def test_cli_publish_and_labels(selected_root, tmp_path, capsys) -> None:
    root = tmp_path / "root"
    shutil.copytree(selected_root, root)
    assert main(["publish", str(root)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert main(["labels", "latest", str(root)]) == 0
    assert capsys.readouterr().out.strip() == record["run_id"]
    assert main(["labels", "ls", str(root)]) == 0
    assert record["run_id"] in capsys.readouterr().out
    assert main(["labels", "show", str(root)]) == 0
    assert "400 rows" in capsys.readouterr().out
    assert main(["labels", "show", str(root), "--run", "missing"]) == 2


def test_dataset_api_yields_exactly_the_runs_positive_and_negative_rows(selected_root, tmp_path) -> None:
    from pipeline.labeled_shards import LabeledShards

    dest = str(tmp_path / "labels")
    publish_labels(selected_root, "looser", dest=dest)
    table = read_labels(dest).to_pandas()
    wanted = table[
        (table.role == "positive") | ((table.role == "negative_only") & (table.negative_labels.str.len() > 0))
    ]
    data = LabeledShards(selected_root, dest=dest)
    samples = list(data)
    assert sorted(s["key"] for s in samples) == sorted(wanted.key)
    by_key = wanted.set_index("key")
    for s in samples:
        row = by_key.loc[s["key"]]
        if row.role == "positive":
            assert data.classes[s["label"]] == row.label_name
        else:
            assert s["label"] == -1
        assert s["negatives"].sum() == len(row.negative_labels)
        assert s["weight"] == 1.0 and s["image"].size == (32, 32)
    # a class subset keeps only that class's positives (and negatives that still mean something)
    name = wanted[wanted.role == "positive"].label_name.iloc[0]
    subset = LabeledShards(selected_root, dest=dest, classes=[name], roles=("positive",))
    assert subset.classes == [name] and len(subset) == int((wanted.label_name == name).sum())
    with pytest.raises(ValueError, match="have no positive label"):
        LabeledShards(selected_root, dest=dest, classes=["no-such-class"])


def test_train_classifier_from_pseudo_labels(selected_root, cifar_root, tmp_path) -> None:
    from pipeline.config import TrainClassifierConfig
    from pipeline.train_classifier import train_classifier

    _, truth, _ = cifar_root
    root = tmp_path / "root"
    shutil.copytree(selected_root, root)
    labels = pd.read_csv(truth)
    seed_csv, holdout = tmp_path / "seed.csv", tmp_path / "holdout.csv"
    labels.tail(300).groupby("label").head(5).to_csv(seed_csv, index=False)  # class names from seed labels
    labels.head(100).to_csv(holdout, index=False)
    small = dict(rounds=1, epochs=1, min_steps=20, passes=3, hidden=32, review_per_class=2, tau_p=0.2)
    select(root, SelectConfig(labels_from="seed", seed_labels=[str(seed_csv)], run_name="seeded", **small))
    publish_labels(root, "seeded")
    config = TrainClassifierConfig(
        batch_size=16, max_steps=3, workers=0, holdout=str(holdout), holdout_split=None
    )
    metrics = train_classifier(root, config)
    assert metrics["steps"] == 3 and (root / "classifiers" / "default" / "model.pt").exists()
    assert metrics["holdout"]["images"] > 0 and 0 <= metrics["holdout"]["accuracy"] <= 1
    saved = json.loads((root / "classifiers" / "default" / "metrics.json").read_text())
    assert saved["classes"] == metrics["classes"] and saved["label_run"] == latest_run(str(root / "labels"))
    assert (
        main(
            [
                "train-classifier",
                str(root),
                "--max-steps",
                "1",
                "--batch-size",
                "16",
                "--workers",
                "0",
                "--run-name",
                "cli",
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_publish_to_an_s3_label_lake(selected_root, s3_endpoint) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="lake")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    dest = "s3://lake/labels"
    first = publish_labels(selected_root, dest=dest, storage_options=options)
    with pytest.raises(RuntimeError, match="fault injected"):
        publish_labels(selected_root, "looser", dest=dest, storage_options=options, fail_before_commit=True)
    assert latest_run(dest, options) == first["run_id"]
    second = publish_labels(selected_root, "looser", dest=dest, storage_options=options)
    assert [r["run_id"] for r in list_runs(dest, options)] == [first["run_id"], second["run_id"]]
    assert read_labels(dest, first["run_id"], options).num_rows == 400
    plain = pd.read_parquet(f"{dest}/run_id={second['run_id']}", storage_options=options)
    assert len(plain) == 400 and plain.key.is_unique


def test_labels_ls_on_an_empty_root_says_so(tmp_path, capsys) -> None:
    assert main(["labels", "ls", str(tmp_path)]) == 1
    assert "no label runs under" in capsys.readouterr().err
