"""Registry of review rules (which images a person labels after a selection): one file per rule, one
entry here, one contract test (``tests/pipeline/test_review_rules.py``); each rule's settings are the
``select.<rule>`` block."""

from __future__ import annotations

from lakelabel.pipeline.review.base import ReviewInputs, ReviewRule
from lakelabel.pipeline.review.least_certain import LeastCertain
from lakelabel.pipeline.review.uncertain_diverse import UncertainDiverse

REVIEW_RULES: dict[str, type[ReviewRule]] = {
    "uncertain_diverse": UncertainDiverse,
    "least_certain": LeastCertain,
}

__all__ = ["REVIEW_RULES", "ReviewInputs", "ReviewRule"]
