"""What an SSL method is to the pipeline: its settings block (``pretrain.<method>:``), the paper's
augmentation of each view, and how to build its loss module (``models/methods``) around a backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lakelabel.pipeline.registry import BlockSettings, Configured


@dataclass(frozen=True)
class ViewRecipe:
    """How strongly each of the two views is augmented beyond the shared crop, flip, colour jitter
    and grey-scale: ``(Gaussian-blur p, solarize p)`` per view, at >= 96 px (blur is off at 32 px)."""

    first: tuple[float, float] = (0.5, 0.0)
    second: tuple[float, float] = (0.5, 0.0)


class SSLEntry(Configured):
    """One SSL method: ``name`` (registry key and config block), ``Settings`` (keywords of its module's
    constructor), ``views`` and :meth:`module`. Subclasses quote their paper in the module docstring."""

    views: ClassVar[ViewRecipe] = ViewRecipe()

    def module_class(self) -> type:  # pragma: no cover - interface
        """The ``models.methods`` class (an ``SSLMethod``); imported here, so the registry loads no torch."""
        raise NotImplementedError

    def build(self, backbone: Any, feat_dim: int, loss: str = "default") -> Any:
        """The method's loss module around ``backbone`` with these settings."""
        return self.module_class()(backbone, feat_dim, loss=loss, **self.settings.model_dump())


SSLSettings = BlockSettings
