"""BYOL (Grill et al., NeurIPS 2020): online network predicts an EMA target network's projection."""

from __future__ import annotations

import copy
import math

import torch

from lakelabel.models.heads import mlp
from lakelabel.models.methods.base import SSLMethod


class BYOL(SSLMethod):
    name = "byol"
    supported_losses = ("default", "wasserstein")

    def __init__(
        self,
        backbone,
        feat_dim: int,
        loss: str = "default",
        proj_dim: int = 256,
        hidden_dim: int = 4096,
        tau_base: float = 0.99,
    ):
        super().__init__(backbone, feat_dim, loss)
        if not 0.0 <= tau_base <= 1.0:
            raise ValueError(f"tau_base must be in [0, 1], got {tau_base}")
        self.projector = mlp(feat_dim, hidden_dim, proj_dim, layers=2)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim, layers=2)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.tau_base, self.tau = tau_base, tau_base

    def similarity(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return super().similarity(p, z) + (2.0 if self.loss_kind == "default" else 0.0)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        p1 = self.predictor(self.projector(self.backbone(x1)))
        p2 = self.predictor(self.projector(self.backbone(x2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        # default: 2 - 2cos = 2 * (1 + negative_cosine) summed over both directions, as in the paper
        return self.similarity(p1, t2) + self.similarity(p2, t1)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """EMA update with BYOL's cosine schedule: τ = 1 − (1 − τ_base)(cos(π·progress) + 1)/2."""
        self.tau = 1 - (1 - self.tau_base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
        for online, target in (
            (self.backbone, self.target_backbone),
            (self.projector, self.target_projector),
        ):
            for po, pt in zip(online.parameters(), target.parameters(), strict=True):
                pt.mul_(self.tau).add_(po.detach(), alpha=1 - self.tau)
            for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
                bt.copy_(bo)
