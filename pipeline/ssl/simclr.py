"""SimCLR (Chen et al., ICML 2020): contrastive NT-Xent over the batch's two views."""

from __future__ import annotations

from pydantic import Field

from lakelabel.pipeline.ssl.base import SSLEntry, SSLSettings


class SimCLRSettings(SSLSettings):
    proj_dim: int = Field(128, gt=0, description="projection output width")
    temperature: float | None = Field(
        None, gt=0, description="NT-Xent temperature; None = 0.5 (0.05 with the Wasserstein similarity)"
    )


class SimCLR(SSLEntry):
    name = "simclr"
    Settings = SimCLRSettings

    def module_class(self) -> type:
        from lakelabel.models.methods.simclr import SimCLR as Module

        return Module
