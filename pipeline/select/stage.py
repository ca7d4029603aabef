"""UPS selection by part: pseudo-labels with MC-dropout uncertainty, negative labels and a review queue.

:func:`fit_selection` runs the rounds on a bounded **working sample** (``select.sample`` images plus
every seed; class-balanced over the cluster labels when they train; all of a smaller lake): training,
calibration, the review queue. :func:`apply_parts` then selects every embeddings part with the last
round's classifier (a sample row keeps its last-round selection; any other row gets its own MC-dropout
passes, smoothed over its neighbours in the sample) and writes ``parts/sel-NNNNNN.parquet``
(temp-then-rename); :func:`commit_selection` writes ``summary.json`` and then ``selection.json``, the
commit (``data_specs/selections.md``). Memory: the sample and one part, whatever the lake's size.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lakelabel.data_specs.batches import list_batches, read_classes
from lakelabel.data_specs.clusters import iter_assignments, label_columns, methods_in, read_cluster_info
from lakelabel.data_specs.embeddings import Embeddings, find_embeddings, read_embeddings
from lakelabel.data_specs.labels import ROLES
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.selections import SELECTION_SCHEMA, SELECTIONS_SCHEMA_VERSION, selection_part_name
from lakelabel.models.scan import NeighbourIndex
from lakelabel.models.ups import McStats, Selection, TrainingLabels, smooth_over_neighbours
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes, parts_in_order
from lakelabel.pipeline.checks import check_choice
from lakelabel.pipeline.clustering import METHODS as CLUSTERING_METHODS
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.devices import compute_device
from lakelabel.pipeline.finetune import finetune_round, load_finetune_encoder
from lakelabel.pipeline.inputs import input_file, manifest_of
from lakelabel.pipeline.metrics import quality_warnings
from lakelabel.pipeline.review import REVIEW_RULES, ReviewInputs
from lakelabel.pipeline.review.batch import write_batch
from lakelabel.pipeline.select.evaluation import Evaluation, read_truth
from lakelabel.pipeline.select.rounds import (
    CrossFit,
    _mc_stats,
    calibration_temperature,
    logreg_baseline,
    name_clusters,
    next_labels,
    raw_mc_stats,
    train_classifier,
)
from lakelabel.pipeline.selection import RULES
from lakelabel.pipeline.truth import seeds_with_sources

#: parquet metadata key of a part: the digest of the fitted selection it was written with
_STATE_KEY = b"lakelabel.state"


def check_select_config(config: SelectConfig) -> None:
    if config.labels_from == "seed" and not config.seed_labels:
        raise ValueError("labels_from=seed needs at least one seed-label CSV (--seed-labels)")


def auto_column(assignments: pa.Table) -> str:
    """``cluster_column: auto``: the first label column of the strongest method the run has, the one
    latest in the clustering registry (scan, then sela's head_0, sinkhorn, kmeans)."""
    order = list(CLUSTERING_METHODS)
    ran = methods_in(assignments)
    strongest = max(ran, key=lambda m: order.index(m) if m in order else -1)
    return label_columns(assignments, strongest)[0]


def check_select_inputs(root: Path, config: SelectConfig) -> None:
    """Everything select reads, checked before its work: the manifest (the review queue's sources),
    the embeddings, the cluster run it learns from, the seed and truth CSVs."""
    manifest_of(root)
    find_embeddings(root, config.embeddings)
    if config.labels_from == "clusters":
        read_cluster_info(root, config.cluster_run)
    for csv in config.seed_labels:
        input_file(csv, "seed-label CSV")
    if config.truth:
        input_file(config.truth, "truth CSV")


def cluster_labels_by_part(root: Path, run: str, emb: Embeddings, column: str):
    """Cluster run ``run``'s ``column`` for each embeddings part in turn (int64, the part's row order);
    fails when a part's keys differ from the cluster run's (clustered on other embeddings)."""
    tables = iter_assignments(root, run)
    buffer = pa.table({"key": pa.array([], pa.string()), column: pa.array([], pa.int32())})
    for i, (_, rows) in enumerate(emb.parts):
        while buffer.num_rows < rows:
            table = next(tables, None)
            if table is None:
                break
            buffer = pa.concat_tables([buffer, table.select(["key", column]).cast(buffer.schema)])
        part, buffer = buffer.slice(0, rows), buffer.slice(rows)
        if not part.column("key").equals(emb.part_keys(i).column("key").cast(pa.string())):
            raise ValueError(
                f"embedded images of part {i} have no or other clusters in run {run!r}: "
                "re-run `lakelabel cluster`"
            )
        yield part.column(column).to_numpy().astype(np.int64)


def balanced_quota(counts: np.ndarray, size: int) -> float:
    """The per-class cap ``q`` with ``Σ min(count_c, q) = size`` (water-filling): classes smaller than
    ``q`` are kept whole, the others sampled down to ``q``."""
    order = np.sort(counts.astype(np.float64))
    for i, c in enumerate(order):
        q = (size - order[:i].sum()) / (len(order) - i)
        if q <= c:
            return float(q)
    return float(order[-1]) if len(order) else 0.0


@dataclass
class WorkingSample:
    """The rows the rounds see: sorted global ``rows``; ``x`` their unit vectors × √dim; ``initial``
    their cluster labels (labels_from=clusters) or None."""

    rows: np.ndarray
    x: torch.Tensor
    initial: torch.Tensor | None


def working_sample(
    root: Path, emb: Embeddings, config: SelectConfig, seed_rows: np.ndarray, column: str | None, k: int = 0
) -> WorkingSample:
    """``config.sample`` rows plus every seed row (all rows of a smaller lake, and with fine-tuning,
    which re-embeds the lake): uniform with seed labels, class-balanced over ``column`` with cluster
    labels (each cluster capped by :func:`balanced_quota`, seeded Bernoulli draws part by part)."""
    n, everything = emb.n, emb.n <= config.sample or config.finetune
    initial = None
    if column is None:
        rows = np.arange(n) if everything else emb.sample_rows(config.sample, config.seed)
        rows = np.union1d(rows, seed_rows)
    else:
        if not everything:
            counts = sum(
                np.bincount(labels, minlength=k)
                for labels in cluster_labels_by_part(root, config.cluster_run, emb, column)
            )
            keep = np.minimum(1.0, balanced_quota(counts, config.sample) / np.maximum(counts, 1))
        rng, start, picked, labelled = np.random.default_rng([config.seed, 1]), 0, [], []
        for labels in cluster_labels_by_part(root, config.cluster_run, emb, column):
            local = np.ones(len(labels), bool) if everything else rng.random(len(labels)) < keep[labels]
            seeds_here = seed_rows[(seed_rows >= start) & (seed_rows < start + len(labels))] - start
            local[seeds_here] = True
            picked.append(np.nonzero(local)[0] + start)
            labelled.append(labels[local])
            start += len(labels)
        rows, initial = np.concatenate(picked), torch.as_tensor(np.concatenate(labelled))
    x = torch.from_numpy(emb.take(rows)).mul_(float(np.sqrt(emb.meta["dim"])))
    return WorkingSample(rows, x, initial)


@dataclass
class SelectFit:
    """Everything :func:`apply_parts` needs to select any part anywhere (picklable: it travels to Dask
    workers; its size is the working sample's)."""

    config: SelectConfig
    root: Path
    emb: Embeddings
    out: Any  # the run's SelectionRunPaths
    rows: np.ndarray  # the working sample's global rows (sorted)
    selection: Selection  # the last round's, over the sample
    seed_label: torch.Tensor  # per sample row: its seed class, −1 for none
    review: np.ndarray  # global rows of the review queue
    names: dict[int, str]
    classes: int
    model: torch.nn.Module | None  # the last round's classifier (CPU)
    index: NeighbourIndex | None  # the sample, for the neighbours of other rows (smoothing on)
    reference: tuple[torch.Tensor, torch.Tensor] | None  # the sample's raw MC means (both temperatures)
    mc_seed: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per sample row (truth given)
    baseline: tuple[torch.Tensor, torch.Tensor] | None = None  # logistic regression (w, b)
    digest: str = ""
    summary: dict = field(default_factory=dict)

    @property
    def parts(self) -> list[int]:
        return list(range(len(self.emb.parts)))


def _seeds(root: Path, emb: Embeddings, config: SelectConfig) -> tuple[pd.DataFrame, list]:
    """The seed labels of embedded images with their global ``row``, and their sources."""
    seeds, sources = seeds_with_sources(root, config.seed_labels, config.reviewed_batches)
    row = emb.rows_of(seeds.key.to_numpy())
    return seeds[row >= 0].assign(row=row[row >= 0]), sources


def fit_selection(
    root: str | Path, config: SelectConfig | None = None, log=None, device: str | None = None
) -> SelectFit:
    """Run the rounds on the working sample and write the review queue; uncommits the old run.

    ``device``: where the classifier heads (or, with ``config.finetune``, encoder + head) train;
    default CUDA when present."""
    config = config or SelectConfig()
    check_select_config(config)
    root = Path(root)
    check_select_inputs(root, config)
    started = time.perf_counter()
    clusters = read_cluster_info(root, config.cluster_run) if config.labels_from == "clusters" else None
    if clusters is not None and config.embeddings is None:
        emb = read_embeddings(clusters.embeddings)
    else:
        emb = read_embeddings(find_embeddings(root, config.embeddings))
    n = emb.n
    seeds, seed_sources = _seeds(root, emb, config)
    summary: dict = {"labels_from": config.labels_from, "method": config.method, "images": n}
    column = None
    if clusters is not None:
        first = next(iter_assignments(root, config.cluster_run))
        column = auto_column(first) if config.cluster_column == "auto" else config.cluster_column
        check_choice("cluster_column", column, label_columns(first))
        summary["cluster_column"] = column
    elif len(seeds) < 2:
        raise ValueError("fewer than 2 seed labels match embedded images: check the CSV paths/keys")
    k = clusters.k if clusters is not None else 0
    sample = working_sample(root, emb, config, seeds.row.to_numpy(), column, k)
    x, m = sample.x, len(sample.rows)
    summary["working_sample"] = m
    seed_pos = torch.as_tensor(np.searchsorted(sample.rows, seeds.row.to_numpy()))
    seed_classes = torch.as_tensor(seeds.label.to_numpy().astype(np.int64))

    seed_rows = torch.zeros(m, dtype=torch.bool)
    if clusters is not None:
        assert sample.initial is not None
        classes = int(summary.setdefault("classes", clusters.k))  # (the run's k, not the largest label)
        pos_idx, pos_labels = torch.arange(m), sample.initial
        names = {c: f"cluster_{c}" for c in range(classes)}
        if len(seeds):  # seed labels name the clusters; they do not train in this mode
            mapping, unclaimed = name_clusters(
                sample.initial.numpy()[seed_pos.numpy()], seeds.label.to_numpy(), classes, config.naming
            )
            class_names = dict(zip(seeds.label, seeds.label_name, strict=False))
            names.update({c: str(class_names[cls]) for c, cls in mapping.items()})
            summary["cluster_names"] = {f"cluster_{c}": names[c] for c in range(classes)}
            summary["unclaimed_clusters"] = unclaimed
    else:
        classes = int(seeds.label.max()) + 1
        summary["classes"] = classes
        pos_idx, pos_labels = seed_pos, seed_classes
        names = {int(c): str(nm) for c, nm in zip(seeds.label, seeds.label_name, strict=False)}
        for batch in list_batches(root):  # classes a person may name that no seed has yet (review page)
            for c, name in read_classes(batch).items():
                names.setdefault(c, name)
        names.update({c: str(c) for c in range(classes) if c not in names})
        seed_rows[pos_idx] = True
    summary["seed_labels_used"] = int(len(seeds))
    summary["seed_sources"] = seed_sources
    labels = TrainingLabels.positives_only(pos_idx, pos_labels, classes)
    # calibration rows without seeds: a sample of the cluster labels (seeds cross-fit, see CrossFit)
    calib_rows, calib_targets = pos_idx, pos_labels
    if config.labels_from == "clusters" and m > 25_000:
        pick = torch.randperm(m, generator=torch.Generator().manual_seed(config.seed))[:25_000]
        calib_rows, calib_targets = pos_idx[pick], pos_labels[pick]
    baseline = None
    if len(seeds) >= 2:
        baseline = logreg_baseline(x, seed_pos, seed_classes, int(seed_classes.max()) + 1)

    k = min(config.neighbours, m - 1)
    index, neighbours = None, torch.empty(0, dtype=torch.long)
    if config.neighbour_smoothing > 0:
        index = NeighbourIndex(x.numpy())
        neighbours = torch.from_numpy(index.search(x.numpy(), k, own=np.arange(m)))
    rounds = []
    rule = RULES[config.method](getattr(config, config.method))
    seed_label = torch.full((m,), -1, dtype=torch.long)
    if clusters is None:  # (seeds only name the clusters when the clusters train)
        seed_label[seed_pos] = seed_classes
    cross_fit = None
    if config.calibrate and config.labels_from == "seed" and not config.finetune:
        cross_fit = CrossFit.start(pos_idx, pos_labels, m, classes, config.seed)
    selection: Selection | None = None
    encoder = load_finetune_encoder(root, emb, config) if config.finetune else None
    if encoder is None:
        x = x.to(compute_device(device))  # the heads train and run where the GPU is (if any)
    for r in range(config.rounds):
        tuned: dict = {}
        if encoder is not None:  # full fine-tuning: encoder + head on the shards, then re-embed
            result = finetune_round(root, emb, encoder, labels, classes, config, config.seed + r, device)
            model, x, tuned = result.head, result.features, result.record
        else:
            model = train_classifier(x, labels, classes, config, config.seed + r)
            if cross_fit is not None:
                temperature = cross_fit.round(
                    x, neighbours, rule, seed_label, classes, config, config.seed + r
                )
            elif config.calibrate:
                # fitted to agreement with the cluster labels, which over-states accuracy: soften only
                temperature = max(
                    1.0,
                    calibration_temperature(
                        x, labels, calib_rows, calib_targets, classes, config, config.seed + r
                    ),
                )
            if config.calibrate:
                model.temperature = temperature
                tuned["temperature"] = round(temperature, 4)
        raw = raw_mc_stats(model, x, config, config.seed + r)
        selection = rule.select(_smooth(raw, neighbours, config))
        positive = selection.positive & ~seed_rows
        neg_rows = selection.negative.any(1) & ~seed_rows
        record = {
            "round": r,
            "trained_on_positives": int(len(labels.pos_idx)),
            "trained_on_negatives": int(len(labels.neg_idx)),
            "positives": int(positive.sum()),
            "negative_only": int((neg_rows & ~positive).sum()),
            "negative_labels": int(selection.negative[~seed_rows].sum()),
            **tuned,
        }
        rounds.append(record)
        if log:
            log(record)
        labels = next_labels(selection, seed_rows, seed_label)
    assert selection is not None
    extras: dict[str, np.ndarray] = {}
    if config.truth and getattr(model, "temperature", 1.0) != 1.0:
        extras["uncalibrated"] = _uncalibrated(model, x, neighbours, config, config.seed + r).numpy()
    model = model.cpu()
    unit = x.cpu().numpy() / float(np.sqrt(emb.meta["dim"]))
    review_pos = REVIEW_RULES[config.review](getattr(config, config.review)).pick(
        ReviewInputs(
            probs=_smooth(raw, neighbours, config).mean.numpy(),
            uncertainty=selection.uncertainty.numpy(),
            predicted=selection.label.numpy(),
            eligible=~(selection.positive | seed_rows).numpy(),
            rows=unit,
        ),
        config.review_budget,
        config.seed,
    )
    del unit
    out = Layout(root).selections(config.run_name)
    out.dir.mkdir(parents=True, exist_ok=True)
    out.commit.unlink(missing_ok=True)  # uncommit the old run before rewriting
    out.selection.unlink(missing_ok=True)  # (a run of the single-file layout)
    fit = SelectFit(
        config,
        root,
        emb,
        out,
        sample.rows,
        selection,
        seed_label,
        sample.rows[review_pos],
        names,
        classes,
        model if encoder is None else None,
        index,
        (raw.mean, raw.mean_neg),
        config.seed + config.rounds - 1,
        extras,
        baseline,
    )
    summary["review"] = export_review(fit, review_pos)
    summary["rounds"] = rounds
    summary["thresholds"] = {
        config.method: rule.settings.model_dump(),
        **{k: getattr(config, k) for k in ("neg_temperature", "passes", "rounds", "finetune")},
    }
    summary["encoder"] = emb.meta["encoder"]
    summary["encoder_sha256"] = emb.meta["encoder_sha256"]
    summary["embeddings"] = str(emb.directory)
    summary["fit_seconds"] = round(time.perf_counter() - started, 2)
    fit.summary = summary
    fit.digest = _digest(fit)
    return fit


def _smooth(raw: McStats, neighbours: torch.Tensor, config: SelectConfig) -> McStats:
    return smooth_over_neighbours(raw, neighbours, config.neighbour_smoothing)


def _uncalibrated(
    model, x: torch.Tensor, neighbours: torch.Tensor, config: SelectConfig, seed: int
) -> torch.Tensor:
    """Confidence of ``model`` at temperature 1 (the same dropout draws): the ECE before calibration."""
    return _mc_stats(_at_one(model), x, neighbours, config, seed).mean.max(dim=1).values


def _at_one(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` at temperature 1 (threads share ``model``: it is never changed in place)."""
    plain = copy.deepcopy(model)
    plain.temperature = 1.0
    return plain


def _digest(fit: SelectFit) -> str:
    """What a part's rows depend on: the config (less the task grouping and the run's name), the
    sample, its last-round selection, the classifier, the reference and the review queue."""
    h = hashlib.sha256(fit.config.model_dump_json(exclude={"parts_per_task", "run_name"}).encode())
    h.update(json.dumps(fit.names, sort_keys=True).encode())
    arrays = [fit.rows, fit.review, *vars(fit.selection).values(), fit.seed_label]
    if fit.model is not None:
        arrays += [*fit.model.state_dict().values(), torch.tensor(getattr(fit.model, "temperature", 1.0))]
    if fit.reference is not None:
        arrays += list(fit.reference)
    for path, rows in fit.emb.parts:
        h.update(f"{Path(path).name}:{rows}:{Path(path).stat().st_size}".encode())
    for a in arrays:
        h.update(np.ascontiguousarray(torch.as_tensor(a).cpu().numpy()).tobytes())
    return h.hexdigest()


def _part_selection(
    fit: SelectFit, i: int, x: torch.Tensor, start: int
) -> tuple[Selection, torch.Tensor, dict]:
    """Selection of part ``i``'s rows ``x`` (its unit rows × √dim): sample rows keep theirs, the
    others are selected here. Returns it, the seed class per row (−1 none) and the evaluation extras."""
    config, n = fit.config, len(x)
    where = np.searchsorted(fit.rows, np.arange(start, start + n))
    inside = (where < len(fit.rows)) & (
        fit.rows[np.minimum(where, len(fit.rows) - 1)] == np.arange(start, start + n)
    )
    s, c = fit.selection, fit.classes
    out = Selection(
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, c, dtype=torch.bool),
        torch.zeros(n),
        torch.zeros(n),
    )
    at = torch.as_tensor(where[inside])
    mine = torch.as_tensor(inside)
    for name, value in vars(s).items():
        getattr(out, name)[mine] = value[at].to(getattr(out, name).dtype)
    seed_label = torch.full((n,), -1, dtype=torch.long)
    seed_label[mine] = fit.seed_label[at]
    extras: dict[str, np.ndarray] = {}
    if "uncalibrated" in fit.extras:
        extras["uncalibrated"] = np.zeros(n, np.float32)
        extras["uncalibrated"][inside] = fit.extras["uncalibrated"][where[inside]]
    others = torch.as_tensor(~inside)
    if others.any():
        if fit.model is None:
            raise RuntimeError(
                f"part {i} has rows outside the working sample, which fine-tuning re-embeds whole"
            )
        xo = x[others]
        seed = int(np.random.SeedSequence([fit.mc_seed, i]).generate_state(1)[0])
        raw = raw_mc_stats(fit.model, xo, config, seed)
        stats, near = raw, None
        if fit.index is not None:
            near = torch.from_numpy(fit.index.search(xo.numpy(), min(config.neighbours, len(fit.rows) - 1)))
            stats = _smooth_to(raw, near, fit.reference, config.neighbour_smoothing)
        chosen = RULES[config.method](getattr(config, config.method)).select(stats)
        for name, value in vars(chosen).items():
            getattr(out, name)[others] = value.to(getattr(out, name).dtype)
        if "uncalibrated" in fit.extras:
            plain = raw_mc_stats(_at_one(fit.model), xo, config, seed)
            if near is not None:
                plain = _smooth_to(plain, near, _reference_at_one(fit), config.neighbour_smoothing)
            extras["uncalibrated"][~inside] = plain.mean.max(dim=1).values.numpy()
    if fit.baseline is not None and config.truth:
        w, b = fit.baseline
        conf, pred = torch.softmax(x @ w + b, dim=1).max(dim=1)
        extras["baseline_confidence"], extras["baseline_predicted"] = conf.numpy(), pred.numpy()
    return out, seed_label, extras


def _reference_at_one(fit: SelectFit) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample's raw MC means at temperature 1 (for the uncalibrated ECE of the other rows)."""
    if "reference_at_one" not in fit.extras:
        x = torch.from_numpy(fit.emb.take(fit.rows)).mul_(float(np.sqrt(fit.emb.meta["dim"])))
        raw = raw_mc_stats(_at_one(fit.model), x, fit.config, fit.mc_seed)
        fit.extras["reference_at_one"] = (raw.mean, raw.mean_neg)  # (threads may both compute it: same)
    return fit.extras["reference_at_one"]


def _smooth_to(raw: McStats, near: torch.Tensor, reference, weight: float) -> McStats:
    """``raw`` smoothed over neighbours in the sample (``near`` rows of its ``reference`` means)."""
    mean, mean_neg = reference
    return McStats(
        (1 - weight) * raw.mean + weight * mean[near].mean(1),
        raw.std,
        (1 - weight) * raw.mean_neg + weight * mean_neg[near].mean(1),
        raw.std_neg,
    )


def selection_frame(
    keys: pa.Table, selection: Selection, seed_label: torch.Tensor, review: np.ndarray, names: dict
) -> pd.DataFrame:
    """The selection contract's rows (``key``/``shard`` from ``keys``) from a selection, the seed
    class per row (−1 none) and the rows in the review queue (a bool mask)."""
    seeded = (seed_label >= 0).numpy()
    positive = selection.positive.numpy() | seeded
    predicted = selection.label.numpy()
    label = np.where(seeded, seed_label.numpy(), predicted)
    negatives = selection.negative.clone()
    negatives[torch.as_tensor(seeded)] = False
    role = np.full(len(seeded), "unlabeled", dtype=object)
    role[negatives.any(1).numpy() & ~positive] = "negative_only"
    role[positive] = "positive"
    role[review] = "review"  # (the review rule picks neither seeds nor positives)
    out_label = np.where(role == "positive", label, -1)
    return pd.DataFrame(
        {
            "key": keys.column("key").to_numpy(zero_copy_only=False),
            "shard": keys.column("shard").to_numpy(zero_copy_only=False),
            "label": pd.array([int(v) if v >= 0 else None for v in out_label], dtype="Int32"),
            "label_name": [names.get(int(v)) if v >= 0 else None for v in out_label],
            "predicted": predicted.astype(np.int32),
            "role": role,
            "is_seed": seeded,
            "confidence": np.where(seeded, 1.0, selection.confidence.numpy()).astype(np.float32),
            "uncertainty": np.where(seeded, 0.0, selection.uncertainty.numpy()).astype(np.float32),
            "negative_labels": _lists(negatives.numpy()),
        }
    )


def _lists(mask: np.ndarray) -> list[list[int]]:
    """Each row's True columns of ``mask`` ``(n, C)`` as a list (vectorised: ~100x a loop of nonzero)."""
    rows, cols = np.nonzero(mask)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(mask)))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(cols.astype(np.int32))).to_pylist()


def export_review(fit: SelectFit, review_pos: np.ndarray) -> dict:
    """The review queue as a batch ``ROOT/batches/<run>-<sha8 of its keys>`` (``batches.md``), most
    useful first; an unchanged queue keeps its batch, and the answers in it."""
    if not len(review_pos):
        return {"batch": None, "csv": None, "rows": 0}
    order = np.argsort(fit.rows[review_pos], kind="stable")  # keys_at reads sorted rows
    keys = fit.emb.keys_at(fit.rows[review_pos][order]).take(pa.array(np.argsort(order)))
    s = fit.selection
    picked = Selection(*(getattr(s, name)[torch.as_tensor(review_pos)] for name in vars(s)))
    queue = selection_frame(keys, picked, fit.seed_label[review_pos], np.zeros(0, np.int64), fit.names)
    queue["role"] = "review"
    names = fit.names
    digest = hashlib.sha256("\n".join(queue.key).encode()).hexdigest()[:8]
    queue["candidates"] = [
        f"{names.get(int(p), p)}"
        + (f" (not: {', '.join(str(names.get(c, c)) for c in neg[:3])})" if neg else "")
        for p, neg in zip(queue.predicted, queue.negative_labels, strict=True)
    ]
    queue["predicted_name"] = queue.predicted.map(lambda p: names.get(int(p)))
    batch = Layout(fit.root).batch(f"{fit.config.run_name}-{digest}")
    return write_batch(fit.root, batch, queue, names, fit.config.thumbnail_size)


@dataclass
class PartDone:
    """One selected part: its file name, rows, role counts, positives per class name, whether a resumed
    run found it written, and the evaluation's columns (truth given)."""

    index: int
    name: str
    rows: int
    roles: dict[str, int]
    positives: dict[str, int]
    reused: bool
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def apply_parts(fit: SelectFit, indices: list[int]) -> list[PartDone]:
    """Write the selection parts of embeddings parts ``indices`` (temp, then rename) unless one written
    with the same fit is there (a resumed run; with a truth CSV parts are always recomputed, for the
    metrics). Pure in the parts: any process may run any subset."""
    fit.out.parts.mkdir(parents=True, exist_ok=True)
    starts = np.concatenate([[0], np.cumsum([rows for _, rows in fit.emb.parts])])
    scale, done = float(np.sqrt(fit.emb.meta["dim"])), []
    review = np.sort(fit.review)
    for i in indices:
        npy, rows = fit.emb.parts[i]
        path = fit.out.parts / selection_part_name(npy)
        table = None if fit.config.truth else _reusable(path, fit.digest, rows)
        reused, extras = table is not None, {}
        if table is None:
            x = torch.from_numpy(fit.emb.unit_part(i)).mul_(scale)
            selection, seed_label, extras = _part_selection(fit, i, x, int(starts[i]))
            here = review[(review >= starts[i]) & (review < starts[i] + rows)] - starts[i]
            frame = selection_frame(fit.emb.part_keys(i), selection, seed_label, here, fit.names)
            table = pa.Table.from_pandas(
                frame[SELECTION_SCHEMA.names], schema=SELECTION_SCHEMA, preserve_index=False
            )
            table = table.replace_schema_metadata({**table.schema.metadata, _STATE_KEY: fit.digest.encode()})
            atomic_write(path, lambda f, t=table: pq.write_table(t, f))
        roles = Counter(table.column("role").to_pylist())
        positives = Counter(
            name
            for name, role in zip(
                table.column("label_name").to_pylist(), table.column("role").to_pylist(), strict=True
            )
            if role == "positive"
        )
        done.append(PartDone(i, path.name, rows, dict(roles), dict(positives), reused, extras))
    return done


def _reusable(path: Path, digest: str, rows: int) -> pa.Table | None:
    """The role and label-name columns of the part at ``path`` when a run with the same fit wrote it."""
    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)
        if (meta.metadata or {}).get(_STATE_KEY) != digest.encode() or meta.num_rows != rows:
            return None
        return pq.read_table(path, columns=["role", "label_name"])
    except (OSError, pa.ArrowInvalid):
        return None


def commit_selection(fit: SelectFit, done: list[PartDone], seconds: float | None = None) -> dict:
    """Check that every part is selected, remove parts of other embeddings, evaluate (truth given),
    write ``summary.json`` and then ``selection.json`` (the commit); returns the summary."""
    ordered = parts_in_order(fit.parts, done, fit.out.parts, "select")
    roles: Counter = Counter()
    positives: Counter = Counter()
    for d in ordered:
        roles.update(d.roles)
        positives.update(d.positives)
    summary = dict(fit.summary)
    summary["roles"] = {role: int(roles.get(role, 0)) for role in ROLES}
    summary["per_class_positives"] = {name: int(positives[name]) for name in sorted(positives)}
    summary["parts_reused"] = sum(d.reused for d in ordered)
    summary["state_sha256"] = fit.digest
    if fit.config.truth:
        truth, evaluation = read_truth(fit.root, fit.config.truth), Evaluation(fit.classes)
        for d in ordered:
            evaluation.add(pq.read_table(fit.out.parts / d.name), truth, d.extras)
        summary["metrics"] = evaluation.metrics(fit.config.truth)
        summary["warnings"] = quality_warnings(summary["metrics"], fit.classes)
    if seconds is not None:
        summary["apply_seconds"] = round(seconds, 2)
    summary["seconds"] = round(summary["fit_seconds"] + (seconds or 0.0), 2)
    summary["selection"] = str(fit.out.commit)
    summary["config"] = fit.config.model_dump()
    atomic_write_bytes(fit.out.summary, json.dumps(summary, indent=1, default=str).encode())
    commit = {
        "schema_version": SELECTIONS_SCHEMA_VERSION,
        "state_sha256": fit.digest,
        "parts": [[d.name, d.rows] for d in ordered],
    }
    atomic_write_bytes(fit.out.commit, json.dumps(commit, indent=1).encode())  # the commit
    return summary


def select(root: str | Path, config: SelectConfig | None = None, log=None, device: str | None = None) -> dict:
    """Select pseudo-labels on ROOT's embeddings in this process: :func:`fit_selection`, then
    :func:`apply_parts` part by part and :func:`commit_selection` (``select_flow`` maps the parts over
    Prefect's task runner instead). Returns the summary (also in summary.json)."""
    fit = fit_selection(root, config, log, device)
    start, done, reused = time.perf_counter(), [], 0
    for i in fit.parts:
        done += apply_parts(fit, [i])
        reused += done[-1].reused
        if log:
            log({"selected_parts": i + 1, "of": len(fit.parts), "reused": reused})
    return commit_selection(fit, done, time.perf_counter() - start)
