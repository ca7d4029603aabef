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
        from lakelabel.models.sinkhorn import sinkhorn_assign

        s, seed = self.settings, inputs.config.seed
        scores_of = inputs.centroid_scores(seed)
        # λ = 1: the scores are log_softmax(sim / τ), τ already sets their sharpness
        solved = inputs.balanced_lake(f"sinkhorn-{seed}", scores_of, 1.0, tol=s.tol, balance=s.balance)
        result = solved.result

        def assign(x: np.ndarray, start: int) -> dict[str, np.ndarray]:
            labels, _ = sinkhorn_assign(scores_of(x), result.lam, result.log_scale)
            return {"sinkhorn": labels.numpy().astype(np.int32)}

        return MethodOutput(
            assign,
            {
                "iterations": result.iterations,
                "lambda": result.lam,
                "marginal_error": round(result.marginal_error, 6),
                "imbalance": round(solved.imbalance, 4),
            },
            {
                "sinkhorn_log_scale": result.log_scale.numpy(),
                "sinkhorn_lambda": np.array([result.lam], np.float32),
            },
        )
