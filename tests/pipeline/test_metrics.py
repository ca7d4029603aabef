"""Clustering metrics on hand-made label pairs (values worked out by hand / scikit-learn's docs)."""

from __future__ import annotations

import numpy as np
import pytest

from lakelabel.pipeline.metrics import (
    ari,
    cluster_report,
    clustering_scores,
    hungarian_accuracy,
    nmi,
    precision_at,
    precision_coverage,
)


def test_identical_up_to_renaming() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([5, 5, 3, 3, 9, 9])
    acc, mapping = hungarian_accuracy(pred, truth)
    assert acc == 1.0 and mapping == {3: 1, 5: 0, 9: 2}
    assert nmi(pred, truth) == pytest.approx(1.0)
    assert ari(pred, truth) == pytest.approx(1.0)


def test_split_class() -> None:
    truth, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])
    # H(truth) = ln 2, H(pred) = 1.5 ln 2, MI = ln 2 → NMI = ln2 / (1.25 ln 2) = 0.8
    assert nmi(pred, truth) == pytest.approx(0.8)
    assert ari(pred, truth) == pytest.approx(0.5714285714)  # scikit-learn's documented example
    assert hungarian_accuracy(pred, truth)[0] == pytest.approx(0.75)


def test_chance_and_worse_than_chance() -> None:
    assert ari(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(-0.5)
    assert nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    assert ari(np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3])) == pytest.approx(0.0)


def test_cluster_report_and_scores() -> None:
    pred = np.array([0, 0, 0, 1, 1, 1, 1])
    truth = np.array([2, 2, 1, 1, 1, 1, 2])
    report = cluster_report(pred, truth, {1: "car", 2: "truck"})
    assert report == [
        {"cluster": 0, "size": 3, "majority": 2, "majority_name": "truck", "purity": 0.6667},
        {"cluster": 1, "size": 4, "majority": 1, "majority_name": "car", "purity": 0.75},
    ]
    scores = clustering_scores(pred, truth)
    assert scores["acc"] == pytest.approx(5 / 7, abs=1e-4) and scores["purity"] == pytest.approx(
        5 / 7, abs=1e-4
    )


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        nmi(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="no labelled samples"):
        ari(np.array([]), np.array([]))


def test_precision_coverage_ranks_by_confidence() -> None:
    correct = np.array([False, True, True, False])
    confidence = np.array([0.2, 0.9, 0.9, 0.5])  # ranked 1, 2 (tie: input order), 3, 0
    curve = precision_coverage(correct, confidence)
    assert curve.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    assert precision_at(curve, 0.5) == 1.0 and precision_at(curve, 1.0) == 0.5
    assert precision_at(curve, 0.01) == 1.0  # at least one prediction
