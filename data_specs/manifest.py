"""Ingest manifest contract: one row per file found under the lake source.

See ``data_specs/manifest.md`` for the human-readable version of this contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lakelabel.data_specs.columns import string_in, valid_rows
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.validation import ContractError, check_table

MANIFEST_SCHEMA_VERSION = "1"

#: Every file found under SRC gets exactly one of these statuses.
STATUSES: tuple[str, ...] = ("sharded", "duplicate", "rejected", "skipped")

#: Reasons a file is ``rejected`` (it was read but is not a usable image).
REJECT_REASONS: tuple[str, ...] = (
    "empty",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "decompression_bomb",
    "decode_error",
    "read_error",
)

#: Reasons a file is ``skipped`` (found, deliberately not read).
SKIP_REASONS: tuple[str, ...] = (
    "hidden",
    "hidden_directory",
    "symlink_outside_source",
    "symlink_loop",
    "broken_symlink",
    "not_a_regular_file",
)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("format", pa.string()),
        pa.field("reencoded", pa.bool_()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ],
    metadata={"lakelabel.contract": "manifest", "lakelabel.schema_version": MANIFEST_SCHEMA_VERSION},
)


def validate_manifest(table: pa.Table) -> pa.Table:
    """Check a manifest table against the contract; return it cast to the exact schema.

    Raises ``ContractError`` naming the first offending column or value.
    """
    table = check_table(table, MANIFEST_SCHEMA, "manifest")
    status = table.column("status")
    bad = np.flatnonzero(~string_in(status, STATUSES))
    if len(bad):
        raise ContractError(
            f"manifest: unknown status {status[int(bad[0])].as_py()!r}; valid: {', '.join(STATUSES)}"
        )
    kept = string_in(status, ["sharded", "duplicate"])
    has_ids = (
        valid_rows(table.column("key"))
        & valid_rows(table.column("shard"))
        & valid_rows(table.column("sha256"))
    )
    bad = np.flatnonzero(kept & ~has_ids)
    if len(bad):
        i = int(bad[0])
        raise ContractError(f"manifest row {i}: status {status[i].as_py()!r} needs key, shard and sha256")
    bad = np.flatnonzero(~kept & ~valid_rows(table.column("reason")))
    if len(bad):
        i = int(bad[0])
        raise ContractError(f"manifest row {i}: status {status[i].as_py()!r} needs a reason")
    return table


def read_manifest(root: str | Path) -> pa.Table:
    """The whole manifest of ROOT (every committed unit; rejected and duplicate files included,
    with their reasons), validated against this contract."""
    import pyarrow.parquet as pq

    return validate_manifest(pq.read_table(Layout(root).manifest, schema=MANIFEST_SCHEMA))
