"""Two-view augmentations per SSL method, for 32 px and ≥ 96 px inputs: per image in the loader
(torchvision.transforms.v2, :class:`TwoViews`) or per batch on the device (kornia, :class:`BatchViews`).

Settings follow the methods' papers and solo-learn's CIFAR/ImageNet recipes: random resized crop,
flip, colour jitter, grayscale, Gaussian blur (≥ 96 px only; blur destroys 32 px images) and
solarization (BYOL and Barlow Twins use asymmetric views).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchvision.transforms import v2

if TYPE_CHECKING:
    from lakelabel.pipeline.ssl import ViewRecipe


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def view_transform(
    image_size: int, blur_p: float, solarize_p: float, jitter: float = 0.4, mean=MEAN, std=STD
) -> v2.Compose:
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
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


class TwoViews:
    """Callable returning two independently augmented views of one image (an SSL method's ``recipe``)."""

    def __init__(self, recipe: ViewRecipe, image_size: int, mean=MEAN, std=STD):
        (b1, s1), (b2, s2) = recipe.first, recipe.second
        self.view1 = view_transform(image_size, b1, s1, mean=mean, std=std)
        self.view2 = view_transform(image_size, b2, s2, mean=mean, std=std)

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view1(image), self.view2(image)


def _batch_view(image_size: int, blur_p: float, solarize_p: float, mean, std, jitter: float = 0.4):
    """The :func:`view_transform` recipe as kornia ops on a float ``(B, 3, H, W)`` batch in [0, 1],
    with per-sample parameters."""
    import kornia.augmentation as K

    small = image_size <= 64
    ops: list = [
        K.RandomResizedCrop(
            (image_size, image_size), scale=(0.2 if small else 0.08, 1.0), cropping_mode="resample"
        ),
        K.RandomHorizontalFlip(),
        K.ColorJitter(jitter, jitter, jitter / 2, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
    ]
    if not small and blur_p > 0:
        k = 23 if image_size >= 160 else 9
        ops.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur_p))
    if solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold 0.5 = 128/255
    ops.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return torch.nn.Sequential(*ops)


class BatchViews(torch.nn.Module):
    """Two views of a uint8 batch ``(B, 3, H, W)``, augmented where the batch is (the GPU): the same
    recipe as :class:`TwoViews`, per-sample parameters, deterministic under ``seed`` (parameters
    are drawn from the CPU RNG, forked, so the process's global RNG is untouched)."""

    def __init__(self, recipe: ViewRecipe, image_size: int, mean=MEAN, std=STD):
        super().__init__()
        (b1, s1), (b2, s2) = recipe.first, recipe.second
        self.view1 = _batch_view(image_size, b1, s1, mean, std)
        self.view2 = _batch_view(image_size, b2, s2, mean, std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div_(255)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % (2**63))
            return self.view1(x), self.view2(x)


class DecodeUint8:
    """Loader-side half of device augmentation: PIL image → uint8 tensor ``(3, S, S)`` (resized and
    centre-cropped to ``size`` only when it is not already that size)."""

    def __init__(self, size: int):
        self.size = size
        self.resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __call__(self, image) -> torch.Tensor:
        x = v2.functional.pil_to_tensor(image)
        return x if x.shape[-2:] == (self.size, self.size) else self.resize(x)


def load_size(image_size: int) -> int:
    """Side of the uint8 images loaders hand to :class:`BatchViews`: the crop size for small images
    (CIFAR keeps its 32 px), else 8/7 of it (room for the random resized crop)."""
    return image_size if image_size <= 64 else image_size * 8 // 7


def eval_transform(image_size: int, mean=MEAN, std=STD) -> v2.Compose:
    """Deterministic transform for embedding and kNN evaluation: resize, centre crop, normalise
    (``mean``/``std``: the encoder's pretrained normalisation; ImageNet's by default)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def classifier_transform(image_size: int, mean=MEAN, std=STD) -> v2.Compose:
    """Light augmentation for supervised training on labels: random resized crop (scale 0.6–1) and flip."""
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
