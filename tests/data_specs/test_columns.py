"""arrow_array: the arrays pa.array gives, without importing pandas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakelabel.data_specs.columns import (
    arrow_array,
    fixed_width_strings,
    integers,
    repeated_string,
    string_in,
    strings_by_code,
    valid_rows,
)


@pytest.mark.parametrize(
    ("values", "type"),
    [
        (["a", None, "ünïcødé 图像", "", "emoji 🚗"], pa.string()),
        (["x"] * 3, pa.string()),
        (["ünïcødé 图像", "plain", "emoji 🚗"], pa.string()),  # no null, not ASCII
        ([7, 8, 9], pa.int64()),
        ([], pa.string()),
        ([1, None, -(2**31), 2**31 - 1], pa.int32()),
        ([2**40, 0, None], pa.int64()),
        ([True, False, None, True], pa.bool_()),
        ([None, None], pa.int16()),
        ([None] * 3, pa.string()),  # one value throughout: built without per-row work
        (["é"] * 2, pa.string()),
        ([False] * 4, pa.bool_()),
        ([True] * 9, pa.bool_()),
        ([None] * 2, pa.bool_()),
        ([5] * 3, pa.int32()),
    ],
)
def test_equals_pa_array(values, type):
    built = arrow_array(values, type)
    assert built.equals(pa.array(values, type)) and built.type == type
    built.validate(full=True)
    assert built.null_count == sum(v is None for v in values)


def test_bad_values_and_types_fail_clearly():
    with pytest.raises(TypeError, match="not double"):
        arrow_array([1.0], pa.float64())
    with pytest.raises(OverflowError):
        arrow_array([2**40], pa.int32())
    with pytest.raises(UnicodeEncodeError):
        arrow_array(["bad \udcff surrogate"], pa.string())


def test_packed_column_builders_equal_pa_array():
    valid = np.array([True, False, True])
    assert fixed_width_strings(b"ab\0\0cd", 2, valid).equals(pa.array(["ab", None, "cd"]))
    assert integers(np.array([3, -1, 5]), pa.int32()).equals(pa.array([3, None, 5], pa.int32()))
    assert integers(np.array([7, 8]), pa.int64()).equals(pa.array([7, 8], pa.int64()))
    assert strings_by_code(["x", "y"], np.array([1, -1, 0])).equals(pa.array(["y", None, "x"]))
    with pytest.raises(ValueError, match="5 bytes of data for 3 strings of 2 bytes"):
        fixed_width_strings(b"abcde", 2, valid)
    with pytest.raises(TypeError, match="not double"):
        integers(np.array([1.0]), pa.float64())
    assert integers(np.array([-1, 2]), pa.int64(), null=None).equals(pa.array([-1, 2], pa.int64()))
    assert repeated_string("ingest-ü", 3).equals(pa.array(["ingest-ü"] * 3))
    names = ["sharded", "", "dupé"]
    codes = np.array([2, 0, -1, 1, 2, -1])
    assert strings_by_code(names, codes).equals(pa.array(["dupé", "sharded", None, "", "dupé", None]))
    assert strings_by_code(names, np.array([], dtype=np.int64)).equals(pa.array([], pa.string()))


def test_string_in_and_valid_rows_agree_with_pyarrow_compute():
    import pyarrow.compute as pc

    values = ["sharded", None, "duplicate", "", "rejected", "shardeD", "sharded", None, "dupé"]
    chunked = pa.chunked_array([pa.array(values[:4]), pa.array(values[4:])])
    for column in (pa.array(values), pa.array(values).slice(3, 5), chunked, chunked.slice(2, 6)):
        for wanted in (["sharded", "duplicate"], ["", "dupé"], []):
            expected = pc.fill_null(pc.is_in(column, pa.array(wanted, pa.string())), False)
            assert string_in(column, wanted).tolist() == expected.to_pylist()
        assert valid_rows(column).tolist() == pc.is_valid(column).to_pylist()
    assert valid_rows(pa.nulls(3)).tolist() == [False] * 3
    with pytest.raises(TypeError, match="not int64"):
        string_in(pa.array([1, 2]), ["1"])


def test_a_manifest_part_is_written_without_importing_pandas_or_pyarrow_compute(tmp_path):
    """pa.array would import pandas (~0.3 s of CPU per ingest run), and pyarrow.compute costs
    ~27 ms to import; building, checking and writing a manifest part needs neither."""
    code = f"""
import sys
from array import array
from datetime import datetime, timezone
import pyarrow.parquet as pq
from lakelabel.pipeline.ingest.rows import _UnitRows, _write_part, SHARDED, REJECTED
from lakelabel.pipeline.ingest.worker import BatchResult
batch = BatchResult(
    hexes=b"ab" * 32 + b"cd" * 32, numbers=array("q", [4, 3, 10, 0, 9, -1, -1, 5, 9, 9]).tobytes(),
    reasons=[None, "truncated"], formats=["JPEG", "PNG"], reencoded=[False, None], blob=b"",
    uris=["file:///a.jpg", "file:///b.png"])
rows = _UnitRows()
rows.add_rows(batch, 0, 2, bytes([SHARDED, REJECTED]), array("i", [0, -1]).tobytes())
rows.add_skip("file:///.hidden", "hidden")
table = rows.table("ingest-x", datetime(2026, 11, 24, tzinfo=timezone.utc))
with open({str(tmp_path / "part.parquet")!r}, "wb") as f:
    _write_part(table, f)
print("pandas" in sys.modules, "pyarrow.compute" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False False"
    table = pq.read_table(tmp_path / "part.parquet")
    assert table.column("status").to_pylist() == ["sharded", "rejected", "skipped"]
    assert table.column("key").to_pylist() == ["ab" * 16, None, None]
    assert table.column("sha256").to_pylist() == ["ab" * 32, "cd" * 32, None]
    assert table.column("shard").to_pylist() == ["shard-000000.tar", None, None]
    assert table.column("width").to_pylist() == [4, None, None]
    assert table.column("bytes").to_pylist() == [10, 5, None]
    assert table.column("reason").to_pylist() == [None, "truncated", "hidden"]
    assert table.column("format").to_pylist() == ["JPEG", "PNG", None]
    assert table.column("source_uri").to_pylist() == ["file:///a.jpg", "file:///b.png", "file:///.hidden"]
    assert table.column("ingested_at")[0].as_py().isoformat() == "2026-11-24T00:00:00+00:00"
