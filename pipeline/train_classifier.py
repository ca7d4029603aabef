"""``lakelabel train-classifier``: a torchvision classifier trained from a label run, evaluated on a
labeled hold-out (cross-entropy on positives, UPS's negative-learning loss on negatives).

Writes ``ROOT/classifiers/<run>/``: ``model.pt`` (state dict), ``classes.json``, ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from lakelabel.data_specs.layout import Layout
from lakelabel.models.optim import warmup_cosine
from lakelabel.models.ups import pseudo_label_loss
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes
from lakelabel.pipeline.augment import classifier_transform, eval_transform
from lakelabel.pipeline.config import TrainClassifierConfig
from lakelabel.pipeline.devices import autocast, compute_device
from lakelabel.pipeline.encoders import Encoder, load_encoder, random_encoder
from lakelabel.pipeline.labeled_shards import LabeledShards
from lakelabel.pipeline.shard_data import eval_loader, list_shards
from lakelabel.pipeline.truth import attach_keys, read_label_csv


def holdout_keys(root: Path, config: TrainClassifierConfig) -> tuple[pd.DataFrame | None, str | None]:
    """Hold-out rows (key, label_name) of the CSV and a sentence saying which rows they are: the
    ``holdout_split`` rows when the CSV has a split column, else every row; then a seeded
    ``holdout_fraction`` of them."""
    if not config.holdout:
        return None, None
    table = read_label_csv(config.holdout)
    if "label_name" not in table.columns:
        raise ValueError(f"hold-out CSV {config.holdout!r} needs a label_name column to match class names")
    rows = len(table)
    if config.holdout_split and "split" in table.columns:
        chosen = table[table.split == config.holdout_split]
        if chosen.empty:
            splits = sorted(map(str, set(table.split)))
            raise ValueError(
                f"hold-out CSV {config.holdout!r} has no rows of split {config.holdout_split!r} "
                f"(its splits: {', '.join(splits)}); set holdout_split or holdout_fraction"
            )
        table = chosen
        which = f"the {len(table):,} rows of split {config.holdout_split!r} of {rows:,}"
    else:
        which = f"all {rows:,} rows"
    if config.holdout_fraction is not None and config.holdout_fraction < 1:
        table = table.sample(frac=config.holdout_fraction, random_state=config.seed)
        which = f"a {config.holdout_fraction:g} sample (seed {config.seed}, {len(table):,} rows) of {which}"
    return attach_keys(root, table).drop_duplicates("key"), f"held out {which} of {config.holdout}"


def classifier_backbone(root: Path, config: TrainClassifierConfig) -> Encoder:
    """The backbone to train: ``init_from`` (a timm:/torchvision: name, a pretrain run or a state-dict
    file for ``backbone``/``stem``) or a fresh ``backbone``."""
    if config.init_from:
        return load_encoder(
            root, config.init_from, config.init_weights, config.backbone, config.stem, config.image_size
        )
    return random_encoder(config.backbone, config.stem == "small", config.image_size or 32, config.seed)


def train_classifier(
    root: str | Path,
    config: TrainClassifierConfig | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Train on ROOT's shards joined to a label run; ``progress(step, total_steps)`` after every step."""
    config = config or TrainClassifierConfig()
    root = Path(root)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    encoder = classifier_backbone(root, config)
    holdout, holdout_rows = holdout_keys(root, config)
    excluded = set(holdout.key) if holdout is not None else set()  # the hold-out never trains
    data = LabeledShards(
        root,
        config.labels,
        dest=config.labels_dest,
        classes=config.classes,
        transform=classifier_transform(encoder.image_size, encoder.mean, encoder.std),
        exclude_keys=excluded,
        confidence_weighting=config.confidence_weighting,
        shuffle=config.shuffle_buffer,
        seed=config.seed,
    )
    if len(data) < config.batch_size:
        raise ValueError(
            f"label run has {len(data)} trainable images (after the hold-out), fewer than a batch"
        )
    dev = compute_device(device)
    model = nn.Sequential(encoder.module, nn.Linear(encoder.dim, len(data.classes))).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(data) // config.batch_size)
    total = (
        config.epochs * steps_per_epoch
        if config.max_steps is None
        else min(config.max_steps, config.epochs * steps_per_epoch)
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
    )
    step, history = 0, []
    model.train()
    while step < total:
        epoch_loss, batches = 0.0, 0
        for batch in data.loader(config.batch_size, config.workers):
            lr = warmup_cosine(step, total, 0, config.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = batch["image"].to(dev, non_blocking=True)
            label, negatives, weight = (
                batch["label"].to(dev),
                batch["negatives"].to(dev),
                batch["weight"].to(dev),
            )
            with autocast(config.precision, dev):
                logits = model(x).float()
            loss = pseudo_label_loss(logits, label, negatives, weight, config.negative_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if progress:
                progress(step, total)
            epoch_loss, batches = epoch_loss + float(loss.detach()), batches + 1
            if step >= total:
                break
        history.append({"step": step, "loss": round(epoch_loss / max(batches, 1), 4)})
    train_seconds = time.perf_counter() - started
    metrics = {
        "label_run": data.run_id,
        "classes": data.classes,
        "trained_on": data.counts(),
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "device": str(dev),
        "init_from": encoder.describe() if config.init_from else None,
    }
    if holdout is not None:
        metrics["holdout"] = {
            "rows": holdout_rows,
            **evaluate_holdout(root, model, data.classes, holdout, config, dev, encoder),
        }
    out = Layout(root).classifier(config.run_name)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "model.pt", lambda f: torch.save(model.state_dict(), f))
    atomic_write_bytes(out / "classes.json", json.dumps(data.classes).encode())
    metrics["checkpoint"] = str(out / "model.pt")
    metrics["config"] = config.model_dump()
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=1).encode())
    return metrics


@torch.no_grad()
def evaluate_holdout(
    root: Path, model: nn.Module, classes: list[str], holdout, config, dev, encoder: Encoder
) -> dict:
    """Top-1 accuracy (overall and per class) on hold-out images whose class is among ``classes``."""
    holdout = holdout[holdout.label_name.isin(classes)]
    truth = dict(zip(holdout.key, holdout.label_name, strict=True))
    model.eval()
    correct: dict[str, list[int]] = {c: [0, 0] for c in classes}
    loader = eval_loader(
        list_shards(root),
        eval_transform(encoder.image_size, encoder.mean, encoder.std),
        256,
        config.workers,
        set(truth),
    )
    for images, keys in loader:
        with autocast(config.precision, dev):
            pred = model(images.to(dev)).float().argmax(1).cpu().tolist()
        for key, p in zip(keys, pred, strict=True):
            name = truth[key]
            correct[name][0] += int(classes[p] == name)
            correct[name][1] += 1
    n = sum(t for _, t in correct.values())
    return {
        "images": n,
        "accuracy": round(sum(c for c, _ in correct.values()) / n, 4) if n else None,
        "per_class": {k: round(c / t, 4) if t else None for k, (c, t) in correct.items()},
    }
