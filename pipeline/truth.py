"""Labeled CSVs (ground truth for evaluation, or seed labels) joined to sample keys via the manifest.

A CSV has ``path,label`` (optionally ``label_name``, ``split``); ``path`` is relative to the lake
(``train/part-000/train-00000.jpg``) and matches a manifest ``source_uri`` that ends with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakelabel.data_specs.batches import answered_labels, list_batches
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.manifest import MANIFEST_SCHEMA
from lakelabel.pipeline.atomic import file_sha256


def read_label_csv(csv: str | Path) -> pd.DataFrame:
    """Read a label CSV (plain or .gz); checks the required columns."""
    if not Path(csv).is_file():
        raise FileNotFoundError(f"label CSV not found: {str(csv)!r}")
    df = pd.read_csv(csv)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"label CSV {str(csv)!r} lacks column(s) {sorted(missing)}; has {list(df.columns)}")
    return df


def attach_keys(root: str | Path, labels: pd.DataFrame) -> pd.DataFrame:
    """``labels`` with a ``key`` column (the kept sample key of each labeled file); unmatched rows dropped.
    The manifest is read part by part (memory: one part and the labels, not the lake)."""
    wanted = set(labels.path)
    depth = max(str(p).count("/") for p in wanted) + 1 if wanted else 1
    by_suffix = {}
    for part in sorted(Layout(root).manifest.glob("part-*.parquet")):
        manifest = pq.read_table(part, columns=["source_uri", "status", "key"], schema=MANIFEST_SCHEMA)
        manifest = manifest.filter(pc.is_in(manifest.column("status"), pa.array(["sharded", "duplicate"])))
        for uri, key in zip(
            manifest.column("source_uri").to_pylist(), manifest.column("key").to_pylist(), strict=True
        ):
            parts = uri.rsplit("/", depth)
            for d in range(1, depth + 1):
                suffix = "/".join(parts[-d:])
                if suffix in wanted:
                    by_suffix[suffix] = key
                    break
    out = labels.assign(key=labels.path.map(by_suffix))
    return out.dropna(subset=["key"]).reset_index(drop=True)


def read_seed_labels(root: str | Path, csvs: list[str | Path]) -> pd.DataFrame:
    """Seed labels from CSVs keyed by ``path`` (relative to the lake) or ``key`` (as the review queue
    exports): ``key, label, label_name``; later files win for a key (reviewed labels override)."""
    frames = []
    for csv in csvs:
        if not Path(csv).is_file():
            raise FileNotFoundError(f"seed-label CSV not found: {str(csv)!r}")
        try:
            df = pd.read_csv(csv)
        except pd.errors.EmptyDataError:
            raise ValueError(
                f"seed-label CSV {str(csv)!r} is empty: it needs a header (path or key, label)"
            ) from None
        if "label" not in df.columns or not ({"path", "key"} & set(df.columns)):
            raise ValueError(
                f"seed-label CSV {str(csv)!r} needs a label column and a path or key column; has "
                f"{list(df.columns)}"
            )
        df = df.dropna(subset=["label"])
        ids = pd.to_numeric(df.label, errors="coerce")
        bad = ids.isna() | (ids != ids.round())
        if bad.any():
            row = bad.idxmax()  # read_csv's index: the file's line is row + 2 (header, 1-based)
            raise ValueError(
                f"seed-label CSV {str(csv)!r}, row {row + 2}: column 'label' must hold integer class ids, "
                f"got {df.label[row]!r} (put class names in a 'label_name' column)"
            )
        df = df.assign(label=ids.astype(int))
        if "key" not in df.columns:
            matched = attach_keys(root, df)
            if len(matched) < len(df):
                missing = sorted(set(df.path) - set(matched.path))
                warnings.warn(
                    f"seed-label CSV {str(csv)!r}: {len(missing)} of {len(df)} rows match no ingested image "
                    f"and are ignored (first: {missing[0]!r})",
                    stacklevel=2,
                )
            df = matched
        if "label_name" not in df.columns:
            df["label_name"] = df.label.astype(str)
        names = df.groupby("label").label_name.nunique()
        if (names > 1).any():
            label = int(names.index[(names > 1).to_numpy()][0])
            found = sorted(map(str, df[df.label == label].label_name.unique()))
            raise ValueError(f"seed-label CSV {str(csv)!r}: label {label} has several label_names {found}")
        frames.append(df[["key", "label", "label_name"]])
    if not frames:
        return pd.DataFrame({"key": [], "label": [], "label_name": []})
    out = pd.concat(frames).drop_duplicates("key", keep="last")
    out["label"] = out.label.astype(int)
    if (out.label < 0).any():
        raise ValueError(f"seed labels must be >= 0, got {sorted(out.label[out.label < 0].unique())}")
    return out.reset_index(drop=True)


def seeds_with_sources(
    root: str | Path, csvs: list[str], reviewed_batches: bool = True
) -> tuple[pd.DataFrame, list[dict]]:
    """The seed labels (the CSVs, then the answered rows of every review batch, oldest batch first;
    a later answer for a key wins) and where each came from: the lineage a published run carries."""
    seeds = read_seed_labels(root, csvs)
    sources = [{"csv": str(Path(csv).resolve()), "sha256": file_sha256(csv)} for csv in csvs]
    frames = [seeds]
    if reviewed_batches:
        for batch in list_batches(root):
            answered = answered_labels(batch)
            if len(answered):
                frames.append(answered)
                sources.append(
                    {
                        "batch": batch.name,
                        "csv": str(batch.csv),
                        "sha256": file_sha256(batch.csv),
                        "labels": len(answered),
                    }
                )
    if len(frames) > 1:
        seeds = pd.concat(frames).drop_duplicates("key", keep="last").reset_index(drop=True)
        seeds["label"] = seeds.label.astype(int)
    return seeds, sources
