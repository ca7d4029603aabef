"""Review batch contract: ``ROOT/batches/<name>/`` written by ``lakelabel suggest`` and ``lakelabel
select`` (its review queue), answered on the review page (``lakelabel review``), read back by select as
seed labels. See ``batches.md``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lakelabel.data_specs.layout import BatchPaths, Layout
from lakelabel.data_specs.validation import ContractError

#: ``review.csv``: one row per image to label. ``label`` / ``label_name`` / ``answer`` /
#: ``answered_at`` are empty until a person answers; ``answer`` is ``label`` (``label`` holds the class
#: id), ``none`` (none of the classes) or ``skip``
REVIEW_COLUMNS: tuple[str, ...] = (
    "key",
    "shard",
    "source_uri",
    "thumbnail",  # thumbs/<key>.png, relative to the CSV
    "predicted",  # the class id the selection predicted; empty for suggested seeds
    "predicted_name",
    "candidates",  # a hint for the person: the predicted class and classes it is certainly not
    "confidence",
    "uncertainty",  # select: the rule's uncertainty; suggest: the image's typicality rank score
    "label",
    "label_name",
    "answer",
    "answered_at",  # ISO time, UTC
)
ANSWERS: tuple[str, ...] = ("label", "none", "skip")


def batch_paths(batch: BatchPaths | str | Path) -> BatchPaths:
    """The paths of a batch given as its paths or its folder."""
    return batch if isinstance(batch, BatchPaths) else BatchPaths(Path(batch))


def read_batch(batch: BatchPaths | str | Path) -> pd.DataFrame:
    """A batch's ``review.csv`` (every column as text; empty answers as "")."""
    paths = batch_paths(batch)
    if not paths.csv.is_file():
        raise FileNotFoundError(f"no review batch at {str(paths.dir)!r}: {paths.csv.name} is missing")
    table = pd.read_csv(paths.csv, dtype=str, keep_default_na=False)
    missing = [c for c in REVIEW_COLUMNS if c not in table.columns]
    if missing:
        raise ContractError(f"batches: {str(paths.csv)!r} lacks column(s) {missing}")
    bad = ~table.answer.isin(("", *ANSWERS))
    if bad.any():
        raise ContractError(f"batches: {str(paths.csv)!r}: unknown answer {table.answer[bad].iloc[0]!r}")
    if table.key.duplicated().any():
        raise ContractError(
            f"batches: {str(paths.csv)!r}: duplicate key {table.key[table.key.duplicated()].iloc[0]!r}"
        )
    return table[list(REVIEW_COLUMNS)]


def read_classes(batch: BatchPaths | str | Path) -> dict[int, str]:
    """``classes.json`` of a batch: class id → name, in id order."""
    paths = batch_paths(batch)
    if not paths.classes.is_file():
        raise FileNotFoundError(f"review batch {str(paths.dir)!r} has no classes.json")
    raw = json.loads(paths.classes.read_text())
    try:
        return {int(c["id"]): str(c["name"]) for c in raw["classes"]}
    except (KeyError, TypeError, ValueError):
        raise ContractError(
            f"batches: {str(paths.classes)!r} is not {{'classes': [{{id, name}}, …]}}"
        ) from None


def answered_labels(batch: BatchPaths | str | Path) -> pd.DataFrame:
    """The batch's labelled rows as seed labels: ``key, label, label_name``."""
    table = read_batch(batch)
    done = table[table.answer == "label"]
    return pd.DataFrame(
        {"key": done.key, "label": done.label.astype(int), "label_name": done.label_name}
    ).reset_index(drop=True)


def list_batches(root: str | Path) -> list[BatchPaths]:
    """The batches under ``ROOT/batches``, oldest first (by the time their ``classes.json`` was written)."""
    folder = Layout(root).batches_dir
    found = (
        [BatchPaths(d) for d in folder.iterdir() if (d / "review.csv").is_file()] if folder.is_dir() else []
    )
    return sorted(found, key=lambda b: (b.classes.stat().st_mtime if b.classes.exists() else 0, b.name))
