"""``lakelabel train-classifier``: the classifier users deploy, retrained from a label run.

``head`` mode keeps the encoder that made the embeddings frozen and trains a head on the stored
embeddings (seconds on a CPU, no decoding); ``finetune`` trains the whole network on the images,
starting from that head (GPUs); ``auto`` picks. Positives get the configured loss (cross-entropy,
label smoothing or generalised cross-entropy), negatives UPS's negative-learning loss. In the same
run the same head trains on the seed labels alone and on the truth of the hold-out CSV's other rows
(an oracle), all scored on the same hold-out. Writes ``ROOT/classifiers/<run>/``
(``data_specs/classifiers.md``): TorchScript and ONNX with their preprocessing and class order, the
model card, ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from lakelabel.data_specs.classifiers import (
    CARD,
    CARD_README,
    ONNX,
    PREPROCESSING_KEY,
    TORCHSCRIPT,
    Preprocessing,
)
from lakelabel.data_specs.embeddings import Embeddings, embeddings_of_encoder, read_embeddings, read_meta
from lakelabel.data_specs.labels import default_dest, read_commit, read_labels
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.selections import read_selection_info
from lakelabel.data_specs.validation import ContractError
from lakelabel.models.classifier import Head, ImageClassifier, feature_scale
from lakelabel.models.losses import pseudo_label_loss
from lakelabel.models.optim import warmup_cosine
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes
from lakelabel.pipeline.augment import DecodeUint8, classifier_transform, eval_transform
from lakelabel.pipeline.config import TrainClassifierConfig
from lakelabel.pipeline.devices import autocast, compute_device, cpu_threads
from lakelabel.pipeline.encoders import Encoder, load_encoder, random_encoder
from lakelabel.pipeline.labeled_shards import LabeledShards, training_rows
from lakelabel.pipeline.shard_data import eval_loader, list_shards
from lakelabel.pipeline.training import embedding_encoder
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
    """Retrain a classifier from a label run (see the module doc); ``progress(step, total_steps)``
    after every step of the run's own training. Returns its metrics (also in ``metrics.json``)."""
    config = config or TrainClassifierConfig()
    root = Path(root)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    dest = config.labels_dest or default_dest(root)
    lineage = read_commit(dest, config.labels)
    table = read_labels(dest, lineage["run_id"]).to_pandas()
    holdout, holdout_rows = holdout_keys(root, config)
    excluded = set(holdout.key) if holdout is not None else set()  # the hold-out never trains
    dev = compute_device(device)
    mode = config.mode
    if mode == "auto":
        mode = "finetune" if dev.type == "cuda" or config.init_from else "head"
    classes, samples = training_rows(table, classes=config.classes, exclude_keys=excluded)
    metrics: dict = {"label_run": lineage["run_id"], "classes": classes, "mode": mode, "device": str(dev)}
    if config.init_from:  # a network of the user's choice, trained on the images from a fresh head
        encoder = classifier_backbone(root, config)
        model = ImageClassifier(
            encoder.module, Head(encoder.dim, len(classes), config.head_hidden), encoder.mean, encoder.std
        )
        metrics["init_from"] = encoder.describe()
    else:  # the encoder the labels were selected on: its stored embeddings train the head
        emb = read_embeddings(labels_embeddings(root, lineage))
        encoder = embedding_encoder(root, emb)
        features = EmbeddedRows(emb)
        if len(samples) < 2:
            raise ValueError(
                f"label run {lineage['run_id']!r} has {len(samples)} trainable rows (after the hold-out)"
            )
        head, record = fit_head(features, samples, len(classes), config, progress)
        metrics |= record
        if holdout is not None:
            metrics["holdout"] = {"rows": holdout_rows, **features.accuracy(head, holdout, classes)}
        if config.baselines:
            metrics["baselines"] = _baselines(root, table, features, holdout, excluded, classes, config)
            metrics["value_of_pseudo_labels"] = value_of_pseudo_labels(metrics)
        flip = bool(emb.meta.get("flip_average"))
        model = ImageClassifier(encoder.module, head, encoder.mean, encoder.std, flip_average=flip)
        metrics["encoder"] = {"name": emb.meta["encoder"], "sha256": emb.meta["encoder_sha256"]}
    if mode == "finetune":
        metrics |= finetune(
            root, model, dest, lineage["run_id"], classes, excluded, encoder, config, dev, progress
        )
        metrics.setdefault("steps", metrics["finetune_steps"])  # (no head steps: a fresh head)
        if holdout is not None:
            metrics["holdout"] = {
                "rows": holdout_rows,
                **evaluate_holdout(root, model, classes, holdout, config, dev, encoder),
            }
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    out = Layout(root).classifier(config.run_name)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    atomic_write(out / "model.pt", lambda f: torch.save(model.state_dict(), f))
    atomic_write_bytes(out / "classes.json", json.dumps(classes).encode())
    metrics["checkpoint"] = str(out / "model.pt")
    metrics["config"] = config.model_dump()
    if config.export:
        metrics["export"] = export_classifier(
            out, model, classes, encoder.image_size, encoder.mean, encoder.std, lineage, dest, metrics, root
        )
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=1, default=str).encode())
    return metrics


def labels_embeddings(root: Path, lineage: dict) -> Path:
    """The embeddings the label run was selected on: its selection run's, while that run is there and
    names embeddings of the run's encoder; else the newest embeddings of that encoder."""
    with contextlib.suppress(FileNotFoundError, ContractError):
        selected = read_selection_info(root, lineage["selection_run"]).embeddings
        if read_meta(selected)["encoder_sha256"] == lineage["encoder_sha256"]:
            return selected
    return embeddings_of_encoder(root, lineage["encoder_sha256"])


class EmbeddedRows:
    """The stored embeddings as a head sees them (unit norm × √dim), looked up by key."""

    def __init__(self, emb: Embeddings):
        self.matrix = torch.from_numpy(emb.matrix(np.float32)) * feature_scale(emb.meta["dim"])
        self.row = {key: i for i, key in enumerate(emb.keys)}

    def of(self, keys) -> torch.Tensor:
        return self.matrix[torch.as_tensor([self.row[k] for k in keys], dtype=torch.long)]

    @torch.no_grad()
    def accuracy(self, head: Head, rows: pd.DataFrame, classes: list[str]) -> dict:
        """Top-1 on the ``rows`` (key, label_name) embedded and of a class among ``classes``."""
        rows = rows[rows.label_name.isin(classes) & rows.key.isin(self.row)]
        if rows.empty:
            return {"images": 0, "accuracy": None, "per_class": {}}
        pred = head(self.of(rows.key)).argmax(1).numpy()
        truth = rows.label_name.map({c: i for i, c in enumerate(classes)}).to_numpy()
        right = pred == truth
        per_class = {
            c: round(float(right[truth == i].mean()), 4) for i, c in enumerate(classes) if (truth == i).any()
        }
        return {"images": int(len(rows)), "accuracy": round(float(right.mean()), 4), "per_class": per_class}


def fit_head(
    features: EmbeddedRows,
    samples: dict[str, tuple[int, list[int], float]],
    classes: int,
    config: TrainClassifierConfig,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Head, dict]:
    """A head trained on the stored embeddings of ``samples`` ({key: (class or -1, negatives, weight)}):
    Adam, cosine schedule, positives' ``config.loss`` (confidence-weighted when asked) plus the
    negative-learning loss."""
    keys = list(samples)
    x = features.of(keys)
    label = torch.as_tensor([samples[k][0] for k in keys], dtype=torch.long)
    negatives = torch.zeros(len(keys), classes, dtype=torch.bool)
    for i, key in enumerate(keys):
        negatives[i, samples[key][1]] = True
    weight = torch.as_tensor([samples[k][2] for k in keys], dtype=torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    head = Head(x.shape[1], classes, config.head_hidden)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.head_lr, weight_decay=config.weight_decay)
    batch = min(config.batch_size, len(keys))
    total = config.head_epochs * max(1, len(keys) // batch)
    total = min(total, config.max_steps) if config.max_steps else total
    losses: list[float] = []
    with cpu_threads(1):  # small batches: threads only add synchronisation
        while len(losses) < total:
            for rows in torch.randperm(len(keys), generator=generator).split(batch):
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(len(losses), total, 0, config.head_lr)
                loss = pseudo_label_loss(
                    head(x[rows]),
                    label[rows],
                    negatives[rows],
                    weight[rows],
                    config.negative_weight,
                    config.loss,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                if progress:
                    progress(len(losses), total)
                if len(losses) >= total:
                    break
    tenth = max(1, len(losses) // 10)
    record = {
        "steps": len(losses),
        "trained_on": {
            "rows": len(keys),
            "positives": int((label >= 0).sum()),
            "negative_only": int((label < 0).sum()),
        },
        "loss_start": round(sum(losses[:tenth]) / tenth, 4),
        "loss_end": round(sum(losses[-tenth:]) / tenth, 4),
    }
    return head.eval(), record


def _baselines(root, table, features, holdout, excluded, classes, config) -> dict:
    """The same head and steps on the seed labels alone, and on the truth of the hold-out CSV's rows
    that are not held out (an oracle), scored on the same hold-out."""
    out: dict = {}
    index = {c: i for i, c in enumerate(classes)}
    seeds = table[table.is_seed & table.label_name.isin(index) & ~table.key.isin(excluded)]
    if len(seeds) >= 2:
        rows = {k: (index[n], [], 1.0) for k, n in zip(seeds.key, seeds.label_name, strict=True)}
        head, record = fit_head(features, rows, len(classes), config)
        out["seeds_only"] = {"rows": len(rows), "steps": record["steps"]}
        if holdout is not None:
            out["seeds_only"] |= features.accuracy(head, holdout, classes)
    if holdout is not None:
        truth = attach_keys(root, read_label_csv(config.holdout)).drop_duplicates("key")
        truth = truth[~truth.key.isin(excluded) & truth.label_name.isin(index) & truth.key.isin(features.row)]
        if len(truth) >= 2:
            rows = {k: (index[n], [], 1.0) for k, n in zip(truth.key, truth.label_name, strict=True)}
            head, record = fit_head(features, rows, len(classes), config)
            out["oracle"] = {
                "rows": len(rows),
                "steps": record["steps"],
                **features.accuracy(head, holdout, classes),
            }
    return out


def value_of_pseudo_labels(metrics: dict) -> float | None:
    """``(pseudo - seeds only) / (oracle - seeds only)`` of hold-out accuracy: 1 = the pseudo-labels
    are as good as the truth, 0 = no better than the seeds they grew from."""
    pseudo = (metrics.get("holdout") or {}).get("accuracy")
    seeds = (metrics["baselines"].get("seeds_only") or {}).get("accuracy")
    oracle = (metrics["baselines"].get("oracle") or {}).get("accuracy")
    if None in (pseudo, seeds, oracle) or oracle <= seeds:
        return None
    return round((pseudo - seeds) / (oracle - seeds), 4)


def finetune(root, model, dest, run_id, classes, excluded, encoder, config, dev, progress) -> dict:
    """The whole network (backbone and head) trained on the images of the label run: cross-entropy
    (or ``config.loss``) on positives, negative learning on negatives; SGD, cosine schedule."""
    data = LabeledShards(
        root,
        run_id,
        dest=dest,
        classes=classes,
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
    model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(data) // config.batch_size)
    total = config.epochs * steps_per_epoch
    total = min(total, config.max_steps) if config.max_steps else total
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
    )
    step, history = 0, []
    model.train()
    while step < total:
        epoch_loss, batches = 0.0, 0
        for batch in data.loader(config.batch_size, config.workers):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, 0, config.lr)
            x = batch["image"].to(dev, non_blocking=True)
            with autocast(config.precision, dev):
                logits = model.normalised_logits(x).float()
            loss = pseudo_label_loss(
                logits,
                batch["label"].to(dev),
                batch["negatives"].to(dev),
                batch["weight"].to(dev),
                config.negative_weight,
                config.loss,
            )
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
    model.eval()
    return {"finetune_steps": step, "finetune_history": history, "trained_on": data.counts()}


def export_classifier(
    out: Path,
    model: ImageClassifier,
    classes: list[str],
    size: int,
    mean,
    std,
    lineage: dict,
    dest: str,
    metrics: dict,
    root: Path,
    check_images: int = 1000,
) -> dict:
    """``model.ts`` (TorchScript) and ``model.onnx`` with their preprocessing and class order inside,
    the ONNX checked against the torch model under onnxruntime on up to ``check_images`` of the
    lake's images, and the model card (``card.json``, ``README.md``)."""
    import contextlib
    import io
    import warnings

    import onnx
    import onnxruntime

    preprocessing = Preprocessing(size, tuple(mean), tuple(std), tuple(classes))
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # (tracing and the exporter are chatty about deprecations)
        traced = torch.jit.trace(model, example)
        atomic_write(
            out / TORCHSCRIPT,
            lambda f: torch.jit.save(traced, f, {PREPROCESSING_KEY: preprocessing.to_json()}),
        )
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["images"],
                output_names=["probabilities"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                dynamo=True,
            )
    graph = program.model_proto
    onnx.helper.set_model_props(graph, {PREPROCESSING_KEY: preprocessing.to_json()})
    atomic_write_bytes(out / ONNX, graph.SerializeToString())
    session = onnxruntime.InferenceSession(str(out / ONNX), providers=["CPUExecutionProvider"])
    agree, largest, checked = 0, 0.0, 0
    loader = eval_loader(list_shards(root), DecodeUint8(size), 64, 0)
    for images, _ in loader:
        with torch.no_grad():
            reference = traced(images).numpy()
        answer = session.run(None, {"images": images.numpy()})[0]
        agree += int((reference.argmax(1) == answer.argmax(1)).sum())
        largest = max(largest, float(np.abs(reference - answer).max()))
        checked += len(images)
        if checked >= check_images:
            break
    check = {
        "images": checked,
        "top1_agreement": round(agree / checked, 6) if checked else None,
        "max_probability_difference": largest,
        "onnxruntime": onnxruntime.__version__,
    }
    card = {
        "model": {"torchscript": TORCHSCRIPT, "onnx": ONNX, "input": json.loads(preprocessing.to_json())},
        "labels": {
            "table": dest,
            "run_id": lineage["run_id"],
            "delta_version": lineage["version"],
            "content_sha256": lineage.get("content_sha256"),
            "rows": lineage.get("rows"),
        },
        "encoder": metrics.get("encoder") or metrics.get("init_from"),
        "training": {
            "mode": metrics["mode"],
            "steps": metrics.get("steps"),
            "finetune_steps": metrics.get("finetune_steps"),
            "loss": metrics["config"]["loss"],
            "head_hidden": metrics["config"]["head_hidden"],
            "trained_on": metrics.get("trained_on"),
        },
        "metrics": {
            "holdout": metrics.get("holdout"),
            "baselines": metrics.get("baselines"),
            "value_of_pseudo_labels": metrics.get("value_of_pseudo_labels"),
        },
        "export_check": check,
    }
    atomic_write_bytes(out / CARD, json.dumps(card, indent=1, default=str).encode())
    atomic_write_bytes(out / CARD_README, _card_markdown(card).encode())
    return check


def _card_markdown(card: dict) -> str:
    model, labels, training, check = card["model"], card["labels"], card["training"], card["export_check"]
    size, classes = model["input"]["size"], model["input"]["classes"]
    lines = [
        f"# Classifier: {len(classes)} classes",
        "",
        f"- Classes, in output order: {', '.join(classes)}",
        f"- Input: uint8 RGB (N, 3, {size}, {size}), the image's shorter side resized to {size} and "
        "centre-cropped; the model normalises it.",
        f"- Files: `{TORCHSCRIPT}` (TorchScript), `{ONNX}` (ONNX: top-1 agreement with torch "
        f"{check['top1_agreement']} on {check['images']} images, largest probability difference "
        f"{check['max_probability_difference']:.2g}).",
        f"- Labels: run `{labels['run_id']}` of `{labels['table']}`, Delta version "
        f"{labels['delta_version']}.",
        f"- Encoder: {json.dumps(card['encoder'])}.",
        f"- Training: {training['mode']}, loss {training['loss']}, {training['steps']} head steps, "
        f"{training['finetune_steps'] or 0} fine-tuning steps.",
    ]
    holdout = card["metrics"]["holdout"] or {}
    if holdout:
        lines.append(
            f"- Hold-out ({holdout.get('rows')}): top-1 {holdout.get('accuracy')} on "
            f"{holdout.get('images')} images."
        )
    for name, result in (card["metrics"]["baselines"] or {}).items():
        lines.append(
            f"- Same-run baseline, {name.replace('_', ' ')}: top-1 {result.get('accuracy')} "
            f"({result['rows']} rows)."
        )
    if card["metrics"]["value_of_pseudo_labels"] is not None:
        lines.append(
            "- Value of the pseudo-labels, (pseudo - seeds) / (oracle - seeds): "
            f"{card['metrics']['value_of_pseudo_labels']}."
        )
    return "\n".join(lines) + "\n"


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
            x = images.to(dev)
            pred = model.normalised_logits(x).argmax(1).cpu().tolist()
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
