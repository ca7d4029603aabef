from __future__ import annotations

import math

import ot
import pytest
import torch

from lakelabel.models import losses
from lakelabel.models.losses import negative_learning_loss, pseudo_label_loss


def _pair(seed=0, b=32, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def test_negative_cosine_range_and_stop_gradient():
    p, z = _pair()
    z.requires_grad_(True)
    p.requires_grad_(True)
    value = losses.negative_cosine(p, z)
    value.backward()
    assert -1 <= value.item() <= 1 and z.grad is None and p.grad is not None
    assert losses.negative_cosine(p, p).item() == pytest.approx(-1.0, abs=1e-6)


def test_nt_xent_symmetric_and_lower_for_aligned_views():
    z1, z2 = _pair()
    assert losses.nt_xent(z1, z2).item() == pytest.approx(losses.nt_xent(z2, z1).item(), rel=1e-6)
    assert losses.nt_xent(z1, z1 + 0.01 * z2).item() < losses.nt_xent(z1, z2).item()
    with pytest.raises(ValueError, match="temperature"):
        losses.nt_xent(z1, z2, temperature=0)


def test_barlow_twins_symmetric_and_zero_on_decorrelated_identical_views():
    z1, z2 = _pair(b=256, d=8)
    assert losses.barlow_twins(z1, z2).item() == pytest.approx(losses.barlow_twins(z2, z1).item(), rel=1e-5)
    q, _ = torch.linalg.qr(torch.randn(256, 8))  # orthogonal columns: correlation = identity
    assert losses.barlow_twins(q, q, lambd=1.0).item() < 0.1
    assert losses.barlow_twins(z1, z2).item() > 5


def test_sliced_wasserstein_properties_and_agreement_with_pot():
    x, y = _pair(b=64, d=8)
    g = torch.Generator().manual_seed(1)
    assert losses.sliced_wasserstein(x, x, generator=g).item() == pytest.approx(0.0, abs=1e-9)
    a = losses.sliced_wasserstein(x, y, 256, torch.Generator().manual_seed(3)).item()
    b = losses.sliced_wasserstein(y, x, 256, torch.Generator().manual_seed(3)).item()
    assert a == pytest.approx(b, rel=1e-5) and a > 0
    # POT's sliced distance (on the same normalised rows) is of the same size
    xn = torch.nn.functional.normalize(x, dim=-1).numpy()
    yn = torch.nn.functional.normalize(y, dim=-1).numpy()
    pot = ot.sliced_wasserstein_distance(xn, yn, n_projections=2000, seed=0) ** 2 * xn.shape[1]
    assert a == pytest.approx(pot, rel=0.25)
    xg = x.clone().requires_grad_(True)
    losses.sliced_wasserstein(xg, y).backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_unknown_backbone_and_method_list_valid_choices():
    from lakelabel.models.backbones import build_backbone
    from lakelabel.models.methods import build_method

    with pytest.raises(ValueError, match="valid: resnet18, resnet34, resnet50"):
        build_backbone("vit", small_images=True)
    with pytest.raises(ValueError, match="valid: simsiam, byol, barlow_twins, simclr"):
        build_method("moco", None, 1)


def test_wasserstein_similarity_is_a_symmetric_nonpositive_kernel_matching_pot():
    z = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    sim = losses.wasserstein_similarity(z)
    assert torch.allclose(sim, sim.T) and (sim <= 0).all() and torch.allclose(sim.diag(), torch.zeros(6))
    support = torch.arange(10, dtype=torch.float64) / 10
    a, b = torch.softmax(z[0].double(), 0).numpy(), torch.softmax(z[1].double(), 0).numpy()
    pot = ot.wasserstein_1d(support.numpy(), support.numpy(), a, b, p=1)
    assert -sim[0, 1].item() == pytest.approx(float(pot), rel=1e-4)
    z1, z2 = _pair()
    w = losses.nt_xent(z1, z2, 0.05, similarity="wasserstein")
    assert w.item() == pytest.approx(losses.nt_xent(z2, z1, 0.05, similarity="wasserstein").item(), rel=1e-5)


def test_negative_learning_loss_sign_and_value() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]))
    mask = torch.tensor([[False, True, True], [False, False, False]])
    loss = negative_learning_loss(logits, mask)
    expected = -(math.log(0.8) + math.log(0.9)) / 2  # only row 0 has negatives
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() > 0
    # pushing a ruled-out class's probability up raises the loss; gradient lowers it
    worse = negative_learning_loss(
        torch.log(torch.tensor([[0.1, 0.8, 0.1]])), torch.tensor([[False, True, False]])
    )
    assert worse.item() > loss.item()
    x = torch.zeros(1, 3, requires_grad=True)
    negative_learning_loss(x, torch.tensor([[False, True, False]])).backward()
    assert x.grad[0, 1] > 0  # descent lowers the logit of the ruled-out class
    assert negative_learning_loss(logits, torch.zeros_like(mask)).item() == 0.0


def test_pseudo_label_loss_is_weighted_ce_plus_negative_learning() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, generator=gen, requires_grad=True)
    label = torch.tensor([0, 2, -1, 1, -1, 3])
    negatives = torch.zeros(6, 4, dtype=torch.bool)
    negatives[2, 1] = negatives[4, [0, 3]] = True
    weight = torch.tensor([1.0, 0.5, 9.0, 2.0, 9.0, 0.0])
    has = label >= 0
    ce = torch.nn.functional.cross_entropy(logits[has], label[has], reduction="none")
    expected = (ce * weight[has]).sum() / weight[has].sum() + 0.5 * negative_learning_loss(logits, negatives)
    got = pseudo_label_loss(logits, label, negatives, weight, negative_weight=0.5)
    assert torch.allclose(got, expected)
    # no weights: plain mean cross-entropy; no negatives: cross-entropy only
    assert torch.allclose(pseudo_label_loss(logits, label, torch.zeros_like(negatives)), ce.mean())
    # neither labels nor negatives: zero, and still differentiable
    empty = pseudo_label_loss(logits, torch.full((6,), -1), torch.zeros_like(negatives))
    empty.backward()
    assert float(empty.detach()) == 0.0 and logits.grad is not None
