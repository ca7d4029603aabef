"""What a selection rule is: its settings block, and ``select`` from MC-dropout statistics to labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakelabel.pipeline.registry import BlockSettings, Configured

if TYPE_CHECKING:
    from lakelabel.models.ups import McStats, Selection

RuleSettings = BlockSettings


class SelectionRule(Configured):
    """One selection rule: ``name`` (registry key and config block), ``Settings`` and :meth:`select`.
    Subclasses quote their paper in the module docstring."""

    def select(self, stats: McStats) -> Selection:  # pragma: no cover - interface
        """Positive labels (``positive``, ``label``) and negative labels (``negative``) from ``stats``."""
        raise NotImplementedError
