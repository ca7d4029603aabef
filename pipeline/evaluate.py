"""``lakelabel eval``: cluster assignments against a ground-truth CSV (path,label[,label_name])."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lakelabel.data_specs.clusters import label_columns, read_assignments
from lakelabel.pipeline.metrics import cluster_report, clustering_scores
from lakelabel.pipeline.truth import attach_keys, read_label_csv


def evaluate_clusters(
    root: str | Path, truth_csv: str | Path, run: str = "default", split: str | None = None
) -> dict:
    """ACC (Hungarian), NMI, ARI and purity of every label column of a cluster run; per-cluster
    purity and sizes for each column. ``split`` keeps only truth rows of that split (e.g. ``test``)."""
    assignments = read_assignments(root, run)
    table = assignments.to_pandas()
    truth = read_label_csv(truth_csv)
    if split is not None:
        if "split" not in truth.columns:
            raise ValueError(f"{str(truth_csv)!r} has no split column; drop --split")
        truth = truth[truth.split == split]
    truth = attach_keys(root, truth).drop_duplicates("key")
    merged = table.merge(
        truth[["key", "label"] + (["label_name"] if "label_name" in truth else [])], on="key"
    )
    if merged.empty:
        raise ValueError(f"no image of {str(truth_csv)!r} is in cluster run {run!r}")
    names = (
        dict(zip(merged.label, merged.label_name, strict=False)) if "label_name" in merged.columns else None
    )
    columns = label_columns(assignments)
    truth_labels = merged.label.to_numpy()
    result = {
        "run": run,
        "truth": str(truth_csv),
        "evaluated": len(merged),
        "clustered": len(table),
        "columns": {},
    }
    for column in columns:
        pred = merged[column].to_numpy()
        scores = clustering_scores(pred, truth_labels)
        scores["clusters"] = cluster_report(pred, truth_labels, names)
        result["columns"][column] = scores
    heads = [c for c in columns if c.startswith("head_")]
    if heads:
        accs = np.array([result["columns"][h]["acc"] for h in heads])
        result["heads_mean_acc"] = round(float(accs.mean()), 4)
        result["heads_best"] = heads[int(accs.argmax())]
    return result


def scores_table(result: dict) -> str:
    """Markdown table: one row per label column."""
    lines = ["| labels | ACC | NMI | ARI | purity |", "|---|---|---|---|---|"]
    for name, s in result["columns"].items():
        lines.append(f"| {name} | {s['acc']:.3f} | {s['nmi']:.3f} | {s['ari']:.3f} | {s['purity']:.3f} |")
    return "\n".join(lines)
