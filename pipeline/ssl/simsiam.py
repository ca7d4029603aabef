"""SimSiam (Chen & He, CVPR 2021): predictor + stop-gradient, no negatives, no momentum encoder."""

from __future__ import annotations

from pydantic import Field

from lakelabel.pipeline.ssl.base import SSLEntry, SSLSettings


class SimSiamSettings(SSLSettings):
    proj_dim: int = Field(2048, gt=0, description="projection width")
    pred_dim: int = Field(512, gt=0, description="predictor bottleneck width")


class SimSiam(SSLEntry):
    name = "simsiam"
    Settings = SimSiamSettings

    def module_class(self) -> type:
        from lakelabel.models.methods.simsiam import SimSiam as Module

        return Module
