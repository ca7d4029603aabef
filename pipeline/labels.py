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

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lakelabel.data_specs.labels import (
    COMMIT_KEY,
    LABELS_SCHEMA,
    LABELS_SCHEMA_VERSION,
    TABLE_DESCRIPTION,
    TABLE_NAME,
    LabelsNotFound,
    default_dest,
    delta_options,
    has_old_layout,
    open_label_table,
    read_commit,
    run_ids,
    validate_labels,
)
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA

__all__ = ["LabelsNotFound", "build_label_table", "migrate_labels", "publish_labels", "vacuum_labels"]


def build_label_table(root: str | Path, selection_run: str = "default", run_id: str = "pending") -> pa.Table:
    """Join a selection run to the manifest and its cluster run: one contract row per image."""
    root = Path(root)
    selection = read_selection(root, selection_run)
    summary = json.loads((root / "selections" / selection_run / "summary.json").read_text())
    manifest = pq.read_table(
        root / "manifest", columns=["key", "sha256", "source_uri", "status"], schema=MANIFEST_SCHEMA
    )
    manifest = manifest.to_pandas()
    manifest = manifest[manifest.status == "sharded"].drop_duplicates("key").set_index("key")
    missing = ~selection.key.isin(manifest.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} selected keys are not in the manifest of {str(root)!r}")
    config = summary["config"]
    heads: pd.Series
    cluster_path = root / "clusters" / config["cluster_run"] / "assignments.parquet"
    if cluster_path.exists():
        clusters = pq.read_table(cluster_path).to_pandas().set_index("key")
        head_cols = sorted((c for c in clusters.columns if c.startswith("head_")), key=lambda c: int(c[5:]))
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
            "selection_method": summary["method"],
            "thresholds": json.dumps(summary["thresholds"], sort_keys=True),
            "encoder_sha256": summary["encoder_sha256"],
            "run_id": run_id,
            "created_at": pd.Timestamp(now),
        }
    )
    return validate_labels(pa.Table.from_pandas(df, schema=LABELS_SCHEMA, preserve_index=False))


def _content_hash(table: pa.Table) -> str:
    cols = [c for c in table.column_names if c not in ("run_id", "created_at")]
    buffer = io.BytesIO()
    pq.write_table(table.select(cols), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:8]


def _existing(dest: str, storage_options: dict | None):
    """The label table at ``dest``, or None where none was created yet."""
    try:
        return open_label_table(dest, storage_options)
    except LabelsNotFound:
        return None


def _append(dest: str, table: pa.Table, record: dict, storage_options: dict | None, existing) -> int:
    """Append one validated run as one Delta commit with ``record`` as its lineage to ``existing``
    (the open table, or None to create it); returns the commit's version."""
    from deltalake import CommitProperties, write_deltalake

    before = existing.version() if existing is not None else -1
    write_deltalake(
        existing if existing is not None else dest,
        validate_labels(table),
        mode="append",  # the schema must match the table's: a difference is an error, never a merge
        partition_by=["run_id"],
        name=TABLE_NAME if existing is None else None,
        description=TABLE_DESCRIPTION.format(version=LABELS_SCHEMA_VERSION) if existing is None else None,
        storage_options=delta_options(storage_options),
        commit_properties=CommitProperties(custom_metadata={COMMIT_KEY: record}, max_commit_retries=50),
    )
    return _version_of(dest, record["run_id"], storage_options, before)


def _version_of(dest: str, run_id: str, storage_options: dict | None, after: int) -> int:
    """The first table version after ``after`` that holds ``run_id``: its commit (other publishers
    may have committed before and after it)."""
    table = open_label_table(dest, storage_options)
    for version in range(after + 1, table.version() + 1):
        table.load_as_version(version)
        if run_id in run_ids(table):
            return version
    raise RuntimeError(f"label run {run_id} was written to {dest!r} but no version holds it")


def publish_labels(
    root: str | Path,
    selection_run: str = "default",
    dest: str | None = None,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Publish ``ROOT/selections/<selection_run>`` as a new run (one Delta commit); returns its
    lineage record with the table ``version`` it landed as."""
    dest = dest or default_dest(root)
    if has_old_layout(dest, storage_options):
        migrate_labels(dest, storage_options)
    table = build_label_table(root, selection_run)
    digest = _content_hash(table)
    existing = _existing(dest, storage_options)
    if existing is not None:
        same = [run for run in run_ids(existing) if run.endswith(f"-{digest}")]
        if same:
            return {**read_commit(dest, same[-1], storage_options), "skipped": True}
    created = datetime.now(UTC)
    created = created.replace(microsecond=created.microsecond // 1000 * 1000)
    run_id = f"{created.strftime('%Y%m%dT%H%M%S%fZ')}-{digest}"
    table = table.set_column(
        table.schema.get_field_index("run_id"), "run_id", pa.array([run_id] * table.num_rows)
    )
    table = table.set_column(
        table.schema.get_field_index("created_at"),
        "created_at",
        pa.array([created] * table.num_rows, pa.timestamp("ms", tz="UTC")),
    )
    summary = json.loads((Path(root) / "selections" / selection_run / "summary.json").read_text())
    roles = pd.Series(table.column("role").to_pylist()).value_counts().to_dict()
    record = {
        "run_id": run_id,
        "rows": table.num_rows,
        "roles": {k: int(v) for k, v in roles.items()},
        "selection_run": selection_run,
        "content_sha256": digest,
        "encoder_sha256": table.column("encoder_sha256")[0].as_py() if table.num_rows else None,
        "thresholds": json.loads(table.column("thresholds")[0].as_py()) if table.num_rows else None,
        "selection_config": summary.get("config"),
        "created_at": created.isoformat(),
        "schema_version": LABELS_SCHEMA_VERSION,
    }
    version = _append(dest, table, record, storage_options, existing)
    return {**record, "version": version, "skipped": False}


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
    deleted = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
    return {
        "kept": runs[len(drop) :],
        "removed_runs": drop,
        "files_deleted": len(deleted),
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
    existing = _existing(dest, storage_options)
    done = set(run_ids(existing)) if existing is not None else set()
    migrated = []
    for old in records:
        if old["run_id"] in done:
            continue
        with fs.open(f"{base}/run_id={old['run_id']}/part-00000.parquet") as f:
            table = pq.read_table(f)
        if existing is None and migrated:
            existing = _existing(dest, storage_options)  # the first append created the table
        record = {k: v for k, v in old.items() if k != "path"} | {
            "migrated_from": "pre-Delta layout (_commits/)"
        }
        _append(dest, table, record, storage_options, existing)  # (``existing`` moves to the new version)
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


def read_selection(root: str | Path, run: str = "default") -> pd.DataFrame:
    """The committed ``ROOT/selections/<run>/selection.parquet`` (what publish turns into a label run)."""
    path = Path(root) / "selections" / run / "selection.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"no committed selection run {run!r} under {str(path.parent.parent)!r}; run `lakelabel select`"
        )
    return pq.read_table(path).to_pandas()
