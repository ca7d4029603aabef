"""Two-view augmentations (torchvision.transforms.v2), per SSL method, for 32 px and ≥ 96 px inputs.

Settings follow the methods' papers and solo-learn's CIFAR/ImageNet recipes: random resized crop,
flip, colour jitter, grayscale, Gaussian blur (≥ 96 px only; blur destroys 32 px images) and
solarization (BYOL and Barlow Twins use asymmetric views).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from pipeline.config import check_choice

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# (blur p, solarize p) for view 1 and view 2 at >= 96 px; at 32 px blur is off.
_ASYMMETRY: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "simsiam": ((0.5, 0.0), (0.5, 0.0)),
    "simclr": ((0.5, 0.0), (0.5, 0.0)),
    "byol": ((1.0, 0.0), (0.1, 0.2)),
    "barlow_twins": ((1.0, 0.0), (0.1, 0.2)),
}


def view_transform(image_size: int, blur_p: float, solarize_p: float, jitter: float = 0.4) -> v2.Compose:
    """One random view: PIL image or uint8 tensor in, normalised float tensor ``(3, S, S)`` out."""
    small = image_size <= 64
    ops: list = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=(0.08 if not small else 0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter / 2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if not small and blur_p > 0:
        ops.append(
            v2.RandomApply(
                [v2.GaussianBlur(kernel_size=23 if image_size >= 160 else 9, sigma=(0.1, 2.0))], p=blur_p
            )
        )
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(ops)


class TwoViews:
    """Callable returning two independently augmented views of one image."""

    def __init__(self, method: str, image_size: int):
        check_choice("SSL method", method, _ASYMMETRY)
        (b1, s1), (b2, s2) = _ASYMMETRY[method]
        self.view1 = view_transform(image_size, b1, s1)
        self.view2 = view_transform(image_size, b2, s2)

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view1(image), self.view2(image)


def eval_transform(image_size: int) -> v2.Compose:
    """Deterministic transform for embedding and kNN evaluation: resize, centre crop, normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def classifier_transform(image_size: int) -> v2.Compose:
    """Light augmentation for supervised training on labels: random resized crop (scale 0.6–1) and flip."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
