from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from lakelabel.data_specs import (
    MANIFEST_SCHEMA,
    ContractError,
    key_for_sha256,
    shard_index,
    shard_name,
    validate_manifest,
)
from lakelabel.data_specs.shards import SAMPLE_JSON_FIELDS, validate_sample_json


def _row(**over):
    row = dict(
        source_uri="file:///a.jpg",
        status="sharded",
        reason=None,
        key="a" * 32,
        shard="shard-000000.tar",
        width=1,
        height=1,
        bytes=3,
        sha256="a" * 64,
        format="JPEG",
        reencoded=False,
        run_id="r",
        ingested_at=datetime.now(timezone.utc),
    )
    row.update(over)
    return pa.Table.from_pylist([row], schema=MANIFEST_SCHEMA)


def test_valid_manifest_passes_and_bad_rows_are_named():
    assert validate_manifest(_row()).num_rows == 1
    with pytest.raises(ContractError, match="unknown status 'lost'"):
        validate_manifest(_row(status="lost"))
    with pytest.raises(ContractError, match="needs key, shard and sha256"):
        validate_manifest(_row(key=None))
    with pytest.raises(ContractError, match="needs a reason"):
        validate_manifest(_row(status="rejected", key=None, shard=None))
    with pytest.raises(ContractError, match="unexpected column"):
        validate_manifest(_row().append_column("extra", pa.array([1])))


def test_shard_names_and_keys():
    assert shard_name(42) == "shard-000042.tar" and shard_index("shard-000042.tar") == 42
    with pytest.raises(ContractError):
        shard_index("shard-42.tar.gz")
    sha = "0123456789abcdef" * 4
    assert key_for_sha256(sha) == sha[:32] and "." not in key_for_sha256(sha)
    meta = dict.fromkeys(SAMPLE_JSON_FIELDS, 0)
    with pytest.raises(ContractError, match="does not match sha256"):
        validate_sample_json({**meta, "key": "f" * 32, "sha256": sha})
