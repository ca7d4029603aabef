"""What a review rule is: its settings block, and ``pick`` from a selection's statistics to the images a
person should label next (the review queue)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lakelabel.pipeline.registry import Configured


@dataclass(frozen=True)
class ReviewInputs:
    """What every rule may use, one row per embedded image."""

    probs: np.ndarray  # N × C mean MC-dropout class probabilities (calibrated, neighbour-smoothed)
    uncertainty: np.ndarray  # N, the selection rule's uncertainty (MC-dropout std of the top class)
    predicted: np.ndarray  # N, the predicted class
    eligible: np.ndarray  # N bool: neither a seed nor already a positive label
    rows: np.ndarray  # N × d unit-norm embeddings


class ReviewRule(Configured):
    """One review rule: ``name`` (registry key and the ``select.<name>`` block), ``Settings`` and
    :meth:`pick`. Subclasses quote their paper in the module docstring."""

    def pick(self, inputs: ReviewInputs, budget: int, seed: int) -> np.ndarray:  # pragma: no cover
        """Up to ``budget`` eligible row indices, the first the most useful to label."""
        raise NotImplementedError
