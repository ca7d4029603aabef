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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lakelabel.data_specs.embeddings import Embeddings
from lakelabel.data_specs.layout import Layout
from lakelabel.models.losses import pseudo_label_loss
from lakelabel.models.ups import DropoutClassifier, EncoderClassifier, TrainingLabels
from lakelabel.pipeline.augment import classifier_transform
from lakelabel.pipeline.checks import check_choice
from lakelabel.pipeline.devices import PRECISIONS, compute_device
from lakelabel.pipeline.encoders import Encoder
from lakelabel.pipeline.shard_data import KeyedShards
from lakelabel.pipeline.training import embedding_encoder, reembed, train_steps, training_record

if TYPE_CHECKING:
    from lakelabel.pipeline.config import SelectConfig


def load_finetune_encoder(root: str | Path, emb: Embeddings, config: SelectConfig) -> Encoder:
    """The encoder to fine-tune: ``config.finetune_encoder`` or the one recorded in the embeddings'
    meta, which must be the checkpoint that made them (same sha256)."""
    check_choice("precision", config.precision, PRECISIONS)
    return embedding_encoder(root, emb, config.finetune_encoder, "finetune_encoder (--finetune-encoder)")


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
    shards = [str(Layout(root).shard(s)) for s in sorted({emb.shards[r] for r in rows})]
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
