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
from pipeline.cluster import cluster
from pipeline.config import ClusterConfig, EmbedConfig, SelectConfig
from pipeline.embed import embed
from pipeline.labels import LabelsNotFound, latest_run, list_runs, publish_labels, read_labels
from pipeline.select import select


@pytest.fixture(scope="module")
def selected_root(cifar_root, tmp_path_factory):
    src, truth, _ = cifar_root
    root = tmp_path_factory.mktemp("labels") / "root"
    shutil.copytree(src, root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    cluster(root, ClusterConfig(k=10, heads=2, epochs=1))
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
    assert (tmp_path / "labels" / "_latest").read_text().strip() == record["run_id"]
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
