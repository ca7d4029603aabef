"""Least certain per class (uncertainty sampling, Lewis & Gale, SIGIR 1994; per class as in UPS's
review, Rizve et al., ICLR 2021): the budget split evenly over the predicted classes, each class's
most uncertain eligible images first."""

from __future__ import annotations

import numpy as np

from lakelabel.pipeline.registry import BlockSettings
from lakelabel.pipeline.review.base import ReviewInputs, ReviewRule


class LeastCertainSettings(BlockSettings):
    pass


class LeastCertain(ReviewRule):
    name = "least_certain"
    Settings = LeastCertainSettings

    def pick(self, inputs: ReviewInputs, budget: int, seed: int) -> np.ndarray:
        classes = np.unique(inputs.predicted[inputs.eligible])
        if budget <= 0 or not len(classes):
            return np.empty(0, np.int64)
        per_class = -(-budget // len(classes))
        picked = []
        for c in classes:
            rows = np.nonzero(inputs.eligible & (inputs.predicted == c))[0]
            picked.append(rows[np.argsort(-inputs.uncertainty[rows], kind="stable")[:per_class]])
        out = np.concatenate(picked)
        return out[np.argsort(-inputs.uncertainty[out], kind="stable")][:budget]
