"""Sinkhorn-Knopp equipartition of the k-means centroid scores (Cuturi, NeurIPS 2013; the label
step of SeLa, Asano et al., ICLR 2020): equal-sized (or ``target``-sized) clusters."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from lakelabel.pipeline.clustering.base import ClusteringMethod, ClusterInputs, MethodOutput, MethodSettings


class SinkhornSettings(MethodSettings):
    centroid_temperature: float = Field(
        0.05, gt=0, description="centroid similarities enter Sinkhorn as log-softmax(sim / τ): sharp rows"
    )
    tol: float = Field(1e-3, gt=0, description="relative cluster-mass tolerance")
    balance: float = Field(
        0.1,
        gt=0,
        description="hard labels within this relative distance of equal sizes (λ raised until then)",
    )


class Sinkhorn(ClusteringMethod):
    name = "sinkhorn"
    Settings = SinkhornSettings
    by_default = True

    def columns(self) -> list[tuple[str, str]]:
        return [("sinkhorn", "label")]

    def run(self, inputs: ClusterInputs) -> MethodOutput:
        solved = inputs.balanced(inputs.config.seed)
        return MethodOutput(
            {"sinkhorn": solved.labels.numpy().astype(np.int32)},
            {
                "iterations": solved.result.iterations,
                "lambda": solved.result.lam,
                "marginal_error": round(solved.result.marginal_error, 6),
                "imbalance": round(solved.imbalance, 4),
            },
        )
