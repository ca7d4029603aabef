"""The confidence-only selection rule (models/confidence.py)."""

from __future__ import annotations

from lakelabel.models.confidence import confidence_select
from tests.models.test_ups import stats


def test_confidence_only_ignores_uncertainty() -> None:
    s = stats(mean=[[0.97, 0.03], [0.97, 0.03], [0.6, 0.4]], std=[[0.01, 0.01], [0.3, 0.3], [0.0, 0.0]])
    sel = confidence_select(s, tau=0.95)
    assert sel.positive.tolist() == [True, True, False]
    assert not sel.negative.any()
