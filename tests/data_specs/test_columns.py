"""arrow_array: the arrays pa.array gives, without importing pandas."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_specs.columns import arrow_array


@pytest.mark.parametrize(
    ("values", "type"),
    [
        (["a", None, "ünïcødé 图像", "", "emoji 🚗"], pa.string()),
        (["x"] * 3, pa.string()),
        ([], pa.string()),
        ([1, None, -(2**31), 2**31 - 1], pa.int32()),
        ([2**40, 0, None], pa.int64()),
        ([True, False, None, True], pa.bool_()),
        ([None, None], pa.int16()),
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


def test_a_manifest_part_is_written_without_importing_pandas(tmp_path):
    """pa.array would import pandas (~0.3 s of CPU per ingest run); the manifest path must not."""
    code = f"""
import sys
from datetime import datetime, timezone
import pyarrow.parquet as pq
from pipeline.ingest import _UnitRows, _ROW_COLUMNS
rows = _UnitRows()
chunk = {{name: [None, None] for name in _ROW_COLUMNS}}
chunk.update(source_uri=["file:///a.jpg", "file:///b.png"], status=["sharded", "rejected"],
             reason=[None, "truncated"], key=["ab" * 16, None], shard=["shard-000000.tar", None],
             sha256=["ab" * 32, "cd" * 32], width=[4, None], height=[3, None], bytes=[10, 5],
             format=["JPEG", "PNG"], reencoded=[False, None])
rows.add_chunk(chunk)
table = rows.table("ingest-x", datetime(2026, 11, 24, tzinfo=timezone.utc))
pq.write_table(table, {str(tmp_path / "part.parquet")!r})
print("pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    table = pq.read_table(tmp_path / "part.parquet")
    assert table.column("status").to_pylist() == ["sharded", "rejected"]
    assert table.column("ingested_at")[0].as_py().isoformat() == "2026-11-24T00:00:00+00:00"
