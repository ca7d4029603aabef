"""SCAN: Semantic Clustering by Adopting Nearest neighbours (Van Gansbeke, Vandenhende, Georgoulis,
Proesmans & Van Gool, ECCV 2020, "SCAN: Learning to Classify Images without Labels").

On frozen embeddings: (1) mine each image's k nearest neighbours (FAISS, cosine); (2) train T
clustering heads with the SCAN loss (eq. 2: −log⟨p_i, p_j⟩ over anchor/neighbour pairs, minus an
entropy term on the mean prediction that keeps clusters from collapsing), keep the head with the
lowest loss (§3.2); (3) self-label (§3.3): cross-entropy on the head's own confident predictions
(max probability ≥ threshold), class-balanced, with feature dropout standing in for strong
augmentation. Pure compute: arrays/tensors in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lakelabel.models.sela import SelaHeads


class NeighbourIndex:
    """Cosine nearest neighbours among reference rows ``ref`` ``(R, D)`` (unit-norm, or all scaled
    alike), searched in their top ``pca_dims`` principal components when ``D`` and ``R`` are larger.
    Exact (FAISS flat inner product) up to ``exact_up_to`` rows; beyond, an inverted file (IVF-Flat,
    ``4·√R`` lists trained on the rows, ``nprobe`` searched), ~40× less work a query at 100,000 rows.
    Picklable (the trained index travels serialised), so a bounded reference can go to the workers
    that search it."""

    def __init__(self, ref: np.ndarray, pca_dims: int = 128, exact_up_to: int = 50_000, nprobe: int = 16):
        ref = np.ascontiguousarray(ref, dtype=np.float32)
        if ref.ndim != 2 or not len(ref):
            raise ValueError(f"need reference rows (R, D) with R >= 1; got shape {ref.shape}")
        self.projection: tuple[np.ndarray, np.ndarray] | None = None
        if ref.shape[1] > pca_dims and len(ref) > pca_dims:  # (a PCA needs more rows than dims)
            pca = faiss.PCAMatrix(ref.shape[1], pca_dims)
            pca.train(ref)
            a = faiss.vector_to_array(pca.A).reshape(pca_dims, ref.shape[1])
            self.projection = (a, faiss.vector_to_array(pca.b))
        ref = self._reduce(ref)
        dim = ref.shape[1]
        if len(ref) <= exact_up_to:
            self.index = faiss.IndexFlatIP(dim)
        else:
            lists = int(4 * np.sqrt(len(ref)))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            self.index.train(ref)
            self.index.nprobe = nprobe
        self.index.add(ref)
        self.rows, self.nprobe = len(ref), nprobe

    def __getstate__(self) -> dict:
        return {**self.__dict__, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, index=faiss.deserialize_index(state["index"]))
        if isinstance(self.index, faiss.IndexIVF):  # (nprobe is not part of the serialised index)
            self.index.nprobe = self.nprobe

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.projection is None:
            return x
        a, b = self.projection
        x = np.ascontiguousarray(x @ a.T + b, dtype=np.float32)
        faiss.normalize_L2(x)
        return x

    def search(self, x: np.ndarray, k: int, own: np.ndarray | None = None, chunk: int = 8192) -> np.ndarray:
        """``(M, k)`` reference rows most similar to each row of ``x`` ``(M, D)``; ``own`` ``(M,)``: each
        query's own reference row (−1 for none), never its own neighbour."""
        if not 0 < k <= self.rows - (own is not None and bool((np.asarray(own) >= 0).any())):
            raise ValueError(f"need 0 < k < {self.rows} reference rows; got k={k}")
        out = np.empty((len(x), k), dtype=np.int64)
        extra = int(own is not None)
        for start in range(0, len(x), chunk):
            _, idx = self.index.search(self._reduce(x[start : start + chunk]), k + extra)
            if own is not None:  # drop the query itself (first unless duplicates tie), else the last
                mine = np.asarray(own[start : start + len(idx)])[:, None]
                idx = np.take_along_axis(idx, np.argsort(idx == mine, axis=1, kind="stable"), axis=1)
            out[start : start + len(idx)] = idx[:, :k]
        return out


def mine_neighbours(x: np.ndarray, k: int, pca_dims: int = 128, chunk: int = 8192) -> np.ndarray:
    """``(N, k)`` int64 indices of each row's ``k`` most cosine-similar other rows of unit-norm ``x``
    ``(N, D)`` (:class:`NeighbourIndex` over ``x`` itself)."""
    if x.ndim != 2 or not 0 < k < x.shape[0]:
        raise ValueError(f"need x (N, D) and 0 < k < N; got shape {x.shape} and k={k}")
    return NeighbourIndex(x, pca_dims).search(x, k, own=np.arange(len(x)), chunk=chunk)


def scan_loss(
    anchor_logits: torch.Tensor, neighbour_logits: torch.Tensor, entropy_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN eq. 2 for logits ``(B, K)`` of anchors and one neighbour each: ``(total, consistency,
    entropy)`` with ``total = consistency − entropy_weight × H(mean anchor prediction)``."""
    p_anchor = F.softmax(anchor_logits, dim=1)
    p_neighbour = F.softmax(neighbour_logits, dim=1)
    consistency = -torch.log((p_anchor * p_neighbour).sum(1).clamp_min(1e-8)).mean()
    mean = p_anchor.mean(0).clamp_min(1e-8)
    entropy = -(mean * mean.log()).sum()
    return consistency - entropy_weight * entropy, consistency, entropy


@dataclass
class ScanResult:
    labels: torch.Tensor  # (N,) int64: the chosen head's cluster after self-labelling
    confidence: torch.Tensor  # (N,) float32: its softmax probability of that cluster
    head: int  # the chosen head (lowest SCAN loss)
    model: nn.Module  # that head
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    model.eval()
    out = torch.cat([F.softmax(model(x[i : i + batch]), dim=-1) for i in range(0, x.shape[0], batch)], dim=-2)
    model.train()
    return out


def train_scan(
    x: torch.Tensor,
    neighbours: torch.Tensor,
    k: int,
    *,
    heads: int = 5,
    hidden: int = 0,
    epochs: int = 30,
    entropy_weight: float = 5.0,
    self_label_epochs: int = 10,
    threshold: float = 0.99,
    feature_dropout: float = 0.25,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    log=None,
) -> ScanResult:
    """SCAN heads on embeddings ``x`` ``(N, D)`` with mined ``neighbours`` ``(N, n)``; see the module."""
    if neighbours.shape[0] != x.shape[0]:
        raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {x.shape[0]} embeddings")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, n_nb = neighbours.shape
    model = SelaHeads(x.shape[1], k, heads, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict] = []
    steps = max(1, n // batch_size)
    for epoch in range(epochs):
        totals = torch.zeros(heads)
        for _ in range(steps):
            anchor = torch.randint(0, n, (batch_size,), generator=gen)
            pick = torch.randint(0, n_nb, (batch_size,), generator=gen)
            neighbour = neighbours[anchor, pick]
            logits = model(torch.cat([x[anchor], x[neighbour]]))  # (T, 2B, K)
            losses = torch.stack(
                [scan_loss(h[:batch_size], h[batch_size:], entropy_weight)[0] for h in logits]
            )
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            totals += losses.detach()
        record = {"epoch": epoch, "scan_loss": [round(float(v) / steps, 4) for v in totals]}
        history.append(record)
        if log:
            log(record)
    best = int(totals.argmin()) if epochs else 0
    head = model.heads[best]
    self_label(
        head,
        x,
        k,
        self_label_epochs,
        threshold,
        feature_dropout,
        batch_size,
        lr,
        weight_decay,
        gen,
        history,
        log,
    )
    labels, confidence = predict(head, x)
    return ScanResult(labels, confidence, best, head, history)


def predict(head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, confidence)`` ``(N,)``: the head's argmax cluster and its softmax probability."""
    confidence, labels = probabilities(head, x).max(1)
    return labels, confidence.float()


def self_label(
    head: nn.Module,
    x: torch.Tensor,
    k: int,
    epochs: int,
    threshold: float,
    feature_dropout: float,
    batch_size: int,
    lr: float,
    weight_decay: float,
    gen: torch.Generator,
    history: list[dict],
    log,
) -> None:
    """SCAN §3.3 (``epochs`` of it, 0: none): cross-entropy on the head's own confident predictions,
    re-derived every epoch from the clean features, weighted by inverse cluster frequency; inputs see
    dropout (augmentation)."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        confidence, target = probabilities(head, x).max(1)
        confident = torch.nonzero(confidence >= threshold).squeeze(1)
        if len(confident) < batch_size:
            break
        counts = torch.bincount(target[confident], minlength=k).float()
        weight = torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros_like(counts))
        losses = []
        for _ in range(max(1, len(confident) // batch_size)):
            rows = confident[torch.randint(0, len(confident), (batch_size,), generator=gen)]
            inputs = F.dropout(x[rows], feature_dropout, training=True)
            loss = F.cross_entropy(head(inputs), target[rows], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        record = {
            "self_label_epoch": epoch,
            "confident": int(len(confident)),
            "loss": round(sum(losses) / len(losses), 4),
        }
        history.append(record)
        if log:
            log(record)
