"""Registry of label stores: one file per store, one entry here (Delta Lake is the one today)."""

from __future__ import annotations

from lakelabel.pipeline.label_stores.base import LabelStore
from lakelabel.pipeline.label_stores.delta import DeltaLabelStore

STORES: dict[str, type[LabelStore]] = {"delta": DeltaLabelStore}


def open_store(dest: str, storage_options: dict | None = None, kind: str = "delta") -> LabelStore:
    """The label store of ``kind`` at ``dest``."""
    if kind not in STORES:
        raise ValueError(f"unknown label store {kind!r}; valid: {', '.join(STORES)}")
    return STORES[kind](dest, storage_options)


__all__ = ["STORES", "LabelStore", "open_store"]
