"""What ROOT already holds, on disk: kept sample keys → shard, and the source URIs resolved.

Ingest asks two questions per file: "was this URI resolved by an earlier run?" and "is an image
with this content hash already in a shard?". Held in Python sets, the answers cost ~250 bytes of
RAM per file (a billion-file lake would need ~250 GB). :class:`LakeIndex` keeps them on disk in
``ROOT/manifest/_index/`` (the leading underscore keeps Parquet readers of ``ROOT/manifest``
away) as a log-structured merge of immutable sorted *runs*:

- Committed units are indexed a few at a time: their keys and URI digests are sorted in memory
  and written as one new run file (temp name, fsync, rename). Writing costs a sort and a
  sequential write, ~0.1 µs a row; an in-place B-tree (SQLite, before) dirtied a page per
  random key, ~1.8 µs a row.
- Runs are tiered: when :data:`FANOUT` runs of one tier exist they are merged, a block at a
  time (memory stays bounded), into one run of the next tier. A lake of N files has
  O(FANOUT · log N) runs, and every row is rewritten O(log N) times.
- A lookup binary-searches each run's memory-mapped columns; only the touched pages are read.

The index is a cache of the manifest, which stays the source of truth. At start-up
:meth:`LakeIndex.sync` indexes every committed part the index lacks (a crash between a part and
its index run), drops a run that a merged run already covers (a crash during a merge), and
rebuilds the index from the manifest when it holds a part the manifest does not (a part removed
by crash recovery or by hand) or a run cannot be read. Keys are stored as their 16 bytes, URIs
as the first 16 bytes of their SHA-256, each split into two 64-bit words; runs are sorted by the
first.

Run file layout (little-endian int64/uint64 words): a 64-byte header (magic, tier, number of
parts, keys, URIs), then per part (part, URIs, kept keys), then the columns key_hi, key_lo,
key_shard, uri_hi, uri_lo.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lakelabel.data_specs.shards import key_for_sha256
from lakelabel.pipeline.atomic import atomic_write, fsync_dir

if TYPE_CHECKING:
    import numpy as np

#: folder of the run files, under ``ROOT/manifest``
INDEX_DIR = "_index"
#: runs of one tier merged into one run of the next tier
FANOUT = 8
#: records a merge takes from each run per step (bounds a merge's memory)
MERGE_BLOCK = 1 << 18
#: index rows gathered per run while :meth:`LakeIndex.sync` re-indexes parts
SYNC_BATCH_ROWS = 1_000_000
_MAGIC = b"LLINDEX2"  # 2: URI digests are SHA-256 (1 was BLAKE2b)
_HEADER = struct.Struct("<8s4q24x")  # magic, tier, parts, keys, URIs; 64 bytes


def uri_digest(uri: str) -> bytes:
    """First 16 bytes of the SHA-256 of a source URI's UTF-8 (what the index stores instead of the
    URI). The compiled core computes the same in the workers (``scan_plain_jpegs``)."""
    return uri_digests([uri])


def uri_digests(uris: Iterable[str]) -> bytes:
    """:func:`uri_digest` of each URI, concatenated."""
    sha256 = hashlib.sha256
    return b"".join([sha256(uri.encode("utf-8", "surrogatepass")).digest()[:16] for uri in uris])


def _words(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated 16-byte records → their first and second 64-bit words (big-endian values)."""
    import numpy as np

    pairs = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


def _records(hi: np.ndarray, lo: np.ndarray) -> bytes:
    """Inverse of :func:`_words`."""
    import numpy as np

    pairs = np.empty((len(hi), 2), dtype=">u8")
    pairs[:, 0], pairs[:, 1] = hi, lo
    return pairs.tobytes()


def find_sorted(hi: np.ndarray, lo: np.ndarray, query_hi: np.ndarray, query_lo: np.ndarray) -> np.ndarray:
    """Row of each query (``query_hi[i]``, ``query_lo[i]``) in a run, or -1.

    Shapes: ``hi``, ``lo`` (n,) uint64 with ``hi`` ascending; queries (q,) uint64 → (q,) int64.
    Rows sharing ``hi`` (a 64-bit prefix collision: ~3 % odds somewhere in 10⁹ random keys) are
    scanned one by one.
    """
    import numpy as np

    found = np.full(len(query_hi), -1, dtype=np.int64)
    if not len(hi) or not len(query_hi):
        return found
    left = np.searchsorted(hi, query_hi, "left")
    right = np.searchsorted(hi, query_hi, "right")
    width = right - left
    single = np.flatnonzero(width == 1)
    rows = left[single]
    match = lo[rows] == query_lo[single]
    found[single[match]] = rows[match]
    for q in np.flatnonzero(width > 1).tolist():
        hits = np.flatnonzero(lo[left[q] : right[q]] == query_lo[q])
        if hits.size:
            found[q] = left[q] + hits[0]
    return found


class _Run:
    """One immutable run file; its columns are memory-mapped on first use."""

    def __init__(self, path: Path):
        import numpy as np

        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
            if len(head) != _HEADER.size:
                raise ValueError(f"index run {path} is too short")
            magic, self.tier, n_parts, self.n_keys, self.n_uris = _HEADER.unpack(head)
            expected = _HEADER.size + 8 * (3 * n_parts + 3 * self.n_keys + 2 * self.n_uris)
            if magic != _MAGIC or min(self.tier, n_parts, self.n_keys, self.n_uris) < 0 or size != expected:
                raise ValueError(f"index run {path} is damaged")
            #: (part, resolved URIs, kept keys) per part
            self.parts = np.frombuffer(f.read(24 * n_parts), dtype="<i8").reshape(-1, 3)
        self._columns: tuple[np.ndarray, ...] | None = None

    def columns(self) -> tuple[np.ndarray, ...]:
        """(key_hi, key_lo, key_shard, uri_hi, uri_lo), memory-mapped."""
        if self._columns is None:
            import numpy as np

            words = np.memmap(self.path, dtype="<u8", mode="r")
            at = (_HEADER.size + 24 * len(self.parts)) // 8
            sizes = [self.n_keys, self.n_keys, self.n_keys, self.n_uris, self.n_uris]
            columns = []
            for size in sizes:
                columns.append(words[at : at + size])
                at += size
            columns[2] = columns[2].view("<i8")
            self._columns = tuple(columns)
        return self._columns

    @property
    def part_numbers(self) -> set[int]:
        return set(self.parts[:, 0].tolist())


def _write_run(
    path: Path,
    tier: int,
    parts: np.ndarray,
    n_keys: int,
    n_uris: int,
    fill: Callable[[Callable[[int, int, np.ndarray], None]], None],
) -> None:
    """Write a run atomically; ``fill(put)`` calls ``put(column, row, values)`` for every block."""
    columns_at = _HEADER.size + 24 * len(parts)
    column_rows = [n_keys, n_keys, n_keys, n_uris, n_uris]
    starts = [columns_at + 8 * sum(column_rows[:c]) for c in range(5)]

    def write(f) -> None:
        f.write(_HEADER.pack(_MAGIC, tier, len(parts), n_keys, n_uris))
        f.write(parts.astype("<i8").tobytes())
        f.truncate(starts[-1] + 8 * n_uris)

        def put(column: int, row: int, values: np.ndarray) -> None:
            f.seek(starts[column] + 8 * row)
            f.write(values.astype("<i8" if column == 2 else "<u8").tobytes())

        fill(put)

    atomic_write(path, write)


def merge_sorted_blocks(
    runs: Sequence[Sequence[np.ndarray]], put: Callable[[int, list[np.ndarray]], None], block: int
) -> None:
    """Merge runs of columns sorted by their first column; ``put(row, columns)`` gets the output
    a block at a time, in order. At most ~``block`` rows per run are in memory at once."""
    import numpy as np

    at = [0] * len(runs)
    sizes = [len(columns[0]) for columns in runs]
    out = 0
    while True:
        live = [r for r in range(len(runs)) if at[r] < sizes[r]]
        if not live:
            return
        # every run's rows up to the smallest of their block ends: a sorted prefix of the output
        pivot = min(runs[r][0][min(at[r] + block, sizes[r]) - 1] for r in live)
        pieces = []
        for r in live:
            end = at[r] + int(np.searchsorted(runs[r][0][at[r] :], pivot, "right"))
            pieces.append([column[at[r] : end] for column in runs[r]])
            at[r] = end
        merged = [np.concatenate([piece[c] for piece in pieces]) for c in range(len(runs[0]))]
        order = np.argsort(merged[0], kind="stable")
        put(out, [column[order] for column in merged])
        out += len(order)


class KeyFilter:
    """Fixed-size Bloom filter over sample keys, so that most new keys skip the index lookup.

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
        if not keys:
            return []
        return self.maybe_contains_raw(bytes.fromhex("".join(keys))).tolist()

    def maybe_contains_raw(self, raw: bytes) -> np.ndarray:
        """:meth:`maybe_contains` for keys given as their concatenated 16-byte values: (k,) bool."""
        import numpy as np

        n = len(raw) // 16
        if not self.enabled:
            return np.ones(n, dtype=bool)
        if not n or self._bits is None:  # nothing added yet
            return np.zeros(n, dtype=bool)
        pos = self._positions(raw)
        hits = (self._bits[pos >> 3] >> (pos & 7).astype("u1")) & 1
        return hits.all(axis=1)


@dataclass(frozen=True)
class IndexedUnit:
    """One unit's index rows, ready to insert: 16-byte keys and URI digests, concatenated."""

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
    """Run-file index of a ROOT's committed units (see the module docstring).

    One writer (the ingest holding ROOT's lock; :meth:`sync` and :meth:`add_units` from one
    thread at a time) and lookups from another thread are fine: runs are immutable, and the
    writer swaps in a new list of them.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob(".*.tmp"):  # a run being written when a run stopped
            tmp.unlink()
        self._runs: list[_Run] = []
        self.was_unreadable = False
        try:
            self._runs = [_Run(path) for path in sorted(self.path.glob("run-*.idx"))]
        except (OSError, ValueError):
            self.was_unreadable = True
        self.key_filter = KeyFilter(enabled=False)  # every key is looked up until sync() loads it

    def close(self) -> None:
        self._runs = []

    def _remove_all(self) -> None:
        for run in self._runs:
            run.path.unlink(missing_ok=True)
        for path in self.path.glob("run-*.idx"):
            path.unlink()
        self._runs = []

    # -- start-up ---------------------------------------------------------------------------------
    def sync(self, manifest_dir: Path, committed: Sequence[int]) -> dict[str, int]:
        """Bring the index up to the committed manifest parts; returns how many parts it indexed.

        ``committed`` are the part numbers whose ``part-NNNNNN.parquet`` exists.
        """
        committed_set = set(committed)
        self._drop_merged_inputs()
        indexed: set[int] = set()
        overlap = False
        for run in self._runs:
            numbers = run.part_numbers
            overlap = overlap or not indexed.isdisjoint(numbers)
            indexed |= numbers
        rebuilt = self.was_unreadable or overlap or not indexed <= committed_set
        if rebuilt:
            self._remove_all()
            indexed = set()
            self.was_unreadable = False
        missing = sorted(committed_set - indexed)
        waiting: list[IndexedUnit] = []
        rows = 0
        for part in missing:
            import pyarrow.parquet as pq

            table = pq.read_table(
                manifest_dir / f"part-{part:06d}.parquet", columns=["source_uri", "status", "sha256"]
            )
            status = table.column("status").to_pylist()
            sha = table.column("sha256").to_pylist()
            kept = [key_for_sha256(s) for st, s in zip(status, sha, strict=True) if st == "sharded"]
            waiting.append(self.prepare_unit(part, kept, table.column("source_uri").to_pylist()))
            rows += waiting[-1].n_keys + waiting[-1].n_uris
            if rows >= SYNC_BATCH_ROWS:
                self.add_units(waiting)
                waiting, rows = [], 0
        self.add_units(waiting)
        self._load_filter()
        return {"indexed_parts": len(missing), "rebuilt": int(rebuilt)}

    def _drop_merged_inputs(self) -> None:
        """Remove runs whose parts a higher-tier run holds: a merge's inputs, left by a crash
        between writing the merged run and removing them."""
        keep = []
        for run in self._runs:
            numbers = run.part_numbers
            if any(o.tier > run.tier and numbers <= o.part_numbers for o in self._runs):
                run.path.unlink()
            else:
                keep.append(run)
        self._runs = keep

    def _load_filter(self) -> None:
        """Fill :attr:`key_filter` with the kept keys (a block at a time), unless there are more
        than it holds."""
        self.key_filter = KeyFilter()
        if sum(run.n_keys for run in self._runs) > self.key_filter.capacity:
            self.key_filter.disable()
            return
        for run in self._runs:
            key_hi, key_lo = run.columns()[:2]
            for at in range(0, run.n_keys, MERGE_BLOCK):
                self.key_filter.add_raw(
                    _records(key_hi[at : at + MERGE_BLOCK], key_lo[at : at + MERGE_BLOCK])
                )

    # -- writes -----------------------------------------------------------------------------------
    @staticmethod
    def prepare_unit(part: int, keys: Iterable[str], uris: Iterable[str]) -> IndexedUnit:
        """What :meth:`add_units` stores for one committed unit: its kept keys (hex) and the
        digests of every URI it resolved, each as one blob (no sorting or writing yet)."""
        return IndexedUnit(part, bytes.fromhex("".join(keys)), uri_digests(uris))

    def add_units(self, units: Sequence[IndexedUnit]) -> None:
        """Index committed units as one new run (sorted in memory, written atomically), then
        merge runs while a tier holds :data:`FANOUT` of them."""
        if not units:
            return
        import numpy as np

        key_hi, key_lo = _words(b"".join(unit.keys for unit in units))
        shards = np.repeat(np.array([unit.part for unit in units], dtype=np.int64), [u.n_keys for u in units])
        uri_hi, uri_lo = _words(b"".join(unit.uris for unit in units))
        key_order = np.argsort(key_hi, kind="stable")
        uri_order = np.argsort(uri_hi, kind="stable")
        parts = np.array([(unit.part, unit.n_uris, unit.n_keys) for unit in units], dtype=np.int64)

        def fill(put) -> None:
            for column, values in enumerate((key_hi, key_lo, shards)):
                put(column, 0, values[key_order])
            put(3, 0, uri_hi[uri_order])
            put(4, 0, uri_lo[uri_order])

        self._add_run(0, parts, len(key_hi), len(uri_hi), fill)
        self._merge_full_tiers()

    def _add_run(self, tier: int, parts: np.ndarray, n_keys: int, n_uris: int, fill) -> None:
        first, last = int(parts[:, 0].min()), int(parts[:, 0].max())
        path = self.path / f"run-{first:06d}-{last:06d}-t{tier}.idx"
        n = 0
        while path.exists():  # the same parts again (a re-index)
            n += 1
            path = self.path / f"run-{first:06d}-{last:06d}-t{tier}-{n}.idx"
        _write_run(path, tier, parts, n_keys, n_uris, fill)
        fsync_dir(self.path)
        self._runs = [*self._runs, _Run(path)]

    def _merge_full_tiers(self) -> None:
        while True:
            tiers: dict[int, list[_Run]] = {}
            for run in self._runs:
                tiers.setdefault(run.tier, []).append(run)
            full = sorted(tier for tier, runs in tiers.items() if len(runs) >= FANOUT)
            if not full:
                return
            self._merge(tiers[full[0]][:FANOUT], full[0] + 1)

    def _merge(self, runs: list[_Run], tier: int) -> None:
        """Merge ``runs`` into one run of ``tier``: write it, then remove them."""
        import numpy as np

        columns = [run.columns() for run in runs]

        def fill(put) -> None:
            for first, width in ((0, 3), (3, 2)):  # the key columns, then the URI columns

                def put_block(row: int, block: list, first: int = first) -> None:
                    for column, values in enumerate(block):
                        put(first + column, row, values)

                merge_sorted_blocks([c[first : first + width] for c in columns], put_block, MERGE_BLOCK)

        parts = np.concatenate([run.parts for run in runs])
        self._add_run(tier, parts, sum(r.n_keys for r in runs), sum(r.n_uris for r in runs), fill)
        self._runs = [run for run in self._runs if run not in runs]
        for run in runs:
            run.path.unlink()

    # -- reads ------------------------------------------------------------------------------------
    def has_uris(self) -> bool:
        return any(run.n_uris for run in self._runs)

    def shards_of(self, keys: Sequence[str]) -> dict[str, int]:
        """``{key: shard index}`` for the keys (hex) that are already kept; the others are absent.

        Only keys that :attr:`key_filter` may hold are looked up; the caller adds the keys it
        keeps to the filter as it takes them (``key_filter.add_raw``).
        """
        maybe = self.key_filter.maybe_contains(keys)
        if not any(maybe):
            return {}
        import numpy as np

        keys = [k for k, m in zip(keys, maybe, strict=True) if m]
        query_hi, query_lo = _words(bytes.fromhex("".join(keys)))
        shard = np.full(len(keys), -1, dtype=np.int64)
        for run in self._runs:
            key_hi, key_lo, key_shard = run.columns()[:3]
            rows = find_sorted(key_hi, key_lo, query_hi, query_lo)
            hit = rows >= 0
            shard[hit] = key_shard[rows[hit]]
        return {key: s for key, s in zip(keys, shard.tolist(), strict=True) if s >= 0}

    def resolved(self, uris: Sequence[str]) -> list[bool]:
        """For each URI, whether an earlier unit already resolved it."""
        if not uris or not self._runs:
            return [False] * len(uris)
        import numpy as np

        query_hi, query_lo = _words(uri_digests(uris))
        done = np.zeros(len(uris), dtype=bool)
        for run in self._runs:
            uri_hi, uri_lo = run.columns()[3:]
            done |= find_sorted(uri_hi, uri_lo, query_hi, query_lo) >= 0
        return done.tolist()

    def counts(self) -> dict[str, int]:
        """Parts, distinct kept keys and distinct resolved URIs in the index (reads every run)."""
        import numpy as np

        def distinct(first: int) -> int:
            pairs = [np.stack(run.columns()[first : first + 2], axis=1) for run in self._runs]
            return len(np.unique(np.concatenate(pairs), axis=0)) if pairs else 0

        return {
            "parts": int(sum(len(run.parts) for run in self._runs)),
            "kept": distinct(0),
            "uris": distinct(3),
        }
