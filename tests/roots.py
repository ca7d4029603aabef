"""Copies of a test's lake root without what the copy never reads."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_root(src: Path, dst: Path, *skip: str) -> Path:
    """Copy the root ``src`` to ``dst`` without pretraining's resume states (``last.pt``, the weights
    and optimizer state that only a resumed pretrain reads: 90–190 MB each) and without the top-level
    or nested names in ``skip`` (``shutil.ignore_patterns``); returns ``dst``."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("last.pt", *skip))
    return dst
