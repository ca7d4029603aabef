from __future__ import annotations

import torch
import torch.nn as nn

from lakelabel.models.methods import build_method


def tiny_backbone() -> tuple[nn.Module, int]:
    return (
        nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        ),
        64,
    )


def two_views(seed: int = 0, b: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 16, 16, generator=g)
    return x + 0.05 * torch.randn(x.shape, generator=g), x.flip(-1) + 0.05 * torch.randn(x.shape, generator=g)


def loss_falls(name: str, steps: int = 15, **kwargs) -> tuple[float, float, float]:
    """Train ``name`` on one fixed tiny batch.

    Returns (first loss, last loss, std of the L2-normalised projector outputs over the batch ×
    sqrt(dim)): about 1 for spread-out outputs, 0 when they collapse to one point (SimSiam, §4.1).
    """
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    method = build_method(name, backbone, dim, **kwargs)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x1, x2 = two_views()
    first = last = 0.0
    for step in range(steps):
        loss = method(x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step / steps)
        first = loss.item() if step == 0 else first
        last = loss.item()
    with torch.no_grad():
        z = torch.nn.functional.normalize(method.projector(method.backbone(x1)), dim=-1)
    return first, last, z.std(0).mean().item() * z.shape[1] ** 0.5
