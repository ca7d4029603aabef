"""Publish a selection run to the label table: a Delta Lake table (``deltalake``, no JVM) at
``ROOT/labels`` or any URL delta-rs writes (``s3://bucket/labels``), one commit per run.

Each publish appends the run's rows (``run_id`` is a column and the partition) in one Delta commit
whose metadata carries the run's lineage. Concurrent publishes land as separate versions (delta-rs
commits optimistically and retries an append that lost the race; on S3 through conditional puts).
Publishing the same selection again is a no-op (same content hash). Readers, retention and the
conversion of the pre-Delta layout: ``data_specs/labels.py``, :func:`vacuum_labels`,
:func:`migrate_labels`. Contract and reading recipes: ``data_specs/labels.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lakelabel.data_specs.clusters import head_columns, heads_in, read_assignments
from lakelabel.data_specs.labels import (
    COMMIT_KEY,
    LABELS_SCHEMA,
    LABELS_SCHEMA_VERSION,
    TABLE_DESCRIPTION,
    TABLE_NAME,
    LabelsNotFound,
    LabelTableWarning,
    default_dest,
    delta_options,
    has_old_layout,
    open_label_table,
    published_runs,
    run_ids,
    schema_difference,
    validate_labels,
)
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA
from lakelabel.data_specs.selections import read_selection, read_selection_info
from lakelabel.data_specs.validation import ContractError
from lakelabel.pipeline.inputs import manifest_of

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
    manifest = pq.read_table(
        manifest_of(root), columns=["key", "sha256", "source_uri", "status"], schema=MANIFEST_SCHEMA
    )
    manifest = manifest.to_pandas()
    manifest = manifest[manifest.status == "sharded"].drop_duplicates("key").set_index("key")
    missing = ~selection.key.isin(manifest.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} selected keys are not in the manifest of {str(root)!r}")
    heads: pd.Series
    if Layout(root).clusters(info.cluster_run).assignments.exists():
        assignments = read_assignments(root, info.cluster_run)
        head_cols = head_columns(heads_in(assignments))
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


#: how often a publish tries its commit again after losing a race (with backoff), and the longest wait
COMMIT_ATTEMPTS, MAX_BACKOFF_S = 12, 5.0


def _retry_wait(attempt: int) -> None:
    time.sleep(min(MAX_BACKOFF_S, 0.05 * 2**attempt) * (0.5 + random.random()))


def create_label_table(dest: str, storage_options: dict | None = None):
    """The label table at ``dest``, created empty (version 0: schema, partitioning, description) when
    there is none. Idempotent under races: a creation that loses to another publisher's is not retried
    as a second "create" commit (which would replace the table's metadata); the winner's table is
    opened instead."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake.exceptions import DeltaError

    for attempt in range(COMMIT_ATTEMPTS):
        with contextlib.suppress(LabelsNotFound):
            return open_label_table(dest, storage_options)
        try:
            return DeltaTable.create(
                dest,
                LABELS_SCHEMA,
                mode="error",
                partition_by=["run_id"],
                name=TABLE_NAME,
                description=TABLE_DESCRIPTION.format(version=LABELS_SCHEMA_VERSION),
                storage_options=delta_options(storage_options),
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        except DeltaError:  # another publisher created it first (or is creating it): open theirs
            _retry_wait(attempt)
    return open_label_table(dest, storage_options)


def _publish_id(digest: str) -> str:
    """The Delta application-transaction id of a run's content: a commit carrying it conflicts with a
    concurrent commit carrying the same, so one selection published twice at once lands once."""
    return f"lakelabel-publish-{digest}"


def _append(dest: str, table: pa.Table, record: dict, storage_options: dict | None) -> dict[str, Any] | None:
    """Append one validated run as one Delta commit with ``record`` as its lineage; returns the commit's
    version, or the record of a run of the same content already there (then nothing is written).
    A commit that loses a race is tried again (bounded, with backoff); the content check is part of
    the commit, through the Delta transaction id of the content digest."""
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import Transaction

    app_id = _publish_id(record["content_sha256"])
    for attempt in range(COMMIT_ATTEMPTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LabelTableWarning)  # (an unknown column is an error below)
            delta = create_label_table(dest, storage_options)
        unknown, _ = schema_difference(delta)
        if unknown:
            raise ContractError(
                f"label table {dest!r} has column(s) {unknown} the contract does not know (another writer "
                "changed its schema); lakelabel publishes only to tables of the contract's schema"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", LabelTableWarning)  # a run nobody published: refuse, say which
            try:
                runs = published_runs(delta, dest)
            except LabelTableWarning as foreign:
                raise ContractError(f"{foreign}; publish refuses such a table") from None
        digest = record["content_sha256"]  # (runs published before 0.2 recorded its first 8 digits)
        same = [run for run in runs if digest.startswith(run.get("content_sha256") or run["run_id"][-8:])]
        if same:
            return {**same[-1], "skipped": True}
        published_before = delta.transaction_version(app_id) or 0  # (a vacuum may have removed that run)
        try:
            write_deltalake(
                delta,
                validate_labels(table),
                mode="append",  # the schema must match the table's: a difference is an error, never a merge
                storage_options=delta_options(storage_options),
                commit_properties=CommitProperties(
                    custom_metadata={COMMIT_KEY: record},
                    max_commit_retries=50,
                    app_transactions=[Transaction(app_id, published_before + 1)],
                ),
            )
        except CommitFailedError:  # the same content landed meanwhile, or the retries ran out
            _retry_wait(attempt)
            continue
        return {**record, "version": delta.version(), "skipped": False}
    raise RuntimeError(
        f"publishing to {dest!r} lost {COMMIT_ATTEMPTS} commit races in a row; nothing was added, try again"
    )


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
    if has_old_layout(dest, storage_options):
        migrate_labels(dest, storage_options)
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
        "created_at": created.isoformat(),
        "schema_version": LABELS_SCHEMA_VERSION,
    }
    return _append(dest, table, record, storage_options)


def vacuum_labels(dest: str, keep: int, storage_options: dict | None = None) -> dict[str, Any]:
    """Keep the newest ``keep`` runs (at least 1: the newest run is never removed): one Delta commit
    deletes the older runs' rows, then their files (and any left by a crashed publish) are removed.
    Versions from before the vacuum can no longer be read."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(
            f"keep must be a whole number of runs, at least 1 (the newest run stays), got {keep!r}"
        )
    from deltalake import CommitProperties

    table = open_label_table(dest, storage_options)
    runs = run_ids(table)
    drop = runs[:-keep]
    if drop:
        listed = ", ".join(f"'{run}'" for run in drop)  # run ids are [0-9A-Za-z-]: nothing to escape
        table.delete(
            f"run_id IN ({listed})",
            commit_properties=CommitProperties(
                custom_metadata={COMMIT_KEY: {"operation": "vacuum", "removed_runs": drop}}
            ),
        )
    import fsspec

    fs, base = fsspec.core.url_to_fs(dest, **(storage_options or {}))
    base = base.rstrip("/")
    # delta-rs lists the files of old remove actions again on every vacuum: count the ones still there
    listed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=True, full=True)
    present = [
        p for p in listed if fs.exists(p if p.lstrip("/").startswith(base.lstrip("/")) else f"{base}/{p}")
    ]
    table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
    return {
        "kept": runs[len(drop) :],
        "removed_runs": drop,
        "files_deleted": len(present),
        "version": table.version(),
    }


def migrate_labels(dest: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Convert runs of the pre-Delta layout (``run_id=<RUN>/part-00000.parquet`` with
    ``_commits/<RUN>.json`` markers and ``_latest``) into the Delta table at ``dest``, one commit
    per run in run order, their lineage kept. Safe to re-run: runs already converted are skipped,
    and the old files are removed only after every run is in the table (``_commits/`` last)."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(dest, **(storage_options or {}))
    base = base.rstrip("/")
    if not fs.exists(f"{base}/_commits"):
        return {"migrated": [], "already_delta": True}
    records = []
    for path in sorted(fs.glob(f"{base}/_commits/*.json")):
        with fs.open(path) as f:
            records.append(json.loads(f.read()))
    records.sort(key=lambda r: r["run_id"])
    try:
        done = set(run_ids(open_label_table(dest, storage_options), dest))
    except LabelsNotFound:  # (the first run converted creates the table)
        done = set()
    migrated = []
    for old in records:
        if old["run_id"] in done:
            continue
        with fs.open(f"{base}/run_id={old['run_id']}/part-00000.parquet") as f:
            table = pq.read_table(f)
        record = {k: v for k, v in old.items() if k != "path"} | {
            "migrated_from": "pre-Delta layout (_commits/)"
        }
        _append(dest, table, record, storage_options)
        migrated.append(old["run_id"])
    for old in records:
        part = f"{base}/run_id={old['run_id']}/part-00000.parquet"
        if fs.exists(part):  # (a conversion stopped here before: some are gone already)
            fs.rm(part)
    for leftover in ("_latest", "_latest.tmp", "_staging"):
        if fs.exists(f"{base}/{leftover}"):
            fs.rm(f"{base}/{leftover}", recursive=True)
    fs.rm(f"{base}/_commits", recursive=True)  # the marker of an unfinished conversion goes last
    return {"migrated": migrated, "runs": [r["run_id"] for r in records], "already_delta": False}
