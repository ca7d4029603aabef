"""Label table contract and its readers: the product's output, a Delta Lake table partitioned by
``run_id`` (one commit per published run). See ``labels.md``."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.shards import KEY_RE
from lakelabel.data_specs.validation import ContractError, check_table

LABELS_SCHEMA_VERSION = "1"
ROLES: tuple[str, ...] = ("positive", "negative_only", "review", "unlabeled")
#: what each role means to someone training on the table (the report shows these)
ROLE_MEANINGS: dict[str, str] = {
    "positive": "a class label confident and certain enough to train on (or a human seed label)",
    "negative_only": "no class, but classes it surely is not (train with a negative-learning loss)",
    "review": "among the least certain images: label them in review.csv and pass it back",
    "unlabeled": "nothing certain either way: leave out of training",
}

LABELS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("label", pa.int32()),
        pa.field("label_name", pa.string()),
        pa.field("role", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("uncertainty", pa.float32(), nullable=False),
        pa.field("negative_labels", pa.list_(pa.int32()), nullable=False),
        pa.field("cluster_heads", pa.list_(pa.int32()), nullable=False),
        pa.field("is_seed", pa.bool_(), nullable=False),
        pa.field("selection_method", pa.string(), nullable=False),
        pa.field("thresholds", pa.string(), nullable=False),
        pa.field("encoder_sha256", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"lakelabel.contract": "labels", "lakelabel.schema_version": LABELS_SCHEMA_VERSION},
)


def validate_labels(table: pa.Table) -> pa.Table:
    """Check a label table: schema, unique keys, known roles, labels exactly on positive rows."""
    table = check_table(table, LABELS_SCHEMA, "labels")
    role = table.column("role")
    bad = pc.unique(pc.filter(role, pc.invert(pc.is_in(role, pa.array(ROLES)))))
    if len(bad):
        raise ContractError(f"labels: unknown role {bad[0].as_py()!r}; valid: {', '.join(ROLES)}")
    if pc.count_distinct(table.column("key")).as_py() != table.num_rows:
        raise ContractError("labels: duplicate keys")
    positive = pc.equal(role, "positive")
    has_label = pc.is_valid(table.column("label"))
    mismatch = pc.indices_nonzero(pc.not_equal(positive, has_label))
    if len(mismatch):
        i = mismatch[0].as_py()
        raise ContractError(
            f"labels row {i}: role {role[i].as_py()!r} but label {table.column('label')[i].as_py()!r}"
        )
    for key in table.column("key").to_pylist()[:1000]:
        if not KEY_RE.match(key):
            raise ContractError(f"labels: key {key!r} is not 32 lowercase hex characters")
    if len(pc.unique(table.column("run_id"))) > 1:
        raise ContractError("labels: one run per table")
    return table


# ---- the Delta table ------------------------------------------------------------------------------

#: the Delta table's name and description (set when it is created): the description names the schema
#: version the table was written with (delta-rs 1.x refuses custom table properties on create)
TABLE_NAME = "lakelabel-labels"
TABLE_DESCRIPTION = "lakelabel label table (data_specs/labels.md), schema version {version}"
#: key of a publish's lineage record in its Delta commit's metadata
COMMIT_KEY = "lakelabel"


class LabelsNotFound(FileNotFoundError):
    """No label table, no committed run, or not the one asked for."""


class LabelTableWarning(UserWarning):
    """The label table holds something lakelabel did not publish (a run without its commit record,
    a column the contract does not know, rows a run's record does not count)."""


def default_dest(root: str | Path) -> str:
    return str(Layout(root).labels)


def delta_options(storage_options: dict | None) -> dict[str, str] | None:
    """fsspec-style S3 options (``endpoint_url``, ``key``, ``secret``, ``token``, ``region``), as the
    rest of lakelabel takes them, in delta-rs's names; delta-rs's own keys pass through."""
    if not storage_options:
        return None
    names = {
        "endpoint_url": "AWS_ENDPOINT_URL",
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
        "region": "AWS_REGION",
    }
    out = {names.get(k, k): str(v) for k, v in storage_options.items() if k != "client_kwargs"}
    region = (storage_options.get("client_kwargs") or {}).get("region_name")
    if region:
        out["AWS_REGION"] = str(region)
    if out.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        out.setdefault("AWS_ALLOW_HTTP", "true")
    return out


def has_old_layout(dest: str, storage_options: dict | None = None) -> bool:
    """True when ``dest`` holds runs in lakelabel's pre-Delta layout (``_commits/`` markers)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(dest, **(storage_options or {}))
    return fs.exists(f"{path.rstrip('/')}/_commits")


def schema_difference(table) -> tuple[list[str], list[str]]:
    """``(unknown, missing)``: the columns of a ``DeltaTable`` the contract does not have, and the
    contract's columns it lacks."""
    names = [field.name for field in table.schema().fields]
    return sorted(set(names) - set(LABELS_SCHEMA.names)), [n for n in LABELS_SCHEMA.names if n not in names]


def open_label_table(
    dest: str, storage_options: dict | None = None, version: int | str | datetime | None = None
):
    """The ``deltalake.DeltaTable`` at ``dest`` (at ``version``: a number, an ISO timestamp or a
    datetime), after checking it holds lakelabel labels of this schema version."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(dest, storage_options=delta_options(storage_options))
    except TableNotFoundError:
        if has_old_layout(dest, storage_options):
            raise LabelsNotFound(
                f"{dest!r} holds label runs in lakelabel's pre-Delta layout (_commits/, _latest); convert "
                f"them once with `lakelabel labels migrate {dest}` (publishing there converts them too)"
            ) from None
        raise LabelsNotFound(f"no label table under {dest!r}; run `lakelabel publish` first") from None
    description = table.metadata().description or ""
    written = description.rpartition("schema version ")[2] if "schema version " in description else None
    if written != LABELS_SCHEMA_VERSION:
        raise ContractError(
            f"label table {dest!r} has schema version {written!r}, this lakelabel reads and writes "
            f"{LABELS_SCHEMA_VERSION!r}: run `lakelabel labels migrate {dest}`"
        )
    unknown, missing = schema_difference(table)
    if missing:
        raise ContractError(
            f"label table {dest!r} lacks the contract's column(s) {missing} (another writer replaced its "
            "schema); it cannot be read as lakelabel labels"
        )
    if unknown:
        warnings.warn(
            f"label table {dest!r} has column(s) {unknown} that the contract (data_specs/labels.md) does "
            "not know; lakelabel reads only the contract's columns",
            LabelTableWarning,
            stacklevel=2,
        )
    if version is not None:
        _load_version(table, dest, version)
    return table


def _load_version(table, dest: str, version: int | str | datetime) -> None:
    """Time travel ``table`` to ``version``, or :class:`LabelsNotFound` naming what the table has."""
    from deltalake.exceptions import DeltaError

    newest = table.version()
    at = version
    if isinstance(version, str):
        try:
            at = datetime.fromisoformat(version)
        except ValueError:
            at = None  # (named below)
    if isinstance(at, datetime):
        at = at if at.tzinfo else at.astimezone()  # a naive time is local time
        first = min(table.history(), key=lambda c: c["version"])
        if at.timestamp() * 1000 < first["timestamp"]:
            began = datetime.fromtimestamp(first["timestamp"] / 1000, UTC).isoformat()
            raise LabelsNotFound(f"label table {dest!r} did not exist at {at.isoformat()} (it began {began})")
    elif isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise ValueError(
            f"a table version is a number from 0, an ISO timestamp or a datetime, got {version!r}"
        )
    try:
        table.load_as_version(at)
    except DeltaError:
        raise LabelsNotFound(
            f"label table {dest!r} has no version {version!r} (its newest is {newest})"
        ) from None


def _commit_records(table) -> dict[str, dict[str, Any]]:
    """run id → its publish's lineage record (with ``version`` and ``committed_at``), from the commits
    up to the table's loaded version."""
    records: dict[str, dict[str, Any]] = {}
    for commit in table.history():
        record = commit.get(COMMIT_KEY)
        if isinstance(record, str):
            record = json.loads(record)
        if isinstance(record, dict) and "run_id" in record and commit["version"] <= table.version():
            committed = datetime.fromtimestamp(commit["timestamp"] / 1000).astimezone().isoformat()
            records[record["run_id"]] = {**record, "version": commit["version"], "committed_at": committed}
    return records


def table_rows(table) -> dict[str, int]:
    """run id → its rows in the table at its loaded version (from the Delta log's file statistics)."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    if not actions.num_rows:
        return {}
    rows: dict[str, int] = {}
    for run, n in zip(
        actions.column("partition.run_id").to_pylist(), actions.column("num_records").to_pylist(), strict=True
    ):
        rows[run] = rows.get(run, 0) + int(n or 0)
    return rows


def published_runs(table, dest: str) -> list[dict[str, Any]]:
    """The runs a ``DeltaTable`` holds at its loaded version, in commit order (the newest last: the
    latest labels), each its publish's lineage record with ``version``, ``committed_at`` and ``rows``
    counted in the table. A run without a commit record (written by another writer) is left out and
    named in a :class:`LabelTableWarning`, as is a run whose rows differ from its record."""
    rows = table_rows(table)
    records = _commit_records(table)
    foreign = sorted(set(rows) - set(records))
    if foreign:
        warnings.warn(
            f"label table {dest!r} holds run(s) {foreign} that no lakelabel publish recorded (another "
            "writer appended them); they are not label runs and never the latest",
            LabelTableWarning,
            stacklevel=2,
        )
    runs = sorted((records[run] | {"rows": n} for run, n in rows.items() if run in records), key=_by_version)
    for run in runs:
        recorded = records[run["run_id"]]["rows"]
        if run["rows"] != recorded:
            warnings.warn(
                f"label run {run['run_id']!r} in {dest!r} holds {run['rows']} rows, its publish recorded "
                f"{recorded} (another writer changed it)",
                LabelTableWarning,
                stacklevel=2,
            )
    return runs


def _by_version(record: dict[str, Any]) -> int:
    return record["version"]


def run_ids(table, dest: str = "the label table") -> list[str]:
    """The published runs a ``DeltaTable`` holds at its loaded version, in commit order (newest last)."""
    return [run["run_id"] for run in published_runs(table, dest)]


def _committed_runs(table, dest: str) -> list[str]:
    """:func:`run_ids`, or :class:`LabelsNotFound` when the table holds none."""
    runs = run_ids(table, dest)
    if not runs:
        raise LabelsNotFound(f"no committed label run under {dest!r}; run `lakelabel publish` first")
    return runs


def latest_run(dest: str, storage_options: dict | None = None) -> str:
    """The newest committed run id: the run of the newest publish commit (Delta version order)."""
    return _committed_runs(open_label_table(dest, storage_options), dest)[-1]


def list_runs(dest: str, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """One record per published run still in the table, in commit order (newest last): its lineage
    (thresholds, encoder, selection config, roles) from its commit, plus ``version``, ``committed_at``
    and ``rows`` as the table holds them."""
    return published_runs(open_label_table(dest, storage_options), dest)


def read_commit(dest: str, run_id: str | None = None, storage_options: dict | None = None) -> dict[str, Any]:
    """The lineage record of one run (``None``: the latest)."""
    records = list_runs(dest, storage_options)
    if not records:
        raise LabelsNotFound(f"no committed label run under {dest!r}; run `lakelabel publish` first")
    if run_id is None:
        return records[-1]
    for record in records:
        if record["run_id"] == run_id:
            return record
    known = ", ".join(r["run_id"] for r in records)
    raise LabelsNotFound(f"label run {run_id!r} is not committed under {dest!r} (committed: {known})")


def read_labels(
    dest: str,
    run_id: str | None = None,
    storage_options: dict | None = None,
    version: int | str | datetime | None = None,
) -> pa.Table:
    """The rows of one run (``None``: the newest) of the table as it is, or as it was at
    ``version`` (a number, an ISO timestamp or a datetime), validated against the contract."""
    from deltalake import QueryBuilder

    table = open_label_table(dest, storage_options, version)
    runs = _committed_runs(table, dest)
    run_id = run_id or runs[-1]
    if run_id not in runs:
        at = f" at version {version}" if version is not None else ""
        raise LabelsNotFound(
            f"label run {run_id!r} is not committed under {dest!r}{at} (committed: {', '.join(runs)})"
        )
    try:
        if "://" in dest and not dest.startswith("file://"):
            rows = table.to_pyarrow_table(filters=[("run_id", "=", run_id)], columns=LABELS_SCHEMA.names)
        else:
            # locally DataFusion (delta-rs) reads the files natively: ``to_pyarrow_table`` scans through a
            # Python filesystem handler whose read-ahead threads now and then abort the interpreter at exit
            # ("terminate called without an active exception": 9 exits in 20 under load, 0 in 20 this way).
            # On S3 DataFusion's ranged GETs fail against moto's server, so object stores keep the scan.
            columns = ", ".join(f'"{name}"' for name in LABELS_SCHEMA.names)
            sql = "SELECT {} FROM labels WHERE run_id = '{}'".format(columns, run_id.replace("'", "''"))
            rows = pa.table(QueryBuilder().register("labels", table).execute(sql).read_all())
    except Exception as exc:  # a data file gone: the version predates a vacuum
        if "not found" not in str(exc).lower() and not isinstance(exc, FileNotFoundError):
            raise
        raise LabelsNotFound(
            f"version {table.version()} of {dest!r} can no longer be read: `lakelabel labels vacuum` removed "
            "its files"
        ) from None
    return validate_labels(rows.select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA))  # (cast sets the metadata)


def latest_labels(dest: str, storage_options: dict | None = None) -> pa.Table:
    """The newest run's rows: what to train on. The same as ``read_labels(dest)``."""
    return read_labels(dest, storage_options=storage_options)
