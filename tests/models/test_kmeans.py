"""FAISS spherical k-means (models/kmeans.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lakelabel.models.kmeans import centroid_scores, spherical_kmeans
from lakelabel.pipeline.metrics import hungarian_accuracy


def blobs(n_per: int, k: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.normal(scale=spread, size=(k * n_per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), truth


def test_recovers_separated_blobs() -> None:
    x, truth = blobs(200, 6)
    result = spherical_kmeans(x, 6, iters=20, redo=3, seed=0)
    assert result.centroids.shape == (6, 16)
    assert np.allclose(np.linalg.norm(result.centroids, axis=1), 1, atol=1e-4)
    sims, labels = centroid_scores(torch.from_numpy(x), result.centroids).max(dim=1)
    labels, sims = labels.numpy(), sims.numpy()
    acc, mapping = hungarian_accuracy(labels, truth)
    assert acc == 1.0 and len(set(mapping.values())) == 6
    assert (sims > 0.9).all()


def test_sample_size_is_explicit_not_faiss_256() -> None:
    x, _ = blobs(400, 3)  # 1,200 points > 3 × 256
    full = spherical_kmeans(x, 3, max_points_per_centroid=1000)
    assert full.trained_on == 1200  # faiss's silent default would have trained on 768
    sampled = spherical_kmeans(x, 3, max_points_per_centroid=100)
    assert sampled.trained_on == 300


def test_bad_k_is_named() -> None:
    x, _ = blobs(5, 2)
    with pytest.raises(ValueError, match="k must be in"):
        spherical_kmeans(x, 11)
    with pytest.raises(ValueError, match="x must be"):
        spherical_kmeans(x[0], 2)
