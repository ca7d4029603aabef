"""The manifest rows of one unit (a shard and every file resolved while it was open), kept column-wise
in packed buffers and written as one Parquet part."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from lakelabel.data_specs.shards import KEY_HEX_CHARS, shard_name
from lakelabel.pipeline.ingest.worker import (
    HEIGHT,
    NBYTES,
    NO_SHA256,
    NUMBERS_PER_FILE,
    UNDECIDED_NUMBERS,
    WIDTH,
    BatchResult,
)
from lakelabel.pipeline.lake_index import uri_digests

if TYPE_CHECKING:
    import pyarrow as pa


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Manifest columns filled per row (``run_id`` and ``ingested_at`` are set per unit at commit).
#: (The manifest contract loads pyarrow; ingest imports it when it first writes or reads a part,
#: after the workers have started: tests/pipeline/test_ingest.py checks these names against it.)
_ROW_COLUMNS = (
    "source_uri",
    "status",
    "reason",
    "key",
    "shard",
    "width",
    "height",
    "bytes",
    "sha256",
    "format",
    "reencoded",
)

#: Row status codes, in the order of the manifest contract's ``STATUSES`` (the writer keeps a
#: status per row as one byte; tests/pipeline/test_ingest.py checks the order against it).
STATUS_CODES = ("sharded", "duplicate", "rejected", "skipped")
SHARDED, DUPLICATE, REJECTED, SKIPPED = range(4)
_NUMBERS_ROW_BYTES = NUMBERS_PER_FILE * 8
_NO_SHARD = array("i", [-1]).tobytes()  # a row's shard number when it has none


class _UnitRows:
    """Manifest rows of the open unit, column-wise: row ranges of worker batches, and skips.

    A batch chunk is ``(batch, a, b, status, shard)``: rows ``a:b`` of ``batch`` with their
    status codes (int8 bytes) and shard numbers (int32 bytes, -1 for none). Consecutive skipped
    files gather in one chunk ``(uris, reasons)``. The Arrow table is built from these buffers
    at commit, with no per-row Python for the packed columns.
    """

    def __init__(self) -> None:
        self.chunks: list[tuple] = []
        self.n = 0

    def add_rows(self, batch: BatchResult, a: int, b: int, status: bytes, shard: bytes) -> None:
        if a < b:
            self.chunks.append((batch, a, b, status, shard))
            self.n += b - a

    def add_skip(self, uri: str, reason: str) -> None:
        if not self.chunks or len(self.chunks[-1]) != 2:
            self.chunks.append(([], []))
        uris, reasons = self.chunks[-1]
        uris.append(uri)
        reasons.append(reason)
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def uri_digests(self) -> bytes:
        """The index's digest of each row's source URI, in row order (the workers computed most)."""
        parts = []
        for chunk in self.chunks:
            if len(chunk) == 2:
                parts.append(uri_digests(chunk[0]))
            else:
                batch, a, b = chunk[:3]
                digests = batch.uri_digests
                parts.append(
                    digests[a * 16 : b * 16] if digests is not None else uri_digests(batch.uris[a:b])
                )
        return b"".join(parts)

    def table(self, run_id: str, at: datetime) -> pa.Table:
        import numpy as np
        import pyarrow as pa

        from lakelabel.data_specs.columns import (
            arrow_array,
            fixed_width_strings,
            integers,
            repeated_string,
            strings_by_code,
        )
        from lakelabel.data_specs.manifest import MANIFEST_SCHEMA, validate_manifest

        n = self.n
        uris: list[str] = []
        reasons: list[str | None] = []
        formats: list[str | None] = []
        reencoded: list[bool | None] = []
        hexes, numbers, status, shard = [], [], [], []
        for chunk in self.chunks:
            if len(chunk) == 2:
                k = len(chunk[0])
                uris += chunk[0]
                reasons += chunk[1]
                formats += [None] * k
                reencoded += [None] * k
                hexes.append(NO_SHA256 * k)
                numbers.append(UNDECIDED_NUMBERS * k)
                status.append(bytes([SKIPPED]) * k)
                shard.append(_NO_SHARD * k)
                continue
            batch, a, b, chunk_status, chunk_shard = chunk
            uris += batch.uris[a:b]
            reasons += batch.reasons[a:b]
            formats += batch.formats[a:b]
            reencoded += batch.reencoded[a:b]
            hexes.append(batch.hexes[a * 64 : b * 64])
            numbers.append(batch.numbers[a * _NUMBERS_ROW_BYTES : b * _NUMBERS_ROW_BYTES])
            status.append(chunk_status)
            shard.append(chunk_shard)
        hex_data = b"".join(hexes)
        nums = np.frombuffer(b"".join(numbers), dtype=np.int64).reshape(n, NUMBERS_PER_FILE)
        codes = np.frombuffer(b"".join(status), dtype=np.int8)
        shards = np.frombuffer(b"".join(shard), dtype=np.int32)
        has_sha = np.frombuffer(hex_data, dtype=np.uint8)[::64] != 0
        has_key = codes <= DUPLICATE
        used = np.unique(shards[shards >= 0])
        columns = {
            "source_uri": arrow_array(uris, pa.string()),
            "status": strings_by_code(STATUS_CODES, codes.astype(np.int32)),
            "reason": arrow_array(reasons, pa.string()),
            "key": fixed_width_strings(
                np.frombuffer(hex_data, dtype=np.uint8).reshape(n, 64)[:, :KEY_HEX_CHARS].tobytes(),
                KEY_HEX_CHARS,
                has_key,
            ),
            "shard": strings_by_code(
                [shard_name(int(i)) for i in used], np.where(shards >= 0, np.searchsorted(used, shards), -1)
            ),
            "width": integers(nums[:, WIDTH], pa.int32()),
            "height": integers(nums[:, HEIGHT], pa.int32()),
            "bytes": integers(nums[:, NBYTES], pa.int64()),
            "sha256": fixed_width_strings(hex_data, 64, has_sha),
            "format": arrow_array(formats, pa.string()),
            "reencoded": arrow_array(reencoded, pa.bool_()),
        }
        arrays = [columns[name] for name in _ROW_COLUMNS]
        arrays.append(repeated_string(run_id, n))
        at_ms = (at - _EPOCH) // timedelta(milliseconds=1)
        at_column = integers(np.full(n, at_ms, dtype=np.int64), pa.int64(), null=None)
        arrays.append(at_column.view(MANIFEST_SCHEMA.field("ingested_at").type))
        return validate_manifest(pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA))


@dataclass
class IngestCounts:
    found: int = 0
    already_ingested: int = 0
    sharded: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: int = 0
    shards_written: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _write_part(table: pa.Table, f) -> None:
    """Write one manifest part (zstd; dictionary pages only for the few-valued columns: on the
    unique ones a dictionary is tried and dropped, costing time and bytes)."""
    import pyarrow.parquet as pq

    pq.write_table(table, f, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS)


#: manifest columns with few distinct values per part
_DICTIONARY_COLUMNS = ["status", "reason", "shard", "format", "reencoded", "run_id"]
