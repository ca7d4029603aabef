"""Label efficiency of the human in the loop, with a simulated person who answers from the truth file
(prints JSON; ``--out DIR`` adds a markdown table and the plot).

On the same embeddings (default: a subset of the CIFAR-10 lake, Lite0 at 96 px) and for each budget
of human labels (default 1, 2, 4, 10 and 25 per class), UPS labels from:
- random seeds: the budget drawn uniformly from the lake;
- suggested seeds: ``lakelabel suggest`` (TypiClust) picks the budget;
- suggested seeds plus review rounds: suggest picks half the budget, then two rounds of select's
  review queue (``uncertain_diverse``) take a quarter each, answered on the batch files the review page
  writes; the budget is the same.
Accuracy at full coverage and precision at 50 % coverage (the select stage's metrics, on the images
that were not labelled), with the same-run logistic regression on the same labels beside each.
Works on any lake with a truth CSV (path, label[, label_name]): ``--lake DIR --truth CSV``."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd

from lakelabel.data_specs.layout import Layout
from lakelabel.pipeline.config import EmbedConfig, IngestConfig, SelectConfig, SuggestConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.review.batch import BatchAnswers
from lakelabel.pipeline.select import select
from lakelabel.pipeline.suggest import suggest
from lakelabel.pipeline.truth import attach_keys

ENCODERS = {"lite0": "timm:tf_efficientnet_lite0", "lite1": "timm:tf_efficientnet_lite1"}
STRATEGIES = ("random", "suggested", "suggested+review")


def log(record: dict) -> None:
    print(json.dumps(record), file=sys.stderr, flush=True)


def subset(lake: Path, images: int, out: Path) -> None:
    """``out``: about ``images`` of the lake's images, chosen by a hash of the name."""
    files = sorted(lake.rglob("*.jpg"))
    for path in files:
        rel = path.relative_to(lake).as_posix()
        if zlib.crc32(rel.encode()) % len(files) < images:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


class Person:
    """Answers every image of a batch from the truth, through the review page's storage."""

    def __init__(self, truth: pd.DataFrame):
        self.label = truth.set_index("key").label

    def answer(self, root: Path, batch: str) -> Path:
        answers = BatchAnswers(Layout(root).batch(batch))
        for key in answers.table.key:
            label = int(self.label[key])
            if label in answers.classes:
                answers.answer(key, "label", label)
            else:  # a class the batch does not offer
                answers.answer(key, "none")
        return answers.batch.csv


def run_select(root: Path, csvs: list[Path], name: str, truth_csv: str, review_budget: int) -> dict:
    config = SelectConfig(
        labels_from="seed",
        seed_labels=[str(c) for c in csvs],
        truth=truth_csv,
        reviewed_batches=False,  # each strategy's labels exactly: passed as CSVs
        review_budget=review_budget,
        run_name=name,
    )
    started = time.perf_counter()
    summary = select(root, config)
    m = summary["metrics"]
    return {
        "labels": summary["seed_labels_used"],
        "accuracy": m["accuracy_full_coverage"],
        "precision_at_50pct": m["precision_at_50pct_coverage"],
        "logreg_accuracy": m["baseline_logreg"]["accuracy_full_coverage"],
        "logreg_precision_at_50pct": m["baseline_logreg"]["precision_at_50pct_coverage"],
        "seconds": round(time.perf_counter() - started, 1),
        "review_batch": summary["review"]["batch"],
    }


def curve_point(root: Path, truth: pd.DataFrame, truth_csv: str, names: list[str], per_class: int, seed: int):
    budget = per_class * len(names)
    person, work = Person(truth), root.parent / "labels"
    work.mkdir(exist_ok=True)
    out = {}
    # random seeds
    pick = truth.sample(budget, random_state=seed)[["key", "label", "label_name"]]
    random_csv = work / f"random-{budget}.csv"
    pick.to_csv(random_csv, index=False)
    out["random"] = run_select(root, [random_csv], f"random-{budget}", truth_csv, 0)
    # suggested seeds
    suggested = suggest(
        root,
        SuggestConfig(
            budget=budget, classes=names, reviewed_batches=False, name=f"suggest-{budget}", seed=seed
        ),
    )
    out["suggested"] = run_select(
        root, [person.answer(root, suggested["batch"])], f"suggested-{budget}", truth_csv, 0
    )
    out["suggested"]["suggest_seconds"] = suggested["seconds"]
    # suggested half, then two review rounds of a quarter each
    first = budget // 2
    if first >= 2 and budget - first >= 2:
        half = suggest(
            root,
            SuggestConfig(
                budget=first, classes=names, reviewed_batches=False, name=f"suggest-half-{budget}", seed=seed
            ),
        )
        csvs = [person.answer(root, half["batch"])]
        rounds = [budget - first - (budget - first) // 2, (budget - first) // 2]
        for i, size in enumerate(rounds):
            r = run_select(root, csvs, f"review-{budget}-r{i}", truth_csv, size)
            csvs.append(person.answer(root, r["review_batch"]))
        out["suggested+review"] = run_select(root, csvs, f"review-{budget}", truth_csv, 0)
        out["suggested+review"]["rounds"] = rounds
    for strategy, row in out.items():
        log({"per_class": per_class, "budget": budget, "strategy": strategy, **row})
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"random": "tab:grey", "suggested": "tab:blue", "suggested+review": "tab:green"}
    for ax, metric, title in (
        (axes[0], "accuracy", "accuracy at full coverage"),
        (axes[1], "precision_at_50pct", "precision at 50 % coverage"),
    ):
        for strategy in STRATEGIES:
            points = [(p["per_class"], p[strategy]) for p in result["curve"] if strategy in p]
            if not points:
                continue
            x = [q for q, _ in points]
            ax.plot(
                x, [r[metric] for _, r in points], "o-", color=colours[strategy], label=f"UPS, {strategy}"
            )
            if strategy != "suggested+review":
                ax.plot(
                    x,
                    [r[f"logreg_{metric}"] for _, r in points],
                    "x--",
                    color=colours[strategy],
                    alpha=0.6,
                    label=f"logistic regression, {strategy}",
                )
        ax.set_xscale("log")
        ax.set_xticks(
            [p["per_class"] for p in result["curve"]], [str(p["per_class"]) for p in result["curve"]]
        )
        ax.set_xlabel("human labels per class")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"{result['lake']}: {result['images']:,} images, {result['encoder']} at {result['image_size']} px"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    lines = [
        f"{result['lake']}: {result['images']:,} images, {result['encoder']} at {result['image_size']} px "
        f"({result['machine']}). UPS labels (logistic regression on the same labels in brackets):",
        "",
        "| labels per class | labels | random: accuracy | random: precision at 50 % "
        "| suggested: accuracy | suggested: precision at 50 % "
        "| suggested + review: accuracy | suggested + review: precision at 50 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["curve"]:
        cells = []
        for s in STRATEGIES:
            r = p.get(s)
            if r is None:
                cells += ["–", "–"]
            elif s == "suggested+review":
                cells += [f"{r['accuracy']:.3f}", f"{r['precision_at_50pct']:.3f}"]
            else:
                cells += [
                    f"{r['accuracy']:.3f} ({r['logreg_accuracy']:.3f})",
                    f"{r['precision_at_50pct']:.3f} ({r['logreg_precision_at_50pct']:.3f})",
                ]
        lines.append(f"| {p['per_class']} | {p['budget']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
    parser.add_argument("--lake", type=Path, help="an image folder (default: the CIFAR-10 lake, extracted)")
    parser.add_argument("--truth", type=Path, default=data / "labels.csv.gz", help="path,label[,label_name]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lakelabel-active-bench"))
    parser.add_argument("--images", type=int, default=10_000, help="a subset of about this many images")
    parser.add_argument("--encoder", default="lite0", choices=list(ENCODERS))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--per-class", type=int, nargs="+", default=[1, 2, 4, 10, 25])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot-from", type=Path, help="only redraw --out's table and plot from this JSON")
    args = parser.parse_args()
    if args.plot_from:
        result = json.loads(args.plot_from.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "active.md").write_text(markdown(result))
        plot(result, args.out / "active.png")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    lake = args.lake
    if lake is None:
        lake = args.work / "full-lake" / "lake"
        if not lake.exists():
            lake.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "xzf", str(data / "lake.tar.gz"), "-C", str(lake.parent)], check=True)
    sub = args.work / f"lake-{args.images}"
    if not sub.exists():
        subset(lake, args.images, sub)
    root = args.work / f"root-{args.images}-{args.encoder}-{args.image_size}"
    if not (root / "manifest").exists():
        run_ingest(str(sub), root, IngestConfig(workers=2))
    started = time.perf_counter()
    embed(root, EmbedConfig(encoder=ENCODERS[args.encoder], image_size=args.image_size, workers=2))
    embed_seconds = round(time.perf_counter() - started, 1)
    truth = attach_keys(root, pd.read_csv(args.truth))
    if "label_name" not in truth.columns:
        truth["label_name"] = truth.label.astype(str)
    names_of = truth.drop_duplicates("label").set_index("label").label_name.sort_index()
    names = [str(names_of.get(c, c)) for c in range(int(truth.label.max()) + 1)]
    result = {
        "lake": "CIFAR-10" if args.lake is None else str(args.lake),
        "images": int(len(truth)),
        "encoder": args.encoder,
        "image_size": args.image_size,
        "embed_seconds": embed_seconds,
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, CPU",
        "curve": [],
    }
    for per_class in args.per_class:
        point = curve_point(root, truth, str(args.truth), names, per_class, args.seed)
        result["curve"].append({"per_class": per_class, "budget": per_class * len(names), **point})
    by = {p["per_class"]: p for p in result["curve"]}
    if 4 in by and 10 in by:
        result["goal_suggested_4_vs_random_10"] = {
            "suggested_4": by[4]["suggested"]["accuracy"],
            "random_10": by[10]["random"]["accuracy"],
            "met": by[4]["suggested"]["accuracy"] >= by[10]["random"]["accuracy"],
        }
    print(json.dumps(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "active.json").write_text(json.dumps(result, indent=1))
        (args.out / "active.md").write_text(markdown(result))
        plot(result, args.out / "active.png")


if __name__ == "__main__":
    main()
