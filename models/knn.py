"""Weighted k-nearest-neighbour classifier used as the SSL training monitor."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Cosine-similarity kNN with ``exp(sim / T)`` vote weights (Wu et al. 2018, InstDisc §3.4).

    ``train_features`` ``(N, D)``, ``train_labels`` ``(N,)`` int in ``[0, C)``, ``query_features``
    ``(M, D)`` → predicted labels ``(M,)``. Features are L2-normalised here.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels differ in length")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query_features.shape[0], chunk):
        q = F.normalize(query_features[start : start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx].long(), weights)
        out.append(votes.argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
