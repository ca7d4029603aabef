"""Uncertainty-aware pseudo-label selection (UPS: Rizve, Duarte, Rawat & Shah, ICLR 2021, "In Defense
of Pseudo-Labeling: An Uncertainty-Aware Pseudo-label Selection Framework").

Pure compute: a dropout classifier head (and an encoder + head for full fine-tuning), MC-dropout
statistics and the selection rule (§3.2, eq. 3-4). The negative-learning loss (eq. 5) and the
pseudo-label loss are in ``models/losses.py``, the confidence-only rule in ``models/confidence.py``,
ECE in ``models/calibration.py``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class DropoutClassifier(nn.Module):
    """``(B, D)`` embeddings → ``(B, C)`` logits through one hidden layer (``hidden`` = 0: linear), with
    dropout kept on for MC passes; logits are divided by ``temperature`` (set by calibration)."""

    def __init__(self, dim: int, classes: int, hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)]
        else:
            layers.append(nn.Linear(dim, classes))
        self.net = nn.Sequential(*layers)
        self.temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


class EncoderClassifier(nn.Module):
    """``(B, 3, H, W)`` images → backbone → L2-normalised features × √dim (the scale select gives the
    frozen embeddings) → :class:`DropoutClassifier` logits ``(B, C)``. For full fine-tuning."""

    def __init__(self, backbone: nn.Module, dim: int, head: DropoutClassifier):
        super().__init__()
        self.backbone, self.head, self.dim, self.scale = backbone, head, dim, math.sqrt(dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).float(), dim=1) * self.scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class McStats:
    """Per sample: mean and std over M dropout passes of the class probabilities.

    ``mean``/``std`` ``(N, C)`` at temperature 1 (positives); ``mean_neg``/``std_neg`` ``(N, C)`` at
    the negative temperature (UPS code's ``temp_nl`` = 2).
    """

    mean: torch.Tensor
    std: torch.Tensor
    mean_neg: torch.Tensor
    std_neg: torch.Tensor


#: held while a call seeds and draws from torch's global generator (see :func:`mc_dropout_stats`)
_GLOBAL_RNG = threading.Lock()


@torch.no_grad()
def mc_dropout_stats(
    model: nn.Module,
    x: torch.Tensor,
    passes: int = 10,
    neg_temperature: float = 2.0,
    batch: int = 4096,
    seed: int = 0,
) -> McStats:
    """``passes`` stochastic forward passes (dropout on) over ``x`` ``(N, D)``; deterministic under
    ``seed``, also when threads share ``model``: dropout draws from torch's global generator, so one
    call at a time seeds it, switches the model's mode and draws (a lock; the passes themselves still
    use torch's threads)."""
    if passes < 2:
        raise ValueError(f"passes must be >= 2 for a standard deviation, got {passes}")
    out = {name: [] for name in ("mean", "std", "mean_neg", "std_neg")}
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        model.train()  # dropout on: that is the point of MC dropout
        torch.manual_seed(seed)
        for i in range(0, x.shape[0], batch):
            logits = torch.stack([model(x[i : i + batch]) for _ in range(passes)])  # (M, B, C)
            p, q = F.softmax(logits, dim=-1), F.softmax(logits / neg_temperature, dim=-1)
            out["mean"].append(p.mean(0))
            out["std"].append(p.std(0))
            out["mean_neg"].append(q.mean(0))
            out["std_neg"].append(q.std(0))
        model.eval()
    return McStats(**{k: torch.cat(v) for k, v in out.items()})


def smooth_over_neighbours(stats: McStats, neighbours: torch.Tensor, weight: float) -> McStats:
    """Neighbour consistency: each row's mean class probabilities become ``(1 − weight) × own +
    weight × mean over its ``neighbours`` ``(N, k)`` rows`` (both temperatures); stds unchanged."""
    if not 0 <= weight <= 1:
        raise ValueError(f"neighbour smoothing weight must be in [0, 1], got {weight}")
    if weight == 0:
        return stats
    return McStats(
        (1 - weight) * stats.mean + weight * stats.mean[neighbours].mean(1),
        stats.std,
        (1 - weight) * stats.mean_neg + weight * stats.mean_neg[neighbours].mean(1),
        stats.std_neg,
    )


@dataclass
class TrainingLabels:
    """One round's training labels over the N embedded rows: ``pos_idx`` ``(P,)`` rows with class
    ``pos_labels`` ``(P,)``; ``neg_idx`` ``(M,)`` rows with ``neg_mask`` ``(M, C)`` bool, the
    classes ruled out for each (negative learning)."""

    pos_idx: torch.Tensor
    pos_labels: torch.Tensor
    neg_idx: torch.Tensor
    neg_mask: torch.Tensor

    @classmethod
    def positives_only(cls, pos_idx: torch.Tensor, pos_labels: torch.Tensor, classes: int) -> TrainingLabels:
        return cls(
            pos_idx, pos_labels, torch.empty(0, dtype=torch.long), torch.empty(0, classes, dtype=torch.bool)
        )


@dataclass
class Selection:
    """``positive`` ``(N,)`` bool, ``label`` ``(N,)`` int64 (argmax; meaningful where positive),
    ``negative`` ``(N, C)`` bool (classes ruled out; never on a positive row),
    ``confidence`` / ``uncertainty`` ``(N,)``: mean max probability and its std over the passes."""

    positive: torch.Tensor
    label: torch.Tensor
    negative: torch.Tensor
    confidence: torch.Tensor
    uncertainty: torch.Tensor


def ups_select(
    stats: McStats,
    tau_p: float = 0.70,
    kappa_p: float = 0.05,
    tau_n: float = 0.05,
    kappa_n: float = 0.005,
    class_balance: bool = False,
) -> Selection:
    """UPS eq. 3-4: positive when ``mean max prob ≥ τp`` and its ``std ≤ κp``; for the other samples a
    negative label for every class with ``prob ≤ τn`` and ``std ≤ κn`` (negative temperature).

    ``class_balance``: keep at most as many positives per class as the rarest selected class
    holds (the most confident ones), so a dominant class cannot swamp the next round.
    """
    confidence, label = stats.mean.max(dim=1)
    uncertainty = stats.std.gather(1, label.unsqueeze(1)).squeeze(1)
    positive = (confidence >= tau_p) & (uncertainty <= kappa_p)
    if class_balance:
        positive = balance_classes(positive, label, confidence, stats.mean.shape[1])
    negative = (stats.mean_neg <= tau_n) & (stats.std_neg <= kappa_n)
    negative[positive] = False
    return Selection(positive, label, negative, confidence, uncertainty)


def balance_classes(
    positive: torch.Tensor, label: torch.Tensor, score: torch.Tensor, classes: int
) -> torch.Tensor:
    """Cap every class's positives at the smallest non-empty class count, keeping the highest ``score``."""
    counts = torch.bincount(label[positive], minlength=classes)
    if (counts > 0).sum() == 0:
        return positive
    cap = int(counts[counts > 0].min())
    out = torch.zeros_like(positive)
    for c in range(classes):
        idx = torch.nonzero(positive & (label == c)).squeeze(1)
        keep = idx[score[idx].argsort(descending=True)[:cap]]
        out[keep] = True
    return out
