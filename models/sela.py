"""SeLa self-labelling heads (Asano, Rupprecht & Vedaldi, ICLR 2020, "Self-labelling via simultaneous
clustering and representation learning").

T heads of K clusters on frozen embeddings, trained by alternating (a) Sinkhorn-Knopp label
optimisation on each head's log-probabilities (equal-sized clusters, SeLa §3.1) and (b)
cross-entropy on those labels (§3.2). Pure compute: tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lakelabel.models.sinkhorn import balanced_labels


class SelaHeads(nn.Module):
    """``T`` heads, linear or one-hidden-layer MLP: ``(B, D)`` → logits ``(T, B, K)``."""

    def __init__(self, dim: int, k: int, heads: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, k))
                for _ in range(heads)
            )
        else:
            self.heads = nn.ModuleList(nn.Linear(dim, k) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x) for head in self.heads])


@dataclass
class SelaResult:
    labels: torch.Tensor  # (N, T) int64, the last Sinkhorn label optimisation
    posteriors: torch.Tensor  # (N, T) float32, each head's softmax probability of its label
    model: SelaHeads
    history: list[dict] = field(default_factory=list)
    lams: list[float] = field(default_factory=list)  # per head, the λ of its last label optimisation
    log_scales: list[torch.Tensor | None] = field(default_factory=list)  # per head, its Sinkhorn b


def label_update_epochs(epochs: int, updates: int) -> list[int]:
    """Epochs before which labels are re-optimised, spread evenly (never before epoch 0)."""
    if updates == 0 or epochs == 0:
        return []
    return sorted({max(1, round((i + 1) * epochs / (updates + 1))) for i in range(updates)})


@torch.no_grad()
def head_log_probs(model: SelaHeads, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """``(T, N, K)`` log-softmax of every head over ``x`` ``(N, D)``."""
    model.eval()
    out = torch.cat(
        [F.log_softmax(model(x[i : i + batch]), dim=-1) for i in range(0, x.shape[0], batch)], dim=1
    )
    model.train()
    return out


def train_sela(
    x: torch.Tensor,
    init_labels: torch.Tensor,
    k: int,
    *,
    hidden: int = 0,
    epochs: int = 20,
    label_updates: int = 5,
    lam: float = 25.0,
    target: torch.Tensor | None = None,
    tol: float = 1e-3,
    balance: float = 0.1,
    batch_size: int = 1024,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
) -> SelaResult:
    """Train ``T = init_labels.shape[1]`` heads on ``x`` ``(N, D)`` from ``init_labels`` ``(N, T)``.

    Labels are re-optimised with Sinkhorn-Knopp (λ = ``lam``, warm-started; raised while the hard
    labels are further than ``balance`` from equal sizes, see :func:`balanced_labels`) before the
    epochs given by :func:`label_update_epochs` and once more after training; the returned labels are those.
    """
    if x.ndim != 2 or init_labels.ndim != 2 or x.shape[0] != init_labels.shape[0]:
        raise ValueError(
            f"x {tuple(x.shape)} and init_labels {tuple(init_labels.shape)} must be (N, D) and (N, T)"
        )
    if int(init_labels.min()) < 0 or int(init_labels.max()) >= k:
        raise ValueError(f"init_labels must lie in [0, {k})")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, heads = init_labels.shape
    model = SelaHeads(x.shape[1], k, heads, hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    labels = init_labels.clone().long()
    log_scales: list[torch.Tensor | None] = [None] * heads
    lams = [float(lam)] * heads
    history: list[dict] = []

    def relabel(epoch: int) -> None:
        log_probs = head_log_probs(model, x)
        changed, iterations = 0, []
        for t in range(heads):
            solved = balanced_labels(
                log_probs[t], lams[t], target=target, tol=tol, init_log_scale=log_scales[t], balance=balance
            )
            log_scales[t], lams[t], new = solved.result.log_scale, solved.result.lam, solved.labels
            iterations.append(solved.result.iterations)
            changed += int((new != labels[:, t]).sum())
            labels[:, t] = new
        record = {
            "epoch": epoch,
            "relabelled_fraction": round(changed / (n * heads), 4),
            "lam": list(lams),
            "sinkhorn_iterations": iterations,
        }
        history.append(record)
        if log:
            log(record)

    updates = set(label_update_epochs(epochs, label_updates))
    for epoch in range(epochs):
        if epoch in updates:
            relabel(epoch)
        order = torch.randperm(n, generator=generator)
        total, batches = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue
            logits = model(x[idx])  # (T, B, K)
            loss = F.cross_entropy(logits.reshape(-1, k), labels[idx].T.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        schedule.step()
        record = {"epoch": epoch, "loss": round(total / max(batches, 1), 4)}
        history.append(record)
        if log:
            log(record)
    if epochs:
        relabel(epochs)
    probs = head_log_probs(model, x).exp()  # (T, N, K)
    posteriors = probs.gather(2, labels.T.unsqueeze(-1)).squeeze(-1).T.contiguous()
    return SelaResult(labels, posteriors, model, history, lams, log_scales)
