"""Projector and predictor MLP heads used by the SSL methods."""

from __future__ import annotations

import torch.nn as nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """``layers`` linear layers with BatchNorm + ReLU between them (optionally BN after the last).

    Shapes: ``(B, in_dim)`` → ``(B, out_dim)``.
    """
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)
