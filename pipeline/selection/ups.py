"""UPS (Rizve, Duarte, Rawat & Shah, ICLR 2021, "In Defense of Pseudo-Labeling: An Uncertainty-Aware
Pseudo-label Selection Framework"): a positive label needs a confident *and* certain (low MC-dropout
std) prediction; classes confidently and certainly excluded become negative labels."""

from __future__ import annotations

from pydantic import Field

from lakelabel.pipeline.selection.base import RuleSettings, SelectionRule


class UpsSettings(RuleSettings):
    tau_p: float = Field(0.70, gt=0, le=1, description="positive: mean max probability ≥ tau_p …")
    kappa_p: float = Field(0.05, gt=0, description="… and its MC-dropout std ≤ kappa_p")
    tau_n: float = Field(0.05, ge=0, lt=1, description="negative: class probability ≤ tau_n …")
    kappa_n: float = Field(0.005, gt=0, description="… and its std ≤ kappa_n")
    class_balance: bool = Field(False, description="cap positives per class at the rarest class's count")


class Ups(SelectionRule):
    name = "ups"
    Settings = UpsSettings

    def select(self, stats):
        from lakelabel.models.ups import ups_select

        s = self.settings
        return ups_select(stats, s.tau_p, s.kappa_p, s.tau_n, s.kappa_n, s.class_balance)
