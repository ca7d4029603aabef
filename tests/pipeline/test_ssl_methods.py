"""Contract of every registered SSL method as the pipeline sees it (pipeline/ssl): its settings block
is validated and reaches its loss module, and it declares its views. (The loss modules' own contract:
tests/models/method_contract.py.)"""

from __future__ import annotations

import inspect

import pytest
import torch
from pydantic import ValidationError

from lakelabel.models.backbones import build_backbone
from lakelabel.pipeline.config import PretrainConfig
from lakelabel.pipeline.ssl import METHODS, ViewRecipe


@pytest.mark.parametrize("name", list(METHODS))
def test_ssl_method_contract(name: str) -> None:
    entry = METHODS[name]
    config = PretrainConfig(method=name)
    settings = getattr(config, name)
    assert isinstance(settings, entry.Settings) and isinstance(entry.views, ViewRecipe)
    keywords = inspect.signature(entry(settings).module_class()).parameters
    assert set(entry.Settings.model_fields) <= set(keywords)  # every setting reaches the module
    backbone, dim = build_backbone("resnet18", small_images=True)
    module = entry(settings).build(backbone, dim)
    loss = module(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(ValidationError, match="not_a_setting"):
        PretrainConfig(**{name: {"not_a_setting": 1}})
    with pytest.raises(TypeError, match=name):
        entry(object())


def test_a_setting_changes_the_module() -> None:
    config = PretrainConfig(method="simclr", simclr={"proj_dim": 32, "temperature": 0.2})
    backbone, dim = build_backbone("resnet18", small_images=True)
    module = METHODS["simclr"](config.simclr).build(backbone, dim)
    assert module.temperature == 0.2 and module.projector(torch.rand(2, dim)).shape == (2, 32)
