"""Selection run contract: ``ROOT/selections/<run>/`` written by ``lakelabel select``, read by publish
and the report. See ``selections.md``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.labels import LABELS_SCHEMA
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.validation import ContractError, check_table

SELECTIONS_SCHEMA_VERSION = "2"

#: ``selection.parquet``: one row per embedded image; the label table's columns of a run, plus the
#: class the last round predicted for every image (``predicted``, whatever its role)
SELECTION_SCHEMA = pa.schema(
    [
        LABELS_SCHEMA.field(name)
        for name in (
            "key",
            "shard",
            "label",
            "label_name",
            "role",
            "is_seed",
            "confidence",
            "uncertainty",
            "negative_labels",
        )
    ]
    + [pa.field("predicted", pa.int32(), nullable=False)],
    metadata={"lakelabel.contract": "selections", "lakelabel.schema_version": SELECTIONS_SCHEMA_VERSION},
)


def validate_selection(table: pa.Table) -> pa.Table:
    """Check a selection table (a part, or parts together) against the contract (columns, types,
    unique keys)."""
    table = check_table(table, SELECTION_SCHEMA, "selections")
    if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
        raise ContractError("selections: duplicate keys")
    return table


def selection_part_name(embedding_part: str | Path) -> str:
    """``sel-NNNNNN.parquet``: the selection part of embeddings part ``emb-NNNNNN.npy``."""
    return f"sel-{Path(embedding_part).stem.removeprefix('emb-')}.parquet"


def _commit(root: str | Path, run: str) -> dict | None:
    """The run's commit record (``selection.json``), None for a single-file run written before parts;
    fails naming the committed runs when the run is not committed."""
    layout = Layout(root)
    paths = layout.selections(run)
    if paths.commit.is_file():
        record = json.loads(paths.commit.read_text())
        if record.get("schema_version") != SELECTIONS_SCHEMA_VERSION or "parts" not in record:
            raise ContractError(
                f"selections: {str(paths.commit)!r} is not a version {SELECTIONS_SCHEMA_VERSION} commit"
            )
        return record
    if paths.selection.is_file():
        return None
    runs = sorted(p.name for p in layout.selections_dir.glob("*") if layout.selections(p.name).committed)
    raise FileNotFoundError(
        f"no committed selection run {run!r} under {str(layout.selections_dir)!r} "
        f"(committed runs: {', '.join(runs) or 'none'}); run `lakelabel select`"
    )


def iter_selection(
    root: str | Path, run: str = "default", columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """The committed selection of ``ROOT/selections/<run>`` part by part, in the embeddings' part order
    (each validated and of the rows its commit recorded; ``columns``: read only these, unvalidated).
    Memory: one part. An uncommitted run fails here, before the first part is read."""
    record = _commit(root, run)
    paths = Layout(root).selections(run)
    files = (
        [(paths.selection, None)] if record is None else [(paths.parts / n, r) for n, r in record["parts"]]
    )
    return _read_parts(files, columns)


def _read_parts(files: list[tuple[Path, int | None]], columns: list[str] | None) -> Iterator[pa.Table]:
    for path, rows in files:
        table = pq.read_table(path, columns=columns)
        if rows is not None and table.num_rows != rows:
            raise ContractError(
                f"selections: part {path.name!r} has {table.num_rows} rows, its commit says {rows}"
            )
        yield table if columns else validate_selection(table)


def read_selection(root: str | Path, run: str = "default") -> pd.DataFrame:
    """Every row of the committed selection run in one frame (keys unique across parts): for lakes that
    fit in memory; :func:`iter_selection` streams."""
    tables = list(iter_selection(root, run))
    return validate_selection(pa.concat_tables(tables)).to_pandas()


@dataclass(frozen=True)
class SelectionInfo:
    """The facts of a selection run's ``summary.json`` other stages use."""

    method: str  # the selection rule
    thresholds: dict[str, Any]  # the rule's thresholds, as published with every label row
    encoder_sha256: str  # of the encoder behind the embeddings
    embeddings: Path  # the embeddings directory it selected on
    cluster_run: str  # the cluster run it learned from (labels_from=clusters) or named
    config: dict[str, Any]  # the whole select config
    seconds: float | None  # its wall time


def read_selection_summary(root: str | Path, run: str = "default") -> dict[str, Any]:
    """The whole ``summary.json`` of a selection run (rounds, metrics, warnings: what a report shows)."""
    path = Layout(root).selections(run).summary
    if not path.is_file():
        raise FileNotFoundError(f"no selection run {run!r}: {str(path)!r} is missing; run `lakelabel select`")
    return json.loads(path.read_text())


def read_selection_info(root: str | Path, run: str = "default") -> SelectionInfo:
    """:class:`SelectionInfo` of ``ROOT/selections/<run>`` (a committed run)."""
    path = Layout(root).selections(run).summary
    summary = read_selection_summary(root, run)
    try:
        return SelectionInfo(
            method=summary["method"],
            thresholds=summary["thresholds"],
            encoder_sha256=summary["encoder_sha256"],
            embeddings=Path(summary["embeddings"]),
            cluster_run=summary["config"]["cluster_run"],
            config=summary["config"],
            seconds=summary.get("seconds"),
        )
    except KeyError as missing:
        raise ContractError(f"selections: {str(path)!r} lacks {missing}") from None
