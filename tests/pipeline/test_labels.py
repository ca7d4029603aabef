"""The label table (Delta Lake): contract round trip, one commit per publish, time travel, concurrent
publishes (processes, local and S3), a crash mid-publish, retention, the pre-Delta migration, and
readers that know nothing of lakelabel (deltalake, Polars, pandas, DuckDB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lakelabel.cli import main
from lakelabel.data_specs.labels import (
    LABELS_SCHEMA,
    LabelsNotFound,
    latest_labels,
    latest_run,
    list_runs,
    read_labels,
)
from lakelabel.data_specs.selections import read_selection
from lakelabel.data_specs.validation import ContractError
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.labels import migrate_labels, publish_labels, vacuum_labels
from lakelabel.pipeline.select import select
from tests.pipeline.conftest import RUNS
from tests.roots import copy_root


def test_round_trip_and_plain_readers(selected_root, tmp_path) -> None:
    dest = str(tmp_path / "labels")
    record = publish_labels(selected_root, dest=dest)
    assert record["rows"] == 400 and record["skipped"] is False and record["version"] == 1  # (0: created)
    table = read_labels(dest)
    assert table.schema.equals(LABELS_SCHEMA, check_metadata=False)
    assert table.schema.metadata[b"lakelabel.schema_version"] == b"1"
    df = table.to_pandas()
    assert df.key.is_unique and (df.run_id == record["run_id"]).all()
    assert df[df.role == "positive"].label.notna().all() and df[df.role != "positive"].label.isna().all()
    assert all(len(h) == 2 for h in df.cluster_heads)  # two SeLa heads
    assert all(s.startswith(k) for s, k in zip(df.sha256, df.key, strict=True))  # key = sha256[:32]
    # the commit carries the run's lineage
    (commit,) = DeltaTable(dest).history()[:1]
    lineage = commit["lakelabel"]
    assert lineage["run_id"] == record["run_id"] and lineage["rows"] == 400
    assert lineage["encoder_sha256"] == df.encoder_sha256.iloc[0]
    assert lineage["thresholds"] == json.loads(df.thresholds.iloc[0])
    assert lineage["selection_config"]["method"] == "ups"
    # readers that know nothing of lakelabel: the latest run in one expression each
    delta = DeltaTable(dest).to_pandas()
    assert len(delta[delta.run_id == delta.run_id.max()]) == 400
    polars = pl.read_delta(dest).filter(pl.col("run_id") == pl.col("run_id").max())
    assert polars.height == 400 and polars["key"].n_unique() == 400
    files = DeltaTable(dest).file_uris()
    counts = duckdb.sql(
        f"SELECT run_id, count(*) AS n FROM read_parquet({files!r}, hive_partitioning = true) GROUP BY run_id"
    ).df()
    assert counts.n.tolist() == [400] and counts.run_id.tolist() == [record["run_id"]]
    assert latest_labels(dest).equals(table)
    # unchanged selection → no new version
    again = publish_labels(selected_root, dest=dest)
    assert again["skipped"] is True and again["run_id"] == record["run_id"]
    assert DeltaTable(dest).version() == 1 and len(list_runs(dest)) == 1


def test_three_publishes_are_three_versions_and_each_can_be_read_again(selected_root, tmp_path) -> None:
    dest = str(tmp_path / "labels")
    records = [publish_labels(selected_root, run, dest=dest) for run in RUNS]
    assert [r["version"] for r in records] == [1, 2, 3]  # version 0 created the table
    assert [r["run_id"] for r in list_runs(dest)] == [r["run_id"] for r in records]
    assert [r["version"] for r in list_runs(dest)] == [1, 2, 3]
    assert latest_run(dest) == records[-1]["run_id"]
    # time travel: the table as it was at version 1 holds only the first run
    first = read_labels(dest, version=1)
    assert first.column("run_id")[0].as_py() == records[0]["run_id"] and first.num_rows == 400
    assert pl.read_delta(dest, version=1)["run_id"].unique().to_list() == [records[0]["run_id"]]
    with pytest.raises(LabelsNotFound, match="not committed .* at version 1"):
        read_labels(dest, records[1]["run_id"], version=1)
    with pytest.raises(LabelsNotFound, match="no committed label run"):  # created, nothing published yet
        read_labels(dest, version=0)
    # ... and by timestamp: just after the second commit
    history = {c["version"]: c["timestamp"] for c in DeltaTable(dest).history()}
    after_second = pd.Timestamp(history[2] + 1, unit="ms", tz="UTC").isoformat()
    assert read_labels(dest, version=after_second).column("run_id")[0].as_py() == records[1]["run_id"]
    old, new = read_labels(dest, records[0]["run_id"]).to_pandas(), read_labels(dest).to_pandas()
    assert (old.role == "positive").sum() >= (new.role == "positive").sum()  # the stricter threshold
    with pytest.raises(LabelsNotFound, match="not committed"):
        read_labels(dest, "nope")


_PUBLISH_WHEN_TOLD = """
import json, os, sys, time
from pathlib import Path
from lakelabel.pipeline.labels import publish_labels
root, run, dest, go = sys.argv[1:5]
options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
while not Path(go).exists():  # both processes start, then publish at the same moment
    time.sleep(0.001)
print(json.dumps(publish_labels(root, run, dest=dest, storage_options=options)))
"""


def _publish_concurrently(root: Path, runs: tuple[str, ...], dest: str, go: Path, options=None) -> list[dict]:
    extra = [json.dumps(options)] if options else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISH_WHEN_TOLD, str(root), run, dest, str(go), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run in runs
    ]
    time.sleep(3)  # both have imported lakelabel and wait
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _check_nothing_lost_or_mixed(root: Path, dest: str, records: list[dict], options=None) -> None:
    runs = {r["run_id"]: r for r in records}
    assert len(runs) == len(records) and len({r["version"] for r in records}) == len(records)
    for record in records:  # each publisher's version is its own commit, holding its whole run
        at_version = read_labels(dest, record["run_id"], options, version=record["version"])
        assert at_version.num_rows == record["rows"] == 400
        selection = read_selection(root, record["selection_run"])
        assert sorted(at_version.column("key").to_pylist()) == sorted(selection.key)
        assert at_version.to_pandas().role.value_counts().to_dict() == record["roles"]


@pytest.mark.slow
def test_two_processes_publishing_at_once_both_land(selected_root, tmp_path) -> None:
    dest = str(tmp_path / "labels")
    first = publish_labels(selected_root, dest=dest)
    records = _publish_concurrently(selected_root, RUNS[1:], dest, tmp_path / "go")
    _check_nothing_lost_or_mixed(selected_root, dest, records)
    assert sorted(r["version"] for r in records) == [2, 3]
    assert [r["run_id"] for r in list_runs(dest)] == [
        first["run_id"],
        *(r["run_id"] for r in sorted(records, key=lambda r: r["version"])),
    ]
    print(
        "concurrent local publishes:",
        json.dumps([{k: r[k] for k in ("run_id", "version", "rows")} for r in records]),
    )


def test_a_crash_in_the_middle_of_a_publish_leaves_the_previous_version_current(
    selected_root, tmp_path
) -> None:
    """The publishing process is killed after its data files are written and before its commit."""
    dest = str(tmp_path / "labels")
    first = publish_labels(selected_root, dest=dest)
    crash = """
import os, signal, sys
import pyarrow.parquet as pq
import lakelabel.pipeline.labels as labels

def write_then_die(table_or_uri, data, **kwargs):  # delta-rs writes the data files, then commits
    data = data.read_all()  # (publish streams the run's parts)
    folder = os.path.join(sys.argv[2], "run_id=" + data.column("run_id")[0].as_py())
    os.makedirs(folder, exist_ok=True)
    pq.write_table(data.drop(["run_id"]), os.path.join(folder, "part-00000-crashed.parquet"))
    os.kill(os.getpid(), signal.SIGKILL)

import deltalake
deltalake.write_deltalake = write_then_die
labels.publish_labels(sys.argv[1], "looser", dest=sys.argv[2])
"""
    done = subprocess.run(
        [sys.executable, "-c", crash, str(selected_root), dest], capture_output=True, text=True
    )
    assert done.returncode == -9
    assert list(Path(dest).glob("run_id=*/part-00000-crashed.parquet"))  # its data files are there
    assert DeltaTable(dest).version() == 1 and latest_run(dest) == first["run_id"]
    assert read_labels(dest).num_rows == 400 and pl.read_delta(dest).height == 400  # no reader sees them
    second = publish_labels(selected_root, "looser", dest=dest)
    assert second["version"] == 2 and latest_run(dest) == second["run_id"]
    assert vacuum_labels(dest, keep=2)["files_deleted"] == 1  # the crashed publish's file
    assert not list(Path(dest).glob("run_id=*/part-00000-crashed.parquet"))


def test_vacuum_keeps_the_newest_runs(selected_root, tmp_path, capsys) -> None:
    dest = str(tmp_path / "labels")
    records = [publish_labels(selected_root, run, dest=dest) for run in RUNS]
    with pytest.raises(ValueError, match="at least 1"):
        vacuum_labels(dest, keep=0)
    assert main(["labels", "vacuum", "--dest", dest, "--keep", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kept"] == [records[-1]["run_id"]] and result["removed_runs"] == [
        r["run_id"] for r in records[:2]
    ]
    assert [r["run_id"] for r in list_runs(dest)] == [records[-1]["run_id"]]
    assert read_labels(dest).num_rows == 400 and pl.read_delta(dest).height == 400
    assert {p.name for p in Path(dest).glob("run_id=*")} >= {f"run_id={records[-1]['run_id']}"}
    assert not [f for r in records[:2] for f in Path(dest, f"run_id={r['run_id']}").glob("*.parquet")]  # gone
    assert vacuum_labels(dest, keep=5)["removed_runs"] == []  # fewer runs than kept: nothing goes


def _old_layout(dest: Path, tables: list[pa.Table]) -> list[str]:
    """A label folder as lakelabel wrote it before the Delta table (data_specs/labels.md, v0.1)."""
    run_ids = []
    for i, table in enumerate(tables):
        run_id = f"2026112{i}T020000000000Z-0000000{i}"
        table = table.set_column(
            table.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * table.num_rows)
        )
        (dest / f"run_id={run_id}").mkdir(parents=True)
        pq.write_table(table, dest / f"run_id={run_id}" / "part-00000.parquet")
        (dest / "_commits").mkdir(exist_ok=True)
        record = {
            "run_id": run_id,
            "rows": table.num_rows,
            "roles": {},
            "selection_run": "default",
            "content_sha256": f"0000000{i}",
            "path": str(dest / f"run_id={run_id}"),
        }
        (dest / "_commits" / f"{run_id}.json").write_text(json.dumps(record))
        run_ids.append(run_id)
    (dest / "_latest").write_text(run_ids[-1])
    return run_ids


def test_an_old_layout_label_folder_is_converted_once_and_loses_nothing(
    selected_root, tmp_path, capsys
) -> None:
    scratch = str(tmp_path / "scratch")
    tables = [
        read_labels(scratch, publish_labels(selected_root, run, dest=scratch)["run_id"]) for run in RUNS[:2]
    ]
    dest = tmp_path / "labels"
    old_runs = _old_layout(dest, tables)
    with pytest.raises(LabelsNotFound, match="pre-Delta layout .*lakelabel labels migrate"):
        read_labels(str(dest))
    assert main(["labels", "migrate", "--dest", str(dest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["migrated"] == old_runs
    assert [r["run_id"] for r in list_runs(str(dest))] == old_runs
    assert [r["migrated_from"] for r in list_runs(str(dest))] == ["pre-Delta layout (_commits/)"] * 2
    for run_id, table in zip(old_runs, tables, strict=True):
        again = read_labels(str(dest), run_id).to_pandas()
        assert again.drop(columns="run_id").equals(table.to_pandas().drop(columns="run_id"))
    assert not (dest / "_commits").exists() and not (dest / "_latest").exists()
    assert not list(dest.glob("run_id=*/part-00000.parquet"))
    assert migrate_labels(str(dest)) == {"migrated": [], "already_delta": True}
    # a publish onto an old folder converts it first
    other = tmp_path / "other"
    _old_layout(other, tables[:1])
    record = publish_labels(selected_root, "stricter", dest=str(other))
    assert record["version"] == 2 and len(list_runs(str(other))) == 2  # created, the old run, this one


def test_the_schema_is_enforced_and_versioned(selected_root, tmp_path) -> None:
    from deltalake import write_deltalake

    dest = str(tmp_path / "labels")
    publish_labels(selected_root, dest=dest)
    table = read_labels(dest)
    with pytest.raises(Exception, match="(?i)schema"):  # a table with another column is refused
        write_deltalake(dest, table.append_column("extra", pa.array([1] * table.num_rows)), mode="append")
    assert DeltaTable(dest).version() == 1
    future = str(tmp_path / "future")
    write_deltalake(
        future, table, partition_by=["run_id"], description="lakelabel label table, schema version 2"
    )
    with pytest.raises(ContractError, match="schema version '2'.*lakelabel labels migrate"):
        read_labels(future)


def test_cli_publish_and_labels(selected_root, tmp_path, capsys) -> None:
    root = tmp_path / "root"
    copy_root(selected_root, root)
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
    from lakelabel.pipeline.labeled_shards import LabeledShards

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


def test_train_classifier_from_pseudo_labels(selected_root, cifar_root, tmp_path, capsys) -> None:
    from lakelabel.pipeline.config import TrainClassifierConfig
    from lakelabel.pipeline.train_classifier import train_classifier

    _, truth, _ = cifar_root
    root = tmp_path / "root"
    copy_root(selected_root, root)
    labels = pd.read_csv(truth)
    seed_csv, holdout = tmp_path / "seed.csv", tmp_path / "holdout.csv"
    labels.tail(300).groupby("label").head(5).to_csv(seed_csv, index=False)  # class names from seed labels
    labels.head(100).drop(columns="split", errors="ignore").to_csv(holdout, index=False)  # a plain CSV
    small = dict(rounds=1, epochs=1, min_steps=20, passes=3, hidden=32, review_budget=20, ups={"tau_p": 0.2})
    select(root, SelectConfig(labels_from="seed", seed_labels=[str(seed_csv)], run_name="seeded", **small))
    publish_labels(root, "seeded")
    config = TrainClassifierConfig(
        batch_size=16, max_steps=3, workers=0, holdout=str(holdout), holdout_fraction=0.5
    )
    metrics = train_classifier(root, config)
    assert metrics["steps"] == 3 and (root / "classifiers" / "default" / "model.pt").exists()
    assert (
        metrics["holdout"]["rows"] == f"held out a 0.5 sample (seed 0, 50 rows) of all 100 rows of {holdout}"
    )
    assert 0 < metrics["holdout"]["images"] <= 50 and 0 <= metrics["holdout"]["accuracy"] <= 1
    split_csv = tmp_path / "split.csv"
    labels.head(10).assign(split="train").to_csv(split_csv, index=False)
    with pytest.raises(ValueError, match="has no rows of split 'test' \\(its splits: train\\)"):
        train_classifier(root, TrainClassifierConfig(max_steps=1, workers=0, holdout=str(split_csv)))
    saved = json.loads((root / "classifiers" / "default" / "metrics.json").read_text())
    names = sorted(saved["classes"])
    assert saved["classes"] == metrics["classes"] and saved["label_run"] == latest_run(str(root / "labels"))
    assert (
        main(
            [
                "train-classifier",
                str(root),
                "--max-steps",
                "1",
                "--batch-size",
                "8",
                "--workers",
                "0",
                "--run-name",
                "cli",
                "--classes",
                ",".join(names[:2]),  # comma-separated and
                names[2],  # space-separated both work
            ]
        )
        == 0
    )
    assert "train-classifier: 1 of 1 steps" in capsys.readouterr().err  # progress as a plain line


@pytest.mark.slow
def test_publish_to_an_s3_label_table_and_two_processes_at_once(selected_root, s3_endpoint) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="lake")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    dest = "s3://lake/labels"
    first = publish_labels(selected_root, dest=dest, storage_options=options)
    assert first["version"] == 1 and latest_run(dest, options) == first["run_id"]
    go = Path(os.environ.get("TMPDIR", "/tmp")) / f"lakelabel-go-{os.getpid()}-{time.time_ns()}"
    try:
        records = _publish_concurrently(selected_root, RUNS[1:], dest, go, options)
    finally:
        go.unlink(missing_ok=True)
    _check_nothing_lost_or_mixed(selected_root, dest, records, options)
    assert sorted(r["version"] for r in records) == [2, 3]
    assert read_labels(dest, first["run_id"], options).num_rows == 400
    print(
        "concurrent S3 publishes:",
        json.dumps([{k: r[k] for k in ("run_id", "version", "rows")} for r in records]),
    )


def test_labels_ls_on_an_empty_root_says_so(tmp_path, capsys) -> None:
    assert main(["labels", "ls", str(tmp_path)]) == 2  # as its siblings: an error is rc 2
    assert "no label runs under" in capsys.readouterr().err


#: documents whose python snippets run as written (ROOT replaced by a published one)
DOCUMENTS = ("README.md", "docs/*.md", "data_specs/*.md")
#: packages only the [dev] or other extras install: no snippet may need them
NOT_IN_THE_MAIN_INSTALL = {"polars", "duckdb", "pytest", "moto", "boto3", "ot", "mkdocs", "pyright"}


def _snippets() -> list[tuple[str, str]]:
    """Every python block of the documentation: ``(document:index, code)``."""
    repo = Path(__file__).resolve().parents[2]
    found = []
    for pattern in DOCUMENTS:
        for path in sorted(repo.glob(pattern)):
            blocks = path.read_text().split("```python\n")[1:]
            found += [(f"{path.relative_to(repo)}:{i}", b.split("```")[0]) for i, b in enumerate(blocks)]
    return found


def test_the_documentation_has_snippets_and_they_need_only_the_main_install() -> None:
    import ast

    snippets = dict(_snippets())
    assert {
        "README.md:0",
        "docs/retrain.md:0",
        "data_specs/labels.md:0",
        "data_specs/classifiers.md:0",
    } <= set(snippets)
    for name, code in snippets.items():
        modules = {
            (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
            for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert not modules & NOT_IN_THE_MAIN_INSTALL, (name, modules & NOT_IN_THE_MAIN_INSTALL)


@pytest.mark.parametrize("name", [name for name, _ in _snippets()])
def test_documented_snippets_run_as_written(selected_root, tmp_path, name) -> None:
    """Every python snippet of the README, docs/ and data_specs/, run as a plain script on a published
    ROOT (only the placeholder ROOT replaced): the loader's workers are spawned, so a missing main
    guard fails."""
    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "root"
    copy_root(selected_root, root, "labels")
    publish_labels(root)
    code = dict(_snippets())[name].replace('"ROOT', f'"{root}')
    if "CLASSIFIER_IMAGE" in code:  # a classifier to run, and an image of the lake to give it
        from lakelabel.pipeline.config import TrainClassifierConfig
        from lakelabel.pipeline.train_classifier import train_classifier

        train_classifier(root, TrainClassifierConfig(head_epochs=1, baselines=False, workers=0))
        with tarfile.open(next((root / "shards").glob("*.tar"))) as tar:
            member = next(m for m in tar if m.name.endswith(".jpg"))
            (tmp_path / "image.jpg").write_bytes(tar.extractfile(member).read())
        code = code.replace("CLASSIFIER_IMAGE", str(tmp_path / "image.jpg"))
    script = tmp_path / "snippet.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=repo
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_labels_commands_load_no_torch() -> None:
    """`lakelabel labels ls|show|latest` and `publish` read tables: they start without torch."""
    import subprocess
    import sys

    code = "import sys, lakelabel.cli, lakelabel.pipeline.labels; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
