from __future__ import annotations

import pytest
import torch

from models.backbones import build_backbone
from models.methods import METHODS, build_method
from tests.models.helpers import loss_falls, two_views

NAME = "byol"


def test_registered_and_builds_on_a_small_image_resnet():
    assert NAME in METHODS
    backbone, dim = build_backbone("resnet18", small_images=True)
    method = build_method(NAME, backbone, dim)
    x1, x2 = two_views(b=4)
    loss = method(x1, x2)
    assert loss.shape == () and torch.isfinite(loss)
    assert backbone(x1).shape == (4, 512)


def test_loss_falls_without_collapse():
    first, last, spread = loss_falls(NAME)
    assert last < first
    assert spread > 0.5, "normalised outputs collapsed towards one point"


def test_unknown_loss_lists_valid_choices():
    backbone, dim = build_backbone("resnet18", small_images=True)
    with pytest.raises(ValueError, match="valid:"):
        build_method(NAME, backbone, dim, loss="kl")


def test_wasserstein_variant_trains():
    first, last, spread = loss_falls(NAME, steps=30, loss="wasserstein", hidden_dim=256)
    assert last < first and spread > 0.5


def test_ema_tau_follows_cosine_schedule_and_target_moves():
    from tests.models.helpers import tiny_backbone

    backbone, dim = tiny_backbone()
    method = build_method(NAME, backbone, dim, tau_base=0.9)
    before = [p.clone() for p in method.target_backbone.parameters()]
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    method.after_step(0.0)
    assert method.tau == pytest.approx(0.9)
    moved = [
        (a - b).abs().mean().item() for a, b in zip(method.target_backbone.parameters(), before, strict=True)
    ]
    assert all(m == pytest.approx(0.1, rel=1e-4) for m in moved)
    method.after_step(1.0)
    assert method.tau == pytest.approx(1.0)
