"""Properties of the Sinkhorn-Knopp equipartition (models/sinkhorn.py)."""

from __future__ import annotations

import threading

import numpy as np
import ot
import pytest
import torch

from lakelabel.models.sinkhorn import (
    balanced_labels,
    sinkhorn_assign,
    sinkhorn_knopp,
    tensor_chunks,
)


def _plan(scores: torch.Tensor, lam: float, log_scale: torch.Tensor) -> torch.Tensor:
    """The soft assignment rows ``softmax(λS + b)`` of a solve (each row sums to 1)."""
    return torch.softmax(scores.float() * float(lam) + log_scale, dim=1)


def log_probs(n: int, k: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen) * scale
    logits[:, 0] += 2.0  # a skewed problem: column 0 would take most rows without equipartition
    return torch.log_softmax(logits, dim=1)


def column_mass(scores: torch.Tensor, lam: float, result) -> torch.Tensor:
    return _plan(scores, lam, result.log_scale).sum(0)


@pytest.mark.parametrize("lam", [1.0, 10.0, 25.0])
def test_marginals_uniform(lam: float) -> None:
    scores = log_probs(3000, 12)
    result = sinkhorn_knopp(scores, lam, tol=1e-4)
    assert result.converged
    mass = column_mass(scores, lam, result)
    assert torch.allclose(mass, torch.full((12,), 3000 / 12), rtol=2e-4)
    # hard labels follow: no cluster starved, none holding everything
    labels, posterior = sinkhorn_assign(scores, lam, result.log_scale)
    counts = torch.bincount(labels, minlength=12)
    assert counts.min() > 0.5 * 3000 / 12 and counts.max() < 1.5 * 3000 / 12
    assert ((posterior > 0) & (posterior <= 1)).all()
    # without equipartition the skew shows: column 0 takes far more than its share
    assert torch.bincount(scores.argmax(1), minlength=12)[0] > 3 * 3000 / 12


def test_nonuniform_target() -> None:
    scores = log_probs(4000, 4, seed=1)
    target = torch.tensor([0.4, 0.3, 0.2, 0.1])
    result = sinkhorn_knopp(scores, 10.0, target=target, tol=1e-4)
    assert torch.allclose(column_mass(scores, 10.0, result) / 4000, target, rtol=2e-4)


def test_invariant_to_row_order() -> None:
    scores = log_probs(2000, 8, seed=2)
    perm = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    a = sinkhorn_knopp(scores, 10.0, tol=1e-5)
    b = sinkhorn_knopp(scores[perm], 10.0, tol=1e-5)
    assert abs(a.iterations - b.iterations) <= 2  # float sums in another order
    assert torch.allclose(a.log_scale, b.log_scale, atol=1e-4)
    labels_a, _ = sinkhorn_assign(scores, 10.0, a.log_scale)
    labels_b, _ = sinkhorn_assign(scores[perm], 10.0, b.log_scale)
    assert torch.equal(labels_a[perm], labels_b)


def test_agrees_with_pot() -> None:
    n, k, lam = 500, 6, 5.0
    scores = log_probs(n, k, seed=3).double()
    result = sinkhorn_knopp(scores, lam, tol=1e-6, max_iter=5000)
    ours = (_plan(scores, lam, result.log_scale) / n).double().numpy()
    pot = ot.sinkhorn(np.full(n, 1 / n), np.full(k, 1 / k), -scores.numpy(), 1 / lam, stopThr=1e-12)
    assert np.abs(ours - pot).max() < 1e-4 * pot.max()
    assert np.allclose(ours.sum(1), 1 / n, rtol=1e-5)


def test_chunked_equals_unchunked() -> None:
    scores = log_probs(2500, 10, seed=4)
    whole = sinkhorn_knopp(scores, 25.0, tol=1e-4, chunk_rows=10_000)
    cached = sinkhorn_knopp(scores, 25.0, tol=1e-4, chunk_rows=97)
    streamed = sinkhorn_knopp(tensor_chunks(scores, 333), 25.0, n_rows=2500, n_cols=10, tol=1e-4)
    labels, _ = sinkhorn_assign(scores, 25.0, whole.log_scale)
    for other in (cached, streamed):
        assert other.converged
        assert torch.allclose(other.log_scale, whole.log_scale, atol=1e-3)
        other_labels, _ = sinkhorn_assign(scores, 25.0, other.log_scale)
        assert (other_labels == labels).float().mean() > 0.999


@pytest.mark.parametrize("lam", [25.0, 1e3, 1e6])
def test_no_overflow_at_extreme_lambda(lam: float) -> None:
    scores = torch.randn(1000, 20, generator=torch.Generator().manual_seed(5)) * 5
    for cache in (True, False):
        result = sinkhorn_knopp(scores, lam, tol=1e-2, max_iter=300, cache_kernel=cache)
        assert torch.isfinite(result.log_scale).all()
        labels, posterior = sinkhorn_assign(scores, lam, result.log_scale)
        assert torch.isfinite(posterior).all()
        assert labels.min() >= 0 and labels.max() < 20
        # even where the exact solution is numerically out of reach, the labels spread over clusters
        assert torch.bincount(labels, minlength=20).min() > 0


def test_distributed_reduce_matches_single_process() -> None:
    """Two workers, each holding half of the rows, agree on the single-process solution."""
    scores = log_probs(3000, 7, seed=6)
    single = sinkhorn_knopp(scores, 10.0, tol=1e-5)
    halves = [scores[:1400], scores[1400:]]
    barrier = threading.Barrier(2)
    slots: list[torch.Tensor | None] = [None, None]
    results: list = [None, None]

    def all_reduce(rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total

        return reduce

    def worker(rank: int) -> None:
        part = halves[rank]
        results[rank] = sinkhorn_knopp(
            tensor_chunks(part, 500), 10.0, n_rows=part.shape[0], n_cols=7, tol=1e-5, reduce=all_reduce(rank)
        )

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        assert result.n_rows == 3000
        assert abs(result.iterations - single.iterations) <= 2
        assert torch.allclose(result.log_scale, single.log_scale, atol=1e-4)


def test_overrelaxation_needs_fewer_iterations() -> None:
    scores = log_probs(3000, 20, seed=7)
    plain = sinkhorn_knopp(scores, 25.0, tol=1e-4, overrelax=1.0)
    fast = sinkhorn_knopp(scores, 25.0, tol=1e-4)
    assert fast.converged and plain.converged
    assert fast.iterations < plain.iterations
    assert torch.allclose(fast.log_scale, plain.log_scale, atol=1e-2)


def test_overrelaxation_backs_off_when_plain_sinkhorn_is_already_fast() -> None:
    # cosine scores of random directions: plain Sinkhorn contracts fast, a fixed ω = 1.8 overshoots
    # and oscillates (13 iterations here before the step-reversal rule; plain takes 4)
    gen = torch.Generator().manual_seed(11)
    points = torch.nn.functional.normalize(torch.randn(20_000, 32, generator=gen), dim=1)
    centers = torch.nn.functional.normalize(torch.randn(100, 32, generator=gen), dim=1)
    scores = points @ centers.T
    plain = sinkhorn_knopp(scores, 10.0, tol=1e-3, overrelax=1.0)
    relaxed = sinkhorn_knopp(scores, 10.0, tol=1e-3)
    assert plain.converged and relaxed.converged
    assert relaxed.iterations <= plain.iterations + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": 0.0}, "lam must be a positive"),
        ({"lam": float("nan")}, "lam must be a positive"),
        ({"lam": 1.0, "tol": 0.0}, "tol must be > 0"),
        ({"lam": 1.0, "overrelax": 2.0}, "overrelax must be in"),
        ({"lam": 1.0, "target": torch.tensor([0.5, -0.1, 0.6])}, "target must be positive"),
        ({"lam": 1.0, "target": torch.tensor([0.5, 0.5])}, "target has 2 entries"),
    ],
)
def test_bad_inputs_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sinkhorn_knopp(torch.zeros(5, 3), **kwargs)
    with pytest.raises(ValueError, match="scores must be"):
        sinkhorn_knopp(torch.zeros(5), 1.0)


def test_balanced_labels_raise_lambda_until_hard_labels_balance() -> None:
    # diffuse rows with shared structure: soft marginals are exact at λ = 25, the argmax piles up
    a = torch.randn(4000, 1, generator=torch.Generator().manual_seed(8))
    scores = 0.05 * a * torch.linspace(-1, 1, 8)
    plain = sinkhorn_knopp(scores, 25.0, tol=1e-3)
    plain_counts = torch.bincount(sinkhorn_assign(scores, 25.0, plain.log_scale)[0], minlength=8)
    assert (plain_counts.double() / 500 - 1).abs().max() > 0.1
    solved = balanced_labels(scores, 25.0, balance=0.05, tol=1e-3)
    counts = torch.bincount(solved.labels, minlength=8)
    assert solved.imbalance <= 0.05 and (counts.double() / 500 - 1).abs().max() <= 0.05
    assert solved.result.lam > 25.0
    with pytest.raises(ValueError, match="balance must be"):
        balanced_labels(scores, 25.0, balance=0)


def test_threaded_passes_match_one_thread_and_repeat_exactly() -> None:
    scores = log_probs(20_000, 50, seed=12)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = sinkhorn_knopp(scores, 10.0, tol=1e-4, chunk_rows=256)
        torch.set_num_threads(2)
        threaded = [sinkhorn_knopp(scores, 10.0, tol=1e-4, chunk_rows=256) for _ in range(2)]
    finally:
        torch.set_num_threads(previous)
    assert threaded[0].iterations == single.iterations
    assert torch.allclose(threaded[0].log_scale, single.log_scale, atol=1e-5)
    assert torch.equal(threaded[0].log_scale, threaded[1].log_scale)  # fixed partition, fixed sum order
