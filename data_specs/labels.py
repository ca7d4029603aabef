"""Label table contract: the product's output, ``<labels>/run_id=<RUN>/part-00000.parquet``. See ``labels.md``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from data_specs.shards import KEY_RE
from data_specs.validation import ContractError, check_table

LABELS_SCHEMA_VERSION = "1"
ROLES: tuple[str, ...] = ("positive", "negative_only", "review", "unlabeled")

LABELS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("role", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("uncertainty", pa.float32(), nullable=False),
        pa.field("negative_labels", pa.list_(pa.int32()), nullable=False),
        pa.field("cluster_heads", pa.list_(pa.int32()), nullable=False),
        pa.field("is_seed", pa.bool_(), nullable=False),
        pa.field("selection_method", pa.string(), nullable=False),
        pa.field("thresholds", pa.string(), nullable=False),
        pa.field("encoder_sha256", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ],
    metadata={"lakelabel.contract": "labels", "lakelabel.schema_version": LABELS_SCHEMA_VERSION},
)


def validate_labels(table: pa.Table) -> pa.Table:
    """Check a label table: schema, unique keys, known roles, labels exactly on positive rows."""
    table = check_table(table, LABELS_SCHEMA, "labels")
    role = table.column("role")
    bad = pc.unique(pc.filter(role, pc.invert(pc.is_in(role, pa.array(ROLES)))))
    if len(bad):
        raise ContractError(f"labels: unknown role {bad[0].as_py()!r}; valid: {', '.join(ROLES)}")
    if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
        raise ContractError("labels: duplicate keys")
    positive = pc.equal(role, "positive")
    has_label = pc.is_valid(table.column("label"))
    mismatch = pc.indices_nonzero(pc.not_equal(positive, has_label))
    if len(mismatch):
        i = mismatch[0].as_py()
        raise ContractError(
            f"labels row {i}: role {role[i].as_py()!r} but label {table.column('label')[i].as_py()!r}"
        )
    for key in table.column("key").to_pylist()[:1000]:
        if not KEY_RE.match(key):
            raise ContractError(f"labels: key {key!r} is not 32 lowercase hex characters")
    if len(pc.unique(table.column("run_id"))) > 1:
        raise ContractError("labels: one run per table")
    return table
