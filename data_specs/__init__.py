"""Contracts between lakelabel stages: schemas, names and validators (see the ``*.md`` files here).

The Arrow contracts (``MANIFEST_SCHEMA``, ``STATUSES``, ``validate_manifest``) load pyarrow on
first use, so that shard names and keys cost no Arrow import.
"""

from lakelabel.data_specs.errors import ContractError
from lakelabel.data_specs.shards import KEY_RE, SHARD_NAME_RE, key_for_sha256, shard_index, shard_name

_FROM_MANIFEST = ("MANIFEST_SCHEMA", "STATUSES", "validate_manifest")

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


def __getattr__(name: str):
    if name in _FROM_MANIFEST:
        from lakelabel.data_specs import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'data_specs' has no attribute {name!r}")
