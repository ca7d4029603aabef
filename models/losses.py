"""SSL losses as pure functions (no state, no I/O). Shapes in each docstring."""

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
