"""Contract of every registered selection rule (pipeline/selection): a new rule passes these by
adding its file and its registry entry (its settings are the ``select.<rule>`` block)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from lakelabel.models.ups import DropoutClassifier, mc_dropout_stats
from lakelabel.pipeline.config import SelectConfig
from lakelabel.pipeline.selection import RULES

C = 5


def stats():
    """MC-dropout statistics of a real dropout classifier trained briefly on separable data."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(C, 8, generator=gen) * 2
    y = torch.arange(400) % C
    x = centres[y] + torch.randn(400, 8, generator=gen) * torch.linspace(0.2, 3.0, 400).unsqueeze(1)
    torch.manual_seed(0)
    model = DropoutClassifier(8, C, 0, 0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return mc_dropout_stats(model, x, passes=10, neg_temperature=2.0, seed=0), y


@pytest.mark.parametrize("name", list(RULES))
def test_rule_contract(name: str) -> None:
    s, y = stats()
    rule = RULES[name](getattr(SelectConfig(), name))
    sel = rule.select(s)
    n = len(y)
    assert sel.positive.shape == (n,) and sel.positive.dtype == torch.bool
    assert sel.label.shape == (n,) and int(sel.label.min()) >= 0 and int(sel.label.max()) < C
    assert sel.negative.shape == (n, C) and sel.negative.dtype == torch.bool
    assert not sel.negative[sel.positive].any()  # no negative label on a positive row
    assert 0 < int(sel.positive.sum()) < n  # selects some, not all, of a mixed set
    # selected positives are more accurate than the rest (the rule ranks by confidence)
    correct = sel.label == y
    assert correct[sel.positive].float().mean() > correct[~sel.positive].float().mean()
    # deterministic
    again = rule.select(s)
    assert torch.equal(sel.positive, again.positive) and torch.equal(sel.negative, again.negative)


@pytest.mark.parametrize("name", list(RULES))
def test_rule_owns_a_validated_config_block(name: str) -> None:
    assert isinstance(getattr(SelectConfig(), name), RULES[name].Settings)
    with pytest.raises(ValidationError, match="not_a_setting"):
        SelectConfig(**{name: {"not_a_setting": 1}})
    with pytest.raises(TypeError, match=name):
        RULES[name](object())


def test_unknown_rule_and_keys_outside_their_block() -> None:
    with pytest.raises(ValidationError, match="valid: ups, confidence"):
        SelectConfig(method="magic")
    with pytest.raises(ValidationError, match="tau_p"):  # the flat layout of 0.1 is gone: select.ups.tau_p
        SelectConfig(tau_p=0.3)
