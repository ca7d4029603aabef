from __future__ import annotations

import pytest
import torch

from lakelabel.models.methods import build_method
from tests.models.helpers import loss_falls, tiny_backbone
from tests.models.method_contract import MethodContract


class TestBYOL(MethodContract):
    NAME = "byol"

    def test_wasserstein_variant_trains(self):
        first, last, spread = loss_falls(self.NAME, steps=30, loss="wasserstein", hidden_dim=256)
        assert last < first and spread > 0.5

    def test_ema_tau_follows_cosine_schedule_and_target_moves(self):
        backbone, dim = tiny_backbone()
        method = build_method(self.NAME, backbone, dim, tau_base=0.9)
        before = [p.clone() for p in method.target_backbone.parameters()]
        with torch.no_grad():
            for p in method.backbone.parameters():
                p.add_(1.0)
        method.after_step(0.0)
        assert method.tau == pytest.approx(0.9)
        moved = [
            (a - b).abs().mean().item()
            for a, b in zip(method.target_backbone.parameters(), before, strict=True)
        ]
        assert all(m == pytest.approx(0.1, rel=1e-4) for m in moved)
        method.after_step(1.0)
        assert method.tau == pytest.approx(1.0)
