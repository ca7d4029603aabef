"""Temperature scaling and the logistic-regression baseline (models/calibration.py)."""

from __future__ import annotations

import pytest
import torch

from lakelabel.models.calibration import (
    expected_calibration_error,
    fit_smoothed_temperature,
    fit_temperature,
    logistic_regression,
)
from tests.models.test_kmeans import blobs


def test_temperature_undoes_overconfidence_and_lowers_ece() -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = true_logits * 3  # a model 3× too sharp
    t = fit_temperature(overconfident, labels)
    assert 2.5 < t < 3.5
    before = expected_calibration_error(*_conf_correct(overconfident, labels))
    after = expected_calibration_error(*_conf_correct(overconfident / t, labels))
    assert after < 0.03 < before
    with pytest.raises(ValueError, match="as many labels"):
        fit_temperature(overconfident, labels[:10])


def _conf_correct(logits: torch.Tensor, labels: torch.Tensor):
    conf, pred = logits.softmax(1).max(1)
    return conf, pred == labels


def test_logistic_regression_separates_blobs_from_few_labels() -> None:
    x, truth = blobs(100, 4, dim=16, spread=0.15, seed=5)
    x, y = torch.from_numpy(x), torch.from_numpy(truth)
    few = torch.cat([torch.nonzero(y == c).squeeze(1)[:5] for c in range(4)])
    w, b = logistic_regression(x[few], y[few], 4, l2=0.1)
    assert w.shape == (16, 4) and b.shape == (4,)
    assert float(((x @ w + b).argmax(1) == y).float().mean()) > 0.9


def test_smoothed_temperature_calibrates_what_the_thresholds_read() -> None:
    """Labels drawn from the neighbour-smoothed MC-dropout mean of the true logits; the model's logits
    are 3× too sharp: the fitted T undoes it on the smoothed quantity."""
    gen = torch.Generator().manual_seed(1)
    rows, passes, classes, weight = 3000, 8, 4, 0.5
    true = torch.randn(rows, classes, generator=gen) * 2.5
    passes_logits = true + 0.5 * torch.randn(passes, rows, classes, generator=gen)
    near = torch.randint(0, rows, (rows, 5), generator=gen)

    def smoothed(logits: torch.Tensor, w: float) -> torch.Tensor:
        p = logits.softmax(-1).mean(0)
        return (1 - w) * p + w * p[near].mean(1)

    labels = torch.distributions.Categorical(probs=smoothed(passes_logits, weight)).sample()
    held = torch.arange(rows)
    t = fit_smoothed_temperature(passes_logits * 3, held, near, labels, weight)
    assert 2.4 < t < 3.6
    before = expected_calibration_error(*_smoothed_conf(smoothed(passes_logits * 3, weight), labels))
    after = expected_calibration_error(*_smoothed_conf(smoothed(passes_logits * 3 / t, weight), labels))
    assert after < 0.03 < before
    assert fit_smoothed_temperature(passes_logits, held, near, labels, 0.0) > 0  # no smoothing
    with pytest.raises(ValueError, match="as many labels"):
        fit_smoothed_temperature(passes_logits, held, near, labels[:10], weight)


def _smoothed_conf(probs: torch.Tensor, labels: torch.Tensor):
    conf, pred = probs.max(1)
    return conf, pred == labels


def test_ece() -> None:
    conf = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.6, 0.6])
    correct = torch.tensor([True, True, True, False, True, False])
    # bin 0.9: acc 0.75 vs 0.9 (weight 4/6); bin 0.6: acc 0.5 vs 0.6 (weight 2/6)
    assert expected_calibration_error(conf, correct) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.1)
