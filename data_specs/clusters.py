"""Cluster assignments contract: ``ROOT/clusters/<run>/assignments.parquet``. See ``clusters.md``.

Each clustering method (``pipeline/clustering/``) writes the columns named here for it, in this order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.validation import ContractError, check_table

CLUSTERS_SCHEMA_VERSION = "2"

#: method → its (column, type) pairs; the first column of each is a cluster label in [0, K).
#: SeLa writes one pair per head: ``head_<t>`` (label) and ``posterior_<t>``.
METHOD_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "kmeans": [("kmeans", pa.int32()), ("kmeans_similarity", pa.float32())],
    "sinkhorn": [("sinkhorn", pa.int32())],
    "sela": [("head_{t}", pa.int32()), ("posterior_{t}", pa.float32())],
    "scan": [("scan", pa.int32()), ("scan_confidence", pa.float32())],
}


def method_fields(method: str, heads: int = 1) -> list[pa.Field]:
    """The columns ``method`` writes (``heads``: SeLa's T)."""
    if method not in METHOD_COLUMNS:
        raise ContractError(f"clusters: unknown method {method!r}; known: {', '.join(METHOD_COLUMNS)}")
    spec = METHOD_COLUMNS[method]
    rows = [(n.format(t=t), ty) for t in range(heads) for n, ty in spec] if method == "sela" else spec
    return [pa.field(name, ty, nullable=False) for name, ty in rows]


def head_columns(heads: int) -> list[str]:
    return [f"head_{t}" for t in range(heads)]


def assignments_schema(methods: list[str], heads: int = 0) -> pa.Schema:
    """key, shard, then each method's columns in ``methods`` order (SeLa with ``heads`` heads)."""
    fields = [pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)]
    for method in methods:
        fields += method_fields(method, heads)
    return pa.schema(
        fields,
        metadata={
            "lakelabel.contract": "clusters",
            "lakelabel.schema_version": CLUSTERS_SCHEMA_VERSION,
            "lakelabel.methods": ",".join(methods),
            "lakelabel.heads": str(heads),
        },
    )


def heads_in(table: pa.Table) -> int:
    return sum(1 for name in table.column_names if name.startswith("head_"))


def methods_in(table: pa.Table) -> list[str]:
    """The methods whose label column the table holds, in the table's column order."""
    first = {"head_0" if m == "sela" else METHOD_COLUMNS[m][0][0]: m for m in METHOD_COLUMNS}
    return [first[name] for name in table.column_names if name in first]


def label_columns(table: pa.Table) -> list[str]:
    """The cluster-label columns of an assignments table (kmeans, sinkhorn, head_<t>, scan, as present)."""
    return [
        f.name for m in methods_in(table) for f in method_fields(m, heads_in(table)) if f.type == pa.int32()
    ]


def validate_assignments(table: pa.Table, k: int | None = None) -> pa.Table:
    """Check an assignments table; ``k`` bounds every label column when given."""
    methods = methods_in(table)
    if not methods:
        raise ContractError("clusters: no cluster-label column (kmeans, sinkhorn, head_0 or scan)")
    table = check_table(table, assignments_schema(methods, heads_in(table)), "clusters")
    if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
        raise ContractError("clusters: duplicate keys")
    if k is not None:
        for name in label_columns(table):
            col = table.column(name)
            if table.num_rows and (pc.min(col).as_py() < 0 or pc.max(col).as_py() >= k):
                raise ContractError(f"clusters: column {name!r} has labels outside [0, {k})")
    return table


def read_assignments(root: str | Path, run: str = "default") -> pa.Table:
    """The committed assignments of ``ROOT/clusters/<run>`` (validated)."""
    layout = Layout(root)
    path = layout.clusters(run).assignments
    if not path.exists():
        runs = sorted(p.parent.name for p in layout.clusters_dir.glob("*/assignments.parquet"))
        raise FileNotFoundError(
            f"no committed cluster run {run!r} under {str(layout.clusters_dir)!r} "
            f"(committed runs: {', '.join(runs) or 'none'}); run `lakelabel cluster` first"
        )
    return validate_assignments(pq.read_table(path))


@dataclass(frozen=True)
class ClusterRunInfo:
    """The facts of a cluster run's ``summary.json`` other stages use."""

    k: int  # clusters per label column: select's classes
    embeddings: Path  # the embeddings directory it clustered
    encoder: str
    encoder_sha256: str
    methods: list[str]
    seconds: float  # the methods' wall time


def read_cluster_info(root: str | Path, run: str = "default") -> ClusterRunInfo:
    """:class:`ClusterRunInfo` of ``ROOT/clusters/<run>``."""
    path = Layout(root).clusters(run).summary
    if not path.is_file():
        raise FileNotFoundError(
            f"no cluster run {run!r} under {str(path.parent.parent)!r}; run `lakelabel cluster`"
        )
    summary = json.loads(path.read_text())
    try:
        timings = summary.get("timings", {})
        return ClusterRunInfo(
            k=int(summary["k"]),
            embeddings=Path(summary["embeddings"]),
            encoder=summary["encoder"],
            encoder_sha256=summary["encoder_sha256"],
            methods=list(summary["methods"]),
            seconds=round(sum(v for v in timings.values() if isinstance(v, int | float)), 2),
        )
    except KeyError as missing:
        raise ContractError(f"clusters: {str(path)!r} lacks {missing}") from None
