"""The label lake: publish a selection run as a versioned, atomically committed Parquet table.

Destination: ``ROOT/labels`` or any fsspec URL (``s3://bucket/labels``). Layout and commit protocol
in ``data_specs/labels.md``. Publishing the same selection again is a no-op (same content hash).
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_specs.labels import LABELS_SCHEMA, validate_labels
from data_specs.manifest import MANIFEST_SCHEMA
from pipeline.select import read_selection

PART = "part-00000.parquet"


class LabelsNotFound(FileNotFoundError):
    """No committed label run (or not the one asked for)."""


def _fs(dest: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(dest, **(storage_options or {}))
    return fs, path.rstrip("/")


def default_dest(root: str | Path) -> str:
    return str(Path(root) / "labels")


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


def publish_labels(
    root: str | Path,
    selection_run: str = "default",
    dest: str | None = None,
    fail_before_commit: bool = False,
    storage_options: dict | None = None,
) -> dict:
    """Publish ``ROOT/selections/<selection_run>`` as a new label run; returns the commit record.

    ``fail_before_commit`` is fault injection for tests: it stops after staging, as a crash would.
    """
    dest = dest or default_dest(root)
    fs, base = _fs(dest, storage_options)
    table = build_label_table(root, selection_run)
    digest = _content_hash(table)
    runs = list_runs(dest, storage_options)
    for record in runs:
        if record["content_sha256"] == digest:
            return {**record, "skipped": True}
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
    table = validate_labels(table)
    _clean_staging(fs, base, {r["run_id"] for r in runs})
    staging = f"{base}/_staging/{run_id}"
    fs.makedirs(staging, exist_ok=True)
    with fs.open(f"{staging}/{PART}", "wb") as f:
        pq.write_table(table, f)
    if fail_before_commit:
        raise RuntimeError(f"fault injected before committing label run {run_id}")
    final = f"{base}/run_id={run_id}"
    fs.makedirs(final, exist_ok=True)
    fs.mv(f"{staging}/{PART}", f"{final}/{PART}")  # a rename locally; copy + delete on object stores
    roles = pd.Series(table.column("role").to_pylist()).value_counts().to_dict()
    record = {
        "run_id": run_id,
        "rows": table.num_rows,
        "roles": {k: int(v) for k, v in roles.items()},
        "selection_run": selection_run,
        "content_sha256": digest,
        "encoder_sha256": table.column("encoder_sha256")[0].as_py() if table.num_rows else None,
        "created_at": created.isoformat(),
        "path": final,
    }
    fs.makedirs(f"{base}/_commits", exist_ok=True)
    with fs.open(f"{base}/_commits/{run_id}.json", "w") as f:  # the commit marker
        f.write(json.dumps(record, indent=1))
    latest = latest_run(dest, storage_options)
    with fs.open(f"{base}/_latest.tmp", "w") as f:
        f.write(latest)  # no newline: open(".../_latest").read() is the run id as it stands
    fs.mv(f"{base}/_latest.tmp", f"{base}/_latest")
    if fs.exists(f"{base}/_staging"):
        fs.rm(f"{base}/_staging", recursive=True)
    return {**record, "skipped": False}


def _clean_staging(fs, base: str, committed: set[str]) -> None:
    """Remove interrupted publishes: the staging area and run folders that never got their marker."""
    if fs.exists(f"{base}/_staging"):
        fs.rm(f"{base}/_staging", recursive=True)
    for path in fs.glob(f"{base}/run_id=*"):
        if path.rsplit("run_id=", 1)[1] not in committed:
            fs.rm(path, recursive=True)


def list_runs(dest: str, storage_options: dict | None = None) -> list[dict]:
    """Commit records of every committed run, oldest first."""
    fs, base = _fs(dest, storage_options)
    if not fs.exists(f"{base}/_commits"):
        return []
    records = []
    for path in sorted(fs.glob(f"{base}/_commits/*.json")):
        with fs.open(path) as f:
            records.append(json.loads(f.read()))
    return sorted(records, key=lambda r: r["run_id"])


def latest_run(dest: str, storage_options: dict | None = None) -> str:
    """The newest committed run id: the largest commit-marker name (one listing, no record read).

    Not ``_latest``: a crash between a commit marker and ``_latest`` leaves that file one run behind.
    """
    fs, base = _fs(dest, storage_options)
    markers = fs.glob(f"{base}/_commits/*.json") if fs.exists(f"{base}/_commits") else []
    if not markers:
        raise LabelsNotFound(f"no committed label run under {dest!r}; run `lakelabel publish` first")
    return max(path.rsplit("/", 1)[-1].removesuffix(".json") for path in markers)


def read_commit(dest: str, run_id: str | None = None, storage_options: dict | None = None) -> dict:
    """The commit record of one committed run (``None``: the latest)."""
    fs, base = _fs(dest, storage_options)
    run_id = run_id or latest_run(dest, storage_options)
    if not fs.exists(f"{base}/_commits/{run_id}.json"):
        known = ", ".join(r["run_id"] for r in list_runs(dest, storage_options)) or "none"
        raise LabelsNotFound(f"label run {run_id!r} is not committed under {dest!r} (committed: {known})")
    with fs.open(f"{base}/_commits/{run_id}.json") as f:
        return json.loads(f.read())


def read_labels(dest: str, run_id: str | None = None, storage_options: dict | None = None) -> pa.Table:
    """One committed run (``None``: the latest), validated against the contract."""
    fs, base = _fs(dest, storage_options)
    run_id = read_commit(dest, run_id, storage_options)["run_id"]
    with fs.open(f"{base}/run_id={run_id}/{PART}") as f:
        return validate_labels(pq.read_table(f))
