"""k-means on unit-norm embeddings (spherical; FAISS): the baseline every other method must beat
(as DeepCluster's, Caron et al., ECCV 2018)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from lakelabel.pipeline.clustering.base import ClusteringMethod, ClusterInputs, MethodOutput, MethodSettings


class KMeansSettings(MethodSettings):
    iters: int = Field(30, gt=0, description="k-means iterations")
    redo: int = Field(1, gt=0, description="k-means restarts (best objective kept)")
    max_points_per_centroid: int = Field(
        100_000, gt=0, description="training sample per centroid (faiss silently uses 256 unless set)"
    )
    use_gpu: bool | None = Field(None, description="faiss-gpu k-means; None = when available")


class KMeans(ClusteringMethod):
    name = "kmeans"
    Settings = KMeansSettings
    by_default = True

    def columns(self) -> list[tuple[str, str]]:
        return [("kmeans", "label"), ("kmeans_similarity", "score")]

    def run(self, inputs: ClusterInputs) -> MethodOutput:
        import torch

        from lakelabel.models.kmeans import centroid_scores

        fit = inputs.kmeans(inputs.config.seed)

        def assign(x: np.ndarray, start: int) -> dict[str, np.ndarray]:
            similarity, labels = centroid_scores(torch.from_numpy(x), fit.centroids).max(dim=1)
            return {"kmeans": labels.numpy().astype(np.int32), "kmeans_similarity": similarity.numpy()}

        return MethodOutput(
            assign,
            {"objective": round(fit.objective, 3), "trained_on": fit.trained_on, "gpu": fit.gpu},
            {"centroids": fit.centroids},
        )
