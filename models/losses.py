"""Losses as pure functions (no state, no I/O): the SSL methods' and the pseudo-labels' (UPS's
negative learning, eq. 5; the positives' ce / smoothing / gce). Shapes in each docstring."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam/BYOL term ``-mean(cos(p, stopgrad(z)))`` (Chen & He 2021, eq. 1).

    ``p``, ``z``: ``(B, D)``. Returns a scalar in ``[-1, 1]``. The stop-gradient on ``z`` is applied here.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def wasserstein_similarity(z: torch.Tensor) -> torch.Tensor:
    """Pairwise similarity ``-W1`` between embeddings seen as distributions over their coordinates.

    Each row of ``z`` ``(N, D)`` becomes a histogram ``softmax(z)`` on the ordered support
    ``0, 1/D, ..., 1``; the 1-D optimal transport cost between two such histograms is the L1
    distance between their CDFs (exact, differentiable). Returns ``(N, N)`` values in ``[-1, 0]``.
    """
    cdf = torch.cumsum(F.softmax(z.float(), dim=-1), dim=-1)
    return -torch.cdist(cdf, cdf, p=1) / z.shape[-1]


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, similarity: str = "cosine"
) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy (Chen et al. 2020, eq. 1).

    ``z1``, ``z2``: ``(B, D)`` two views; each sample's positive is its other view, the other
    ``2B - 2`` samples are negatives. Symmetric in ``(z1, z2)``. Returns a scalar.
    ``similarity="wasserstein"`` replaces cosine similarity by :func:`wasserstein_similarity`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if similarity not in ("cosine", "wasserstein"):
        raise ValueError(f"unknown similarity {similarity!r}; valid: cosine, wasserstein")
    b = z1.shape[0]
    if similarity == "wasserstein":
        sim = wasserstein_similarity(torch.cat([z1, z2])) / temperature
    else:
        z = F.normalize(torch.cat([z1, z2]), dim=-1)
        sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(sim.device)
    return F.cross_entropy(sim, target)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins: push the cross-correlation of the standardised views to identity (Zbontar et al. 2021,
    eq. 1).

    ``z1``, ``z2``: ``(B, D)``, B > 1. Returns ``sum_i (1 - C_ii)^2 + lambd * sum_{i≠j} C_ij^2``.
    """
    b = z1.shape[0]
    if b < 2:
        raise ValueError("barlow_twins needs a batch of at least 2")
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-6)
    z2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-6)
    c = z1.T @ z2 / b
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between two empirical batches, differentiable in torch.

    ``x``, ``y``: ``(B, D)`` (rows are L2-normalised first). Random unit directions ``(D, P)``; each
    1-D projection is sorted and matched (the exact 1-D optimal transport plan). Returns the mean
    squared distance over projections (a scalar ≥ 0, zero iff the projected batches coincide).
    Reference: Bonneel et al. 2015; used as an SSL similarity term by Koo & Chae (W-distance SSL).
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, device="cpu").to(x)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    return (px - py).pow(2).mean(0).sum() / n_projections * x.shape[1]


def negative_learning_loss(logits: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """UPS eq. 5: ``-Σ_c s_c log(1 - p_c) / Σ_c s_c`` per sample, averaged over samples with a negative.

    ``logits`` ``(B, C)``, ``negative`` ``(B, C)`` bool/0-1. Non-negative; 0 when every ruled-out
    class has probability 0; grows without bound as a ruled-out class's probability → 1.
    Returns 0 (with a gradient path) when no sample has a negative label.
    """
    mask = negative.float()
    per_sample = mask.sum(1)
    rows = per_sample > 0
    if not bool(rows.any()):
        return logits.sum() * 0.0
    p = F.softmax(logits[rows], dim=1)
    log_not = torch.log((1 - p).clamp_min(1e-7))
    return (-(mask[rows] * log_not).sum(1) / per_sample[rows]).mean()


#: the positives' losses of :func:`pseudo_label_loss`, and generalised cross-entropy's q
POSITIVE_LOSSES: tuple[str, ...] = ("ce", "smoothing", "gce")
GCE_Q = 0.7


def pseudo_label_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    negatives: torch.Tensor,
    weight: torch.Tensor | None = None,
    negative_weight: float = 1.0,
    positive: str = "ce",
) -> torch.Tensor:
    """The positives' loss plus ``negative_weight`` × :func:`negative_learning_loss`.

    ``logits`` ``(B, C)``; ``label`` ``(B,)`` int64, −1 for a row without a positive label;
    ``negatives`` ``(B, C)`` bool; ``weight`` ``(B,)`` per-row weight of the positives' loss (the
    weighted mean over labelled rows; uniform when None). A batch with neither gives 0 with a gradient path.
    ``positive``: ``ce`` (cross-entropy), ``smoothing`` (cross-entropy with 0.1 label smoothing) or
    ``gce`` (generalised cross-entropy, q = 0.7: Zhang & Sabuncu, NeurIPS 2018; robust to label noise).
    """
    if positive not in POSITIVE_LOSSES:
        raise ValueError(f"unknown positive loss {positive!r}; valid: {', '.join(POSITIVE_LOSSES)}")
    loss = logits.sum() * 0.0
    has_label = label >= 0
    if bool(has_label.any()):
        rows, target = logits[has_label], label[has_label]
        if positive == "gce":
            p = torch.softmax(rows.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
            ce = (1 - p.clamp_min(1e-8) ** GCE_Q) / GCE_Q
        else:
            ce = F.cross_entropy(
                rows, target, reduction="none", label_smoothing=0.1 if positive == "smoothing" else 0.0
            )
        w = torch.ones_like(ce) if weight is None else weight[has_label].to(ce.dtype)
        loss = loss + (ce * w).sum() / w.sum()
    if negative_weight and bool(negatives.any()):
        loss = loss + negative_weight * negative_learning_loss(logits, negatives)
    return loss
