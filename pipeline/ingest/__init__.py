"""Ingest: lake → validated, de-duplicated WebDataset shards plus a Parquet manifest.

Layout under ROOT::

    shards/shard-000000.tar      WebDataset samples <key>.jpg + <key>.json
    manifest/part-000000.parquet one row per source file resolved in the unit of shard 000000
    manifest/_runs/<run_id>.json run summary (written last: the run's done-marker)

Commit protocol (crash-safe): a *unit* is one shard plus the manifest rows of every file resolved
while it was open (sharded, duplicates, rejected, skipped). The shard is written to a temp name and
renamed when complete; then the unit's manifest part is written to a temp name and renamed. The
manifest part is the unit's commit marker: at start-up, temp files and any shard without its
manifest part (a crash between the two renames) are removed, and every file already in the manifest
is skipped. So after a SIGKILL at any moment a re-run loses nothing and duplicates nothing, and a
re-run over a grown lake ingests only the new files, into new shards.
"""

from __future__ import annotations

from lakelabel.pipeline.ingest.pool import fork_is_safe, map_ordered
from lakelabel.pipeline.ingest.recovery import IngestError, RootLock, recover
from lakelabel.pipeline.ingest.session import IngestSession, pending_batches, run_ingest
from lakelabel.pipeline.ingest.writer import ShardCommitter

__all__ = [
    "IngestError",
    "IngestSession",
    "RootLock",
    "ShardCommitter",
    "fork_is_safe",
    "map_ordered",
    "pending_batches",
    "recover",
    "run_ingest",
]
