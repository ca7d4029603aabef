"""SCAN (Van Gansbeke et al., ECCV 2020, "SCAN: Learning to Classify Images without Labels") on frozen
embeddings: mined nearest neighbours, heads trained for neighbour consistency + entropy, then
self-labelling on confident samples (``models/scan.py``). Runs on a CPU."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from lakelabel.pipeline.clustering.base import ClusteringMethod, ClusterInputs, MethodOutput, MethodSettings


class ScanSettings(MethodSettings):
    neighbours: int = Field(20, gt=0, description="nearest neighbours mined per image (FAISS, cosine)")
    heads: int = Field(5, gt=0, description="SCAN heads trained; the lowest-loss one is kept")
    hidden: int = Field(0, ge=0, description="0 = linear heads, else an MLP with this hidden width")
    epochs: int = Field(60, ge=0, description="SCAN-loss epochs")
    entropy_weight: float = Field(5.0, ge=0, description="weight of the cluster-entropy term (SCAN: 5)")
    self_label_epochs: int = Field(10, ge=0, description="self-labelling epochs (0: none)")
    threshold: float = Field(
        0.99, gt=0, lt=1, description="self-labelling: confident when max probability ≥ this"
    )
    feature_dropout: float = Field(0.25, ge=0, lt=1, description="input dropout while self-labelling")
    batch_size: int = Field(512, gt=0)
    lr: float = Field(1e-3, gt=0, description="Adam")


class Scan(ClusteringMethod):
    name = "scan"
    Settings = ScanSettings

    def run(self, inputs: ClusterInputs) -> MethodOutput:
        import torch

        from lakelabel.models.scan import mine_neighbours, train_scan

        s = self.settings
        if s.neighbours >= inputs.n:
            raise ValueError(f"scan.neighbours={s.neighbours} needs more than {s.neighbours} embedded images")
        neighbours = mine_neighbours(inputs.x, s.neighbours)
        scan = train_scan(
            torch.from_numpy(inputs.x) * float(np.sqrt(inputs.x.shape[1])),  # coordinates of order 1
            torch.from_numpy(neighbours),
            inputs.k,
            **s.model_dump(exclude={"neighbours", "batch_size"}),
            batch_size=min(s.batch_size, inputs.n),
            seed=inputs.config.seed,
            log=inputs.log,
        )
        return MethodOutput(
            {"scan": scan.labels.numpy().astype(np.int32), "scan_confidence": scan.confidence.numpy()},
            {"head": scan.head, "history": scan.history},
            {"scan_head": scan.model.state_dict()},
        )
