"""Shard sample contract: WebDataset tar shards written by ``lakelabel ingest``.

See ``data_specs/shards.md``.
"""

from __future__ import annotations

import re

from lakelabel.data_specs.errors import ContractError

SHARD_SCHEMA_VERSION = "1"

#: Shard file names: ``shard-NNNNNN.tar`` (six or more digits), under ``ROOT/shards/``.
SHARD_NAME_RE = re.compile(r"^shard-(\d{6,})\.tar$")
#: Sample keys: 32 lowercase hex characters (the first 128 bits of the sha256 of the source bytes).
#: No dots or slashes: a dot in a WebDataset key silently merges samples.
KEY_RE = re.compile(r"^[0-9a-f]{32}$")
KEY_HEX_CHARS = 32

#: Fields of the ``<key>.json`` member of every sample.
SAMPLE_JSON_FIELDS: tuple[str, ...] = (
    "key",
    "source_uri",
    "sha256",
    "format",
    "mode",
    "width",
    "height",
    "original_width",
    "original_height",
    "bytes",
    "reencoded",
    "run_id",
)


def shard_name(index: int) -> str:
    """File name of shard number ``index`` (``shard-000042.tar``)."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"shard-{index:06d}.tar"


def shard_index(name: str) -> int:
    """Shard number from a file name; ``ContractError`` if it is not a shard name."""
    match = SHARD_NAME_RE.match(name)
    if not match:
        raise ContractError(f"not a shard file name: {name!r} (expected shard-NNNNNN.tar)")
    return int(match.group(1))


def key_for_sha256(sha256_hex: str) -> str:
    """The stable sample key of an image whose source bytes hash to ``sha256_hex``."""
    return sha256_hex[:KEY_HEX_CHARS]


def validate_sample_json(meta: dict) -> dict:
    """Check one sample's JSON metadata against the contract."""
    missing = [f for f in SAMPLE_JSON_FIELDS if f not in meta]
    if missing:
        raise ContractError(f"sample json: missing field(s) {missing}")
    if not KEY_RE.match(str(meta["key"])):
        raise ContractError(f"sample json: bad key {meta['key']!r} (expected 32 hex chars)")
    if key_for_sha256(meta["sha256"]) != meta["key"]:
        raise ContractError(f"sample json: key {meta['key']!r} does not match sha256 {meta['sha256']!r}")
    return meta
