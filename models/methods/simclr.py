"""SimCLR (Chen et al., ICML 2020): contrastive NT-Xent over the batch's two views."""

from __future__ import annotations

import torch

from lakelabel.models import losses
from lakelabel.models.heads import mlp
from lakelabel.models.methods.base import SSLMethod


class SimCLR(SSLMethod):
    name = "simclr"
    supported_losses = ("default", "wasserstein")

    def __init__(
        self,
        backbone,
        feat_dim: int,
        loss: str = "default",
        proj_dim: int = 128,
        temperature: float | None = None,
    ):
        super().__init__(backbone, feat_dim, loss)
        self.projector = mlp(feat_dim, feat_dim, proj_dim, layers=2)
        # -W1 between coordinate histograms spans a much narrower range than cosine similarity
        self.temperature = (
            temperature if temperature is not None else (0.05 if loss == "wasserstein" else 0.5)
        )

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        similarity = "wasserstein" if self.loss_kind == "wasserstein" else "cosine"
        return losses.nt_xent(z1, z2, self.temperature, similarity=similarity)
