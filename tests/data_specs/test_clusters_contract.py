"""The cluster assignments contract (data_specs/clusters.py): per-part files committed by
assignments.json, read whole or part by part; runs of the single-file layout still read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakelabel.data_specs.clusters import (
    CLUSTERS_SCHEMA_VERSION,
    assignment_part_name,
    assignments_schema,
    iter_assignments,
    read_assignments,
)
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.validation import ContractError

SCHEMA = assignments_schema([("kmeans", "label", "kmeans"), ("kmeans_similarity", "score", "kmeans")])


def _part(start: int, rows: int, k: int = 3) -> pa.Table:
    keys = [f"{i:032x}" for i in range(start, start + rows)]
    data = {"key": keys, "shard": [f"shard-{start:06d}.tar"] * rows}
    data |= {"kmeans": [i % k for i in range(rows)], "kmeans_similarity": [0.5] * rows}
    return pa.table(data, schema=SCHEMA)


def _commit(root: Path, run: str, parts: list[pa.Table], k: int = 3) -> Path:
    paths = Layout(root).clusters(run)
    paths.parts.mkdir(parents=True)
    names = []
    for i, table in enumerate(parts):
        name = assignment_part_name(f"emb-{i:06d}.npy")
        pq.write_table(table, paths.parts / name)
        names.append([name, table.num_rows])
    paths.commit.write_text(json.dumps({"schema_version": CLUSTERS_SCHEMA_VERSION, "k": k, "parts": names}))
    return paths.dir


def test_parts_read_whole_and_one_by_one(tmp_path: Path) -> None:
    _commit(tmp_path, "default", [_part(0, 4), _part(4, 3)])
    assert [t.num_rows for t in iter_assignments(tmp_path)] == [4, 3]
    table = read_assignments(tmp_path)
    assert table.num_rows == 7 and table.column("kmeans").to_pylist() == [0, 1, 2, 0, 0, 1, 2]


def test_an_uncommitted_run_and_a_short_part_are_refused(tmp_path: Path) -> None:
    folder = _commit(tmp_path, "r", [_part(0, 4)])
    (folder / "assignments.json").unlink()  # parts without their commit: a run that was killed
    with pytest.raises(FileNotFoundError, match="no committed cluster run 'r'"):
        read_assignments(tmp_path, "r")
    _commit(tmp_path, "short", [_part(0, 4)])
    record = json.loads((Layout(tmp_path).clusters("short").commit).read_text())
    record["parts"][0][1] = 5
    Layout(tmp_path).clusters("short").commit.write_text(json.dumps(record))
    with pytest.raises(ContractError, match="has 4 rows, its commit says 5"):
        read_assignments(tmp_path, "short")
    _commit(tmp_path, "twice", [_part(0, 2), _part(0, 2)])
    with pytest.raises(ContractError, match="duplicate keys"):  # the same keys in two parts
        read_assignments(tmp_path, "twice")


def test_a_single_file_run_of_schema_2_still_reads(tmp_path: Path) -> None:
    paths = Layout(tmp_path).clusters("old")
    paths.dir.mkdir(parents=True)
    old = _part(0, 5)
    old = old.replace_schema_metadata({**old.schema.metadata, b"lakelabel.schema_version": b"2"})
    pq.write_table(old, paths.assignments)
    assert paths.committed
    assert read_assignments(tmp_path, "old").column("key").to_pylist() == old.column("key").to_pylist()
    assert [t.num_rows for t in iter_assignments(tmp_path, "old")] == [5]
