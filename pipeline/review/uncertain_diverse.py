"""Uncertain and diverse: the smallest-margin images (Scheffer et al., IDA 2001, margin sampling), spread
by greedy k-center over their embeddings (Sener & Savarese, ICLR 2018, core-set), so one round's labels
do not all fall on the same confusion. The pool is ``pool`` × budget of the smallest margins."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from lakelabel.pipeline.registry import BlockSettings
from lakelabel.pipeline.review.base import ReviewInputs, ReviewRule


class UncertainDiverseSettings(BlockSettings):
    pool: int = Field(
        5, ge=1, description="candidates: this many times the budget of the smallest margins, then k-center"
    )


class UncertainDiverse(ReviewRule):
    name = "uncertain_diverse"
    Settings = UncertainDiverseSettings

    def pick(self, inputs: ReviewInputs, budget: int, seed: int) -> np.ndarray:
        eligible = np.nonzero(inputs.eligible)[0]
        if budget <= 0 or not len(eligible):
            return np.empty(0, np.int64)
        top2 = np.sort(inputs.probs[eligible], axis=1)[:, -2:]
        margin = top2[:, -1] - (top2[:, 0] if top2.shape[1] > 1 else 0)
        pool = eligible[np.argsort(margin, kind="stable")[: self.settings.pool * budget]]
        x = inputs.rows[pool].astype(np.float32)
        chosen = [0]  # the smallest margin first, then the candidate farthest from every chosen one
        distance = 1 - x @ x[0]
        for _ in range(min(budget, len(pool)) - 1):
            nxt = int(np.argmax(distance))
            chosen.append(nxt)
            distance = np.minimum(distance, 1 - x @ x[nxt])
        return pool[np.array(chosen)]
