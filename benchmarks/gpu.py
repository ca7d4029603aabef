"""One-command GPU benchmark: data path against the bare loop, then a time-budgeted SSL run to labels.

On the CIFAR-10 lake (raw JPEGs): extract → ingest → throughput (bare loop on tensors already on the
device against the real path: shards → decode in loader workers → augmentation on the device →
step; both timed on steady steps, after the loader's prefetched batches are used up) → pretrain for
what the budget leaves → embed → cluster → eval → select (no labels; seed-250) → one JSON object
with kNN top-1 (train split as memory, test split as queries, on the final embeddings), ACC/NMI/ARI,
precision at coverage and seconds per stage. Ground truth is for evaluation only.

Usage (a bare GPU machine with PyTorch; see the README for the wheels that travel):
    python benchmarks/gpu.py [--budget-min 8] [--data DIR] [--out DIR]
On a CPU it runs end to end too (``--budget-min 1 --images 2000`` in the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.quality, its sibling
#: the shared CIFAR-10 lake (LAKELABEL_CIFAR10 overrides): ../shared next to the checkout
CIFAR = Path(os.environ.get("LAKELABEL_CIFAR10") or REPO.parent / "shared" / "datasets" / "cifar10")

from benchmarks.quality import extract, selection_row, stage_timer  # noqa: E402
from lakelabel.data_specs.embeddings import read_embeddings  # noqa: E402
from lakelabel.models.knn import knn_predict  # noqa: E402
from lakelabel.pipeline.cluster import cluster  # noqa: E402
from lakelabel.pipeline.config import ClusterConfig, EmbedConfig, IngestConfig, PretrainConfig, SelectConfig  # noqa: E402
from lakelabel.pipeline.embed import embed  # noqa: E402
from lakelabel.pipeline.evaluate import evaluate_clusters  # noqa: E402
from lakelabel.pipeline.ingest import run_ingest  # noqa: E402
from lakelabel.pipeline.pretrain import Pretrainer, pretrain  # noqa: E402
from lakelabel.pipeline.select import select  # noqa: E402
from lakelabel.pipeline.truth import attach_keys, read_label_csv  # noqa: E402


def bare_images_per_s(trainer: Pretrainer, steps: int, warmup: int) -> float:
    """The same model, optimiser and precision on two fixed batches already on the device."""
    size, bs = trainer.pre.image_size, trainer.config.batch_size
    x1 = torch.randn(bs, 3, size, size, device=trainer.device)
    x2 = torch.randn(bs, 3, size, size, device=trainer.device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(trainer.device)
            start = time.perf_counter()
        trainer._step(x1, x2)
    _sync(trainer.device)
    return steps * bs / (time.perf_counter() - start)


def real_images_per_s(trainer: Pretrainer, steps: int) -> float:
    """The real data path: ``steps`` steps, timed over the second half (prefetched batches used up)."""
    trainer.train_steps(steps)
    _sync(trainer.device)
    times = trainer.step_times[steps // 2 :]
    return (len(times) - 1) * trainer.config.batch_size / (times[-1] - times[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def knn_top1(root: Path, directory: str, truth_csv: str, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN on the embeddings: train-split images as memory, test-split images as queries."""
    emb = read_embeddings(directory)
    x = torch.from_numpy(emb.matrix(np.float32))
    truth = attach_keys(root, read_label_csv(truth_csv)).drop_duplicates("key").set_index("key")
    split = truth.split.reindex(emb.keys).to_numpy()
    y = torch.as_tensor(truth.label.reindex(emb.keys).fillna(-1).to_numpy().astype(np.int64))
    train, test = torch.as_tensor(split == "train"), torch.as_tensor(split == "test")
    pred = knn_predict(x[train], y[train], x[test], int(y.max()) + 1, k, temperature)
    return round(float((pred == y[test]).float().mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=8.0, help="whole run, minutes (default 8)")
    parser.add_argument(
        "--reserve-min", type=float, default=2.5, help="minutes kept for the stages after pretrain"
    )
    parser.add_argument(
        "--data", type=Path, default=CIFAR, help="folder with lake.tar.gz, labels.csv.gz, seed-250.csv"
    )
    parser.add_argument("--images", type=int, help="only the first N files of the lake (CPU smoke runs)")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.6, help="LARS base LR for a batch of 256")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--throughput-steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps of the bare loop")
    parser.add_argument(
        "--stem", default="small", help="small (CIFAR ResNet) | imagenet (cheap CPU smoke runs)"
    )
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path, help="write gpu.json here")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="lakelabel-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    truth, seed_csv, root = str(args.data / "labels.csv.gz"), str(args.data / "seed-250.csv"), work / "root"
    timings: dict[str, float] = {}
    stage = stage_timer(timings)
    if not (work / "lake").is_dir():
        stage("extract", lambda: extract(args.data / "lake.tar.gz", work, args.images))
    ingest = stage("ingest", lambda: run_ingest(str(work / "lake"), root, IngestConfig()))
    n = ingest["sharded"]
    config = PretrainConfig(
        method=args.method,
        backbone="resnet18",
        stem=args.stem,
        image_size=32,
        batch_size=min(args.batch_size, n // 2),
        optimizer="lars",
        lr=args.lr,
        weight_decay=1e-5 if args.method == "simclr" else 1e-4,
        warmup_epochs=2,
        workers=args.workers,
        shuffle_buffer=4000,
        checkpoint_every=10**9,
        epochs=1000,
        run_name="throughput",
    )
    steps = args.throughput_steps
    trainer = Pretrainer(root, config)
    bare = stage("bare loop", lambda: bare_images_per_s(trainer, steps, warmup=args.warmup_steps))
    trainer = Pretrainer(root, config.model_copy(update={"run_name": "throughput-data"}))
    real = stage("real data path", lambda: real_images_per_s(trainer, steps))
    spe = n // config.batch_size
    left = args.budget_min * 60 - (time.perf_counter() - started) - args.reserve_min * 60
    step_s = config.batch_size / real
    total_steps = max(spe, int(left / step_s))
    epochs = max(1, total_steps // spe)
    run = config.model_copy(
        update={"epochs": epochs, "max_steps": None, "run_name": "gpu", "checkpoint_every": 10**9}
    )
    pre = stage("pretrain", lambda: pretrain(root, run))
    emb = stage(
        "embed", lambda: embed(root, EmbedConfig(encoder="gpu", batch_size=1024, workers=args.workers))
    )
    emb_dir = emb["embeddings"]
    knn = stage("kNN", lambda: knn_top1(root, emb_dir, truth))
    stage(
        "cluster",
        lambda: cluster(root, ClusterConfig(k=10, sela={"heads": 2, "epochs": 10}), Path(emb_dir).name),
    )
    scores = evaluate_clusters(root, truth)
    base = dict(embeddings=Path(emb_dir).name, truth=truth, workers=args.workers, review_budget=50)
    unsup = stage(
        "select (no labels)", lambda: select(root, SelectConfig(labels_from="clusters", run_name="u", **base))
    )
    seeded = stage(
        "select (seed-250)",
        lambda: select(root, SelectConfig(labels_from="seed", seed_labels=[seed_csv], run_name="s", **base)),
    )
    total = round(time.perf_counter() - started, 1)
    cols = scores["columns"]
    result = {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "images": n,
        "budget_min": args.budget_min,
        "total_min": round(total / 60, 2),
        "throughput": {
            "bare_images_per_s": round(bare, 1),
            "real_images_per_s": round(real, 1),
            "ratio": round(real / bare, 3),
            "augment": "device" if trainer.device_augment else "loader",
            "loader_workers": args.workers,
            "batch_size": config.batch_size,
        },
        "pretrain": {
            "method": args.method,
            "steps": pre["steps"],
            "epochs": round(pre["steps"] * config.batch_size / n, 1),
            "images_per_s": pre["images_per_s"],
            "seconds": pre["seconds"],
        },
        "knn_top1": knn,
        "clusters": {c: {m: v[m] for m in ("acc", "nmi", "ari")} for c, v in cols.items()},
        "no_labels": selection_row(unsup["metrics"]),
        "seed250": selection_row(seeded["metrics"]),
        "timings_s": timings | {"total": total},
    }
    print(json.dumps(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
