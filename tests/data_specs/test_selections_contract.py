"""The selections contract (data_specs/selections.py): per-part files committed by selection.json,
read whole or part by part; runs of the single-file layout still read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.selections import (
    SELECTION_SCHEMA,
    SELECTIONS_SCHEMA_VERSION,
    iter_selection,
    read_selection,
    selection_part_name,
)
from lakelabel.data_specs.validation import ContractError


def _part(start: int, rows: int) -> pa.Table:
    data = {
        "key": [f"{i:032x}" for i in range(start, start + rows)],
        "shard": [f"shard-{start:06d}.tar"] * rows,
        "label": [i % 3 if i % 2 else None for i in range(rows)],
        "label_name": [f"c{i % 3}" if i % 2 else None for i in range(rows)],
        "role": ["positive" if i % 2 else "unlabeled" for i in range(rows)],
        "is_seed": [False] * rows,
        "confidence": [0.9] * rows,
        "uncertainty": [0.01] * rows,
        "negative_labels": [[] for _ in range(rows)],
        "predicted": [i % 3 for i in range(rows)],
    }
    return pa.table(data, schema=SELECTION_SCHEMA)


def _commit(root: Path, run: str, parts: list[pa.Table]) -> Path:
    paths = Layout(root).selections(run)
    paths.parts.mkdir(parents=True)
    names = []
    for i, table in enumerate(parts):
        name = selection_part_name(f"emb-{i:06d}.npy")
        pq.write_table(table, paths.parts / name)
        names.append([name, table.num_rows])
    paths.commit.write_text(json.dumps({"schema_version": SELECTIONS_SCHEMA_VERSION, "parts": names}))
    return paths.dir


def test_parts_read_whole_and_one_by_one(tmp_path: Path) -> None:
    _commit(tmp_path, "default", [_part(0, 4), _part(4, 3)])
    assert [t.num_rows for t in iter_selection(tmp_path)] == [4, 3]
    assert [t.column_names for t in iter_selection(tmp_path, columns=["key", "role"])][0] == ["key", "role"]
    table = read_selection(tmp_path)
    assert len(table) == 7 and table.predicted.tolist() == [0, 1, 2, 0, 0, 1, 2]
    assert selection_part_name("/x/emb-000042.npy") == "sel-000042.parquet"


def test_an_uncommitted_run_a_short_part_and_keys_in_two_parts_are_refused(tmp_path: Path) -> None:
    folder = _commit(tmp_path, "r", [_part(0, 4)])
    (folder / "selection.json").unlink()  # parts without their commit: a run that was killed
    with pytest.raises(FileNotFoundError, match="no committed selection run 'r'"):
        iter_selection(tmp_path, "r")  # (at once, before any part is read)
    _commit(tmp_path, "short", [_part(0, 4)])
    paths = Layout(tmp_path).selections("short")
    record = json.loads(paths.commit.read_text())
    record["parts"][0][1] = 5
    paths.commit.write_text(json.dumps(record))
    with pytest.raises(ContractError, match="has 4 rows, its commit says 5"):
        read_selection(tmp_path, "short")
    _commit(tmp_path, "twice", [_part(0, 2), _part(0, 2)])
    with pytest.raises(ContractError, match="duplicate keys"):
        read_selection(tmp_path, "twice")
    bad = _part(0, 2).drop_columns(["predicted"])
    _commit(tmp_path, "bad", [bad])
    with pytest.raises(ContractError, match=r"missing column\(s\) \['predicted'\]"):
        read_selection(tmp_path, "bad")


def test_a_single_file_run_of_schema_1_still_reads(tmp_path: Path) -> None:
    paths = Layout(tmp_path).selections("old")
    paths.dir.mkdir(parents=True)
    pq.write_table(_part(0, 5), paths.selection)
    assert paths.committed
    assert read_selection(tmp_path, "old").key.tolist() == _part(0, 5).column("key").to_pylist()
    assert [t.num_rows for t in iter_selection(tmp_path, "old")] == [5]
