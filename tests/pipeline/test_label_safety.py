"""Nothing lost, nothing half-said in the label table: first publishes that race to create it, one
selection published twice at once, "latest" by commit order, outside writers, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

import lakelabel.pipeline.labels as labels_module
from lakelabel.cli import main
from lakelabel.data_specs.labels import (
    LABELS_SCHEMA,
    LabelsNotFound,
    LabelTableWarning,
    delta_options,
    latest_run,
    list_runs,
    read_labels,
)
from lakelabel.pipeline.labels import publish_labels, vacuum_labels
from tests.roots import copy_root

PUBLISHERS, ROUNDS = 8, 20


@pytest.fixture(scope="module")
def race_root(selected_root, tmp_path_factory) -> Path:
    """A copy of ``selected_root`` with :data:`PUBLISHERS` selections of different content
    (``race0`` … ``race7``: the default selection, its review rows' uncertainty nudged per copy)."""
    root = tmp_path_factory.mktemp("race") / "root"
    copy_root(selected_root, root, "labels")
    for i in range(PUBLISHERS):
        folder = root / "selections" / f"race{i}"
        copy_root(root / "selections" / "default", folder)
        for part in sorted((folder / "parts").glob("sel-*.parquet")):
            table = pq.read_table(part)
            nudged = pa.compute.multiply(table.column("uncertainty"), pa.scalar(1.0 + i / 1000, pa.float32()))
            table = table.set_column(table.schema.get_field_index("uncertainty"), "uncertainty", nudged)
            pq.write_table(table, part)
    return root


#: a publisher that stays up for every round: it publishes ``selection`` to ``dest/rN`` when
#: ``go/N`` appears and prints one JSON line per round (no start-up between rounds)
_PUBLISHER = """
import json, sys, time
from pathlib import Path
from lakelabel.pipeline.labels import publish_labels
root, selection, dest, go, rounds = sys.argv[1:6]
options = json.loads(sys.argv[6]) if len(sys.argv) > 6 else None
for n in range(int(rounds)):
    while not Path(go, str(n)).exists():
        time.sleep(0.001)
    try:
        record = publish_labels(root, selection, f"{dest}/r{n}", storage_options=options)
        print(json.dumps({k: record[k] for k in ("run_id", "version", "skipped", "rows")}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""


def _race(
    root: Path, selections: list[str], dest: str, go: Path, rounds: int, options=None
) -> list[list[dict]]:
    """Each selection published by its own process into ``dest/r0`` … at the same moment, ``rounds``
    times; the records per round."""
    go.mkdir(parents=True)
    extra = [json.dumps(options)] if options else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(root), selection, dest, str(go), str(rounds), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        for selection in selections
    ]
    time.sleep(4)  # all have imported lakelabel and wait
    results = []
    try:
        for n in range(rounds):
            (go / str(n)).touch()  # every publisher starts now: none finds the table
            results.append([json.loads(p.stdout.readline()) for p in procs])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return results


def _check_every_run_landed(dest: str, records: list[dict], options=None) -> None:
    assert not [r for r in records if "error" in r], records
    runs = list_runs(dest, options)
    assert sorted(r["run_id"] for r in runs) == sorted(r["run_id"] for r in records)
    assert sorted(r["version"] for r in runs) == list(range(1, len(records) + 1))  # 0: the creation
    assert all(r["rows"] == 400 for r in runs)
    table = DeltaTable(dest, storage_options=delta_options(options))
    creations = [c for c in table.history() if c["operation"] == "CREATE TABLE"]
    assert [c["version"] for c in creations] == [0]  # created once: no second "create" replaced it


@pytest.mark.slow
def test_eight_first_publishes_at_once_all_land_twenty_times(race_root, tmp_path) -> None:
    selections = [f"race{i}" for i in range(PUBLISHERS)]
    rounds = _race(race_root, selections, str(tmp_path / "labels"), tmp_path / "go", ROUNDS)
    for n, records in enumerate(rounds):
        _check_every_run_landed(str(tmp_path / "labels" / f"r{n}"), records)
    print(f"{PUBLISHERS} first publishes at once, {ROUNDS} rounds, locally: every run landed")


@pytest.mark.slow
def test_eight_first_publishes_at_once_all_land_twenty_times_on_s3(race_root, s3_endpoint) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="race")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    go = Path(os.environ.get("TMPDIR", "/tmp")) / f"lakelabel-race-{os.getpid()}-{time.time_ns()}"
    selections = [f"race{i}" for i in range(PUBLISHERS)]
    try:
        rounds = _race(race_root, selections, "s3://race/labels", go, ROUNDS, options)
    finally:
        shutil.rmtree(go, ignore_errors=True)
    for n, records in enumerate(rounds):
        _check_every_run_landed(f"s3://race/labels/r{n}", records, options)
    print(f"{PUBLISHERS} first publishes at once, {ROUNDS} rounds, on S3 (moto): every run landed")


@pytest.mark.slow
def test_one_selection_published_at_once_lands_once(race_root, tmp_path) -> None:
    """Four processes publish the same selection while four publish others, 3 rounds: one run each."""
    selections = ["race0"] * 4 + [f"race{i}" for i in range(1, 5)]
    for n, records in enumerate(_race(race_root, selections, str(tmp_path / "l"), tmp_path / "go", 3)):
        same = records[:4]
        assert not [r for r in records if "error" in r], records
        assert len({r["run_id"] for r in same}) == 1 and sum(not r["skipped"] for r in same) == 1
        runs = list_runs(str(tmp_path / "l" / f"r{n}"))
        assert len(runs) == 5 and [r["run_id"] for r in runs].count(same[0]["run_id"]) == 1


def test_latest_is_the_newest_commit_not_the_newest_clock(race_root, tmp_path, monkeypatch) -> None:
    """A publish whose run id carries an earlier time (a slow clock, a race) but commits later is the
    latest: commit order (the Delta version) decides."""
    dest = str(tmp_path / "labels")
    first = publish_labels(race_root, "race0", dest)

    class Earlier(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(hours=1)

    monkeypatch.setattr(labels_module, "datetime", Earlier)
    second = publish_labels(race_root, "race1", dest)
    assert second["run_id"] < first["run_id"] and second["version"] > first["version"]
    assert latest_run(dest) == second["run_id"]
    assert read_labels(dest).column("run_id")[0].as_py() == second["run_id"]
    assert [r["run_id"] for r in list_runs(dest)] == [first["run_id"], second["run_id"]]
    assert vacuum_labels(dest, keep=1)["kept"] == [second["run_id"]]


def test_created_at_is_microseconds_in_the_contract_the_table_and_every_reader(race_root, tmp_path) -> None:
    dest = str(tmp_path / "labels")
    publish_labels(race_root, "race0", dest)
    unit = pa.timestamp("us", tz="UTC")
    assert LABELS_SCHEMA.field("created_at").type == unit
    assert "timestamp[us, UTC]" in (Path(__file__).parents[2] / "data_specs" / "labels.md").read_text()
    assert read_labels(dest).schema.field("created_at").type == unit
    assert DeltaTable(dest).to_pyarrow_table().schema.field("created_at").type == unit
    assert pl.read_delta(dest).schema["created_at"] == pl.Datetime("us", "UTC")
    files = DeltaTable(dest).file_uris()
    described = duckdb.sql(f"DESCRIBE SELECT created_at FROM read_parquet({files!r})").fetchall()
    assert described[0][1] == "TIMESTAMP WITH TIME ZONE"  # DuckDB's timestamptz is microseconds


def _outside_run(dest: str, rows: pa.Table, run_id: str) -> pa.Table:
    return rows.set_column(
        rows.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * rows.num_rows)
    )


def test_a_run_another_writer_appended_is_named_and_never_latest(race_root, tmp_path, capsys) -> None:
    dest = str(tmp_path / "labels")
    ours = publish_labels(race_root, "race0", dest)
    theirs = _outside_run(dest, read_labels(dest), "29990101T000000000000Z-outside0")
    theirs = theirs.append_column("note", pa.array(["merged"] * theirs.num_rows))
    write_deltalake(dest, theirs, mode="append", schema_mode="merge")  # no lineage record, a new column
    with pytest.warns(LabelTableWarning) as caught:
        assert latest_run(dest) == ours["run_id"]
    said = " ".join(str(w.message) for w in caught)
    assert "outside0" in said and "'note'" in said
    with pytest.warns(LabelTableWarning):
        assert read_labels(dest).num_rows == 400  # the contract's columns of our run
    assert main(["labels", "ls", "--dest", dest]) == 0
    out, err = capsys.readouterr()
    assert ours["run_id"] in out and "outside0" not in out
    assert "lakelabel: warning:" in err and "outside0" in err and len(err.strip().splitlines()) == 2
    # publish refuses such a table: one line, rc 2, the bad column named; nothing written
    version = DeltaTable(dest).version()
    assert main(["publish", str(race_root), "--selection", "race1", "--dest", dest]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'note'" in err and "Traceback" not in err
    assert DeltaTable(dest).version() == version


def test_rows_another_writer_added_to_a_run_are_counted_and_refused(race_root, tmp_path, capsys) -> None:
    dest = str(tmp_path / "labels")
    ours = publish_labels(race_root, "race0", dest)
    write_deltalake(dest, read_labels(dest).slice(0, 200), mode="append")  # duplicate keys in our run
    assert main(["labels", "ls", "--dest", dest, "--json"]) == 0
    out, err = capsys.readouterr()
    assert [(r["run_id"], r["rows"]) for r in json.loads(out)] == [
        (ours["run_id"], 600)
    ] and "recorded 400" in err
    assert main(["labels", "show", "--dest", dest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lakelabel labels: error: labels: duplicate keys")


def test_a_table_overwritten_with_another_schema_is_one_line(race_root, tmp_path, capsys) -> None:
    dest = str(tmp_path / "labels")
    publish_labels(race_root, "race0", dest)
    other = pa.table({"run_id": ["a", "b"], "x": [1, 2]})
    write_deltalake(dest, other, mode="overwrite", schema_mode="overwrite", partition_by=["run_id"])
    for command in (["labels", "ls", "--dest", dest], ["labels", "show", "--dest", dest]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "lacks the contract's column(s)" in err and "'key'" in err
    assert main(["publish", str(race_root), "--selection", "race1", "--dest", dest]) == 2
    assert "lacks the contract's column(s)" in capsys.readouterr().err


def test_versions_that_do_not_exist_or_were_vacuumed_are_one_line(race_root, tmp_path, capsys) -> None:
    dest = str(tmp_path / "labels")
    records = [publish_labels(race_root, f"race{i}", dest) for i in range(3)]
    before = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    cases = {
        "99": "has no version 99 (its newest is 3)",
        "x1": "a table version is a number from 0, an ISO timestamp or a datetime",
        before: "did not exist at",
    }
    for version, message in cases.items():
        assert main(["labels", "show", "--dest", dest, "--version", version]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(LabelsNotFound, match="did not exist at"):
        read_labels(dest, version=datetime.now(UTC) - timedelta(days=1))
    vacuumed = vacuum_labels(dest, keep=1)
    assert vacuumed["files_deleted"] == 2
    assert vacuum_labels(dest, keep=1)["files_deleted"] == 0  # a second vacuum deletes nothing, says 0
    assert main(["labels", "show", "--dest", dest, "--version", str(records[0]["version"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "can no longer be read" in err and "vacuum" in err


def test_publish_checks_its_inputs_first(race_root, tmp_path, capsys) -> None:
    root = tmp_path / "root"
    copy_root(race_root, root)
    shutil.rmtree(root / "manifest")
    assert main(["publish", str(root), "--selection", "race0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no ingest manifest under" in err
    assert not (root / "labels").exists()
    assert main(["publish", str(race_root), "--selection", "nope", "--dest", str(tmp_path / "l")]) == 2
    assert "no committed selection run 'nope'" in capsys.readouterr().err


def test_a_table_an_older_lakelabel_wrote_still_reads_and_takes_new_runs(race_root, tmp_path) -> None:
    """A run written by an older lakelabel (created_at in ms, first run at version 0) still reads."""
    dest = str(tmp_path / "labels")
    published = publish_labels(race_root, "race0", str(tmp_path / "scratch"))
    rows = read_labels(str(tmp_path / "scratch"), published["run_id"])
    ms = pa.schema(
        [f.with_type(pa.timestamp("ms", tz="UTC")) if f.name == "created_at" else f for f in rows.schema]
    )
    old = rows.cast(ms, safe=False)
    record = {k: v for k, v in published.items() if k not in ("version", "committed_at", "skipped")}
    from deltalake import CommitProperties

    write_deltalake(
        dest,
        old,
        partition_by=["run_id"],
        description="lakelabel label table (data_specs/labels.md), schema version 1",
        commit_properties=CommitProperties(custom_metadata={"lakelabel": record}),
    )
    assert latest_run(dest) == published["run_id"] and read_labels(dest).num_rows == 400
    assert pd.Timestamp(read_labels(dest).column("created_at")[0].as_py()).unit in ("us", "ns")
    assert publish_labels(race_root, "race0", dest)["skipped"] is True  # same content: nothing added
    assert publish_labels(race_root, "race1", dest)["version"] == 1
