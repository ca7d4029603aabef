"""Fit a foreign state dict to a module's parameters: by name, else by order and shape.

Pure compute on dicts of tensors. Ported checkpoints often rename every tensor but keep the
architecture's order (e.g. EfficientNet-Lite0 in ``efficientnet_pytorch`` names, ``_blocks.N.
_depthwise_conv``, against timm's ``blocks.N.M.conv_dw``): then the i-th tensor of one is the
i-th of the other, which the shapes confirm tensor by tensor.
"""

from __future__ import annotations

import torch

PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_SKIP = ("num_batches_tracked",)


def strip_prefixes(name: str) -> str:
    """``module.backbone.conv1.weight`` → ``conv1.weight`` (DDP, method and wrapper prefixes)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith(_SKIP)]


def fit_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of ``source`` for the keys of ``target`` (a module's ``state_dict()``).

    By name (prefixes stripped, shapes equal); when that misses tensors and the first
    ``len(target)`` tensors of ``source`` have ``target``'s shapes in order, by order instead (extra
    trailing source tensors, e.g. a classifier, are dropped). Returns ``(state, report)`` with
    ``report = {"matched", "backbone_tensors", "by", "dropped"}`` (BN step counters not counted).
    """
    wanted = _tensors(target)
    by_name = {}
    for name, tensor in source.items():
        name = strip_prefixes(name)
        if name in target and target[name].shape == tensor.shape:
            by_name[name] = tensor
    matched_by_name = sum(1 for k, _ in wanted if k in by_name)
    src = _tensors(source)
    in_order = len(src) >= len(wanted) and all(
        s.shape == t.shape for (_, s), (_, t) in zip(src, wanted, strict=False)
    )
    if matched_by_name < len(wanted) and in_order:
        state = {tk: sv for (_, sv), (tk, _) in zip(src, wanted, strict=False)}
        dropped = [k for k, _ in src[len(wanted) :]]
        return state, {
            "matched": len(wanted),
            "backbone_tensors": len(wanted),
            "by": "order",
            "dropped": dropped,
        }
    dropped = [k for k in source if strip_prefixes(k) not in by_name and not k.endswith(_SKIP)]
    return by_name, {
        "matched": matched_by_name,
        "backbone_tensors": len(wanted),
        "by": "name",
        "dropped": dropped,
    }
