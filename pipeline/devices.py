"""Device and precision, shared by every stage that runs a network."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from pipeline.config import check_choice

PRECISIONS = ("auto", "fp32", "bf16")


def compute_device(device: str | None = None) -> torch.device:
    """``device`` as given, else CUDA when present, else the CPU (every stage's default)."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(precision: str, device: torch.device):
    """bf16 autocast for ``bf16``, or ``auto`` on CUDA; a no-op context otherwise."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
