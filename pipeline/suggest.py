"""Seeds to label first (``lakelabel suggest``): TypiClust's cold-start rule (Hacohen, Dekel &
Weinshall, ICML 2022, "Active Learning on a Budget"). k-means with K = labelled + budget clusters on a
bounded sample of the embeddings; from each of the ``budget`` largest clusters that no labelled image
covers, the most typical image (typicality: the inverse mean distance to its nearest neighbours in its
cluster). The choice is written as a review batch (``data_specs/batches.md``) for the review page."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from lakelabel.data_specs.batches import list_batches, read_batch
from lakelabel.data_specs.embeddings import find_embeddings, read_embeddings
from lakelabel.data_specs.layout import Layout
from lakelabel.pipeline.config import SuggestConfig
from lakelabel.pipeline.review.batch import write_batch
from lakelabel.pipeline.truth import seeds_with_sources


def typicality(x: np.ndarray, neighbours: int) -> np.ndarray:
    """TypiClust's typicality of each row of ``x``: 1 / mean L2 distance to its ``neighbours`` nearest."""
    k = min(neighbours, len(x) - 1)
    if k < 1:
        return np.ones(len(x), np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    d2, _ = index.search(x, k + 1)  # (itself first)
    return 1.0 / (np.sqrt(np.maximum(d2[:, 1:], 0)).mean(1) + 1e-8)


def typiclust(
    x: np.ndarray, covered: np.ndarray, budget: int, config: SuggestConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into ``x`` of the ``budget`` picks and their typicality; ``covered``: rows already
    labelled (their clusters are covered; they are never picked)."""
    k = min(int(covered.sum()) + budget, len(x))
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=20,
        seed=config.seed,
        min_points_per_centroid=1,  # (small lakes: no warning; TypiClust wants K clusters regardless)
        max_points_per_centroid=max(256, -(-len(x) // k)),
    )
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    assign = assign[:, 0]
    sizes = np.bincount(assign, minlength=k)
    open_clusters = np.setdiff1d(np.arange(k), np.unique(assign[covered]))
    order = open_clusters[np.argsort(-sizes[open_clusters], kind="stable")]
    rng = np.random.default_rng(config.seed)
    picks, scores = [], []
    for c in order:
        if len(picks) == budget:
            break
        members = np.nonzero((assign == c) & ~covered)[0]
        if not len(members):
            continue
        if len(members) > config.typicality_points:
            members = np.sort(rng.choice(members, config.typicality_points, replace=False))
        t = typicality(x[members], config.neighbours)
        best = int(np.argmax(t))
        picks.append(members[best])
        scores.append(float(t[best]))
    return np.array(picks, np.int64), np.array(scores, np.float32)


def suggest(root: str | Path, config: SuggestConfig | None = None) -> dict:
    """Choose ``config.budget`` images for a person to label; write them as a batch under
    ``ROOT/batches``; returns the summary (batch name, CSV, how the choice was made)."""
    config = config or SuggestConfig()
    root = Path(root)
    started = time.perf_counter()
    seeds, sources = seeds_with_sources(root, config.seed_labels, config.reviewed_batches)
    names = dict(enumerate(config.classes))
    names.update({int(c): str(n) for c, n in zip(seeds.label, seeds.label_name, strict=True)})
    if not names:
        raise ValueError(
            "suggest needs the class names for the review page: give classes (--classes car,truck,…) "
            "or seed_labels that name them"
        )
    emb = read_embeddings(find_embeddings(root, config.embeddings))
    pending = set()  # every image of an earlier batch: answered, skipped or still open
    if config.reviewed_batches:
        for batch in list_batches(root):
            pending.update(read_batch(batch).key)
    rows, x = emb.sample(config.sample, config.seed)
    sampled = emb.keys_at(rows)  # (the sample's keys only: memory bounded by the sample)
    keys = sampled.column("key").to_numpy(zero_copy_only=False)
    labelled = np.isin(keys, seeds.key.to_numpy())
    excluded = labelled | np.isin(keys, list(pending))
    if (~excluded).sum() < config.budget:
        raise ValueError(
            f"budget {config.budget} is more than the {int((~excluded).sum())} sampled images not yet "
            "labelled or in a batch"
        )
    # labelled images, and images already in a batch (to be answered), cover their clusters
    picks, scores = typiclust(x, excluded, config.budget, config)
    table = pd.DataFrame(
        {
            "key": keys[picks],
            "shard": sampled.column("shard").to_numpy(zero_copy_only=False)[picks],
            "predicted_name": "",
            "candidates": "",
            "uncertainty": np.round(scores, 5),
        }
    )
    name = config.name or "suggest-" + hashlib.sha256("\n".join(table.key).encode()).hexdigest()[:8]
    written = write_batch(root, Layout(root).batch(name), table, names, config.thumbnail_size)
    return {
        **written,
        "rule": "typiclust",
        "budget": config.budget,
        "suggested": int(len(table)),
        "sampled": int(len(rows)),
        "images": int(emb.n),
        "labelled_before": int(labelled.sum()),
        "seed_sources": sources,
        "classes": {str(c): n for c, n in sorted(names.items())},
        "embeddings": str(emb.directory),
        "seconds": round(time.perf_counter() - started, 2),
    }
