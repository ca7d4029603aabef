"""Defaults of the ingest options, as plain constants (no pydantic).

:class:`pipeline.config.IngestConfig` takes its defaults from here, and the command line reads
them before pydantic loads (``lakelabel ingest`` starts its workers while the config validates).
"""

from __future__ import annotations

#: reject images with more pixels (decompression bombs): PIL's own default limit
MAX_PIXELS = 89_478_485
#: quality of re-encoded JPEGs
JPEG_QUALITY = 95
#: samples per shard at most
SHARD_MAX_COUNT = 5000
#: bytes per shard at most
SHARD_MAX_BYTES = 512 * 2**20
#: files per unit of work sent to a worker
BATCH_SIZE = 256
#: files per mapped Prefect task in ingest_flow
FLOW_PARTITION_SIZE = 2048
