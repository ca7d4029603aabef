"""Barlow Twins (Zbontar et al., ICML 2021): the views' cross-correlation driven to the identity;
BYOL's asymmetric view augmentation (§4)."""

from __future__ import annotations

from pydantic import Field

from lakelabel.pipeline.ssl.base import SSLEntry, SSLSettings, ViewRecipe


class BarlowTwinsSettings(SSLSettings):
    proj_dim: int = Field(2048, gt=0, description="projection width")
    lambd: float = Field(5e-3, gt=0, description="weight of the off-diagonal (redundancy) term")


class BarlowTwins(SSLEntry):
    name = "barlow_twins"
    Settings = BarlowTwinsSettings
    views = ViewRecipe(first=(1.0, 0.0), second=(0.1, 0.2))

    def module_class(self) -> type:
        from lakelabel.models.methods.barlow_twins import BarlowTwins as Module

        return Module
