"""kNN top-1 of each SSL method (and the Wasserstein variants) after the same training budget.

Usage: python benchmarks/ssl_quality.py [--root ROOT] [--steps 150] [--batch-size 256] [--stem imagenet]

Without --root the CIFAR-10 lake (all 60,000 images, no labels used for training) is ingested into a
temp dir. Every run uses the same steps, batch, LR schedule and encoder; kNN (k=20, cosine,
T=0.07) uses ``labels.csv.gz`` for evaluation only: memory = 5,000 train-split images, queries =
2,000 test-split images. A 0-step row gives the random-encoder baseline. Prints JSON lines and a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakelabel.pipeline.config import IngestConfig, PretrainConfig
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.pretrain import Pretrainer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"
RUNS = [
    ("simsiam", "default"),
    ("simsiam", "wasserstein"),
    ("byol", "default"),
    ("byol", "wasserstein"),
    ("barlow_twins", "default"),
    ("simclr", "default"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--runs", default=",".join(f"{m}:{loss}" for m, loss in RUNS))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lakelabel-ssl-"))
    labels = str(args.data / "labels.csv.gz")
    try:
        root = args.root
        if root is None:
            subprocess.run(["tar", "xzf", str(args.data / "lake.tar.gz"), "-C", str(tmp)], check=True)
            root = str(tmp / "root")
            run_ingest(str(tmp / "lake"), root, IngestConfig())
        common = dict(
            batch_size=args.batch_size,
            stem=args.stem,
            lr=args.lr,
            warmup_epochs=0.1,
            workers=1,
            knn_labels=labels,
            checkpoint_every=10**9,
            epochs=100,
        )
        rows = []
        baseline = Pretrainer(root, PretrainConfig(run_name="random-init", **common))
        rows.append(
            {"method": "random init", "loss": "-", "steps": 0, "knn_top1": baseline.knn_top1(), "seconds": 0}
        )
        print(json.dumps(rows[-1]), flush=True)
        for spec in args.runs.split(","):
            method, loss = spec.split(":")
            cmd = [
                sys.executable,
                "-m",
                "lakelabel",
                "pretrain",
                root,
                "--method",
                method,
                "--loss",
                loss,
                "--max-steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--stem",
                args.stem,
                "--lr",
                str(args.lr),
                "--workers",
                "1",
                "--knn-labels",
                labels,
                "--run-name",
                f"{method}-{loss}",
            ]
            start = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "method": method,
                    "loss": loss,
                    "steps": summary["steps"],
                    "knn_top1": summary["history"][-1]["knn_top1"],
                    "final_loss": summary["history"][-1]["loss"],
                    "seconds": round(time.perf_counter() - start, 1),
                    "images_per_s": summary["images_per_s"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        print(
            f"\nbudget: {args.steps} steps × batch {args.batch_size} = {args.steps * args.batch_size} "
            "images, "
            f"ResNet-18 ({args.stem} stem), 32 px, SGD lr {args.lr}, CPU\n"
        )
        print("| method | loss | steps | kNN top-1 | seconds |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {r['loss']} | {r['steps']} | {r['knn_top1']:.3f} | {r['seconds']} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
