"""Confidence thresholding (Lee, ICML-W 2013, "Pseudo-Label"; FixMatch's τ, Sohn et al., NeurIPS
2020): a positive label when the (calibrated) max probability reaches ``tau``; no negatives."""

from __future__ import annotations

from pydantic import Field

from lakelabel.pipeline.selection.base import RuleSettings, SelectionRule


class ConfidenceSettings(RuleSettings):
    tau: float = Field(0.95, gt=0, le=1, description="positive: mean max probability ≥ tau")


class Confidence(SelectionRule):
    name = "confidence"
    Settings = ConfidenceSettings

    def select(self, stats):
        from lakelabel.models.confidence import confidence_select

        return confidence_select(stats, self.settings.tau)
