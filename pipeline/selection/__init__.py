"""Registry of selection rules: one file per rule, one entry here, one contract test
(``tests/pipeline/test_selection_rules.py``); each rule's settings are the ``select.<rule>`` block."""

from __future__ import annotations

from lakelabel.pipeline.selection.base import RuleSettings, SelectionRule
from lakelabel.pipeline.selection.confidence import Confidence
from lakelabel.pipeline.selection.ups import Ups

RULES: dict[str, type[SelectionRule]] = {"ups": Ups, "confidence": Confidence}

__all__ = ["RULES", "RuleSettings", "SelectionRule"]
