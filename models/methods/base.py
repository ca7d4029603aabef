"""Common interface of the SSL methods: two views in, a scalar loss out."""

from __future__ import annotations

import torch
import torch.nn as nn

from lakelabel.models import losses

SIMILARITY_LOSSES: tuple[str, ...] = ("default", "wasserstein")


class SSLMethod(nn.Module):
    """An encoder (``backbone``) trained by a self-supervised objective on two views.

    Subclasses set ``name`` and ``supported_losses`` and implement :meth:`loss`.
    """

    name: str = ""
    supported_losses: tuple[str, ...] = ("default",)

    def __init__(self, backbone: nn.Module, feat_dim: int, loss: str = "default"):
        super().__init__()
        if loss not in self.supported_losses:
            raise ValueError(f"{self.name}: unknown loss {loss!r}; valid: {', '.join(self.supported_losses)}")
        self.backbone, self.feat_dim, self.loss_kind = backbone, feat_dim, loss

    def similarity(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The method's similarity term between a prediction and a (stop-gradient) target, ``(B, D)`` each."""
        if self.loss_kind == "wasserstein":
            return losses.sliced_wasserstein(p, z.detach())
        return losses.negative_cosine(p, z)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Loss for a batch of view pairs ``(B, 3, H, W)`` each."""
        return self.loss(x1, x2)

    def after_step(self, progress: float) -> None:
        """Hook after each optimiser step; ``progress`` in ``[0, 1]`` (BYOL's EMA update)."""
