"""Atomic file writes (readers see the old file or the complete new one, never a partial one) and
files' content hashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_path(path: Path) -> Path:
    """``.NAME.tmp``: the temp name of a file whose one writer owns it (the shard writer); recovery
    removes these. :func:`atomic_write` names its temp files per process and thread instead."""
    return path.with_name(f".{path.name}.tmp")


def fsync_dir(path: Path) -> None:
    """Make the renames and new names inside folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temp file next to ``path``, fsync it, then rename it to ``path``. The temp
    name is this process's and thread's own (``.NAME.<pid>-<thread>.tmp``): two writers of the same
    file never share one, and the last rename wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parts_in_order(parts: list[int], done: list, folder: Path, stage: str) -> list:
    """The records ``done`` (each with ``index`` and ``name``) of every part index in ``parts``, in that
    order; fails naming the first part without one; removes every other file under ``folder`` (parts of
    other embeddings, or of an older layout), so the commit that follows lists exactly what is there."""
    by_index = {d.index: d for d in done}
    missing = [i for i in parts if i not in by_index]
    if missing:
        raise RuntimeError(f"{stage}: {len(missing)} parts were not written (first: {missing[0]})")
    ordered = [by_index[i] for i in parts]
    keep = {d.name for d in ordered}
    for stale in folder.iterdir():
        if stale.name not in keep:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    return ordered
