"""Classifier contract: ``ROOT/classifiers/<run>/`` written by ``lakelabel train-classifier``, read by
``lakelabel predict`` and by anyone deploying it without lakelabel. See ``classifiers.md``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakelabel.data_specs.errors import ContractError

#: the files of a classifier folder
TORCHSCRIPT, ONNX, CARD, CARD_README, METRICS = (
    "model.ts",
    "model.onnx",
    "card.json",
    "README.md",
    "metrics.json",
)
#: the key under which TorchScript's extra files and ONNX's metadata carry the model's preprocessing
PREPROCESSING_KEY = "lakelabel.json"


@dataclass(frozen=True)
class Preprocessing:
    """What the exported model takes: uint8 RGB ``(N, 3, size, size)``, the image resized so its
    shorter side is ``size`` and centre-cropped (``PIL.ImageOps.fit``); it normalises with ``mean`` and
    ``std`` itself and returns the probabilities of ``classes``, in this order."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "input": "uint8 RGB (N, 3, size, size)",
                "size": self.size,
                "mean": list(self.mean),
                "std": list(self.std),
                "classes": list(self.classes),
                "output": "probabilities (N, classes)",
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        data = json.loads(text)
        try:
            return cls(int(data["size"]), tuple(data["mean"]), tuple(data["std"]), tuple(data["classes"]))
        except KeyError as missing:
            raise ContractError(f"classifiers: the model's {PREPROCESSING_KEY} lacks {missing}") from None


def read_card(folder: str | Path) -> dict[str, Any]:
    """The model card of a classifier folder (its lineage, training and metrics)."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(
            f"no classifier in {str(folder)!r}: {CARD} is missing; run `lakelabel train-classifier`"
        )
    return json.loads(path.read_text())
