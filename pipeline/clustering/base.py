"""What a clustering method is: its settings block, and ``run`` from shared inputs to a fitted state
that assigns any part of the lake.

A method fits on a bounded, seeded sample of the lake (``ClusterInputs.x``, at most ``cluster.sample``
rows: the whole lake when it is that small) or on reductions over the lake's parts
(:meth:`ClusterInputs.balanced_lake`: Sinkhorn streamed part by part); then ``cluster`` calls its
``assign`` part by part. Nothing a method keeps grows with the lake.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lakelabel.pipeline.registry import BlockSettings, Configured

MethodSettings = BlockSettings

#: ``assign(x, start)``: the method's columns for the unit-norm rows ``x`` ``(n, D)`` that start at
#: row ``start`` of the lake (a method whose state is per row reads it from there; most ignore it)
Assign = Callable[[np.ndarray, int], dict[str, np.ndarray]]


@dataclass
class MethodOutput:
    """``assign`` (the declared columns, :meth:`ClusteringMethod.columns`, of any rows), a summary block
    and state to save (``<name>.pt`` state dicts, ``<name>.npy`` arrays): what ``assign`` depends on."""

    assign: Assign
    summary: dict = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a method state's arrays and tensors (names, shapes, bytes): equal digests assign equally."""
    digest = hashlib.sha256()

    def add(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                add(f"{name}.{key}", value[key])
            return
        array = np.ascontiguousarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())

    for key in sorted(state):
        add(key, state[key])
    return digest.hexdigest()


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
    """What every method sees: ``x``, a seeded uniform sample of the lake's unit-norm embeddings
    ``(n, D)`` (the whole lake when it is small), K, cluster proportions, seed, a progress log, the
    lake's parts (:meth:`parts`) and shared, memoised solves: k-means on the sample, Sinkhorn on it
    (:meth:`balanced`: SeLa's initial labels) and over the lake (:meth:`balanced_lake`: the labels)."""

    x: np.ndarray
    k: int
    config: Any  # the ClusterConfig: the kmeans/sinkhorn blocks set the shared solves
    target: Any = None  # torch.Tensor (K,) or None
    log: Callable[[dict], None] | None = None
    cache: dict = field(default_factory=dict)
    root: Path | None = None  # the lake ROOT and
    emb: Any = None  # the Embeddings the sample came from (None: ``x`` is the whole lake)
    scratch: Path | None = None  # where lake-sized temporary files go (None: the system's temp folder)

    @property
    def n(self) -> int:
        """Rows of the sample the methods train on."""
        return self.x.shape[0]

    @property
    def lake_rows(self) -> int:
        return self.emb.n if self.emb is not None else self.n

    def parts(self) -> Iterator[np.ndarray]:
        """The lake's unit-norm float32 rows, one part at a time, in row order."""
        if self.emb is None:
            yield self.x
            return
        for i in range(len(self.emb.parts)):
            yield self.emb.unit_part(i)

    def kmeans(self, seed: int):
        """Spherical k-means (the config's ``kmeans`` block) on the sample with ``seed``; memoised."""
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

    def centroid_scores(self, seed: int) -> Callable[[np.ndarray], Any]:
        """rows → Sinkhorn's scores ``log_softmax(sim / τ)`` ``(n, K)`` against the k-means(``seed``)
        centroids (the ``sinkhorn`` block's τ)."""
        import torch

        from lakelabel.models.kmeans import centroid_scores

        centroids, tau = self.kmeans(seed).centroids, self.config.sinkhorn.centroid_temperature
        return lambda x: torch.log_softmax(centroid_scores(torch.from_numpy(x), centroids) / tau, dim=1)

    def balanced(self, seed: int):
        """Sinkhorn-Knopp equipartition of the sample's k-means(``seed``) centroid scores (labels of the
        sample's rows); memoised."""
        from lakelabel.models.sinkhorn import balanced_labels

        key = ("sinkhorn", seed)
        if key not in self.cache:
            s = self.config.sinkhorn
            # λ = 1: the scores are log_softmax(sim / τ), τ already sets their sharpness
            self.cache[key] = balanced_labels(
                self.centroid_scores(seed)(self.x),
                1.0,
                target=self.target,
                tol=s.tol,
                balance=s.balance,
                max_iter=5000,
            )
        return self.cache[key]

    def balanced_lake(self, name: str, scores_of: Callable[[np.ndarray], Any], lam: float, **kwargs):
        """:func:`~lakelabel.models.sinkhorn.balanced_scaling` of ``scores_of(part)`` over every part of
        the lake, memoised under ``name``; ``kwargs`` go to it (``tol``, ``balance``, ``init_log_scale``
        …). The scores are computed once into a scratch ``.npy`` (N × K float32, in ``scratch``) that
        every Sinkhorn iteration streams (memory: one chunk). Each part's labels are then
        ``sinkhorn_assign(scores_of(part), result.lam, result.log_scale)``."""
        from lakelabel.models.sinkhorn import balanced_scaling
        from lakelabel.pipeline.arrays import NpyRows, write_npy_rows

        if name not in self.cache:
            k = int(scores_of(self.x[:1]).shape[1])
            if self.scratch is not None:
                self.scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.scratch, prefix=".sinkhorn-") as folder:
                path = Path(folder) / "scores.npy"
                scores = (scores_of(part).numpy() for part in self.parts())
                write_npy_rows(path, scores, self.lake_rows, k)
                self.cache[name] = balanced_scaling(
                    NpyRows(path),
                    lam,
                    n_rows=self.lake_rows,
                    n_cols=k,
                    target=self.target,
                    max_iter=5000,
                    **kwargs,
                )
        return self.cache[name]
