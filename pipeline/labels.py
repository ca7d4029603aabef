"""Publish a selection run to the label table (``data_specs/labels.md``): one run, one commit, through
a label store (``pipeline/label_stores``: a Delta Lake table at ``ROOT/labels`` or any URL delta-rs
writes). The run's rows join the selection to the manifest and its cluster run; its lineage record
travels with the commit. Publishing the same selection again is a no-op (same content hash), also
when two publishers race. Retention and the pre-Delta conversion: :func:`vacuum_labels`,
:func:`migrate_labels` (the store's own)."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.clusters import head_columns, read_assignments
from lakelabel.data_specs.labels import (
    LABELS_SCHEMA,
    LABELS_SCHEMA_VERSION,
    LabelsNotFound,
    default_dest,
    validate_labels,
)
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA
from lakelabel.data_specs.selections import read_selection, read_selection_info, read_selection_summary
from lakelabel.pipeline.inputs import manifest_of
from lakelabel.pipeline.label_stores import open_store

__all__ = [
    "LabelsNotFound",
    "build_label_table",
    "migrate_labels",
    "publish_labels",
    "read_selection",
    "vacuum_labels",
]


def build_label_table(root: str | Path, selection_run: str = "default", run_id: str = "pending") -> pa.Table:
    """Join a selection run to the manifest and its cluster run: one contract row per image."""
    root = Path(root)
    selection = read_selection(root, selection_run)
    info = read_selection_info(root, selection_run)
    manifest = pq.read_table(  # only the selection's rows of the manifest
        manifest_of(root),
        columns=["key", "sha256", "source_uri", "status"],
        schema=MANIFEST_SCHEMA,
        filters=pc.field("key").isin(pa.array(selection.key.to_numpy(), pa.string())),
    )
    manifest = manifest.to_pandas()
    manifest = manifest[manifest.status == "sharded"].drop_duplicates("key").set_index("key")
    missing = ~selection.key.isin(manifest.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} selected keys are not in the manifest of {str(root)!r}")
    heads: pd.Series
    if Layout(root).clusters(info.cluster_run).committed:
        assignments = read_assignments(root, info.cluster_run)
        head_cols = head_columns(assignments)
        clusters = assignments.select(["key", *head_cols]).to_pandas().set_index("key")
        heads = pd.Series(clusters[head_cols].to_numpy().tolist(), index=clusters.index).reindex(
            selection.key
        )
        heads = heads.apply(lambda v: v if isinstance(v, list) else [])
    else:
        heads = pd.Series([[]] * len(selection), index=selection.key)
    now = datetime.now(UTC).replace(microsecond=0)
    df = pd.DataFrame(
        {
            "key": selection.key,
            "sha256": selection.key.map(manifest.sha256),
            "source_uri": selection.key.map(manifest.source_uri),
            "shard": selection.shard,
            "label": selection.label,
            "label_name": selection.label_name,
            "role": selection.role,
            "confidence": selection.confidence,
            "uncertainty": selection.uncertainty,
            "negative_labels": selection.negative_labels,
            "cluster_heads": heads.to_numpy(),
            "is_seed": selection.is_seed,
            "selection_method": info.method,
            "thresholds": json.dumps(info.thresholds, sort_keys=True),
            "encoder_sha256": info.encoder_sha256,
            "run_id": run_id,
            "created_at": pd.Timestamp(now),
        }
    )
    return validate_labels(pa.Table.from_pandas(df, schema=LABELS_SCHEMA, preserve_index=False))


def _content_hash(table: pa.Table) -> str:
    """SHA-256 of a run's rows without its id and time: equal for an unchanged selection."""
    cols = [c for c in table.column_names if c not in ("run_id", "created_at")]
    buffer = io.BytesIO()
    pq.write_table(table.select(cols), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def publish_labels(
    root: str | Path,
    selection_run: str = "default",
    dest: str | None = None,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Publish ``ROOT/selections/<selection_run>`` as a new run (one Delta commit); returns its
    lineage record with the table ``version`` it landed as (``skipped``: the same content was there)."""
    dest = dest or default_dest(root)
    table = build_label_table(root, selection_run)  # checks the selection and the manifest first
    digest = _content_hash(table)
    created = datetime.now(UTC)
    run_id = f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{digest[:8]}"
    table = table.set_column(
        table.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * table.num_rows)
    )
    table = table.set_column(
        table.schema.get_field_index("created_at"),
        "created_at",
        pa.array([created] * table.num_rows, LABELS_SCHEMA.field("created_at").type),
    )
    roles = pd.Series(table.column("role").to_pylist()).value_counts().to_dict()
    record = {
        "run_id": run_id,
        "rows": table.num_rows,
        "roles": {k: int(v) for k, v in roles.items()},
        "selection_run": selection_run,
        "content_sha256": digest,
        "encoder_sha256": table.column("encoder_sha256")[0].as_py() if table.num_rows else None,
        "thresholds": json.loads(table.column("thresholds")[0].as_py()) if table.num_rows else None,
        "selection_config": read_selection_info(root, selection_run).config,
        # the seed CSVs and answered review batches it learned from (name, file sha256, labels)
        "seed_sources": read_selection_summary(root, selection_run).get("seed_sources", []),
        "created_at": created.isoformat(),
        "schema_version": LABELS_SCHEMA_VERSION,
    }
    return open_store(dest, storage_options).append(table, record)


def vacuum_labels(dest: str, keep: int, storage_options: dict | None = None) -> dict[str, Any]:
    """Keep the newest ``keep`` runs of the label table at ``dest`` (:meth:`LabelStore.vacuum`)."""
    return open_store(dest, storage_options).vacuum(keep)


def migrate_labels(dest: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Convert an earlier layout at ``dest`` into the store's (:meth:`LabelStore.migrate`)."""
    return open_store(dest, storage_options).migrate()
