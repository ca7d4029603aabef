"""The classifier users deploy, measured on the CIFAR-10 lake (prints JSON; ``--out DIR`` adds a
markdown table).

1. Encoder sweep on a subset: {Lite0, Lite1, Lite2} × {96, 160, 224} px, each embedding the subset
   and selecting seed-250 labels (UPS) on it; correct labels per CPU-minute (embed + select), beside
   the same-run logistic regression. The best trade-off is the one with the most correct labels per
   CPU-minute.
2. The full lake with one encoder: embed, select seed-250 (UPS), publish, then train-classifier in
   head mode with every positives' loss and head width tried, its same-run baselines (seeds only,
   an oracle on the 50,000 train labels) and the value of the pseudo-labels, scored on the 10,000
   test images; the ONNX export checked on 1,000 images.
3. ``lakelabel predict`` throughput on 1,000 image files at the model's input size.

Ground truth is for evaluation only (the select stage's metrics, the hold-out)."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd

from lakelabel.data_specs.embeddings import read_embeddings
from lakelabel.pipeline.config import EmbedConfig, IngestConfig, SelectConfig, TrainClassifierConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.labels import publish_labels
from lakelabel.pipeline.predict import predict
from lakelabel.pipeline.select import select
from lakelabel.pipeline.train_classifier import train_classifier

ENCODERS = {
    "lite0": "timm:tf_efficientnet_lite0",
    "lite1": "timm:tf_efficientnet_lite1",
    "lite2": "timm:tf_efficientnet_lite2",
}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measured(run):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = run()
    return result, round(time.perf_counter() - wall, 1), round(cpu_seconds() - cpu, 1)


def log(record: dict) -> None:
    print(json.dumps(record), file=sys.stderr, flush=True)


def subset_lake(lake: Path, seeds: pd.DataFrame, images: int, out: Path) -> None:
    """``out``: the seed images and about ``images`` others, chosen by a hash of the name."""
    wanted = set(seeds.path)
    for path in sorted(lake.rglob("*.jpg")):
        rel = path.relative_to(lake).as_posix()
        if rel in wanted or zlib.crc32(rel.encode()) % 60_000 < images:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def sweep(args, lake: Path, seed_csv: Path, truth: Path) -> list[dict]:
    work = args.work / "sweep"
    shutil.rmtree(work, ignore_errors=True)
    subset_lake(lake, pd.read_csv(seed_csv), args.sweep_images, work / "lake")
    root = work / "root"
    run_ingest(str(work / "lake"), root, IngestConfig(workers=2))
    rows = []
    for name in args.encoders:
        for size in args.sizes:
            shutil.rmtree(root / "embeddings", ignore_errors=True)  # (one folder per encoder: sizes replace)
            config = EmbedConfig(encoder=ENCODERS[name], image_size=size, workers=1, batch_size=64)
            emb, embed_s, embed_cpu = measured(lambda c=config: embed(root, c))
            select_config = SelectConfig(
                labels_from="seed", seed_labels=[str(seed_csv)], truth=str(truth), run_name=f"{name}-{size}"
            )
            chosen, select_s, select_cpu = measured(lambda c=select_config: select(root, c))
            m = chosen["metrics"]
            images = read_embeddings(emb["embeddings"]).n
            cpu_min = (embed_cpu + select_cpu) / 60
            row = {
                "encoder": name,
                "image_size": size,
                "images": images,
                "embed_images_per_s": round(images / embed_s, 1),
                "embed_cpu_s": embed_cpu,
                "select_cpu_s": select_cpu,
                "accuracy": m["accuracy_full_coverage"],
                "precision_at_50pct": m["precision_at_50pct_coverage"],
                "logreg_accuracy": m["baseline_logreg"]["accuracy_full_coverage"],
                "correct_labels_per_cpu_min": round(m["accuracy_full_coverage"] * images / cpu_min, 1),
            }
            log({"sweep": row})
            rows.append(row)
    return rows


def best_trade_off(rows: list[dict], within: float = 0.05) -> str:
    """The most accurate of the settings within ``within`` of the most correct labels per CPU-minute
    (a near tie in cost goes to the better labels)."""
    top = max(r["correct_labels_per_cpu_min"] for r in rows)
    near = [r for r in rows if r["correct_labels_per_cpu_min"] >= (1 - within) * top]
    best = max(near, key=lambda r: r["accuracy"])
    return f"{best['encoder']}@{best['image_size']}"


def full_run(args, lake: Path, seed_csv: Path, truth: Path, encoder: str, size: int) -> dict:
    root = args.work / "full" / "root"
    if args.full_images:  # a smaller lake (a check of this script)
        shutil.rmtree(args.work / "full", ignore_errors=True)
        subset_lake(lake, pd.read_csv(seed_csv), args.full_images, args.work / "full" / "lake")
        lake = args.work / "full" / "lake"
    if not (root / "manifest").exists():
        run_ingest(str(lake), root, IngestConfig(workers=2))
    emb, embed_s, _ = measured(
        lambda: embed(
            root, EmbedConfig(encoder=ENCODERS[encoder], image_size=size, workers=2, batch_size=128)
        )
    )
    seeded, select_s, _ = measured(
        lambda: select(
            root,
            SelectConfig(
                labels_from="seed", seed_labels=[str(seed_csv)], truth=str(truth), run_name="seed250"
            ),
        )
    )
    published = publish_labels(root, "seed250")
    holdout = {"holdout": str(truth), "holdout_split": "test", "workers": 2}
    variants = {}
    for loss in ("ce", "smoothing", "gce"):
        for hidden in (0, 512):
            config = TrainClassifierConfig(
                labels=published["run_id"],
                loss=loss,
                head_hidden=hidden,
                baselines=(loss, hidden) == ("ce", 0),
                export=(loss, hidden) == (args.export_loss, args.export_hidden),
                run_name=f"{loss}-{hidden}",
                **holdout,
            )
            metrics, seconds, _ = measured(lambda c=config: train_classifier(root, c))
            variants[f"{loss}-{hidden}"] = {
                "accuracy": metrics["holdout"]["accuracy"],
                "images": metrics["holdout"]["images"],
                "steps": metrics["steps"],
                "seconds": seconds,
                **({"baselines": metrics["baselines"]} if "baselines" in metrics else {}),
                **({"export": metrics["export"]} if "export" in metrics else {}),
            }
            log({"classifier": f"{loss}-{hidden}", **variants[f"{loss}-{hidden}"]})
    base = variants["ce-0"]["baselines"]
    best = max(variants, key=lambda v: variants[v]["accuracy"])
    seeds_acc, oracle_acc = base["seeds_only"]["accuracy"], base["oracle"]["accuracy"]
    m = seeded["metrics"]
    return {
        "encoder": encoder,
        "image_size": size,
        "images": read_embeddings(emb["embeddings"]).n,
        "embed_seconds": embed_s,
        "select_seconds": select_s,
        "labels": {
            "accuracy": m["accuracy_full_coverage"],
            "precision_at_50pct": m["precision_at_50pct_coverage"],
            "logreg_accuracy": m["baseline_logreg"]["accuracy_full_coverage"],
            "ece": m.get("ece"),
        },
        "classifier_variants": variants,
        "best_variant": best,
        "seeds_only_accuracy": seeds_acc,
        "oracle_accuracy": oracle_acc,
        "value_of_pseudo_labels": {
            v: round((r["accuracy"] - seeds_acc) / (oracle_acc - seeds_acc), 4) for v, r in variants.items()
        },
        "classifier_dir": str(root / "classifiers" / f"{args.export_loss}-{args.export_hidden}"),
        "root": str(root),
    }


def predict_throughput(model_dir: str, lake: Path, images: int, workers: int) -> dict:
    files = sorted((lake / "test").rglob("*.jpg"))[:images] or sorted(lake.rglob("*.jpg"))[:images]
    folder = Path(model_dir).parent.parent / "predict-input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for f in files:
        shutil.copyfile(f, folder / f.name)
    predict(model_dir, [str(folder)], folder.parent / "warm.parquet", workers=workers)  # (start-up paid once)
    summary, seconds, _ = measured(
        lambda: predict(model_dir, [str(folder)], folder.parent / "predictions.parquet", workers=workers)
    )
    return {
        "images": summary["predicted"],
        "seconds": seconds,
        "images_per_s": round(summary["predicted"] / seconds, 1),
        "workers": "auto" if workers is None else workers,
    }


def markdown(r: dict) -> str:
    lines = []
    if r.get("sweep"):
        n = r["sweep"][0]["images"]
        lines += [
            f"Encoder sweep on {n:,} CIFAR-10 images (the seed-250 images among them), UPS with the "
            "same-run logistic regression beside it:",
            "",
            "| encoder | px | embed img/s | CPU s (embed + select) | label accuracy | precision at 50 % "
            "| logistic regression | correct labels per CPU-minute |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in r["sweep"]:
            cpu = s["embed_cpu_s"] + s["select_cpu_s"]
            lines.append(
                f"| {s['encoder']} | {s['image_size']} | {s['embed_images_per_s']} | {cpu:.0f} | "
                f"{s['accuracy']:.3f} | {s['precision_at_50pct']:.3f} | {s['logreg_accuracy']:.3f} | "
                f"{s['correct_labels_per_cpu_min']:,.0f} |"
            )
        lines.append("")
    f = r.get("full")
    if f:
        labels = f["labels"]
        lines += [
            f"Full lake ({f['images']:,} images), {f['encoder']} at {f['image_size']} px. Seed-250 labels: "
            f"accuracy {labels['accuracy']:.3f} at full coverage (logistic regression "
            f"{labels['logreg_accuracy']:.3f}), precision {labels['precision_at_50pct']:.3f} at 50 % "
            "coverage. Classifiers scored on the test images (never trained on):",
            "",
            "| classifier | top-1 | value of the pseudo-labels |",
            "|---|---|---|",
        ]
        for v, row in f["classifier_variants"].items():
            loss, hidden = v.split("-")
            head = "linear" if hidden == "0" else f"MLP {hidden}"
            value = f["value_of_pseudo_labels"][v]
            lines.append(f"| pseudo-labels, {head}, loss {loss} | {row['accuracy']:.3f} | {value} |")
        lines += [
            f"| baseline: the 250 seed labels only, linear | {f['seeds_only_accuracy']:.3f} | 0 |",
            f"| baseline: oracle (the train split's truth), linear | {f['oracle_accuracy']:.3f} | 1 |",
            "",
        ]
        export = next((row["export"] for row in f["classifier_variants"].values() if "export" in row), None)
        if export:
            lines.append(
                f"ONNX against torch (onnxruntime {export['onnxruntime']}) on {export['images']:,} images: "
                f"top-1 agreement {export['top1_agreement']}, largest probability difference "
                f"{export['max_probability_difference']:.2g}."
            )
    p = r.get("predict")
    if p:
        lines.append(
            f"`lakelabel predict`: {p['images_per_s']} images/s on {p['images']:,} image files "
            f"(decode workers: {p['workers']}; {r['machine']})."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/lakelabel-classifier-bench"))
    parser.add_argument("--sweep-images", type=int, default=2500)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[96, 160, 224])
    parser.add_argument(
        "--full", default="best", help="ENCODER@PX for the full run, 'best' (the sweep's), or 'off'"
    )
    parser.add_argument("--full-images", type=int, help="the full run on a subset of about this many images")
    parser.add_argument("--export-loss", default="ce")
    parser.add_argument("--export-hidden", type=int, default=0)
    parser.add_argument("--predict-images", type=int, default=1000)
    parser.add_argument(
        "--predict-workers", type=int, help="decode processes (default: predict's own choice)"
    )
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--sweep-from", help="take the sweep from an earlier run's stderr (its JSON lines)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lake = args.work / "lake"
    if not lake.exists():
        subprocess.run(["tar", "xzf", str(args.data / "lake.tar.gz"), "-C", str(args.work)], check=True)
    seed_csv, truth = args.data / "seed-250.csv", args.data / "labels.csv.gz"
    result: dict = {
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, CPU"
    }
    if args.sweep_from:  # the sweep of an earlier run (its stderr lines)
        lines = Path(args.sweep_from).read_text().splitlines()
        result["sweep"] = [json.loads(line)["sweep"] for line in lines if line.startswith('{"sweep"')]
    elif not args.skip_sweep:
        result["sweep"] = sweep(args, lake, seed_csv, truth)
    if result.get("sweep"):
        result["best_trade_off"] = best_trade_off(result["sweep"])
    if args.full != "off":
        spec = result.get("best_trade_off", "lite0@96") if args.full == "best" else args.full
        encoder, size = spec.split("@")
        result["full"] = full_run(args, lake, seed_csv, truth, encoder, int(size))
        if args.predict_images:
            result["predict"] = predict_throughput(
                result["full"]["classifier_dir"], lake, args.predict_images, args.predict_workers
            )
    print(json.dumps(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "classifier.json").write_text(json.dumps(result, indent=1))
        (args.out / "classifier.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
