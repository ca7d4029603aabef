"""Tests every SSL method must pass; each method's test file subclasses :class:`MethodContract`."""

from __future__ import annotations

import pytest
import torch

from lakelabel.models.backbones import build_backbone
from lakelabel.models.methods import METHODS, build_method
from tests.models.helpers import loss_falls, two_views


class MethodContract:
    NAME = ""

    def test_registered_and_builds_on_a_small_image_resnet(self):
        assert self.NAME in METHODS
        backbone, dim = build_backbone("resnet18", small_images=True)
        method = build_method(self.NAME, backbone, dim)
        x1, x2 = two_views(b=4)
        loss = method(x1, x2)
        assert loss.shape == () and torch.isfinite(loss)
        assert backbone(x1).shape == (4, 512)

    def test_loss_falls_without_collapse(self):
        first, last, spread = loss_falls(self.NAME)
        assert last < first
        assert spread > 0.5, "normalised outputs collapsed towards one point"

    def test_unknown_loss_lists_valid_choices(self):
        backbone, dim = build_backbone("resnet18", small_images=True)
        with pytest.raises(ValueError, match="valid:"):
            build_method(self.NAME, backbone, dim, loss="kl")
