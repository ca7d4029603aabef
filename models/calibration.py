"""Calibration and the linear baseline of selection. Pure compute on tensors.

- Temperature scaling (Guo, Pleiss, Sun & Weinberger, ICML 2017, "On Calibration of Modern Neural
  Networks"): one scalar T > 0 minimising the NLL of held-out ``logits / T``.
- Multinomial logistic regression (L2, L-BFGS): the same-run baseline every selection is held to.
- Expected calibration error (ECE), how both are judged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _fit_log_temperature(nll, iters: int) -> float:
    """T > 0 minimising ``nll(T)`` (a scalar tensor), by L-BFGS over log T; clamped to [0.05, 20]."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll(log_t.exp())
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iters: int = 100) -> float:
    """Temperature T minimising ``cross_entropy(logits / T, labels)`` over held-out rows ``(N, C)``."""
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(
            f"need as many labels as logit rows (> 0); got {logits.shape[0]} and {labels.shape[0]}"
        )
    logits, labels = logits.detach().float(), labels.long()
    return _fit_log_temperature(lambda t: F.cross_entropy(logits / t, labels), iters)


def logistic_regression(
    x: torch.Tensor, labels: torch.Tensor, classes: int, l2: float = 1.0, iters: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (D, C), b (C,))`` minimising the summed cross-entropy of ``x @ W + b`` plus
    ``l2 / 2 · ‖W‖²`` (scikit-learn's ``C = 1 / l2``), by L-BFGS."""
    if x.shape[0] != labels.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need as many labels as rows (> 0); got {x.shape[0]} and {labels.shape[0]}")
    x, labels = x.detach().float(), labels.long()
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, labels, reduction="sum") + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_smoothed_temperature(
    logits: torch.Tensor,
    rows: torch.Tensor,
    neighbours: torch.Tensor,
    labels: torch.Tensor,
    weight: float,
    iters: int = 100,
) -> float:
    """Temperature of what selection thresholds: T minimising the NLL, at held-out ``rows`` ``(F,)``
    with ``labels``, of the mean over MC-dropout passes of ``softmax(logits / T)`` (``logits`` ``(M, R, C)``:
    M passes over R rows) averaged ``(1 − weight) : weight`` with the same at their ``neighbours``
    ``(F, k)`` (indices into R). Fitting raw logits instead left CIFAR-10 seed-250 labels underconfident
    (MC averaging and neighbour smoothing soften them again)."""
    if not (rows.shape[0] == labels.shape[0] == neighbours.shape[0] > 0):
        raise ValueError(
            f"need as many labels and neighbour rows as held-out rows (> 0); got {rows.shape[0]}, "
            f"{labels.shape[0]} and {neighbours.shape[0]}"
        )
    logits, labels = logits.detach().float(), labels.long()

    def nll(t: torch.Tensor) -> torch.Tensor:
        p = F.softmax(logits / t, dim=-1).mean(0)
        q = (1 - weight) * p[rows] + weight * p[neighbours].mean(1) if weight else p[rows]
        return F.nll_loss(q.clamp_min(1e-12).log(), labels)

    return _fit_log_temperature(nll, iters)


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): bin-weighted |accuracy − confidence| over ``bins`` equal-width bins."""
    edges = torch.linspace(0, 1, bins + 1)
    ece, n = 0.0, confidence.numel()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += (
                float(in_bin.sum())
                / n
                * abs(float(correct[in_bin].float().mean()) - float(confidence[in_bin].mean()))
            )
    return ece
