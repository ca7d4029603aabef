"""Backbones: torchvision ResNets (with a small-image stem for inputs of 64 px or less), and any timm or
torchvision architecture by name (``timm:<model>``, ``torchvision:<model>``), built without weights.

Pure compute: weights never load here (``pipeline/encoders.py`` loads files and local caches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
NAMED_PREFIXES: tuple[str, ...] = ("timm:", "torchvision:")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What a backbone expects: square input ``image_size`` and the normalisation ``mean``/``std``."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def is_named(name: str) -> bool:
    """True for ``timm:<model>`` / ``torchvision:<model>`` architecture names."""
    return name.startswith(NAMED_PREFIXES)


def build_backbone(name: str, small_images: bool) -> tuple[nn.Module, int]:
    """A randomly initialised backbone without its classifier; returns ``(module, feature_dim)``.

    ``name``: ``resnet18|34|50`` (``small_images``, inputs ≤ 64 px: 3×3 stride-1 first conv and no
    max-pool, as in SimCLR's CIFAR variant), or ``timm:<model>`` / ``torchvision:<model>``
    (``small_images`` ignored). Input ``(B, 3, H, W)`` → output ``(B, feature_dim)``.
    """
    if is_named(name):
        module, dim, _ = build_named(name)
        return module, dim
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}, timm:<model>, torchvision:<model>"
        )
    net = getattr(torchvision.models, name)(weights=None)
    if small_images:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def build_named(name: str) -> tuple[nn.Module, int, Preprocess]:
    """``timm:<model>`` or ``torchvision:<model>`` without weights and without its classifier:
    ``(module, feature_dim, preprocess)``, the preprocessing of the model's pretrained config."""
    library, _, model = name.partition(":")
    if not model:
        raise ValueError(f"encoder name {name!r} lacks a model after {library + ':'!r}")
    if library == "timm":
        import timm

        if not timm.is_model(model):
            raise ValueError(f"timm has no model {model!r} (see timm.list_models())")
        net = timm.create_model(model, pretrained=False, num_classes=0)
        cfg = timm.data.resolve_model_data_config(net)
        pre = Preprocess(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
        return net, int(net.num_features), pre
    if library == "torchvision":
        if model not in torchvision.models.list_models(torchvision.models):
            raise ValueError(f"torchvision has no classification model {model!r}")
        net = torchvision.models.get_model(model, weights=None)
        size = 224
        try:
            weights = torchvision.models.get_model_weights(model).DEFAULT
            crop = weights.transforms().crop_size
            size = int(crop[0] if isinstance(crop, list | tuple) else crop)
        except (ValueError, AttributeError):
            pass
        dim = _drop_classifier(net)
        return net, dim, Preprocess(size)
    raise ValueError(f"unknown encoder library {library!r} in {name!r}; valid: timm, torchvision")


def _drop_classifier(net: nn.Module) -> int:
    """Replace a torchvision model's classifier with Identity; returns the feature dimension."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(net, attr, None)
        if head is None:
            continue
        setattr(net, attr, nn.Identity())
        net.eval()
        with torch.no_grad():
            dim = int(net(torch.zeros(1, 3, 224, 224)).flatten(1).shape[1])
        net.train()
        return dim
    raise ValueError(f"cannot find the classifier of {type(net).__name__}")


def build_with_preprocess(
    name: str, small_images: bool, image_size: int | None = None
) -> tuple[nn.Module, int, Preprocess]:
    """:func:`build_backbone` plus what its inputs need: a named model's pretrained preprocessing
    (``image_size`` overriding its size), else ImageNet normalisation at ``image_size`` (default 32)."""
    if is_named(name):
        module, dim, pre = build_named(name)
        return module, dim, Preprocess(image_size or pre.image_size, pre.mean, pre.std)
    module, dim = build_backbone(name, small_images)
    return module, dim, Preprocess(image_size or 32)
