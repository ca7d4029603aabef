"""The label store on Delta Lake (delta-rs, no JVM): a table at ``ROOT/labels`` or any URL delta-rs
writes (``s3://bucket/labels``), partitioned by ``run_id``, one commit per published run whose
metadata carries its lineage (``data_specs/labels.md``; its readers: ``data_specs/labels.py``).

Concurrent publishes land as separate versions: the table is created once (version 0) however many
publishers race to create it, delta-rs retries an append that lost the race (on S3 through
conditional puts), and a lost commit is tried again with backoff. The content check is part of the
commit (a Delta transaction id per content digest), so one selection published twice at once lands once.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakelabel.data_specs.labels import (
    COMMIT_KEY,
    LABELS_SCHEMA,
    LABELS_SCHEMA_VERSION,
    TABLE_DESCRIPTION,
    TABLE_NAME,
    LabelsNotFound,
    LabelTableWarning,
    delta_options,
    has_old_layout,
    list_runs,
    open_label_table,
    published_runs,
    read_labels,
    run_ids,
    schema_difference,
    validate_labels,
)
from lakelabel.data_specs.validation import ContractError
from lakelabel.pipeline.label_stores.base import LabelStore

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


class DeltaLabelStore(LabelStore):
    """:class:`LabelStore` on a Delta Lake table."""

    kind = "delta"

    def runs(self) -> list[dict[str, Any]]:
        return list_runs(self.dest, self.storage_options)

    def read(self, run_id: str | None = None, version: int | str | datetime | None = None) -> pa.Table:
        return read_labels(self.dest, run_id, self.storage_options, version)

    def append(self, parts: Callable[[], Iterator[pa.Table]], record: dict) -> dict[str, Any]:
        if has_old_layout(self.dest, self.storage_options):  # convert the earlier layout first
            self.migrate()
        return self._commit(parts, record)

    def _commit(self, parts: Callable[[], Iterator[pa.Table]], record: dict) -> dict[str, Any]:
        """Append one validated run as one Delta commit with ``record`` as its lineage; returns the record
        with the commit's version, or the record of a run of the same content already there.
        A commit that loses a race is tried again (bounded, with backoff); the content check is part of
        the commit, through the Delta transaction id of the content digest."""
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import Transaction

        app_id = _publish_id(record["content_sha256"])
        for attempt in range(COMMIT_ATTEMPTS):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LabelTableWarning)  # (an unknown column is an error below)
                delta = create_label_table(self.dest, self.storage_options)
            unknown, _ = schema_difference(delta)
            if unknown:
                raise ContractError(
                    f"label table {self.dest!r} has column(s) {unknown} the contract does not know "
                    "(another writer "
                    "changed its schema); lakelabel publishes only to tables of the contract's schema"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", LabelTableWarning)  # a run nobody published: refuse, say which
                try:
                    runs = published_runs(delta, self.dest)
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
                    pa.RecordBatchReader.from_batches(
                        LABELS_SCHEMA,
                        (batch for part in parts() for batch in validate_labels(part).to_batches()),
                    ),
                    # the schema must match the table's: a difference is an error, never a merge
                    mode="append",
                    storage_options=delta_options(self.storage_options),
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
            f"publishing to {self.dest!r} lost {COMMIT_ATTEMPTS} commit races in a row; nothing was added, "
            "try again"
        )

    def vacuum(self, keep: int) -> dict[str, Any]:
        """Keep the newest ``keep`` runs (at least 1: the newest run is never removed): one Delta commit
        deletes the older runs' rows, then their files (and any left by a crashed publish) are removed.
        Versions from before the vacuum can no longer be read."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(
                f"keep must be a whole number of runs, at least 1 (the newest run stays), got {keep!r}"
            )
        from deltalake import CommitProperties

        table = open_label_table(self.dest, self.storage_options)
        runs = run_ids(table, self.dest)
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

        fs, base = fsspec.core.url_to_fs(self.dest, **(self.storage_options or {}))
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

    def migrate(self) -> dict[str, Any]:
        """Convert runs of the pre-Delta layout (``run_id=<RUN>/part-00000.parquet`` with
        ``_commits/<RUN>.json`` markers and ``_latest``) into the Delta table at ``dest``, one commit
        per run in run order, their lineage kept. Safe to re-run: runs already converted are skipped,
        and the old files are removed only after every run is in the table (``_commits/`` last)."""
        import fsspec

        fs, base = fsspec.core.url_to_fs(self.dest, **(self.storage_options or {}))
        base = base.rstrip("/")
        if not fs.exists(f"{base}/_commits"):
            return {"migrated": [], "already_delta": True}
        records = []
        for path in sorted(fs.glob(f"{base}/_commits/*.json")):
            with fs.open(path) as f:
                records.append(json.loads(f.read()))
        records.sort(key=lambda r: r["run_id"])
        try:
            done = set(run_ids(open_label_table(self.dest, self.storage_options), self.dest))
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
            self._commit(lambda t=table: iter([t]), record)
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
