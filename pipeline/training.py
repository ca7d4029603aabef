"""Training helpers shared by select's fine-tuning (``pipeline/finetune.py``) and SCAN's encoder update
(``pipeline/clustering/scan.py``): the encoder that made the embeddings, a bounded loop of optimiser
steps on image batches, its record, and re-embedding every image through a tuned backbone."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn as nn

from lakelabel.data_specs.embeddings import Embeddings
from lakelabel.data_specs.layout import Layout
from lakelabel.models.optim import warmup_cosine
from lakelabel.models.ups import EncoderClassifier
from lakelabel.pipeline.augment import MEAN, STD, eval_transform
from lakelabel.pipeline.devices import autocast
from lakelabel.pipeline.encoders import Encoder, load_encoder
from lakelabel.pipeline.shard_data import eval_loader


def embedding_encoder(
    root: str | Path, emb: Embeddings, name: str | None = None, option: str = ""
) -> Encoder:
    """The encoder that made ``emb`` (``name``, default the one in its meta), checked by sha256;
    ``option`` names the setting that picks another in the error."""
    meta = emb.meta
    name = name or meta["encoder"]
    spec = {
        "backbone": meta["backbone"],
        "stem": "small" if meta["small_stem"] else "imagenet",
        "image_size": meta["image_size"],
    }
    random_seed = re.fullmatch(r"random(\d+)", name)
    if random_seed and not Layout(root).checkpoint(name).dir.exists():
        encoder = load_encoder(root, "random", seed=int(random_seed[1]), **spec)
    else:
        weights = meta.get("weights") if name == meta["encoder"] else None
        encoder = load_encoder(root, name, weights, **spec)
    if encoder.sha256 != meta["encoder_sha256"]:
        pick = f"pass {option} with the checkpoint that did, or " if option else ""
        raise ValueError(
            f"encoder {name!r} (sha256 {encoder.sha256[:12]}) did not make the embeddings "
            f"{str(emb.directory)!r} (sha256 {meta['encoder_sha256'][:12]}); {pick}embed with this one first"
        )
    return encoder


def train_steps(
    model: nn.Module,
    batches: Iterable[dict],
    steps: int,
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[torch.Tensor, dict], torch.Tensor],
    precision: str,
    dev: torch.device,
    log: Callable[[dict], None] | None = None,
    keep_norm_statistics: bool = False,
) -> list[float]:
    """``steps`` optimiser steps of ``model`` on image ``batches`` (cosine decay of each group's lr;
    autocast and channels_last on CUDA); ``loss_of(logits, batch)``. Returns the losses.
    ``keep_norm_statistics``: batch-norm layers normalise with their stored statistics and do not
    update them (their affine parameters still train)."""
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    losses: list[float] = []
    model.train()
    if keep_norm_statistics:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    for batch in batches:  # endless streams: bounded by steps
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = warmup_cosine(len(losses), steps, 0, lr)
        x = batch["image"].to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, dev):
            logits = model(x).float()
        loss = loss_of(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if log and (len(losses) % max(1, steps // 20) == 0 or len(losses) == steps):
            log({"step": len(losses), "steps": steps, "loss": round(losses[-1], 4)})
        if len(losses) == steps:
            break
    if len(losses) < steps:
        raise RuntimeError(f"the image stream ended after {len(losses)} of {steps} steps")
    return losses


def training_record(prefix: str, losses: list[float], batch_size: int, seconds: float) -> dict:
    """Steps, images, seconds, images/s and the mean loss of the first and of the last tenth of the steps."""
    tenth = max(1, len(losses) // 10)
    images = len(losses) * batch_size
    return {
        f"{prefix}_steps": len(losses),
        f"{prefix}_images": images,
        f"{prefix}_seconds": round(seconds, 1),
        f"{prefix}_images_per_s": round(images / seconds, 1),
        f"{prefix}_loss_start": round(sum(losses[:tenth]) / tenth, 4),
        f"{prefix}_loss_end": round(sum(losses[-tenth:]) / tenth, 4),
    }


@torch.no_grad()
def reembed(
    model: EncoderClassifier, emb: Embeddings, root: Path, batch_size: int, workers: int, precision: str, dev
) -> torch.Tensor:
    """Features of every row of ``emb`` (its key order) through the tuned backbone."""
    model.eval()
    row_of = {key: i for i, key in enumerate(emb.keys)}
    features = torch.empty(emb.n, model.dim)
    filled = torch.zeros(emb.n, dtype=torch.bool)
    shards = [str(Layout(root).shard(s)) for s in sorted(set(emb.shards))]
    meta = emb.meta
    transform = eval_transform(int(meta["image_size"]), meta.get("mean", MEAN), meta.get("std", STD))
    loader = eval_loader(shards, transform, batch_size, workers, set(row_of))
    for images, keys in loader:
        images = images.to(dev, non_blocking=True)
        if dev.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(precision, dev):
            out = model.features(images).float().cpu()
        index = torch.as_tensor([row_of[k] for k in keys])
        features[index] = out
        filled[index] = True
    if not bool(filled.all()):
        raise RuntimeError(
            f"{int((~filled).sum())} embedded images were not found in their shards; re-run ingest/embed"
        )
    return features
