"""The classifier users deploy: a head on an encoder's features, and the whole network with its
preprocessing, from uint8 images to class probabilities (pure compute; exporting is the pipeline's)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Head(nn.Module):
    """Linear (``hidden=0``) or one-hidden-layer MLP over features ``(N, dim)`` → logits ``(N, C)``."""

    def __init__(self, dim: int, classes: int, hidden: int = 0):
        super().__init__()
        self.dim, self.classes, self.hidden = dim, classes, hidden
        self.net = (
            nn.Linear(dim, classes)
            if hidden == 0
            else nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def feature_scale(dim: int) -> float:
    """Features enter the head as the embeddings store them, unit norm, times √dim (coordinates of
    order 1, as select trains on them)."""
    return math.sqrt(dim)


class ImageClassifier(nn.Module):
    """uint8 images ``(N, 3, S, S)`` (RGB, resized and centre-cropped to the model's input size) →
    class probabilities ``(N, C)``: the encoder's normalisation, its backbone, unit-norm features ×
    √dim, the head. Self-contained once traced: the input size, mean, std and class order travel
    with the exported file."""

    def __init__(self, backbone: nn.Module, head: Head, mean, std, flip_average: bool = False):
        super().__init__()
        self.backbone, self.head, self.flip_average = backbone, head, flip_average
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.scale = feature_scale(head.dim)

    def normalised_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images already normalised (float, the encoder's mean and std): for training.
        With ``flip_average`` the features are averaged with the mirror image's, as embed made them."""
        features = self.backbone(x).float()
        if self.flip_average:
            features = (features + self.backbone(x.flip(-1)).float()) / 2
        return self.head(F.normalize(features, dim=1) * self.scale)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalised_logits((images.float() / 255.0 - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(images), dim=1)
