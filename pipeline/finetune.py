"""Full fine-tuning for UPS selection (``lakelabel select --finetune``; meant for GPUs).

UPS re-initialises the network every round. With ``finetune`` each round starts again from the SSL
encoder that made the embeddings plus a fresh dropout head, trains both end to end on the round's
labels read from the shards (cross-entropy on positives, negative learning on negatives, light
augmentation), then re-embeds every embedded image with the tuned encoder, so the MC-dropout
passes of the head see tuned features. On CUDA: bf16 autocast and channels_last. On a CPU only
small runs are practical (a ResNet-18 step at 32 px is ~1 s per 128 images on 2 cores).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lakelabel.data_specs.embeddings import Embeddings
from lakelabel.models.optim import warmup_cosine
from lakelabel.models.ups import DropoutClassifier, EncoderClassifier, TrainingLabels, pseudo_label_loss
from lakelabel.pipeline.augment import MEAN, STD, classifier_transform, eval_transform
from lakelabel.pipeline.config import SelectConfig, check_choice
from lakelabel.pipeline.devices import PRECISIONS, autocast, compute_device
from lakelabel.pipeline.encoders import Encoder, load_encoder
from lakelabel.pipeline.shard_data import KeyedShards, eval_loader


def load_finetune_encoder(root: str | Path, emb: Embeddings, config: SelectConfig) -> Encoder:
    """The encoder to fine-tune: ``config.finetune_encoder`` or the one recorded in the embeddings'
    meta, which must be the checkpoint that made them (same sha256)."""
    check_choice("precision", config.precision, PRECISIONS)
    return embedding_encoder(root, emb, config.finetune_encoder, "finetune_encoder (--finetune-encoder)")


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
    if random_seed and not (Path(root) / "checkpoints" / name).exists():
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


@dataclass
class FinetuneResult:
    head: DropoutClassifier  # on CPU, for the MC-dropout passes over ``features``
    features: torch.Tensor  # (N, dim) float32, rows of ``emb.keys`` order, L2-normalised × √dim
    record: dict  # steps, images, seconds, images_per_s, loss (first/last tenth of steps), device


def finetune_round(
    root: str | Path,
    emb: Embeddings,
    encoder: Encoder,
    labels: TrainingLabels,
    classes: int,
    config: SelectConfig,
    seed: int,
    device: str | None = None,
) -> FinetuneResult:
    """Train a copy of ``encoder`` + a fresh head on ``labels`` (rows of ``emb``: positives and
    negatives); re-embed every row of ``emb``."""
    root = Path(root)
    dev = compute_device(device)
    torch.manual_seed(seed)
    samples: dict[str, tuple[int, list[int], float]] = {}
    for row, label in zip(labels.pos_idx.tolist(), labels.pos_labels.tolist(), strict=True):
        samples[emb.keys[row]] = (int(label), [], 1.0)
    for row, mask in zip(labels.neg_idx.tolist(), labels.neg_mask, strict=True):
        samples.setdefault(emb.keys[row], (-1, torch.nonzero(mask).squeeze(1).tolist(), 1.0))
    if not samples:
        raise ValueError("nothing to fine-tune on: the round has no positive and no negative label")
    rows = labels.pos_idx.tolist() + labels.neg_idx.tolist()
    shards = [str(root / "shards" / s) for s in sorted({emb.shards[r] for r in rows})]
    # the stream repeats per worker: a worker without a shard would wait forever, so at most one per shard
    workers = min(config.workers, len(shards))
    data = KeyedShards(
        shards,
        samples,
        [str(c) for c in range(classes)],
        transform=classifier_transform(encoder.image_size, encoder.mean, encoder.std),
        shuffle=config.shuffle_buffer,
        seed=seed,
        repeat=True,
    )
    head = DropoutClassifier(encoder.dim, classes, config.hidden, config.dropout)
    model = EncoderClassifier(copy.deepcopy(encoder.module), encoder.dim, head).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    groups = [
        {"params": model.backbone.parameters(), "lr": config.finetune_lr},
        {"params": model.head.parameters(), "lr": config.lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    started = time.perf_counter()
    losses = train_steps(
        model,
        data.loader(config.finetune_batch_size, workers),
        config.finetune_steps,
        optimizer,
        lambda logits, batch: pseudo_label_loss(
            logits, batch["label"].to(logits.device), batch["negatives"].to(logits.device)
        ),
        config.precision,
        dev,
    )
    train_seconds = time.perf_counter() - started
    features = reembed(
        model, emb, root, 2 * config.finetune_batch_size, config.workers, config.precision, dev
    )
    record = {
        **training_record("finetune", losses, config.finetune_batch_size, train_seconds),
        "reembed_seconds": round(time.perf_counter() - started - train_seconds, 1),
        "device": str(dev),
    }
    return FinetuneResult(model.head.cpu(), features, record)


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
    shards = [str(root / "shards" / s) for s in sorted(set(emb.shards))]
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
