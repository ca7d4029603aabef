"""Cluster assignments contract: ``ROOT/clusters/<run>/parts/asg-NNNNNN.parquet``, one per embeddings
part, committed by ``assignments.json``. See ``clusters.md``.

Each clustering method (``pipeline/clustering/``) declares the columns it writes: cluster labels (int32,
in [0, K)) and per-image scores (float32); each column's field metadata names its method.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.validation import ContractError, check_table

#: 3: per-part files committed by ``assignments.json`` (2: one ``assignments.parquet``, still read)
CLUSTERS_SCHEMA_VERSION = "3"

#: a method's column kinds: a cluster label in [0, K) per image, or a per-image score of it
COLUMN_TYPES: dict[str, pa.DataType] = {"label": pa.int32(), "score": pa.float32()}
#: field metadata key naming the method that wrote a column
METHOD_KEY = b"lakelabel.method"


def assignments_schema(columns: list[tuple[str, str, str]]) -> pa.Schema:
    """key, shard, then each ``(column, kind, method)`` in order (kind: ``label`` | ``score``; each
    clustering method declares its own, ``pipeline/clustering``)."""
    fields = [pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)]
    methods: list[str] = []
    for name, kind, method in columns:
        if kind not in COLUMN_TYPES:
            raise ContractError(
                f"clusters: column {name!r} of {method!r} has kind {kind!r}; valid: label, score"
            )
        fields.append(
            pa.field(name, COLUMN_TYPES[kind], nullable=False, metadata={METHOD_KEY: method.encode()})
        )
        methods += [] if method in methods else [method]
    return pa.schema(
        fields,
        metadata={
            "lakelabel.contract": "clusters",
            "lakelabel.schema_version": CLUSTERS_SCHEMA_VERSION,
            "lakelabel.methods": ",".join(methods),
            "lakelabel.columns": json.dumps([list(c) for c in columns]),  # what the methods declared
        },
    )


def _table_columns(table: pa.Table) -> list[tuple[str, str, str]]:
    """``(column, kind, method)`` of an assignments table: as its methods declared them (the schema
    metadata; a table that lost a column still declares it), else from its fields (a column without
    the method metadata, written before it existed, counts as its own method)."""
    declared = (table.schema.metadata or {}).get(b"lakelabel.columns")
    if declared:
        return [(name, kind, method) for name, kind, method in json.loads(declared)]
    out = []
    for field in table.schema:
        if field.name in ("key", "shard"):
            continue
        kind = next((k for k, t in COLUMN_TYPES.items() if field.type == t), None)
        if kind is None:
            raise ContractError(
                f"clusters: column {field.name!r} has type {field.type}; expected int32 or float32"
            )
        method = (field.metadata or {}).get(METHOD_KEY, field.name.encode()).decode()
        out.append((field.name, kind, method))
    return out


def methods_in(table: pa.Table) -> list[str]:
    """The methods whose columns the table holds, in the order they ran."""
    return list(dict.fromkeys(method for _, _, method in _table_columns(table)))


def label_columns(table: pa.Table, method: str | None = None) -> list[str]:
    """The cluster-label columns of an assignments table (of ``method`` only, when given), in order."""
    return [n for n, kind, m in _table_columns(table) if kind == "label" and method in (None, m)]


def head_columns(table: pa.Table) -> list[str]:
    """The label columns of a method with several heads, ``head_<t>`` in head order (the label table's
    ``cluster_heads``)."""
    return sorted(
        (n for n in label_columns(table) if n.startswith("head_") and n[5:].isdigit()),
        key=lambda n: int(n[5:]),
    )


def validate_assignments(table: pa.Table, k: int | None = None) -> pa.Table:
    """Check an assignments table; ``k`` bounds every label column when given."""
    columns = _table_columns(table)
    if not any(kind == "label" for _, kind, _ in columns):
        raise ContractError("clusters: no cluster-label (int32) column")
    table = check_table(table, assignments_schema(columns), "clusters")
    if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
        raise ContractError("clusters: duplicate keys")
    if k is not None:
        for name in label_columns(table):
            col = table.column(name)
            if table.num_rows and (pc.min(col).as_py() < 0 or pc.max(col).as_py() >= k):
                raise ContractError(f"clusters: column {name!r} has labels outside [0, {k})")
    return table


def assignment_part_name(embedding_part: str | Path) -> str:
    """``asg-NNNNNN.parquet``: the assignments part of embeddings part ``emb-NNNNNN.npy``."""
    return f"asg-{Path(embedding_part).stem.removeprefix('emb-')}.parquet"


def _commit(root: str | Path, run: str) -> dict | None:
    """The run's commit record (``assignments.json``), None for a legacy single-file run; fails
    naming the committed runs when the run is not committed."""
    layout = Layout(root)
    paths = layout.clusters(run)
    if paths.commit.is_file():
        record = json.loads(paths.commit.read_text())
        if record.get("schema_version") != CLUSTERS_SCHEMA_VERSION or "parts" not in record:
            raise ContractError(
                f"clusters: {str(paths.commit)!r} is not a version {CLUSTERS_SCHEMA_VERSION} commit"
            )
        return record
    if paths.assignments.is_file():
        return None
    runs = sorted(p.name for p in layout.clusters_dir.glob("*") if layout.clusters(p.name).committed)
    raise FileNotFoundError(
        f"no committed cluster run {run!r} under {str(layout.clusters_dir)!r} "
        f"(committed runs: {', '.join(runs) or 'none'}); run `lakelabel cluster` first"
    )


def iter_assignments(root: str | Path, run: str = "default") -> Iterator[pa.Table]:
    """The committed assignments of ``ROOT/clusters/<run>`` part by part (each validated: labels in
    [0, K), the rows the commit recorded), in the embeddings' part order. Memory: one part."""
    record = _commit(root, run)
    if record is None:
        yield validate_assignments(pq.read_table(Layout(root).clusters(run).assignments))
        return
    parts = Layout(root).clusters(run).parts
    for name, rows in record["parts"]:
        table = validate_assignments(pq.read_table(parts / name), record["k"])
        if table.num_rows != rows:
            raise ContractError(f"clusters: part {name!r} has {table.num_rows} rows, its commit says {rows}")
        yield table


def read_assignments(root: str | Path, run: str = "default") -> pa.Table:
    """Every committed assignment of ``ROOT/clusters/<run>`` in one table (validated; keys unique
    across parts): for lakes that fit in memory; :func:`iter_assignments` streams."""
    tables = list(iter_assignments(root, run))
    return validate_assignments(pa.concat_tables(tables) if len(tables) > 1 else tables[0])


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
