"""UPS selection stage: pseudo-labels with MC-dropout uncertainty, negative labels and a review queue.

Writes ``ROOT/selections/<run>/``: ``selection.parquet`` (one row per embedded image, written last
as the commit), ``summary.json`` (rounds, thresholds, metrics when a truth CSV is given, the seed
labels' sources); the review queue is a batch under ``ROOT/batches`` (``data_specs/batches.md``),
chosen by a review rule (``pipeline/review``). Its answered rows come back as seed labels on the next
select (``reviewed_batches``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from lakelabel.data_specs.batches import list_batches, read_classes
from lakelabel.data_specs.clusters import label_columns, methods_in, read_assignments, read_cluster_info
from lakelabel.data_specs.embeddings import find_embeddings, read_embeddings
from lakelabel.data_specs.labels import ROLES
from lakelabel.data_specs.layout import Layout
from lakelabel.data_specs.selections import SELECTION_SCHEMA
from lakelabel.models.calibration import (
    expected_calibration_error,
    fit_smoothed_temperature,
    fit_temperature,
    logistic_regression,
)
from lakelabel.models.losses import negative_learning_loss
from lakelabel.models.scan import mine_neighbours
from lakelabel.models.ups import (
    DropoutClassifier,
    McStats,
    Selection,
    TrainingLabels,
    mc_dropout_stats,
    smooth_over_neighbours,
)
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes
from lakelabel.pipeline.checks import check_choice
from lakelabel.pipeline.clustering import METHODS as CLUSTERING_METHODS
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.devices import compute_device, cpu_threads
from lakelabel.pipeline.finetune import finetune_round, load_finetune_encoder
from lakelabel.pipeline.inputs import input_file, manifest_of
from lakelabel.pipeline.metrics import (
    COVERAGES,
    hungarian_accuracy,
    precision_at,
    precision_coverage,
    quality_warnings,
)
from lakelabel.pipeline.review import REVIEW_RULES, ReviewInputs
from lakelabel.pipeline.review.batch import write_batch
from lakelabel.pipeline.selection import RULES
from lakelabel.pipeline.truth import attach_keys, read_label_csv, seeds_with_sources


#: ``selection.parquet``: the label table's per-image columns (data_specs/labels.py) plus ``predicted``.
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


def name_clusters(
    clusters: np.ndarray, classes: np.ndarray, k: int, method: str = "hungarian"
) -> tuple[dict, list]:
    """Map cluster ids to class ids from seed-labelled samples; returns ``(mapping, unclaimed clusters)``."""
    if method == "hungarian":
        _, mapping = hungarian_accuracy(clusters, classes)
    else:
        mapping = {}
        for c in np.unique(clusters):
            values, counts = np.unique(classes[clusters == c], return_counts=True)
            mapping[int(c)] = int(values[counts.argmax()])
    unclaimed = sorted(set(range(k)) - set(mapping))
    return {int(a): int(b) for a, b in mapping.items()}, unclaimed


def train_classifier(
    x: torch.Tensor, labels: TrainingLabels, classes: int, config: SelectConfig, seed: int
) -> DropoutClassifier:
    """A fresh classifier on rows of ``x``: positives (cross-entropy), negatives (negative learning);
    trained where ``x`` lives (a GPU when select found one)."""
    if x.device.type != "cpu":
        return _train_classifier(x, labels, classes, config, seed)
    with cpu_threads(1):  # batches of 256 rows: threads only add synchronisation
        return _train_classifier(x, labels, classes, config, seed)


def _train_classifier(
    x: torch.Tensor, labels: TrainingLabels, classes: int, config: SelectConfig, seed: int
) -> DropoutClassifier:
    device = x.device
    pos_idx, pos_labels, neg_idx, neg_mask = (
        t.to(device) for t in (labels.pos_idx, labels.pos_labels, labels.neg_idx, labels.neg_mask)
    )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DropoutClassifier(x.shape[1], classes, config.hidden, config.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_pos, n_neg = len(pos_idx), len(neg_idx)
    steps = max(-(-(n_pos + n_neg) // config.batch_size), -(-config.min_steps // config.epochs))
    pos_batch = max(1, round(config.batch_size * n_pos / max(n_pos + n_neg, 1)))
    neg_batch = config.batch_size - pos_batch
    model.train()
    for _ in range(config.epochs):
        for _ in range(steps):
            loss = torch.zeros((), device=device)
            if n_pos:
                i = torch.randint(0, n_pos, (pos_batch,), generator=gen).to(device)
                loss = loss + F.cross_entropy(model(x[pos_idx[i]]), pos_labels[i])
            if n_neg and neg_batch:
                j = torch.randint(0, n_neg, (neg_batch,), generator=gen).to(device)
                loss = loss + negative_learning_loss(model(x[neg_idx[j]]), neg_mask[j])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def _without_rows(labels: TrainingLabels, rows: torch.Tensor) -> TrainingLabels:
    keep_pos = ~torch.isin(labels.pos_idx, rows)
    keep_neg = ~torch.isin(labels.neg_idx, rows)
    return TrainingLabels(
        labels.pos_idx[keep_pos],
        labels.pos_labels[keep_pos],
        labels.neg_idx[keep_neg],
        labels.neg_mask[keep_neg],
    )


def calibration_temperature(
    x: torch.Tensor,
    labels: TrainingLabels,
    rows: torch.Tensor,
    targets: torch.Tensor,
    classes: int,
    config: SelectConfig,
    seed: int,
) -> float:
    """Temperature of a round's classifier from cluster labels (no seeds): out-of-fold logits on a
    sample of labelled ``rows`` (their ``targets``) from classifiers trained without each fold; 5 folds
    up to 5,000 rows, else one held-out fifth."""
    folds = torch.tensor_split(torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)), 5)
    logits, truth = [], []
    for fold in folds if len(rows) <= 5000 else folds[:1]:
        model = train_classifier(x, _without_rows(labels, rows[fold]), classes, config, seed)
        with torch.no_grad():
            logits.append(model(x[rows[fold].to(x.device)]).cpu())
        truth.append(targets[fold])
    return fit_temperature(torch.cat(logits), torch.cat(truth))


def next_labels(
    selection: Selection,
    seed_rows: torch.Tensor,
    seed_labels: torch.Tensor,
    held_out: torch.Tensor | None = None,
) -> TrainingLabels:
    """The next round's training labels: the selected positives and negative labels off the seed
    rows (and off ``held_out`` rows), plus the seed rows with their human labels (always kept)."""
    free = ~seed_rows if held_out is None else ~(seed_rows | held_out)
    positive = selection.positive & free
    neg_idx = torch.nonzero(selection.negative.any(1) & free).squeeze(1)
    seeds = torch.nonzero(seed_rows).squeeze(1)
    return TrainingLabels(
        torch.cat([torch.nonzero(positive).squeeze(1), seeds]),
        torch.cat([selection.label[positive], seed_labels[seeds]]),
        neg_idx,
        selection.negative[neg_idx],
    )


@dataclass
class CrossFit:
    """Leak-free calibration on seed labels across rounds. Each fold of the seeds is held out of a
    chain of rounds of its own (its classifiers, and every pseudo-label that chain selects, never saw
    it); each round's temperature is fitted on the held-out folds' neighbour-smoothed MC-dropout
    probabilities, the quantity the thresholds read. Per-round out-of-fold logits instead leaked: after
    round 0 the held-out seeds' neighbours carried pseudo-labels their own seed had shaped (CIFAR-10
    seed-250: T 1.69 against 2.45 leak-free, ECE 0.064). 5 folds up to 5,000 seeds, else one fifth."""

    rows: torch.Tensor  # (S,) seed rows
    targets: torch.Tensor  # (S,) their classes
    folds: list[torch.Tensor]  # indices into rows
    chains: list[TrainingLabels]
    held_out: list[torch.Tensor]  # (N,) bool: its fold, never a label of its chain

    @classmethod
    def start(cls, rows: torch.Tensor, targets: torch.Tensor, n: int, classes: int, seed: int) -> CrossFit:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        folds = list(torch.tensor_split(order, 5))[: 5 if len(rows) <= 5000 else 1]
        chains, held_out = [], []
        for fold in folds:
            keep = torch.ones(len(rows), dtype=torch.bool)
            keep[fold] = False
            chains.append(TrainingLabels.positives_only(rows[keep], targets[keep], classes))
            held_out.append(torch.zeros(n, dtype=torch.bool).index_fill_(0, rows[fold], True))
        return cls(rows, targets, folds, chains, held_out)

    def round(
        self,
        x: torch.Tensor,
        neighbours: torch.Tensor,
        rule,
        seed_labels: torch.Tensor,
        classes: int,
        config: SelectConfig,
        seed: int,
    ) -> float:
        """Train each chain's classifier, fit the round's temperature on the held-out folds, then
        advance each chain with its own selection; returns the temperature."""
        models = [train_classifier(x, chain, classes, config, seed) for chain in self.chains]
        weight = config.neighbour_smoothing
        logits, own, near, offset = [], [], [], 0
        for model, fold in zip(models, self.folds, strict=True):
            held = self.rows[fold]
            around = neighbours[held] if weight else held.unsqueeze(1)
            need, index = torch.unique(torch.cat([held, around.reshape(-1)]), return_inverse=True)
            model.train()  # MC dropout, as the thresholds see it
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                xs = x[need.to(x.device)]
                logits.append(torch.stack([model(xs) for _ in range(config.passes)]).float().cpu())
            model.eval()
            own.append(index[: len(held)] + offset)
            near.append(index[len(held) :].reshape(around.shape) + offset)
            offset += len(need)
        temperature = fit_smoothed_temperature(
            torch.cat(logits, 1),
            torch.cat(own),
            torch.cat(near),
            torch.cat([self.targets[fold] for fold in self.folds]),
            weight,
        )
        for i, (model, held_out) in enumerate(zip(models, self.held_out, strict=True)):
            model.temperature = temperature
            selection = rule.select(_mc_stats(model, x, neighbours, config, seed))
            # the chain trains on every seed but its fold (seed_labels is −1 off the seed rows)
            self.chains[i] = next_labels(selection, (seed_labels >= 0) & ~held_out, seed_labels, held_out)
        return temperature


def logreg_baseline(x: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Class probabilities ``(N, C)`` of an L2 logistic regression on the labelled ``rows`` (the same-run
    baseline; ``l2`` = dim is scikit-learn's default ``C = 1`` on unit-norm rows, here scaled by √dim)."""
    w, b = logistic_regression(x[rows], targets, classes, l2=float(x.shape[1]))
    return torch.softmax(x @ w + b, dim=1)


def select(root: str | Path, config: SelectConfig | None = None, log=None, device: str | None = None) -> dict:
    """Run R rounds of selection on ROOT's embeddings; returns the summary (also in summary.json).

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
    # unit-norm rows scaled by sqrt(dim): coordinates of order 1 for the classifier
    unit_rows = emb.matrix(np.float32)
    x = torch.from_numpy(unit_rows) * float(np.sqrt(emb.meta["dim"]))
    n = emb.n
    seeds, seed_sources = seeds_with_sources(root, config.seed_labels, config.reviewed_batches)
    seed_index = pd.Series(np.arange(n), index=emb.keys).reindex(seeds.key)
    seeds = seeds[seed_index.notna().to_numpy()].assign(row=seed_index.dropna().astype(int).to_numpy())
    summary: dict = {"labels_from": config.labels_from, "method": config.method, "images": n}

    if config.labels_from == "clusters":
        assignments = read_assignments(root, config.cluster_run)
        table = assignments.to_pandas()
        column = config.cluster_column
        if column == "auto":
            column = auto_column(assignments)
        check_choice("cluster_column", column, label_columns(assignments))
        summary["cluster_column"] = column
        cluster_of = table.set_index("key")[column].reindex(emb.keys)
        if cluster_of.isna().any():
            raise ValueError(
                f"{int(cluster_of.isna().sum())} embedded images have no cluster in run "
                f"{config.cluster_run!r}: "
                "re-run `lakelabel cluster`"
            )
        initial = torch.as_tensor(cluster_of.to_numpy().astype(np.int64))
        classes = int(summary.setdefault("classes", clusters.k))  # (the run's k, not the largest label)
        pos_idx, pos_labels = torch.arange(n), initial
        names = {c: f"cluster_{c}" for c in range(classes)}
        if len(seeds):  # seed labels name the clusters; they do not train in this mode
            mapping, unclaimed = name_clusters(
                initial.numpy()[seeds.row.to_numpy()], seeds.label.to_numpy(), classes, config.naming
            )
            class_names = dict(zip(seeds.label, seeds.label_name, strict=False))
            names.update({c: str(class_names[cls]) for c, cls in mapping.items()})
            summary["cluster_names"] = {f"cluster_{c}": names[c] for c in range(classes)}
            summary["unclaimed_clusters"] = unclaimed
        seed_rows = torch.zeros(n, dtype=torch.bool)
    else:
        classes = int(seeds.label.max()) + 1 if len(seeds) else 0
        summary["classes"] = classes
        if len(seeds) < 2:
            raise ValueError("fewer than 2 seed labels match embedded images: check the CSV paths/keys")
        pos_idx = torch.as_tensor(seeds.row.to_numpy().copy())
        pos_labels = torch.as_tensor(seeds.label.to_numpy().astype(np.int64))
        names = {int(c): str(nm) for c, nm in zip(seeds.label, seeds.label_name, strict=False)}
        for batch in list_batches(root):  # classes a person may name that no seed has yet (review page)
            for c, name in read_classes(batch).items():
                names.setdefault(c, name)
        names.update({c: str(c) for c in range(classes) if c not in names})
        seed_rows = torch.zeros(n, dtype=torch.bool)
        seed_rows[pos_idx] = True
    summary["seed_labels_used"] = int(len(seeds))
    summary["seed_sources"] = seed_sources
    labels = TrainingLabels.positives_only(pos_idx, pos_labels, classes)
    # calibration rows without seeds: a sample of the cluster labels (seeds cross-fit, see CrossFit)
    calib_rows, calib_targets = pos_idx, pos_labels
    if config.labels_from == "clusters" and n > 25_000:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:25_000]
        calib_rows, calib_targets = pos_idx[pick], pos_labels[pick]
    baseline = None
    if len(seeds) >= 2:
        seed_rows_idx = torch.as_tensor(seeds.row.to_numpy().copy())
        seed_classes = torch.as_tensor(seeds.label.to_numpy().astype(np.int64))
        baseline = logreg_baseline(x, seed_rows_idx, seed_classes, int(seed_classes.max()) + 1)

    neighbours = torch.empty(0, dtype=torch.long)
    if config.neighbour_smoothing > 0:
        neighbours = torch.from_numpy(mine_neighbours(unit_rows, min(config.neighbours, n - 1)))
    rounds = []
    rule = RULES[config.method](getattr(config, config.method))
    seed_labels = _seed_label_vector(seeds, n)
    cross_fit = None
    if config.calibrate and config.labels_from == "seed" and not config.finetune:
        cross_fit = CrossFit.start(pos_idx, pos_labels, n, classes, config.seed)
    selection: Selection | None = None
    encoder = load_finetune_encoder(root, emb, config) if config.finetune else None
    if encoder is None:
        x = x.to(compute_device(device))  # the heads train and run where the GPU is (if any)
    for r in range(config.rounds):
        tuned: dict = {}
        if encoder is not None:  # full fine-tuning: encoder + head on the shards, then re-embed
            result = finetune_round(
                root,
                emb,
                encoder,
                labels,
                classes,
                config,
                config.seed + r,
                device,
            )
            model, x, tuned = result.head, result.features, result.record
        else:
            model = train_classifier(x, labels, classes, config, config.seed + r)
            if cross_fit is not None:
                temperature = cross_fit.round(
                    x, neighbours, rule, seed_labels, classes, config, config.seed + r
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
        stats = _mc_stats(model, x, neighbours, config, config.seed + r)
        selection = rule.select(stats)
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
        labels = next_labels(selection, seed_rows, seed_labels)
    assert selection is not None
    inputs = ReviewInputs(
        probs=stats.mean.numpy(),
        uncertainty=selection.uncertainty.numpy(),
        predicted=selection.label.numpy(),
        eligible=~(selection.positive | seed_rows).numpy(),
        rows=unit_rows,
    )
    review_rows = REVIEW_RULES[config.review](getattr(config, config.review)).pick(
        inputs, config.review_budget, config.seed
    )
    final = _final_table(emb, selection, seed_rows, seed_labels, names, review_rows)
    summary["rounds"] = rounds
    summary["roles"] = final.role.value_counts().reindex(ROLES, fill_value=0).astype(int).to_dict()
    summary["per_class_positives"] = (
        final[final.role == "positive"].label_name.value_counts().sort_index().astype(int).to_dict()
    )
    summary["thresholds"] = {
        config.method: rule.settings.model_dump(),
        **{k: getattr(config, k) for k in ("neg_temperature", "passes", "rounds", "finetune")},
    }
    summary["encoder"] = emb.meta["encoder"]
    summary["encoder_sha256"] = emb.meta["encoder_sha256"]
    summary["embeddings"] = str(emb.directory)
    if config.truth:
        uncalibrated = None
        if getattr(model, "temperature", 1.0) != 1.0:
            temperature, model.temperature = model.temperature, 1.0
            raw = _mc_stats(model, x, neighbours, config, config.seed + r)
            uncalibrated, model.temperature = raw.mean.max(dim=1).values, temperature
        summary["metrics"] = evaluate_selection(
            root, config.truth, final, selection, seed_rows, stats, uncalibrated, baseline
        )
        summary["warnings"] = quality_warnings(summary["metrics"], classes)
    out = Layout(root).selections(config.run_name)
    out.dir.mkdir(parents=True, exist_ok=True)
    out.selection.unlink(missing_ok=True)
    summary["review"] = export_review(root, final, review_rows, names, config)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["selection"] = str(out.selection)
    summary["config"] = config.model_dump()
    atomic_write_bytes(out.summary, json.dumps(summary, indent=1, default=str).encode())
    table = pa.Table.from_pandas(final[SELECTION_SCHEMA.names], schema=SELECTION_SCHEMA, preserve_index=False)
    atomic_write(out.selection, lambda f: pq.write_table(table, f))
    return summary


def _mc_stats(model, x: torch.Tensor, neighbours: torch.Tensor, config: SelectConfig, seed: int) -> McStats:
    """MC-dropout statistics of ``model`` over ``x`` (on its device), on the CPU, neighbour-smoothed."""
    stats = mc_dropout_stats(model.to(x.device), x, config.passes, config.neg_temperature, seed=seed)
    stats = McStats(stats.mean.cpu(), stats.std.cpu(), stats.mean_neg.cpu(), stats.std_neg.cpu())
    return smooth_over_neighbours(stats, neighbours, config.neighbour_smoothing)


def _seed_label_vector(seeds: pd.DataFrame, n: int) -> torch.Tensor:
    out = torch.full((n,), -1, dtype=torch.long)
    if len(seeds):
        out[torch.as_tensor(seeds.row.to_numpy().copy())] = torch.as_tensor(
            seeds.label.to_numpy().astype(np.int64)
        )
    return out


def _final_table(
    emb, selection: Selection, seed_rows, seed_labels, names: dict, review_rows: np.ndarray
) -> pd.DataFrame:
    n = emb.n
    positive = (selection.positive | seed_rows).numpy()
    predicted = selection.label.numpy()
    label = np.where(seed_rows.numpy(), seed_labels.numpy(), predicted)
    negatives = selection.negative.clone()
    negatives[seed_rows] = False
    has_negative = negatives.any(1).numpy()
    role = np.full(n, "unlabeled", dtype=object)
    role[has_negative & ~positive] = "negative_only"
    role[positive] = "positive"
    role[review_rows] = "review"  # (the review rule picks neither seeds nor positives)
    conf = np.where(seed_rows.numpy(), 1.0, selection.confidence.numpy()).astype(np.float32)
    unc = np.where(seed_rows.numpy(), 0.0, selection.uncertainty.numpy()).astype(np.float32)
    out_label = np.where(role == "positive", label, -1)
    return pd.DataFrame(
        {
            "key": emb.keys,
            "shard": emb.shards,
            "label": pd.array([int(v) if v >= 0 else None for v in out_label], dtype="Int32"),
            "label_name": [names.get(int(v)) if v >= 0 else None for v in out_label],
            "predicted": predicted.astype(np.int32),
            "role": role,
            "is_seed": seed_rows.numpy(),
            "confidence": conf,
            "uncertainty": unc,
            "negative_labels": [np.nonzero(row)[0].astype(np.int32).tolist() for row in negatives.numpy()],
        }
    )


def export_review(
    root: Path, final: pd.DataFrame, review_rows: np.ndarray, names: dict, config: SelectConfig
) -> dict:
    """The review queue as a batch ``ROOT/batches/<run>-<sha8 of its keys>`` (``batches.md``), most
    useful first; an unchanged queue keeps its batch, and the answers in it."""
    if not len(review_rows):
        return {"batch": None, "csv": None, "rows": 0}
    queue = final.iloc[review_rows].copy()
    digest = hashlib.sha256("\n".join(queue.key).encode()).hexdigest()[:8]
    queue["candidates"] = [
        f"{names.get(int(p), p)}"
        + (f" (not: {', '.join(str(names.get(c, c)) for c in neg[:3])})" if neg else "")
        for p, neg in zip(queue.predicted, queue.negative_labels, strict=True)
    ]
    queue["predicted_name"] = queue.predicted.map(lambda p: names.get(int(p)))
    batch = Layout(root).batch(f"{config.run_name}-{digest}")
    return write_batch(root, batch, queue, names, config.thumbnail_size)


def evaluate_selection(
    root,
    truth_csv,
    final: pd.DataFrame,
    selection: Selection,
    seed_rows,
    stats,
    uncalibrated: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
) -> dict:
    """Precision/coverage of positives (UPS and confidence-only at equal coverage), negative accuracy,
    the precision–coverage curve of confidence ranking and the ECE (before and after calibration), on
    non-seed images with truth; with ``baseline`` probabilities ``(N, C)`` (logistic regression on the
    seed labels), the same measures for it. Undefined measures (no positives, no negatives) are None."""
    truth = attach_keys(root, read_label_csv(truth_csv)).drop_duplicates("key").set_index("key").label
    y = final.key.map(truth)
    has = y.notna().to_numpy() & ~seed_rows.numpy()
    if not has.any():
        raise ValueError(f"no selected image has ground truth in {str(truth_csv)!r}")
    y = y.to_numpy()[has].astype(int)
    pred = selection.label.numpy()[has]
    _, mapping = hungarian_accuracy(pred, y)  # cluster ids → classes (identity-like for seed classes)
    mapped = np.array([mapping.get(int(p), -1) for p in pred])
    correct = mapped == y
    conf = selection.confidence.numpy()[has]
    pos = selection.positive.numpy()[has]
    n_pos = int(pos.sum())
    neg = selection.negative.numpy()[has]
    inv = {v: k for k, v in mapping.items()}
    true_col = np.array([inv.get(int(t), -1) for t in y])
    neg_wrong = int(neg[np.arange(len(y)), np.clip(true_col, 0, None)][true_col >= 0].sum())
    precision = precision_coverage(correct, conf)
    curve = [{"coverage": cov, "precision": round(precision_at(precision, cov), 4)} for cov in COVERAGES]
    n_neg = int(neg.sum())
    extra: dict = {}
    if uncalibrated is not None:
        extra["ece_uncalibrated"] = round(
            expected_calibration_error(uncalibrated[torch.as_tensor(has)], torch.as_tensor(correct)), 4
        )
    if baseline is not None:
        b_conf, b_pred = baseline[torch.as_tensor(has)].max(dim=1)
        _, b_map = hungarian_accuracy(b_pred.numpy(), y)
        b_correct = np.array([b_map.get(int(p), -1) for p in b_pred.numpy()]) == y
        b_curve = precision_coverage(b_correct, b_conf.numpy())
        extra["baseline_logreg"] = {
            "accuracy_full_coverage": round(float(b_correct.mean()), 4),
            "precision_at_50pct_coverage": round(precision_at(b_curve, 0.5), 4),
            "ece": round(expected_calibration_error(b_conf, torch.as_tensor(b_correct)), 4),
        }
    return {
        "evaluated": int(has.sum()),
        "accuracy_full_coverage": round(float(correct.mean()), 4),
        "positives": n_pos,
        "coverage": round(n_pos / len(y), 4),
        "precision": round(float(correct[pos].mean()), 4) if n_pos else None,
        # the n_pos most confident images: confidence-only selection at UPS's coverage
        "confidence_only_precision_at_equal_coverage": round(float(precision[n_pos - 1]), 4)
        if n_pos
        else None,
        "negative_labels": n_neg,
        "negative_accuracy": round(1 - neg_wrong / n_neg, 4) if n_neg else None,
        "ece": round(expected_calibration_error(torch.as_tensor(conf), torch.as_tensor(correct)), 4),
        "precision_coverage_curve": curve,
        "precision_at_50pct_coverage": round(precision_at(precision, 0.5), 4),
        "mapping": {int(k): int(v) for k, v in mapping.items()},
        **extra,
    }
