"""What a clustering method is: its settings block, and ``run`` from shared inputs to its columns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lakelabel.pipeline.registry import BlockSettings, Configured

MethodSettings = BlockSettings


@dataclass
class MethodOutput:
    """The columns the method declares (:meth:`ClusteringMethod.columns`; N rows each), a summary block
    and state to save (``<name>.pt`` state dicts, ``<name>.npy`` arrays)."""

    columns: dict[str, np.ndarray]
    summary: dict = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


class ClusteringMethod(Configured):
    """One clustering method: ``name`` (its registry key and config block), ``Settings``, the
    :meth:`columns` it writes and :meth:`run`. Subclasses quote their paper in the module docstring."""

    #: whether ``cluster.methods`` runs it when the config does not name the methods
    by_default: ClassVar[bool] = False

    def columns(self) -> list[tuple[str, str]]:  # pragma: no cover - interface
        """``(column, kind)`` it writes, in order; kind ``label`` (int32 cluster in [0, K)) or ``score``
        (float32), as ``data_specs/clusters.md`` defines them."""
        raise NotImplementedError

    def run(self, inputs: ClusterInputs) -> MethodOutput:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class ClusterInputs:
    """What every method sees: unit-norm embeddings ``x`` ``(N, D)``, K, cluster proportions, seed,
    a progress log, and :meth:`balanced` — k-means + Sinkhorn labels per seed, computed once and
    shared (the Sinkhorn column and SeLa's initial labels are the same solve)."""

    x: np.ndarray
    k: int
    config: Any  # the ClusterConfig: the kmeans/sinkhorn blocks set the shared solve
    target: Any = None  # torch.Tensor (K,) or None
    log: Callable[[dict], None] | None = None
    cache: dict = field(default_factory=dict)
    root: Path | None = None  # the lake ROOT and
    emb: Any = (
        None  # the Embeddings ``x`` came from: for methods that read the shards (SCAN's encoder update)
    )

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def kmeans(self, seed: int):
        """Spherical k-means (the config's ``kmeans`` block) with ``seed``; memoised."""
        from lakelabel.models.kmeans import spherical_kmeans

        key = ("kmeans", seed)
        if key not in self.cache:
            s = self.config.kmeans
            self.cache[key] = spherical_kmeans(
                self.x,
                self.k,
                iters=s.iters,
                redo=s.redo,
                max_points_per_centroid=s.max_points_per_centroid,
                seed=seed,
                use_gpu=s.use_gpu,
            )
        return self.cache[key]

    def similarities(self, seed: int):
        """``(N, K)`` cosine similarities to the k-means(``seed``) centroids; memoised (the k-means
        column takes their max, Sinkhorn their log-softmax)."""
        import torch

        from lakelabel.models.kmeans import centroid_scores

        key = ("similarities", seed)
        if key not in self.cache:
            self.cache[key] = centroid_scores(torch.from_numpy(self.x), self.kmeans(seed).centroids)
        return self.cache[key]

    def balanced(self, seed: int):
        """Sinkhorn-Knopp equipartition of the k-means(``seed``) centroid scores; memoised."""
        import torch

        from lakelabel.models.sinkhorn import balanced_labels

        key = ("sinkhorn", seed)
        if key not in self.cache:
            s = self.config.sinkhorn
            scores = torch.log_softmax(self.similarities(seed) / s.centroid_temperature, dim=1)
            # λ = 1: the scores are log_softmax(sim / τ), τ already sets their sharpness
            self.cache[key] = balanced_labels(
                scores, 1.0, target=self.target, tol=s.tol, balance=s.balance, max_iter=5000
            )
        return self.cache[key]
