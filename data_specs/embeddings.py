"""Embeddings contract: per-shard matrices written by ``lakelabel embed``. See ``data_specs/embeddings.md``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_specs.shards import KEY_RE
from data_specs.validation import ContractError, check_table

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
