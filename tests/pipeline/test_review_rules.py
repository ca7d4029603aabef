"""Contract of the review-rule registry: every rule picks up to its budget of distinct eligible rows,
the same ones for the same inputs, and owns its settings block in the select config."""

from __future__ import annotations

import numpy as np
import pytest

from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.registry import BlockSettings
from lakelabel.pipeline.review import REVIEW_RULES, ReviewInputs


def _inputs(n: int = 600, classes: int = 4, seed: int = 0) -> ReviewInputs:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rows = rng.normal(size=(n, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return ReviewInputs(
        probs=probs,
        uncertainty=rng.random(n).astype(np.float32),
        predicted=probs.argmax(1),
        eligible=rng.random(n) > 0.3,
        rows=rows,
    )


@pytest.mark.parametrize("name", sorted(REVIEW_RULES))
def test_every_review_rule_keeps_the_contract(name: str) -> None:
    rule_cls = REVIEW_RULES[name]
    assert rule_cls.name == name and issubclass(rule_cls.Settings, BlockSettings)
    assert isinstance(getattr(SelectConfig(), name), rule_cls.Settings)  # its block in the config
    rule = rule_cls(rule_cls.Settings())
    inputs = _inputs()
    picked = rule.pick(inputs, 40, seed=0)
    assert 0 < len(picked) <= 40 and len(set(picked.tolist())) == len(picked)
    assert inputs.eligible[picked].all()
    assert np.array_equal(picked, rule.pick(inputs, 40, seed=0))
    assert len(rule.pick(inputs, 0, seed=0)) == 0
    none = ReviewInputs(**{**inputs.__dict__, "eligible": np.zeros(600, bool)})
    assert len(rule.pick(none, 40, seed=0)) == 0
    with pytest.raises(TypeError, match=name):
        rule_cls(BlockSettings())


def test_uncertain_diverse_spreads_over_the_embeddings() -> None:
    """Its picks have small margins, and lie farther apart than the same number of smallest margins."""
    inputs = _inputs(2000)
    diverse = REVIEW_RULES["uncertain_diverse"](REVIEW_RULES["uncertain_diverse"].Settings(pool=5))
    picked = diverse.pick(inputs, 30, seed=0)
    top2 = np.sort(inputs.probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    eligible = np.nonzero(inputs.eligible)[0]
    smallest = eligible[np.argsort(margin[eligible])[:30]]
    assert margin[picked].max() <= np.sort(margin[eligible])[150 - 1]  # from the 5 × budget pool

    def spread(rows: np.ndarray) -> float:
        x = inputs.rows[rows]
        d = 1 - x @ x.T
        return float(d[~np.eye(len(rows), dtype=bool)].min())

    assert spread(picked) > spread(smallest)
