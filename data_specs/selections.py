"""Selection run contract: ``ROOT/selections/<run>/`` written by ``lakelabel select``, read by publish
and the report. See ``selections.md``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lakelabel.data_specs.labels import LABELS_SCHEMA
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.validation import ContractError, check_table

SELECTIONS_SCHEMA_VERSION = "1"

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
    """Check a selection table against the contract (columns, types, unique keys)."""
    table = check_table(table, SELECTION_SCHEMA, "selections")
    if len(set(table.column("key").to_pylist())) != table.num_rows:
        raise ContractError("selections: duplicate keys")
    return table


def read_selection(root: str | Path, run: str = "default") -> pd.DataFrame:
    """The committed ``ROOT/selections/<run>/selection.parquet`` (what publish turns into a label run)."""
    path = Layout(root).selections(run).selection
    if not path.exists():
        raise FileNotFoundError(
            f"no committed selection run {run!r} under {str(path.parent.parent)!r}; run `lakelabel select`"
        )
    return validate_selection(pq.read_table(path)).to_pandas()


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
