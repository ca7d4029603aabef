"""Ingest's lock on ROOT and its recovery after a crash: partial outputs removed, the index caught up,
the committed state returned."""

from __future__ import annotations

import fcntl
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.shards import SHARD_NAME_RE
from lakelabel.pipeline.lake_index import INDEX_DIR, LakeIndex

if TYPE_CHECKING:
    pass


MANIFEST_PART_RE = SHARD_NAME_RE.pattern.replace("shard-", "part-").replace(r"\.tar", r"\.parquet")


class IngestError(RuntimeError):
    """The ingest cannot run (bad root, root locked by another ingest, ...)."""


def new_run_id(prefix: str = "ingest") -> str:
    """Sortable, unique run id: ``ingest-20261123T214500Z-1a2b3c``."""
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def manifest_part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


@dataclass
class LakeState:
    """What earlier runs committed under ROOT (read at start-up, after crash recovery)."""

    index: LakeIndex
    next_index: int = 0
    removed_orphans: list[str] = field(default_factory=list)
    #: manifest parts the index had to take in at start-up, and whether it was rebuilt
    index_sync: dict[str, int] = field(default_factory=dict)


def recover(root: Path) -> LakeState:
    """Clean up after a crash, bring ROOT's index up to its manifest, return the committed state.

    Memory does not grow with the lake: the index lives on disk (:mod:`lakelabel.pipeline.lake_index`);
    only the part numbers are listed.
    """
    layout = Layout(root)
    shards, manifest = layout.shards, layout.manifest
    for folder in (shards, manifest, layout.ingest_runs):
        folder.mkdir(parents=True, exist_ok=True)
    removed: list[str] = []
    for folder in (shards, manifest, layout.ingest_runs):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
            removed.append(str(tmp))
    committed = sorted(int(p.name[5:11]) for p in manifest.glob("part-*.parquet"))
    committed_set = set(committed)
    for shard in shards.glob("shard-*.tar"):
        match = SHARD_NAME_RE.match(shard.name)
        if match and int(match.group(1)) not in committed_set:
            shard.unlink()  # renamed, but its manifest part never landed: redo the unit
            removed.append(str(shard))
    index = LakeIndex(manifest / INDEX_DIR)
    sync = index.sync(manifest, committed)
    return LakeState(
        index=index,
        next_index=committed[-1] + 1 if committed else 0,
        removed_orphans=removed,
        index_sync=sync,
    )


class RootLock:
    """Exclusive lock on ROOT so two ingests never write the same shards."""

    def __init__(self, root: Path):
        self.path = root / ".lakelabel.lock"
        self._fd: int | None = None

    def __enter__(self) -> RootLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise IngestError(f"another ingest holds the lock on {self.path.parent}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
