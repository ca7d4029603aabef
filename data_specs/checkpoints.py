"""Pretrain run contract: ``ROOT/checkpoints/<run>/`` written by ``lakelabel pretrain``, read by
embed (the encoder) and the report (its time). See ``checkpoints.md``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from lakelabel.data_specs.errors import ContractError
from lakelabel.data_specs.layout import CheckpointPaths


@dataclass(frozen=True)
class EncoderMeta:
    """``encoder.json``: what rebuilds the trained backbone around ``encoder.pt``."""

    backbone: str  # architecture (``resnet18``, ``timm:…``)
    small_stem: bool  # 3x3 stride-1 stem without max-pool (small images)
    image_size: int  # input side it was trained at
    mean: tuple[float, ...] | None  # input normalisation (None: ImageNet's)
    std: tuple[float, ...] | None


def read_encoder_meta(run: CheckpointPaths) -> EncoderMeta:
    """:class:`EncoderMeta` of a finished pretrain run; an error says how to finish an unfinished one."""
    if not run.meta.is_file():
        raise ContractError(f"{str(run.meta)!r} missing: re-run `lakelabel pretrain` to finish the run")
    meta = json.loads(run.meta.read_text())
    try:
        return EncoderMeta(
            backbone=meta["backbone"],
            small_stem=bool(meta["small_stem"]),
            image_size=int(meta["image_size"]),
            mean=tuple(meta["mean"]) if meta.get("mean") else None,
            std=tuple(meta["std"]) if meta.get("std") else None,
        )
    except KeyError as missing:
        raise ContractError(f"checkpoints: {str(run.meta)!r} lacks {missing}") from None


def pretrain_seconds(run: CheckpointPaths) -> float | None:
    """The wall time a finished pretrain run took (None when it has no summary)."""
    if not run.summary.is_file():
        return None
    return json.loads(run.summary.read_text()).get("seconds")
