"""SimSiam (Chen & He, CVPR 2021): predictor + stop-gradient, no negatives, no momentum encoder."""

from __future__ import annotations

import torch

from lakelabel.models.heads import mlp
from lakelabel.models.methods.base import SSLMethod


class SimSiam(SSLMethod):
    name = "simsiam"
    supported_losses = ("default", "wasserstein")

    def __init__(
        self, backbone, feat_dim: int, loss: str = "default", proj_dim: int = 2048, pred_dim: int = 512
    ):
        super().__init__(backbone, feat_dim, loss)
        self.projector = mlp(feat_dim, proj_dim, proj_dim, layers=3, last_bn=True)
        self.predictor = mlp(proj_dim, pred_dim, proj_dim, layers=2)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * (self.similarity(p1, z2) + self.similarity(p2, z1))
