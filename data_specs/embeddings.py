"""Embeddings contract: per-shard matrices written by ``lakelabel embed``. See
``data_specs/embeddings.md``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.shards import KEY_RE
from lakelabel.data_specs.validation import ContractError, check_table

EMBEDDINGS_SCHEMA_VERSION = "1"
#: ``emb-NNNNNN`` mirrors ``shard-NNNNNN.tar``: one part per shard.
PART_RE = re.compile(r"^emb-(\d{6,})\.parquet$")
DTYPES = ("float16", "float32")
META_FIELDS = (
    "schema_version",
    "encoder",
    "encoder_sha256",
    "backbone",
    "small_stem",
    "image_size",
    "dim",
    "dtype",
    "normalized",
)

#: Row keys of ``emb-NNNNNN.npy`` in row order; the Parquet file is the part's commit marker.
EMBEDDING_KEYS_SCHEMA = pa.schema(
    [pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)],
    metadata={"lakelabel.contract": "embeddings", "lakelabel.schema_version": EMBEDDINGS_SCHEMA_VERSION},
)


def part_names(shard: str) -> tuple[str, str]:
    """``(keys parquet, matrix npy)`` file names of the embedding part of ``shard-NNNNNN.tar``."""
    number = shard.removeprefix("shard-").removesuffix(".tar")
    return f"emb-{number}.parquet", f"emb-{number}.npy"


def embeddings_dir_name(encoder: str, encoder_sha256: str) -> str:
    """``<encoder>-<first 12 hex of its sha256>``: a new encoder never mixes with old embeddings.
    Characters other than letters, digits, ``_``, ``.`` and ``-`` become ``-`` (``timm:x`` → ``timm-x``)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', encoder)}-{encoder_sha256[:12]}"


def validate_meta(meta: dict) -> dict:
    missing = [f for f in META_FIELDS if f not in meta]
    if missing:
        raise ContractError(f"embeddings meta.json: missing field(s) {missing}")
    if meta["dtype"] not in DTYPES:
        raise ContractError(f"embeddings meta.json: dtype {meta['dtype']!r} not one of {DTYPES}")
    if not isinstance(meta["dim"], int) or meta["dim"] < 1:
        raise ContractError(f"embeddings meta.json: dim must be a positive int, got {meta['dim']!r}")
    return meta


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise ContractError(f"{str(path)!r} not found: not an embeddings directory")
    return validate_meta(json.loads(path.read_text()))


def validate_part(keys: pa.Table, matrix: np.ndarray, meta: dict) -> pa.Table:
    """Check one part (keys table + matrix) against the contract and ``meta``; returns the keys table."""
    keys = check_table(keys, EMBEDDING_KEYS_SCHEMA, "embeddings keys")
    if matrix.ndim != 2 or matrix.shape != (keys.num_rows, meta["dim"]):
        raise ContractError(
            f"embeddings: matrix shape {matrix.shape} != ({keys.num_rows} keys, dim {meta['dim']})"
        )
    if matrix.dtype != np.dtype(meta["dtype"]):
        raise ContractError(f"embeddings: matrix dtype {matrix.dtype} != meta dtype {meta['dtype']}")
    key_col = keys.column("key")
    if pc.count_distinct(key_col).as_py() != keys.num_rows:
        raise ContractError("embeddings: duplicate keys in one part")
    for key in key_col.to_pylist():
        if not KEY_RE.match(key):
            raise ContractError(f"embeddings: key {key!r} is not 32 lowercase hex characters")
    return keys


@dataclass
class Embeddings:
    """The committed parts of one embeddings directory. Per part: :meth:`part` (its rows);
    :meth:`sample` (a bounded uniform sample); ``keys``/``shards``/:meth:`matrix` hold every row and are
    for lakes that fit in memory (read on first use)."""

    directory: Path
    meta: dict
    parts: list[tuple[str, int]]  # (npy path, rows) in shard order

    @property
    def n(self) -> int:
        return sum(rows for _, rows in self.parts)

    @cached_property
    def keys(self) -> np.ndarray:
        return self._key_column("key")

    @cached_property
    def shards(self) -> np.ndarray:
        return self._key_column("shard")

    def _key_column(self, name: str) -> np.ndarray:
        columns = [self.part_keys(i).column(name) for i in range(len(self.parts))]
        return np.concatenate([c.to_numpy(zero_copy_only=False) for c in columns])

    def part_keys(self, i: int) -> pa.Table:
        """Part ``i``'s ``key``/``shard`` table, in its rows' order."""
        return pq.read_table(Path(self.parts[i][0]).with_suffix(".parquet"))

    def keys_at(self, rows: np.ndarray) -> pa.Table:
        """``key``/``shard`` of the global row indices ``rows`` (sorted), reading only their parts."""
        tables = [self.part_keys(i).take(pa.array(local)) for i, local in self._local_rows(rows)]
        return pa.concat_tables(tables) if tables else EMBEDDING_KEYS_SCHEMA.empty_table()

    def _local_rows(self, rows: np.ndarray):
        """``(part index, its local row indices)`` of the sorted global ``rows`` (parts without one
        are left out)."""
        start = 0
        for i, (_, n) in enumerate(self.parts):
            local = rows[(rows >= start) & (rows < start + n)] - start
            if len(local):
                yield i, local
            start += n

    def part(self, i: int, dtype=np.float32) -> np.ndarray:
        """Part ``i``'s matrix ``(rows, dim)``."""
        return np.load(self.parts[i][0]).astype(dtype, copy=False)

    def unit_part(self, i: int) -> np.ndarray:
        """Part ``i``'s rows as unit-norm float32 (stored float16 rows are only near unit norm)."""
        return unit_rows(self.part(i, np.float32))

    def matrix(self, dtype=np.float32) -> np.ndarray:
        """Every row in memory (N × dim); for lakes that fit. :meth:`part` and :meth:`sample` stream."""
        return (
            np.concatenate([self.part(i, dtype) for i in range(len(self.parts))])
            if self.parts
            else np.empty((0, self.meta["dim"]), dtype)
        )

    def sample(self, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of at most ``size`` rows: ``(global row indices, sorted; their unit-norm
        float32 vectors)``, read part by part (memory: the sample, not the lake). All rows, in order,
        when the lake has at most ``size``."""
        pick = self.sample_rows(size, seed)
        return pick, self.take(pick)

    def sample_rows(self, size: int, seed: int) -> np.ndarray:
        """The sorted global rows of :meth:`sample` (no N-long permutation)."""
        if size < 1:
            raise ValueError(f"sample size must be >= 1, got {size}")
        n = self.n
        return (
            np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if n > size else np.arange(n)
        )

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Unit-norm float32 vectors of the sorted global ``rows``, reading only their parts' rows."""
        out = [
            np.asarray(np.load(self.parts[i][0], mmap_mode="r")[local], dtype=np.float32)
            for i, local in self._local_rows(rows)
        ]
        return unit_rows(np.concatenate(out)) if out else np.empty((0, self.meta["dim"]), np.float32)

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """The global row of each of ``keys`` (−1 where not embedded), reading the keys part by part."""
        wanted = pa.array(np.asarray(keys, dtype=object), pa.string())
        out = np.full(len(wanted), -1, np.int64)
        start = 0
        for i, (_, n) in enumerate(self.parts):
            part = self.part_keys(i).column("key")
            at = pc.index_in(wanted, value_set=part)
            found = at.is_valid().to_numpy(zero_copy_only=False)
            out[found] = start + at.fill_null(0).to_numpy()[found]
            start += n
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` ``(n, dim)`` float32 with each row scaled to unit norm, in place."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def read_embeddings(directory: str | Path, validate: bool = True) -> Embeddings:
    """Open an embeddings directory (committed parts only, in shard order); each part is checked
    against the contract, and no part's rows stay in memory."""
    directory = Path(directory)
    meta = read_meta(directory)
    parts = []
    for keys_path in sorted(directory.glob("emb-*.parquet")):
        npy = keys_path.with_suffix(".npy")
        if validate:
            rows = validate_part(pq.read_table(keys_path), np.load(npy, mmap_mode="r"), meta).num_rows
        else:
            rows = pq.ParquetFile(keys_path).metadata.num_rows
        parts.append((str(npy), rows))
    if not parts:
        raise FileNotFoundError(
            f"no committed embedding parts under {str(directory)!r}; run `lakelabel embed`"
        )
    return Embeddings(directory, meta, parts)


def find_embeddings(root: str | Path, encoder: str | None = None) -> Path:
    """The embeddings directory of ``encoder`` (a run name), or the only/newest one under ROOT."""
    base = Layout(root).embeddings
    dirs = [d for d in base.glob("*") if (d / "meta.json").is_file()]
    if encoder:
        dirs = [d for d in dirs if read_meta(d)["encoder"] == encoder or d.name == encoder]
    if not dirs:
        raise FileNotFoundError(
            f"no embeddings{' of encoder ' + repr(encoder) if encoder else ''} under {str(base)!r}; "
            "run `lakelabel embed` first"
        )
    return max(dirs, key=lambda d: (d / "meta.json").stat().st_mtime)


def embeddings_of_encoder(root: str | Path, encoder_sha256: str) -> Path:
    """The embeddings directory under ROOT made by the encoder of sha256 ``encoder_sha256`` (a label
    run records it): the newest when there are several."""
    dirs = [
        d
        for d in Layout(root).embeddings.glob("*")
        if (d / "meta.json").is_file() and read_meta(d)["encoder_sha256"] == encoder_sha256
    ]
    if not dirs:
        raise FileNotFoundError(
            f"no embeddings of the encoder {encoder_sha256[:12]} under {str(Layout(root).embeddings)!r}: "
            "embed with the encoder the labels were selected on"
        )
    return max(dirs, key=lambda d: (d / "meta.json").stat().st_mtime)
