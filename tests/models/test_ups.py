"""UPS selection rule and MC dropout (models/ups.py)."""

from __future__ import annotations

import pytest
import torch

from lakelabel.models.ups import DropoutClassifier, McStats, balance_classes, mc_dropout_stats, ups_select


def stats(mean, std, mean_neg=None, std_neg=None) -> McStats:
    mean, std = torch.tensor(mean), torch.tensor(std)
    return McStats(
        mean,
        std,
        torch.tensor(mean_neg) if mean_neg is not None else mean,
        torch.tensor(std_neg) if std_neg is not None else std,
    )


def test_selection_rule_every_branch() -> None:
    s = stats(
        mean=[
            [0.90, 0.08, 0.02],  # confident, certain → positive 0
            [0.90, 0.08, 0.02],  # confident, uncertain → not positive
            [0.50, 0.48, 0.02],  # not confident → not positive; class 2 is a certain negative
            [0.20, 0.75, 0.05],  # exactly at τp and τn → positive 1 (bounds inclusive)
        ],
        std=[[0.01, 0.01, 0.001], [0.20, 0.1, 0.001], [0.1, 0.1, 0.001], [0.01, 0.05, 0.001]],
        mean_neg=[[0.8, 0.15, 0.01], [0.8, 0.15, 0.01], [0.5, 0.46, 0.04], [0.2, 0.75, 0.05]],
        std_neg=[[0.01, 0.01, 0.001], [0.2, 0.1, 0.001], [0.1, 0.1, 0.004], [0.01, 0.05, 0.001]],
    )
    sel = ups_select(s, tau_p=0.75, kappa_p=0.05, tau_n=0.05, kappa_n=0.005)
    assert sel.positive.tolist() == [True, False, False, True]
    assert sel.label.tolist() == [0, 0, 0, 1]
    # negatives never on positive rows; row 1: class 2 certain & improbable; row 2: class 2 (std 0.004 ≤ κn)
    assert sel.negative.tolist() == [[False] * 3, [False, False, True], [False, False, True], [False] * 3]
    assert sel.uncertainty.tolist() == pytest.approx([0.01, 0.20, 0.1, 0.05])
    # a negative needs both: low probability AND low std
    strict = ups_select(s, tau_p=0.75, kappa_p=0.05, tau_n=0.05, kappa_n=0.003)
    assert strict.negative[2].tolist() == [False, False, False]


def test_class_balance_keeps_the_most_confident() -> None:
    label = torch.tensor([0, 0, 0, 1, 1, 2])
    score = torch.tensor([0.9, 0.99, 0.95, 0.8, 0.85, 0.7])
    out = balance_classes(torch.ones(6, dtype=torch.bool), label, score, 3)
    assert out.tolist() == [False, True, False, False, True, True]


def test_mc_dropout_is_stochastic_and_seeded() -> None:
    torch.manual_seed(0)
    model = DropoutClassifier(8, 3, hidden=16, dropout=0.5)
    x = torch.randn(50, 8)
    a = mc_dropout_stats(model, x, passes=6, seed=1)
    b = mc_dropout_stats(model, x, passes=6, seed=1)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert (a.std > 0).any()
    assert torch.allclose(a.mean.sum(1), torch.ones(50), atol=1e-5)
    # temperature 2 flattens: the negative-side max probability is lower
    assert (a.mean_neg.max(1).values <= a.mean.max(1).values + 1e-6).all()
    with pytest.raises(ValueError, match="passes must be"):
        mc_dropout_stats(model, x, passes=1)
    no_dropout = DropoutClassifier(8, 3, hidden=16, dropout=0.0)
    assert mc_dropout_stats(no_dropout, x, passes=3).std.abs().max() < 1e-6
