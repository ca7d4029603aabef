"""Contracts between lakelabel stages: schemas, names and validators (see the ``*.md`` files here)."""

from data_specs.manifest import MANIFEST_SCHEMA, STATUSES, validate_manifest
from data_specs.shards import KEY_RE, SHARD_NAME_RE, key_for_sha256, shard_index, shard_name
from data_specs.validation import ContractError

__all__ = [
    "MANIFEST_SCHEMA",
    "STATUSES",
    "validate_manifest",
    "KEY_RE",
    "SHARD_NAME_RE",
    "key_for_sha256",
    "shard_index",
    "shard_name",
    "ContractError",
]
