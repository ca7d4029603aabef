"""Device and precision, shared by every stage that runs a network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from lakelabel.pipeline.checks import PRECISIONS, check_choice


def compute_device(device: str | None = None) -> torch.device:
    """``device`` as given, else CUDA when present, else the CPU (every stage's default)."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(precision: str, device: torch.device):
    """bf16 autocast for ``bf16``, or ``auto`` on CUDA; a no-op context otherwise."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` for the block (small matrices: one thread avoids
    OpenMP barriers that cost more than the work, ~3× on a busy 2-core machine), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
