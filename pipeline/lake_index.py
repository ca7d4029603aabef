"""What ROOT already holds, on disk: kept sample keys → shard, and the source URIs resolved.

Ingest asks two questions per file: "was this URI resolved by an earlier run?" and "is an image
with this content hash already in a shard?". Held in Python sets, the answers cost ~250 bytes of
RAM per file (a billion-file lake would need ~250 GB). :class:`LakeIndex` keeps them in SQLite
instead (``ROOT/manifest/_index.sqlite``; the leading underscore keeps Parquet readers of
``ROOT/manifest`` away), with a bounded page cache, queried a batch at a time.

The index is a cache of the manifest, which stays the source of truth. A unit is indexed in one
transaction right after its manifest part lands; at start-up :meth:`LakeIndex.sync` indexes every
committed part the index lacks (a crash between the two) and rebuilds the index from the manifest
when it holds a part the manifest does not (a part removed by crash recovery or by hand) or
cannot be opened. Keys are stored as their 16 bytes, URIs as a 16-byte BLAKE2b digest.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data_specs.shards import key_for_sha256

if TYPE_CHECKING:
    import numpy as np

#: Rows per SQL ``IN (...)`` lookup (well under SQLite's host-parameter limit).
LOOKUP_CHUNK = 500
INDEX_FILE = "_index.sqlite"
_SCHEMA_VERSION = "1"


def uri_digest(uri: str) -> bytes:
    """16-byte BLAKE2b digest of a source URI (what the index stores instead of the URI)."""
    return hashlib.blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=16).digest()


#: Numbers 0 .. ?1 - 1: one row per 16-byte record of a blob, split inside SQLite.
_EACH_RECORD = "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?1) "


def _sorted_records(blob: bytes) -> tuple[bytes, np.ndarray]:
    """16-byte records of ``blob`` in byte order (as SQLite compares BLOBs), and that order."""
    import numpy as np

    words = np.frombuffer(blob, dtype=">u8").reshape(-1, 2)
    order = np.lexsort((words[:, 1], words[:, 0]))
    return words[order].tobytes(), order


def _decimal_digits(values: np.ndarray) -> bytes:
    """Each value as 10 ASCII digits, zero-padded (SQLite reads them back with CAST)."""
    import numpy as np

    digits = values.astype(np.int64)[:, None] // 10 ** np.arange(9, -1, -1, dtype=np.int64) % 10
    return (digits + 48).astype(np.uint8).tobytes()


class KeyFilter:
    """Fixed-size Bloom filter over sample keys, so that most new keys skip the SQLite lookup.

    Keys are the leading 128 bits of a sha256, already uniform: their four 32-bit words, shifted
    to ``bits`` wide, are the four probe positions (no hashing). Memory is fixed at
    ``2**bits / 8`` bytes (16 MiB by default, ~1 % false positives at 13 M keys). Past
    ``capacity`` keys the filter switches itself off and every key goes to the index: slower,
    never wrong, and memory stays flat however large the lake grows.
    """

    def __init__(self, bits: int = 27, capacity: int = 13_000_000, enabled: bool = True):
        if not 8 <= bits <= 32:
            raise ValueError(f"bits must be in 8..32, got {bits}")
        self._shift = 32 - bits
        self._bits: np.ndarray | None = None  # allocated (and NumPy loaded) by the first add
        self._size = 1 << (bits - 3)
        self.capacity = capacity
        self.count = 0
        self.enabled = enabled

    def _positions(self, raw: bytes) -> np.ndarray:
        import numpy as np

        words = np.frombuffer(raw, dtype="<u4").reshape(-1, 4)
        return words >> np.uint32(self._shift)

    def add(self, keys: Sequence[str]) -> None:
        """Add hex keys."""
        if keys:
            self.add_raw(bytes.fromhex("".join(keys)))

    def add_raw(self, raw: bytes) -> None:
        """Add keys given as their concatenated 16-byte values."""
        if not self.enabled or not raw:
            return
        import numpy as np

        self.count += len(raw) // 16
        if self.count > self.capacity:
            self.disable()
            return
        if self._bits is None:
            self._bits = np.zeros(self._size, dtype=np.uint8)
        pos = self._positions(raw).ravel()
        np.bitwise_or.at(self._bits, pos >> 3, (1 << (pos & 7)).astype(np.uint8))

    def disable(self) -> None:
        self.enabled = False
        self._bits = None

    def maybe_contains(self, keys: Sequence[str]) -> list[bool]:
        """Per key: False means certainly not added; True means "ask the index"."""
        if not self.enabled:
            return [True] * len(keys)
        if not keys or self._bits is None:  # nothing added yet
            return [False] * len(keys)
        pos = self._positions(bytes.fromhex("".join(keys)))
        hits = (self._bits[pos >> 3] >> (pos & 7).astype("u1")) & 1
        return hits.all(axis=1).tolist()


@dataclass(frozen=True)
class IndexedUnit:
    """One unit's index rows, ready to insert: sorted 16-byte keys and URI digests."""

    part: int
    keys: bytes
    uris: bytes

    @property
    def n_keys(self) -> int:
        return len(self.keys) // 16

    @property
    def n_uris(self) -> int:
        return len(self.uris) // 16


class LakeIndex:
    """SQLite index of a ROOT's committed units.

    One writer (the ingest holding ROOT's lock; :meth:`sync` and :meth:`add_unit` from one thread
    at a time) and lookups from another thread are fine.
    """

    def __init__(self, path: str | Path, cache_mb: int = 16):
        if cache_mb <= 0:
            raise ValueError(f"cache_mb must be > 0, got {cache_mb}")
        self.path = Path(path)
        self.cache_mb = cache_mb
        self.was_unreadable = False
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:  # not a database (or damaged): it is only a cache, start over
            self.was_unreadable = True
            self._remove_files()
            self._db = self._open()
        # Lookups use their own connection: with WAL, they read committed units while another
        # thread writes the next one (ingest commits units in the background).
        self._reader = self._connect()
        self.key_filter = KeyFilter(enabled=False)  # every key is looked up until sync() loads it
        #: rows (kept keys + resolved URIs) indexed so far; counted by sync() and add_units()
        self.rows = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Never change the page size after this: SQLite turns a size in KiB into a page count.
        db.execute(f"PRAGMA cache_size=-{self.cache_mb * 1024}")
        return db

    def _open(self) -> sqlite3.Connection:
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")  # the first read: fails here if not a database
        except sqlite3.DatabaseError:
            db.close()
            raise
        db.execute("PRAGMA synchronous=NORMAL")  # a lost commit only means re-indexing a part
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS parts (part INTEGER PRIMARY KEY, rows INTEGER NOT NULL, kept INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS kept (key BLOB PRIMARY KEY, shard INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS seen (uri BLOB PRIMARY KEY) WITHOUT ROWID;
            """
        )
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
        return db

    def close(self) -> None:
        self._reader.close()
        self._db.close()

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def _reset(self) -> None:
        self.close()
        self._remove_files()
        self._db = self._open()
        self._reader = self._connect()

    # -- start-up ---------------------------------------------------------------------------------
    def sync(self, manifest_dir: Path, committed: Sequence[int]) -> dict[str, int]:
        """Bring the index up to the committed manifest parts; returns how many parts it indexed.

        ``committed`` are the part numbers whose ``part-NNNNNN.parquet`` exists.
        """
        committed_set = set(committed)
        try:
            version = self._db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            indexed = {row[0] for row in self._db.execute("SELECT part FROM parts")}
            healthy = version is not None and version[0] == _SCHEMA_VERSION
        except sqlite3.DatabaseError:
            indexed, healthy = set(), False
        rebuilt = self.was_unreadable or not healthy or not indexed <= committed_set
        if rebuilt:
            self._reset()
            indexed = set()
        missing = sorted(committed_set - indexed)
        for part in missing:
            import pyarrow.parquet as pq

            table = pq.read_table(
                manifest_dir / f"part-{part:06d}.parquet", columns=["source_uri", "status", "sha256"]
            )
            status = table.column("status").to_pylist()
            sha = table.column("sha256").to_pylist()
            kept = [key_for_sha256(s) for st, s in zip(status, sha, strict=True) if st == "sharded"]
            self.add_unit(part, kept, table.column("source_uri").to_pylist())
        self._load_filter()
        return {"indexed_parts": len(missing), "rebuilt": int(rebuilt)}

    def _load_filter(self) -> None:
        """Fill :attr:`key_filter` with the kept keys (streamed), unless there are more than it holds."""
        self.key_filter = KeyFilter()
        total, uris = self._db.execute(
            "SELECT coalesce(sum(kept), 0), coalesce(sum(rows), 0) FROM parts"
        ).fetchone()
        self.rows = total + uris
        if total > self.key_filter.capacity:
            self.key_filter.disable()
            return
        cursor = self._db.execute("SELECT key FROM kept")
        while rows := cursor.fetchmany(100_000):
            self.key_filter.add_raw(b"".join(row[0] for row in rows))

    # -- writes -----------------------------------------------------------------------------------
    @staticmethod
    def prepare_unit(part: int, keys: Iterable[str], uris: Iterable[str]) -> IndexedUnit:
        """What :meth:`add_units` stores for one committed unit: its kept keys (hex) and the
        digests of every URI it resolved, each as one blob (no database work; add_units sorts)."""
        return IndexedUnit(part, bytes.fromhex("".join(keys)), b"".join(uri_digest(uri) for uri in uris))

    def add_unit(self, part: int, keys: Iterable[str], uris: Iterable[str]) -> None:
        """Index one committed unit (see :meth:`add_units`)."""
        self.add_units([self.prepare_unit(part, keys, uris)])

    def add_units(self, units: Sequence[IndexedUnit]) -> None:
        """Index committed units in one transaction.

        All their keys go in as one sorted run per table, in one statement each: SQLite splits
        the blob of 16-byte values itself (no per-row Python), and sorted inserts walk the
        B-tree once. Random keys dirty about one leaf page each and a transaction writes each
        dirty page once, so several units per transaction write far fewer pages once the index
        outgrows a unit (500k files: 12 µs a file one unit at a time, ~3.5 µs in runs of 12).
        """
        if not units:
            return
        import numpy as np

        keys, order = _sorted_records(b"".join(unit.keys for unit in units))
        shards = np.repeat([unit.part for unit in units], [unit.n_keys for unit in units])[order]
        uris, _ = _sorted_records(b"".join(unit.uris for unit in units))
        db = self._db
        db.execute("BEGIN")
        try:
            if keys:
                db.execute(
                    _EACH_RECORD + "INSERT OR IGNORE INTO kept SELECT substr(?2, n * 16 + 1, 16), "
                    "CAST(CAST(substr(?3, n * 10 + 1, 10) AS TEXT) AS INTEGER) FROM i",
                    (len(keys) // 16, keys, _decimal_digits(shards)),
                )
            if uris:
                db.execute(
                    _EACH_RECORD + "INSERT OR IGNORE INTO seen SELECT substr(?2, n * 16 + 1, 16) FROM i",
                    (len(uris) // 16, uris),
                )
            db.executemany(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?)",
                [(unit.part, unit.n_uris, unit.n_keys) for unit in units],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.rows += sum(unit.n_keys + unit.n_uris for unit in units)

    # -- reads ------------------------------------------------------------------------------------
    def has_uris(self) -> bool:
        return self._reader.execute("SELECT 1 FROM seen LIMIT 1").fetchone() is not None

    def shards_of(self, keys: Sequence[str]) -> dict[str, int]:
        """``{key: shard index}`` for the keys (hex) that are already kept; the others are absent.

        Only keys that :attr:`key_filter` may hold are looked up; the caller adds the keys it
        keeps to the filter (``key_filter.add``) when it hands them to :meth:`add_unit`.
        """
        found: dict[str, int] = {}
        maybe = self.key_filter.maybe_contains(keys)
        if not all(maybe):
            keys = [k for k, m in zip(keys, maybe, strict=True) if m]
        for key, shard in self._select_in(
            "SELECT key, shard FROM kept WHERE key", [bytes.fromhex(k) for k in keys]
        ):
            found[key.hex()] = shard
        return found

    def resolved(self, uris: Sequence[str]) -> list[bool]:
        """For each URI, whether an earlier unit already resolved it."""
        digests = [uri_digest(u) for u in uris]
        done = {row[0] for row in self._select_in("SELECT uri FROM seen WHERE uri", digests)}
        return [d in done for d in digests]

    def _select_in(self, select_where: str, values: Sequence[bytes]) -> Iterator[tuple]:
        """Rows of ``<select_where> IN (values)``, asked ``LOOKUP_CHUNK`` values at a time."""
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            yield from self._reader.execute(f"{select_where} IN ({','.join('?' * len(chunk))})", chunk)

    def counts(self) -> dict[str, int]:
        db = self._reader
        return {
            "parts": db.execute("SELECT count(*) FROM parts").fetchone()[0],
            "kept": db.execute("SELECT count(*) FROM kept").fetchone()[0],
            "uris": db.execute("SELECT count(*) FROM seen").fetchone()[0],
        }
