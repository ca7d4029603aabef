"""The confidence-only selection rule: the baseline UPS is measured against (Rizve et al., ICLR 2021,
§4: pseudo-labelling by confidence alone). Pure compute."""

from __future__ import annotations

import torch

from lakelabel.models.ups import McStats, Selection


def confidence_select(stats: McStats, tau: float = 0.95) -> Selection:
    """Confidence-only baseline: positive when the mean max probability ≥ ``tau``; no negatives."""
    confidence, label = stats.mean.max(dim=1)
    uncertainty = stats.std.gather(1, label.unsqueeze(1)).squeeze(1)
    positive = confidence >= tau
    return Selection(positive, label, torch.zeros_like(stats.mean, dtype=torch.bool), confidence, uncertainty)
