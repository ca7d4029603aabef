"""Barlow Twins (Zbontar et al., ICML 2021): cross-correlation of the two views driven to identity."""

from __future__ import annotations

import torch

from lakelabel.models import losses
from lakelabel.models.heads import mlp
from lakelabel.models.methods.base import SSLMethod


class BarlowTwins(SSLMethod):
    name = "barlow_twins"

    def __init__(
        self, backbone, feat_dim: int, loss: str = "default", proj_dim: int = 2048, lambd: float = 5e-3
    ):
        super().__init__(backbone, feat_dim, loss)
        self.projector = mlp(feat_dim, proj_dim, proj_dim, layers=3)
        self.lambd = lambd

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        return losses.barlow_twins(z1, z2, self.lambd)
