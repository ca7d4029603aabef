"""Spherical k-means with FAISS (CPU, or GPU with faiss-gpu): the DeepCluster-style baseline and the
initialisation of Sinkhorn-Knopp / SeLa (Caron et al. 2018, "Deep Clustering for Unsupervised
Learning of Visual Features"; Johnson et al. 2019, FAISS).

Pure compute on arrays; no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch


@dataclass
class KMeansResult:
    """``centroids`` ``(K, D)`` float32, unit norm; ``objective``: sum of cosine similarities at the end."""

    centroids: np.ndarray
    objective: float
    trained_on: int
    gpu: bool


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    iters: int = 30,
    redo: int = 1,
    max_points_per_centroid: int = 100_000,
    seed: int = 0,
    use_gpu: bool | None = None,
) -> KMeansResult:
    """Cluster unit-norm rows ``x`` ``(N, D)`` into ``k`` centroids (cosine similarity).

    ``max_points_per_centroid`` is always passed on: FAISS silently trains on at most 256 points per
    centroid otherwise. When ``N > k × max_points_per_centroid`` a seeded uniform sample of that size
    trains the centroids (``trained_on`` says how many); :func:`centroid_scores` then scores every row.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {x.shape}")
    if not 1 < k <= x.shape[0]:
        raise ValueError(f"k must be in [2, N={x.shape[0]}], got {k}")
    gpu = faiss.get_num_gpus() > 0 if use_gpu is None else bool(use_gpu)
    if gpu and faiss.get_num_gpus() == 0:
        raise ValueError(
            "use_gpu=True but faiss sees no GPU (install faiss-gpu: pip install 'lakelabel[gpu]')"
        )
    limit = k * max_points_per_centroid
    sample = x
    if x.shape[0] > limit:
        rows = np.random.default_rng(seed).choice(x.shape[0], size=limit, replace=False)
        sample = x[np.sort(rows)]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=iters,
        nredo=redo,
        spherical=True,
        seed=seed,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
        gpu=gpu,
        verbose=False,
    )
    km.train(sample)
    return KMeansResult(np.array(km.centroids, dtype=np.float32), float(km.obj[-1]), len(sample), gpu)


def centroid_scores(chunk: torch.Tensor, centroids: np.ndarray) -> torch.Tensor:
    """Cosine similarities ``(n, K)`` of unit-norm rows to the centroids: Sinkhorn's scores."""
    return chunk.float() @ torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).T
