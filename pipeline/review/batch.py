"""Review batches on disk (``data_specs/batches.md``): written by suggest and select, answered one
atomic rewrite at a time by the review page. A batch folder, once written, is never overwritten: a
person's answers in it are never lost to a re-run."""

from __future__ import annotations

import io
import json
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from lakelabel.data_specs.batches import ANSWERS, REVIEW_COLUMNS, batch_paths, read_batch, read_classes
from lakelabel.data_specs.layout import BatchPaths, Layout
from lakelabel.pipeline.atomic import atomic_write_bytes, fsync_dir
from lakelabel.pipeline.shard_data import read_shard_images


def write_batch(
    root: str | Path, batch: BatchPaths, rows: pd.DataFrame, classes: dict[int, str], thumbnail_size: int
) -> dict:
    """Write ``rows`` (key, shard, and optionally predicted, predicted_name, candidates, confidence,
    uncertainty) as the batch ``batch``, with a thumbnail per row read from the shards. Returns
    ``{batch, csv, rows}``; a batch that exists already is left as it is (``existing: True``)."""
    if batch.csv.exists():
        return {"batch": batch.name, "csv": str(batch.csv), "rows": len(read_batch(batch)), "existing": True}
    tmp = batch.dir.with_name(f".{batch.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a staging folder an interrupted write left
    staged = BatchPaths(tmp)
    staged.thumbs.mkdir(parents=True)
    manifest = pq.read_table(  # only the batch's rows: memory does not grow with the lake
        Layout(root).manifest,
        columns=["key", "source_uri"],
        filters=[("status", "==", "sharded"), ("key", "in", list(rows.key))],
    ).to_pandas()
    uri = manifest.drop_duplicates("key").set_index("key").source_uri
    for key, im in read_shard_images(root, dict(zip(rows.key, rows.shard, strict=True))).items():
        im = im.convert("RGB")
        scale = thumbnail_size / max(im.size)  # small images are enlarged too: a person must judge them
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        buffer = io.BytesIO()
        im.save(buffer, "PNG")
        (staged.thumbs / f"{key}.png").write_bytes(buffer.getvalue())
    table = rows.reindex(columns=list(REVIEW_COLUMNS)).assign(
        source_uri=rows.key.map(uri).to_numpy(),
        thumbnail=("thumbs/" + rows.key + ".png").to_numpy(),
        label="",
        label_name="",
        answer="",
        answered_at="",
    )
    staged.csv.write_bytes(table.to_csv(index=False).encode())
    names = [{"id": int(c), "name": str(n)} for c, n in sorted(classes.items())]
    staged.classes.write_text(json.dumps({"classes": names}, indent=1))
    batch.dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(batch.dir)  # the folder appears whole, or not at all
    fsync_dir(batch.dir.parent)
    return {"batch": batch.name, "csv": str(batch.csv), "rows": int(len(table)), "existing": False}


class BatchAnswers:
    """A person's answers to one batch: each answer (or undo) rewrites ``review.csv`` atomically, under
    a lock, before it returns. Reopening the batch resumes at its first unanswered row."""

    def __init__(self, batch: BatchPaths | str | Path):
        self.batch = batch_paths(batch)
        self.table = read_batch(self.batch)
        self.classes = read_classes(self.batch)
        self._lock = threading.Lock()

    def progress(self) -> dict:
        answered = int((self.table.answer != "").sum())
        open_rows = (self.table.answer == "").to_numpy().nonzero()[0]
        return {
            "answered": answered,
            "total": int(len(self.table)),
            "labelled": int((self.table.answer == "label").sum()),
            "next": int(open_rows[0]) if len(open_rows) else None,
        }

    def _row(self, key: str) -> int:
        hits = (self.table.key == key).to_numpy().nonzero()[0]
        if not len(hits):
            raise KeyError(f"key {key!r} is not in batch {self.batch.name!r}")
        return int(hits[0])

    def answer(self, key: str, answer: str, label: int | None = None) -> dict:
        """Record ``answer`` (label | none | skip; ``label`` needs a class id of the batch) for ``key``.
        Raises ValueError for an unknown answer or class, KeyError for a key not in the batch."""
        if answer not in ANSWERS:
            raise ValueError(f"answer {answer!r} is not one of {', '.join(ANSWERS)}")
        row = self._row(key)  # (the keys never change: no lock needed to find the row)
        if answer == "label" and label not in self.classes:
            raise ValueError(f"class {label!r} is not one of the batch's classes {sorted(self.classes)}")
        with self._lock:
            values = {
                "answer": answer,
                "label": str(label) if answer == "label" else "",
                "label_name": self.classes[label] if answer == "label" else "",
                "answered_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            }
            table = self.table.copy()
            for column, value in values.items():
                table.loc[row, column] = value
            self._save(table)
        return self.progress()

    def undo(self) -> dict:
        """Clear the most recent answer; returns the progress with ``undone`` (its key, or None)."""
        with self._lock:
            answered = self.table[self.table.answered_at != ""]
            if not len(answered):
                return {**self.progress(), "undone": None}
            row = int(answered.answered_at.idxmax())
            table = self.table.copy()
            for column in ("answer", "label", "label_name", "answered_at"):
                table.loc[row, column] = ""
            self._save(table)
            return {**self.progress(), "undone": str(table.key[row])}

    def _save(self, table: pd.DataFrame) -> None:
        atomic_write_bytes(self.batch.csv, table.to_csv(index=False).encode())
        self.table = table
