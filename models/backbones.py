"""Backbones: torchvision ResNets, with a small-image stem for inputs of 64 px or less."""

from __future__ import annotations

import torch.nn as nn
import torchvision

BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")


def build_backbone(name: str, small_images: bool) -> tuple[nn.Module, int]:
    """A randomly initialised ResNet without its classifier; returns ``(module, feature_dim)``.

    ``small_images`` (inputs ≤ 64 px, e.g. CIFAR): 3×3 stride-1 first conv and no max-pool, as in
    SimCLR's CIFAR variant. Weights never download: pretrained weights come in as a checkpoint file.
    Input ``(B, 3, H, W)`` → output ``(B, feature_dim)``.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    net = getattr(torchvision.models, name)(weights=None)
    if small_images:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim
