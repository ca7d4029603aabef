"""Clustering metrics against ground truth: Hungarian accuracy, NMI, ARI, per-cluster purity.

Definitions follow scikit-learn (NMI with the arithmetic mean of entropies; ARI of Hubert & Arabie
1985); accuracy maps clusters to classes one-to-one with the Hungarian algorithm (Kuhn 1955),
the usual "ACC" of deep clustering papers (SeLa, DeepCluster).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(table (n_clusters, n_classes), cluster ids, class ids)`` of two equal-length label vectors."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 1:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be 1-D of equal length")
    if pred.size == 0:
        raise ValueError("no labelled samples to evaluate")
    clusters, p = np.unique(pred, return_inverse=True)
    classes, t = np.unique(truth, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table, clusters, classes


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray) -> tuple[float, dict]:
    """Best one-to-one cluster→class accuracy and the mapping ``{cluster: class}`` behind it."""
    table, clusters, classes = contingency(pred, truth)
    rows, cols = linear_sum_assignment(-table)
    mapping = {clusters[r].item(): classes[c].item() for r, c in zip(rows, cols, strict=True)}
    return float(table[rows, cols].sum() / table.sum()), mapping


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pred: np.ndarray, truth: np.ndarray) -> float:
    """Normalised mutual information, arithmetic normalisation (1 = identical partitions)."""
    table, _, _ = contingency(pred, truth)
    n = table.sum()
    h_pred, h_truth = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_pred == 0 and h_truth == 0:
        return 1.0
    nz = table > 0
    outer = np.outer(table.sum(1), table.sum(0))
    mi = float((table[nz] / n * np.log(table[nz] * n / outer[nz])).sum())
    return max(0.0, mi / ((h_pred + h_truth) / 2)) if (h_pred + h_truth) > 0 else 0.0


def ari(pred: np.ndarray, truth: np.ndarray) -> float:
    """Adjusted Rand index (0 = chance, 1 = identical partitions)."""
    table, _, _ = contingency(pred, truth)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    n = table.sum()
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def cluster_report(pred: np.ndarray, truth: np.ndarray, class_names: dict | None = None) -> list[dict]:
    """Per cluster: size, majority class, purity (share of the majority class)."""
    table, clusters, classes = contingency(pred, truth)
    out = []
    for i, cluster in enumerate(clusters):
        row = table[i]
        majority = classes[row.argmax()].item()
        out.append(
            {
                "cluster": cluster.item(),
                "size": int(row.sum()),
                "majority": majority,
                "majority_name": (class_names or {}).get(majority),
                "purity": round(float(row.max() / row.sum()), 4),
            }
        )
    return out


def clustering_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    acc, _ = hungarian_accuracy(pred, truth)
    table, _, _ = contingency(pred, truth)
    return {
        "acc": round(acc, 4),
        "nmi": round(nmi(pred, truth), 4),
        "ari": round(ari(pred, truth), 4),
        "purity": round(float(table.max(1).sum() / table.sum()), 4),
        "n": int(table.sum()),
    }


#: Coverages at which precision–coverage curves are reported.
COVERAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def precision_coverage(correct: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Precision of the ``i + 1`` most confident predictions for every ``i`` (coverage ``(i + 1) / n``).

    ``correct``: (n,) bool, ``confidence``: (n,) float → (n,) float; ties keep input order."""
    order = np.argsort(-confidence, kind="stable")
    return np.cumsum(correct[order]) / np.arange(1, len(order) + 1)


def precision_at(curve: np.ndarray, coverage: float) -> float:
    """The curve's precision at ``coverage`` (at least one prediction)."""
    return float(curve[max(1, int(round(coverage * len(curve)))) - 1])


#: how far below the same-run logistic regression a selection may land before it is flagged: the
#: accuracy difference that a few hundred scored images cannot tell from noise
BASELINE_TOLERANCE = 0.01


def quality_warnings(metrics: dict, classes: int) -> list[str]:
    """Plain-language warnings when labels scored against ground truth are not worth training on:
    near chance, confidences far from accuracy (ECE), or below the same-run logistic regression."""
    out = []
    accuracy, ece = metrics.get("accuracy_full_coverage"), metrics.get("ece")
    chance = 1 / max(classes, 1)
    if accuracy is not None and accuracy < chance + 0.25 * (1 - chance):  # a quarter of the way from chance
        out.append(
            f"labels near chance: accuracy {accuracy:.2f} with {classes} classes (chance {chance:.2f})"
        )
    if ece is not None and ece > 0.15:
        out.append(
            f"confidences are off: expected calibration error {ece:.2f} (their stated confidence is not "
            "their accuracy)"
        )
    baseline = (metrics.get("baseline_logreg") or {}).get("accuracy_full_coverage")
    if accuracy is not None and baseline is not None and accuracy < baseline - BASELINE_TOLERANCE:
        out.append(
            f"below the same-run baseline: accuracy {accuracy:.2f} < logistic regression {baseline:.2f} "
            f"(by more than {BASELINE_TOLERANCE})"
        )
    return out
