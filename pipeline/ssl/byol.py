"""BYOL (Grill et al., NeurIPS 2020): an online network predicts an EMA target network's projection;
the two views are augmented asymmetrically (blur always on the first, solarize on the second)."""

from __future__ import annotations

from pydantic import Field

from lakelabel.pipeline.ssl.base import SSLEntry, SSLSettings, ViewRecipe


class BYOLSettings(SSLSettings):
    proj_dim: int = Field(256, gt=0, description="projection and prediction output width")
    hidden_dim: int = Field(4096, gt=0, description="hidden width of projector and predictor")
    tau_base: float = Field(0.99, ge=0, le=1, description="EMA momentum of the target network at the start")


class BYOL(SSLEntry):
    name = "byol"
    Settings = BYOLSettings
    views = ViewRecipe(first=(1.0, 0.0), second=(0.1, 0.2))

    def module_class(self) -> type:
        from lakelabel.models.methods.byol import BYOL as Module

        return Module
