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
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.clusters import assignment_part_name, head_columns, read_assignments
from lakelabel.data_specs.embeddings import part_names
from lakelabel.data_specs.labels import (
    LABELS_SCHEMA,
    LABELS_SCHEMA_VERSION,
    LabelsNotFound,
    default_dest,
    validate_labels,
)
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA
from lakelabel.data_specs.selections import (
    iter_selection,
    read_selection,
    read_selection_info,
    read_selection_summary,
)
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


def label_parts(
    root: str | Path, selection_run: str = "default", run_id: str = "pending", created: datetime | None = None
) -> Iterator[pa.Table]:
    """The label table's rows of a selection run, one table per selection part: each part joined to the
    manifest parts of its shards and to its cluster run's part (memory: one part, whatever the lake)."""
    root = Path(root)
    selections = iter_selection(root, selection_run)  # (fails at once when the run is not committed)
    info = read_selection_info(root, selection_run)
    thresholds = json.dumps(info.thresholds, sort_keys=True)
    created = pd.Timestamp(created or datetime(1970, 1, 1, tzinfo=UTC))
    heads = _ClusterHeads(root, info.cluster_run)
    manifest = manifest_of(root)
    for selection in selections:
        sel = selection.to_pandas()
        files = [
            manifest / f"part-{shard.removeprefix('shard-').removesuffix('.tar')}.parquet"
            for shard in sel.shard.unique()
        ]
        rows = pq.read_table(  # only the part's rows of the manifest parts of its shards
            [str(f) for f in files if f.is_file()] or manifest,
            columns=["key", "sha256", "source_uri", "status"],
            schema=MANIFEST_SCHEMA,
            filters=pc.field("key").isin(pa.array(sel.key.to_numpy(), pa.string()))
            & (pc.field("status") == "sharded"),
        ).to_pandas()
        rows = rows.drop_duplicates("key").set_index("key")
        missing = ~sel.key.isin(rows.index)
        if missing.any():
            raise ValueError(f"{int(missing.sum())} selected keys are not in the manifest of {str(root)!r}")
        df = pd.DataFrame(
            {
                "key": sel.key,
                "sha256": sel.key.map(rows.sha256),
                "source_uri": sel.key.map(rows.source_uri),
                "shard": sel.shard,
                "label": sel.label,
                "label_name": sel.label_name,
                "role": sel.role,
                "confidence": sel.confidence,
                "uncertainty": sel.uncertainty,
                "negative_labels": sel.negative_labels,
                "cluster_heads": heads.of(sel.key, sel.shard.iloc[0]) if len(sel) else [],
                "is_seed": sel.is_seed,
                "selection_method": info.method,
                "thresholds": thresholds,
                "encoder_sha256": info.encoder_sha256,
                "run_id": run_id,
                "created_at": created,
            }
        )
        yield validate_labels(pa.Table.from_pandas(df, schema=LABELS_SCHEMA, preserve_index=False))


class _ClusterHeads:
    """Each key's ``head_<t>`` labels in the selection's cluster run ([] without one): per shard, the
    cluster part of its embeddings part (``asg-NNNNNN``); a single-file run (written before parts)
    is read once."""

    def __init__(self, root: Path, run: str):
        self.paths = Layout(root).clusters(run)
        self.whole: pd.DataFrame | None = None
        if self.paths.committed and not self.paths.commit.is_file():
            self.whole = self._heads(read_assignments(root, run))

    @staticmethod
    def _heads(table: pa.Table) -> pd.Series:
        columns = head_columns(table)
        frame = table.select(["key", *columns]).to_pandas().set_index("key")
        return pd.Series(frame[columns].to_numpy().tolist(), index=frame.index, dtype=object)

    def of(self, keys: pd.Series, shard: str) -> list[list[int]]:
        heads = self.whole
        if heads is None and self.paths.commit.is_file():
            path = self.paths.parts / assignment_part_name(part_names(shard)[1])
            heads = self._heads(pq.read_table(path)) if path.is_file() else None
        if heads is None:
            return [[] for _ in range(len(keys))]
        return [v if isinstance(v, list) else [] for v in heads.reindex(keys.to_numpy())]


def _content_hash(parts: Iterator[pa.Table]) -> tuple[str, int, dict[str, int]]:
    """SHA-256 of a run's rows without its id and time, part by part (equal for an unchanged
    selection), with its row count and role counts."""
    digest, rows, roles = hashlib.sha256(), 0, Counter()
    for table in parts:
        cols = [c for c in table.column_names if c not in ("run_id", "created_at")]
        buffer = io.BytesIO()
        pq.write_table(table.select(cols), buffer)
        digest.update(buffer.getvalue())
        rows += table.num_rows
        roles.update(table.column("role").to_pylist())
    return digest.hexdigest(), rows, dict(roles)


def build_label_table(root: str | Path, selection_run: str = "default", run_id: str = "pending") -> pa.Table:
    """Every label row of a selection run in one table (:func:`label_parts` concatenated): for lakes
    that fit in memory."""
    return pa.concat_tables(label_parts(root, selection_run, run_id))


def publish_labels(
    root: str | Path,
    selection_run: str = "default",
    dest: str | None = None,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Publish ``ROOT/selections/<selection_run>`` as a new run (one Delta commit, streamed part by
    part); returns its lineage record with the table ``version`` it landed as (``skipped``: the same
    content was there). The parts are read twice: once for the content digest, once to write."""
    dest = dest or default_dest(root)
    digest, rows, roles = _content_hash(label_parts(root, selection_run))  # checks selection and manifest
    created = datetime.now(UTC)
    run_id = f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{digest[:8]}"
    info = read_selection_info(root, selection_run)
    record = {
        "run_id": run_id,
        "rows": rows,
        "roles": {k: int(v) for k, v in roles.items()},
        "selection_run": selection_run,
        "content_sha256": digest,
        "encoder_sha256": info.encoder_sha256 if rows else None,
        "thresholds": json.loads(json.dumps(info.thresholds, sort_keys=True)) if rows else None,
        "selection_config": info.config,
        # the seed CSVs and answered review batches it learned from (name, file sha256, labels)
        "seed_sources": read_selection_summary(root, selection_run).get("seed_sources", []),
        "created_at": created.isoformat(),
        "schema_version": LABELS_SCHEMA_VERSION,
    }
    return open_store(dest, storage_options).append(
        lambda: label_parts(root, selection_run, run_id, created), record
    )


def vacuum_labels(dest: str, keep: int, storage_options: dict | None = None) -> dict[str, Any]:
    """Keep the newest ``keep`` runs of the label table at ``dest`` (:meth:`LabelStore.vacuum`)."""
    return open_store(dest, storage_options).vacuum(keep)


def migrate_labels(dest: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Convert an earlier layout at ``dest`` into the store's (:meth:`LabelStore.migrate`)."""
    return open_store(dest, storage_options).migrate()
