"""Pretraining throughput through the real data path against a bare loop on random tensors.

Usage: python benchmarks/pretrain.py [--root ROOT] [--method simsiam] [--batch-size 64] [--steps 8]

Without --root, the CIFAR-10 lake's test split (10,000 files) is ingested into a temp dir first.
Both loops use the same model, batch shape, optimiser and precision; the first 2 steps of each are
warm-up and not timed. Prints one JSON object with images/s of both and their ratio (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lakelabel.pipeline.config import IngestConfig, PretrainConfig
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.pretrain import Pretrainer

DEFAULT_LAKE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10" / "lake.tar.gz"


def bare_loop(trainer: Pretrainer, steps: int, warmup: int = 2) -> float:
    cfg = trainer.config
    shape = (cfg.batch_size, 3, trainer.pre.image_size, trainer.pre.image_size)
    x1, x2 = torch.randn(shape), torch.randn(shape)
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        trainer._step(x1, x2)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def data_loop(trainer: Pretrainer, steps: int, warmup: int = 2) -> float:
    """Steady-state rate inside one epoch (one loader): from the end of step ``warmup`` to the last."""
    trainer.train_steps(warmup + steps)
    times = trainer.step_times
    return steps * trainer.config.batch_size / (times[-1] - times[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root")
    parser.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    parser.add_argument("--method", default="simsiam")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--stem", default="auto", help="auto | small | imagenet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--augment", default="auto", help="auto | device | loader")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lakelabel-bench-"))
    try:
        root = args.root
        if root is None:
            subprocess.run(["tar", "xzf", str(args.lake), "-C", str(tmp), "lake/test"], check=True)
            root = str(tmp / "root")
            run_ingest(str(tmp / "lake" / "test"), root, IngestConfig())
        config = PretrainConfig(
            method=args.method,
            backbone=args.backbone,
            stem=args.stem,
            batch_size=args.batch_size,
            epochs=100,
            workers=args.workers,
            run_name="bench",
            augment=args.augment,
            checkpoint_every=10**9,
        )
        trainer = Pretrainer(root, config)
        bare = bare_loop(trainer, args.steps)
        trainer = Pretrainer(root, config.model_copy(update={"run_name": "bench-data"}))
        real = data_loop(trainer, args.steps)
        print(
            json.dumps(
                {
                    "benchmark": "pretrain",
                    "device": str(trainer.device),
                    "torch_threads": torch.get_num_threads(),
                    "method": args.method,
                    "backbone": args.backbone,
                    "stem": args.stem,
                    "batch_size": args.batch_size,
                    "image_size": trainer.pre.image_size,
                    "augment": "device" if trainer.device_augment else "loader",
                    "loader_workers": args.workers,
                    "timed_steps": args.steps,
                    "bare_images_per_s": round(bare, 1),
                    "data_path_images_per_s": round(real, 1),
                    "ratio": round(real / bare, 3),
                    "target_ratio": 0.9,
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
