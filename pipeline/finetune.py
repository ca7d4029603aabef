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
from dataclasses import dataclass
from pathlib import Path

import torch

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
    meta = emb.meta
    name = config.finetune_encoder or meta["encoder"]
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
        raise ValueError(
            f"encoder {name!r} (sha256 {encoder.sha256[:12]}) did not make the embeddings "
            f"{str(emb.directory)!r} (sha256 {meta['encoder_sha256'][:12]}); pass finetune_encoder "
            "(--finetune-encoder) with the checkpoint that did, or embed with this one first"
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
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    started, step, images, losses = time.perf_counter(), 0, 0, []
    model.train()
    for batch in data.loader(config.finetune_batch_size, workers):  # endless: bounded by steps
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = warmup_cosine(step, config.finetune_steps, 0, lr)
        x = batch["image"].to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(config.precision, dev):
            logits = model(x).float()
        loss = pseudo_label_loss(logits, batch["label"].to(dev), batch["negatives"].to(dev))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step, images = step + 1, images + len(x)
        losses.append(float(loss.detach()))
        if step >= config.finetune_steps:
            break
    if step < config.finetune_steps:
        raise RuntimeError(f"no training image of this round was found in {len(shards)} shard(s)")
    train_seconds = time.perf_counter() - started
    tenth = max(1, step // 10)
    features = reembed(model, emb, root, config, dev)
    record = {
        "finetune_steps": step,
        "finetune_images": images,
        "finetune_seconds": round(train_seconds, 1),
        "finetune_images_per_s": round(images / train_seconds, 1),
        # mean loss of the first and of the last tenth of the steps
        "finetune_loss_start": round(sum(losses[:tenth]) / tenth, 4),
        "finetune_loss_end": round(sum(losses[-tenth:]) / tenth, 4),
        "reembed_seconds": round(time.perf_counter() - started - train_seconds, 1),
        "device": str(dev),
    }
    return FinetuneResult(model.head.cpu(), features, record)


@torch.no_grad()
def reembed(model: EncoderClassifier, emb: Embeddings, root: Path, config: SelectConfig, dev) -> torch.Tensor:
    """Features of every row of ``emb`` (its key order) through the tuned backbone."""
    model.eval()
    row_of = {key: i for i, key in enumerate(emb.keys)}
    features = torch.empty(emb.n, model.dim)
    filled = torch.zeros(emb.n, dtype=torch.bool)
    shards = [str(root / "shards" / s) for s in sorted(set(emb.shards))]
    meta = emb.meta
    transform = eval_transform(int(meta["image_size"]), meta.get("mean", MEAN), meta.get("std", STD))
    loader = eval_loader(shards, transform, 2 * config.finetune_batch_size, config.workers, set(row_of))
    for images, keys in loader:
        images = images.to(dev, non_blocking=True)
        if dev.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(config.precision, dev):
            out = model.features(images).float().cpu()
        index = torch.as_tensor([row_of[k] for k in keys])
        features[index] = out
        filled[index] = True
    if not bool(filled.all()):
        raise RuntimeError(
            f"{int((~filled).sum())} embedded images were not found in their shards; re-run ingest/embed"
        )
    return features
