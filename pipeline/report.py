"""``lakelabel report``: one self-contained HTML page (images inlined) + PNGs for a label run.

What a person needs to decide whether to trust a label run: sample images per class and per
cluster, the review queue, confidence and uncertainty histograms, per-class counts, and with a
ground-truth CSV the precision–coverage curve and the confusion matrix; plus the run's metadata
(selection config, encoder, stage timings). Written to ``ROOT/reports/<label run>/``; the HTML is
written last, so its presence marks a complete report.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from lakelabel.data_specs.batches import read_batch  # noqa: E402
from lakelabel.data_specs.checkpoints import pretrain_seconds  # noqa: E402
from lakelabel.data_specs.clusters import read_cluster_info  # noqa: E402
from lakelabel.data_specs.embeddings import read_meta  # noqa: E402
from lakelabel.data_specs.labels import ROLE_MEANINGS, ROLES, default_dest, read_commit, read_labels  # noqa: E402
from lakelabel.data_specs.layout import Layout  # noqa: E402
from lakelabel.data_specs.selections import (  # noqa: E402
    SelectionInfo,
    iter_selection,
    read_selection_info,
    read_selection_summary,
)
from lakelabel.pipeline.atomic import atomic_write_bytes  # noqa: E402
from lakelabel.pipeline.metrics import (  # noqa: E402
    BASELINE_TOLERANCE,
    COVERAGES,
    hungarian_accuracy,
    precision_at,
    precision_coverage,
)
from lakelabel.pipeline.shard_data import read_shard_images  # noqa: E402
from lakelabel.pipeline.truth import attach_keys, read_label_csv  # noqa: E402

TILE = 48  # px per montage tile
STAGES = ("ingest", "pretrain", "embed", "cluster", "select", "publish", "report")


def montage(rows: list[tuple[str, list[str]]], images: dict[str, Image.Image], columns: int) -> Image.Image:
    """A grid: one row per ``(title, keys)``, a title strip on the left."""
    label_w = 230
    sheet = Image.new("RGB", (label_w + columns * (TILE + 2), max(1, len(rows)) * (TILE + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for r, (title, keys) in enumerate(rows):
        y = r * (TILE + 2)
        while font.getlength(title) > label_w - 8 and len(title) > 2:  # shorten to fit, marked
            title = title[:-2].rstrip() + "…"
        draw.text((4, y + TILE // 2 - 8), title, fill="black", font=font)
        for c, key in enumerate(keys[:columns]):
            tile = images[key].copy()
            tile.thumbnail((TILE, TILE))
            sheet.paste(tile, (label_w + c * (TILE + 2), y))
    return sheet


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _image_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _histogram(values: dict[str, np.ndarray], title: str, xlabel: str) -> bytes:
    figure, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(
        min(float(v.min()) for v in values.values() if len(v)),
        max(float(v.max()) for v in values.values() if len(v)) + 1e-6,
        41,
    )
    for name, v in values.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.6, label=f"{name} ({len(v):,})")
    ax.set(title=title, xlabel=xlabel, ylabel="images")
    ax.legend(fontsize=8)
    return _png(figure)


def _ece(metrics: dict) -> str:
    """The calibrated ECE, and the uncalibrated one beside it when the selection calibrated."""
    raw = metrics.get("ece_uncalibrated")
    return f"{metrics['ece']}" + (f" (uncalibrated {raw})" if raw is not None else "")


def _bars(counts: pd.Series, title: str) -> bytes:
    figure, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(range(len(counts)), counts.to_numpy())
    ax.bar_label(bars, labels=[f"{v:,}" for v in counts.to_numpy()], fontsize=8)
    ax.set_xticks(range(len(counts)), [str(i) for i in counts.index], rotation=45, ha="right", fontsize=8)
    ax.set(title=title, ylabel="images")
    return _png(figure)


def truth_scores(table: pd.DataFrame, truth: pd.Series, identity: bool) -> dict:
    """Precision–coverage and confusion of predicted labels against truth (non-seed rows with truth).

    ``table`` needs ``key, predicted, confidence, role, is_seed``; ``identity``: predicted ids are
    truth class ids (seed-trained selection), else clusters are matched to classes (Hungarian)."""
    y = table.key.map(truth)
    rows = table[y.notna().to_numpy() & ~table.is_seed.to_numpy()]
    y = y[rows.index].to_numpy().astype(int)
    pred = rows.predicted.to_numpy().astype(int)
    if identity:
        mapped = pred
    else:
        _, mapping = hungarian_accuracy(pred, y)
        mapped = np.array([mapping.get(int(p), -1) for p in pred])
    correct = mapped == y
    precision = precision_coverage(correct, rows.confidence.to_numpy())
    n = len(precision)
    coverage = np.arange(1, n + 1) / n
    positive = (rows.role == "positive").to_numpy()
    classes = int(max(y.max(), mapped.max()) + 1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    pos_mapped, pos_true = mapped[positive], y[positive]
    ok = pos_mapped >= 0
    np.add.at(confusion, (pos_true[ok], pos_mapped[ok]), 1)
    at = {f"{c:.1f}": round(precision_at(precision, c), 4) for c in COVERAGES}
    return {
        "evaluated": n,
        "accuracy_full_coverage": round(float(correct.mean()), 4),
        "positives": int(positive.sum()),
        "coverage": round(float(positive.mean()), 4),
        "precision": round(float(correct[positive].mean()), 4) if positive.any() else None,
        "precision_at_coverage": at,
        "matching": "identity" if identity else "hungarian",
        "_curve": (coverage, precision),
        "_confusion": confusion,
    }


def _curve_png(scores: dict) -> bytes:
    coverage, precision = scores["_curve"]
    figure, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(coverage, precision, label="ranked by confidence")
    if scores["precision"] is not None:
        ax.scatter(
            [scores["coverage"]], [scores["precision"]], color="red", zorder=3, label="selected positives"
        )
    ax.set(xlabel="coverage", ylabel="precision", ylim=(0, 1.02), xlim=(0, 1), title="precision–coverage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)


def _confusion_png(confusion: np.ndarray, names: list[str]) -> bytes:
    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    figure, ax = plt.subplots(figsize=(7, 6.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    digits = 11 if len(norm) <= 6 else 9 if len(norm) <= 12 else 7  # readable at the page's width
    for i in range(len(norm)):
        for j in range(len(norm)):
            if confusion[i, j]:
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=digits,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set(xlabel="pseudo-label", ylabel="truth", title="positives: truth × pseudo-label")
    return _png(figure)


def _stage_timings(
    root: Path, selection: SelectionInfo, encoder: dict, timings: dict | None
) -> dict[str, float]:
    if timings:
        return dict(timings)
    out: dict[str, float] = {}
    pretrain = pretrain_seconds(Layout(root).checkpoint(str(encoder.get("encoder", ""))))
    if pretrain is not None:
        out["pretrain"] = pretrain
    with contextlib.suppress(FileNotFoundError):
        out["cluster"] = read_cluster_info(root, selection.cluster_run).seconds
    if selection.seconds is not None:
        out["select"] = selection.seconds
    return out


def build_report(
    root: str | Path,
    labels_run: str | None = None,
    dest: str | None = None,
    truth: str | Path | None = None,
    out: str | Path | None = None,
    per_row: int = 12,
    timings: dict | None = None,
    storage_options: dict | None = None,
) -> dict:
    """Write ``report.html`` + PNGs for one committed label run (``None``: the latest); returns paths
    and the figures shown. ``truth``: a CSV (path,label[,label_name]) for evaluation only."""
    root = Path(root)
    if per_row < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    if not Layout(root).shards.is_dir():
        raise FileNotFoundError(f"{str(root)!r} has no shards/: not a lakelabel root")
    dest = dest or default_dest(root)
    record = read_commit(dest, labels_run, storage_options)
    run_id = record["run_id"]
    table = read_labels(dest, run_id, storage_options).to_pandas()
    selection_run = Layout(root).selections(record["selection_run"])
    summary = read_selection_summary(root, record["selection_run"])
    info = read_selection_info(root, record["selection_run"])
    predicted = None
    if selection_run.committed:
        parts = iter_selection(root, record["selection_run"], columns=["key", "predicted"])
        selection = pa.concat_tables(parts).to_pandas().set_index("key").predicted
        if set(selection.index) == set(table.key):
            candidate = table.key.map(selection)
            check = (table.role == "positive") & ~table.is_seed
            # the selection folder may have been re-run since this label run was published
            if (candidate[check] == table.label[check].astype("int64")).all():
                predicted = candidate
    table["predicted"] = predicted if predicted is not None else table.label.fillna(-1).astype(int)
    encoder = read_meta(info.embeddings) if (info.embeddings / "meta.json").is_file() else {}
    out = Path(out) if out else Layout(root).report(run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").unlink(missing_ok=True)

    rng = np.random.default_rng(0)
    positives = table[table.role == "positive"]
    class_rows: list[tuple[str, list[str]]] = []
    for name, group in positives.groupby("label_name", sort=True):
        keys = group.key.to_numpy()
        pick = rng.choice(len(keys), size=min(per_row, len(keys)), replace=False)
        class_rows.append((f"{name} ({len(keys):,})", sorted(keys[pick].tolist())))
    cluster_rows: list[tuple[str, list[str]]] = []
    head0 = table.cluster_heads.map(lambda v: int(v[0]) if len(v) else -1)
    if (head0 >= 0).any():
        for c, group in table[head0 >= 0].groupby(head0[head0 >= 0]):
            keys = group.key.to_numpy()
            pick = rng.choice(len(keys), size=min(per_row, len(keys)), replace=False)
            cluster_rows.append((f"head 0 / {c} ({len(keys):,})", sorted(keys[pick].tolist())))
    review = table[table.role == "review"].sort_values("uncertainty", ascending=False)
    review_csv = Path(summary.get("review", {}).get("csv") or "-")
    predicted = (
        read_batch(review_csv.parent).set_index("key").predicted_name
        if review_csv.is_file()
        else pd.Series(dtype=str)
    )
    candidate = review.key.map(predicted).fillna("?").astype(str)
    review_rows = [  # one row per predicted class, most uncertain first
        (
            f"{name}? ({len(group):,}, confidence ~{group.confidence.median():.2f})",
            group.key.iloc[:per_row].tolist(),
        )
        for name, group in review.groupby(candidate, sort=True)
    ][:6]
    wanted_keys = {k for _, keys in class_rows + cluster_rows + review_rows for k in keys}
    shard_of = table.set_index("key").shard
    images = read_shard_images(root, {k: shard_of[k] for k in wanted_keys})

    figures: dict[str, tuple[str, bytes]] = {}
    if class_rows:
        figures["montage_classes"] = (
            "Random positives per class",
            _image_png(montage(class_rows, images, per_row)),
        )
    if cluster_rows:
        figures["montage_clusters"] = (
            "Random images per cluster (head 0)",
            _image_png(montage(cluster_rows, images, per_row)),
        )
    if review_rows:
        figures["montage_review"] = (
            "Review queue by candidate class, most uncertain first: label it with "
            f"`lakelabel review ROOT --batch {review_csv.parent.name}`; the next select learns from it",
            _image_png(montage(review_rows, images, per_row)),
        )
    non_seed = table[~table.is_seed]
    is_positive = non_seed.role == "positive"
    for column, title in (
        ("confidence", "confidence (mean MC-dropout probability)"),
        ("uncertainty", "uncertainty (MC-dropout std)"),
    ):
        values = non_seed[column]
        figures[column] = (
            column.capitalize(),
            _histogram(
                {"positive": values[is_positive].to_numpy(), "not positive": values[~is_positive].to_numpy()},
                title,
                column,
            ),
        )
    per_class = positives.label_name.value_counts().sort_index()
    if len(per_class):
        figures["class_counts"] = ("Positive labels per class", _bars(per_class, "positive labels per class"))
    scores = None
    if truth is not None:
        truth_table = attach_keys(root, read_label_csv(truth)).drop_duplicates("key")
        truth_series = truth_table.set_index("key").label
        identity = summary.get("labels_from") == "seed"
        scores = truth_scores(table, truth_series, identity)
        if scores["evaluated"] == 0:
            raise ValueError(f"no image of label run {run_id!r} has ground truth in {str(truth)!r}")
        figures["precision_coverage"] = ("Precision–coverage (ground truth)", _curve_png(scores))
        names_by_class = (
            dict(zip(truth_table.label, truth_table.label_name, strict=False))
            if "label_name" in truth_table.columns
            else {}
        )
        confusion = scores["_confusion"]
        names = [str(names_by_class.get(i, i)) for i in range(len(confusion))]
        figures["confusion"] = (
            "Confusion matrix of positives (ground truth)",
            _confusion_png(confusion, names),
        )

    for name, (_, data) in figures.items():
        atomic_write_bytes(out / f"{name}.png", data)
    stage_seconds = _stage_timings(root, info, encoder, timings)
    public_scores = {k: v for k, v in (scores or {}).items() if not k.startswith("_")}
    page = _html(run_id, record, summary, encoder, stage_seconds, per_class, public_scores, figures)
    meta = {
        "run_id": run_id,
        "html": str(out / "report.html"),
        "figures": {name: str(out / f"{name}.png") for name in figures},
        "images_inlined": len(figures),
        "timings": stage_seconds,
        "metrics": public_scores or None,
    }
    atomic_write_bytes(out / "report.json", json.dumps(meta, indent=1).encode())
    atomic_write_bytes(out / "report.html", page.encode())  # last: the done-marker
    return meta


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"ups": {"tau_p": 0.7}}`` → ``{"ups.tau_p": 0.7}`` (lists and scalars as they are)."""
    out: dict = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(run_id, record, summary, encoder, timings, per_class, scores, figures) -> str:
    esc = html.escape
    roles = record.get("roles", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lakelabel report {esc(run_id)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-size:14px}figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}"
        "pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}</style></head><body>",
        f"<h1>lakelabel label run <code>{esc(run_id)}</code></h1>",
        f"<p>{record['rows']:,} images · selection <code>{esc(record['selection_run'])}</code> "
        f"({esc(summary.get('labels_from', ''))}, {esc(summary.get('method', ''))}) · created "
        f"{esc(record.get('created_at', ''))} · table <code>{esc(record.get('path', ''))}</code></p>",
        *(
            [
                "<div style='border:2px solid #c00;padding:4px 12px;background:#fee'><h2>Warnings</h2><ul>",
                *(f"<li>{esc(w)}</li>" for w in summary["warnings"]),
                "</ul></div>",
            ]
            if summary.get("warnings")
            else []
        ),
        "<h2>Roles</h2>",
        _table(
            ["role", "images", "meaning"],
            [[k, f"{roles.get(k, 0):,}", ROLE_MEANINGS[k]] for k in ROLES],
        ),
    ]
    if scores:
        parts += [
            "<h2>Against ground truth</h2>",
            f"<p>Matching of pseudo-labels to classes: {esc(scores['matching'])}; seed-labelled images "
            "excluded.</p>",
            _table(
                ["evaluated", "accuracy (full coverage)", "positives", "coverage", "precision"],
                [
                    [
                        scores["evaluated"],
                        scores["accuracy_full_coverage"],
                        scores["positives"],
                        scores["coverage"],
                        scores["precision"],
                    ]
                ],
            ),
            _table(
                ["coverage"] + list(scores["precision_at_coverage"]),
                [["precision"] + list(scores["precision_at_coverage"].values())],
            ),
        ]
    selected = summary.get("metrics") or {}
    if selected.get("baseline_logreg"):
        base = selected["baseline_logreg"]
        parts += [
            "<h2>Same-run baseline</h2>",
            "<p>Logistic regression on the same embeddings with the same seed labels, scored on the same "
            f"images (evaluation only). A selection more than {BASELINE_TOLERANCE} below it at full coverage "
            f"is flagged as a bug (within {BASELINE_TOLERANCE}: the noise of a few hundred test images).</p>",
            _table(
                ["labels", "accuracy (full coverage)", "precision at 50 % coverage", "ECE"],
                [
                    [
                        "this selection",
                        selected["accuracy_full_coverage"],
                        selected.get("precision_at_50pct_coverage"),
                        _ece(selected),
                    ],
                    [
                        "logistic regression",
                        base["accuracy_full_coverage"],
                        base["precision_at_50pct_coverage"],
                        base["ece"],
                    ],
                ],
            ),
        ]
    for name, (title, data) in figures.items():
        b64 = base64.b64encode(data).decode()
        parts.append(
            f"<figure id='{name}'><figcaption><h2>{esc(title)}</h2></figcaption>"
            f"<img class='figure' alt='{esc(title)}' src='data:image/png;base64,{b64}'></figure>"
        )
    parts += [
        "<h2>Stage timings (s)</h2>",
        _table(["stage", "seconds"], [[k, v] for k, v in timings.items()])
        if timings
        else "<p>not recorded</p>",
        "<h2>Encoder</h2>",
        f"<pre>{esc(json.dumps(encoder, indent=1))}</pre>",
        "<h2>Selection rounds</h2>",
        _table(list(summary["rounds"][0]), [list(r.values()) for r in summary["rounds"]])
        if summary.get("rounds")
        else "",
        "<h2>Selection config</h2>",
        _table(["setting", "value"], [[k, v] for k, v in _flat(summary.get("config", {})).items()]),
        # the page counts its own decoded figures into data attributes (read by the tests; not shown)
        "<p id='render-check' hidden></p>",
        "<script>window.addEventListener('load',()=>{const im=[...document.images];"
        "const ok=im.filter(i=>i.complete&&i.naturalWidth>0).length;const "
        "p=document.getElementById('render-check');"
        "p.dataset.rendered=ok;p.dataset.total=im.length;});"
        "</script></body></html>",
    ]
    return "\n".join(parts)
