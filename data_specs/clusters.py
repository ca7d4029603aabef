"""Cluster assignments contract: ``ROOT/clusters/<run>/assignments.parquet``. See ``clusters.md``."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from data_specs.validation import ContractError, check_table

CLUSTERS_SCHEMA_VERSION = "1"


def head_columns(heads: int) -> list[str]:
    return [f"head_{t}" for t in range(heads)]


def assignments_schema(heads: int, scan: bool = False) -> pa.Schema:
    """key, shard, k-means and Sinkhorn labels of the centroid scores, per head its cluster and
    posterior, then (with ``scan``) the SCAN cluster and its confidence."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("kmeans", pa.int32(), nullable=False),
        pa.field("kmeans_similarity", pa.float32(), nullable=False),
        pa.field("sinkhorn", pa.int32(), nullable=False),
    ]
    for t in range(heads):
        fields.append(pa.field(f"head_{t}", pa.int32(), nullable=False))
        fields.append(pa.field(f"posterior_{t}", pa.float32(), nullable=False))
    if scan:
        fields.append(pa.field("scan", pa.int32(), nullable=False))
        fields.append(pa.field("scan_confidence", pa.float32(), nullable=False))
    return pa.schema(
        fields,
        metadata={
            "lakelabel.contract": "clusters",
            "lakelabel.schema_version": CLUSTERS_SCHEMA_VERSION,
            "lakelabel.heads": str(heads),
        },
    )


def heads_in(table: pa.Table) -> int:
    return sum(1 for name in table.column_names if name.startswith("head_"))


def label_columns(table: pa.Table) -> list[str]:
    """The cluster-label columns of an assignments table: kmeans, sinkhorn, head_<t>, [scan]."""
    heads = head_columns(heads_in(table))
    return ["kmeans", "sinkhorn", *heads] + (["scan"] if "scan" in table.column_names else [])


def validate_assignments(table: pa.Table, k: int | None = None) -> pa.Table:
    """Check an assignments table; ``k`` bounds every label column when given."""
    heads = heads_in(table)
    table = check_table(table, assignments_schema(heads, "scan" in table.column_names), "clusters")
    if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
        raise ContractError("clusters: duplicate keys")
    if k is not None:
        for name in label_columns(table):
            col = table.column(name)
            if table.num_rows and (pc.min(col).as_py() < 0 or pc.max(col).as_py() >= k):
                raise ContractError(f"clusters: column {name!r} has labels outside [0, {k})")
    return table
