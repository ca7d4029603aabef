"""SeLa heads trained by alternating Sinkhorn labelling and cross-entropy (models/sela.py)."""

from __future__ import annotations

import torch

from lakelabel.models.sela import label_update_epochs, train_sela
from lakelabel.pipeline.metrics import hungarian_accuracy
from tests.models.test_kmeans import blobs


def test_schedule_spreads_updates() -> None:
    assert label_update_epochs(20, 4) == [4, 8, 12, 16]
    assert label_update_epochs(3, 10) == [1, 2, 3]
    assert label_update_epochs(0, 5) == [] and label_update_epochs(5, 0) == []


def test_heads_fix_noisy_initial_labels_and_stay_balanced() -> None:
    x, truth = blobs(150, 5, dim=12, spread=0.15, seed=1)
    gen = torch.Generator().manual_seed(0)
    init = torch.as_tensor(truth).repeat(2, 1).T.clone()
    noise = torch.rand(init.shape, generator=gen) < 0.4  # 40 % of initial labels wrong
    init[noise] = torch.randint(0, 5, (int(noise.sum()),), generator=gen)
    result = train_sela(torch.from_numpy(x), init, 5, epochs=12, label_updates=3, lr=0.5, batch_size=64)
    assert result.labels.shape == (750, 2) and result.posteriors.shape == (750, 2)
    for t in range(2):
        acc, _ = hungarian_accuracy(result.labels[:, t].numpy(), truth)
        init_acc, _ = hungarian_accuracy(init[:, t].numpy(), truth)
        assert acc > 0.95 > init_acc
        sizes = torch.bincount(result.labels[:, t], minlength=5)
        assert sizes.min() >= 0.8 * 150 and sizes.max() <= 1.2 * 150
    assert ((result.posteriors > 0) & (result.posteriors <= 1)).all()
    assert any("relabelled_fraction" in h for h in result.history)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]


def test_deterministic_under_seed() -> None:
    x, truth = blobs(40, 3, seed=2)
    init = torch.as_tensor(truth).unsqueeze(1)
    a = train_sela(torch.from_numpy(x), init, 3, epochs=3, label_updates=1, seed=7)
    b = train_sela(torch.from_numpy(x), init, 3, epochs=3, label_updates=1, seed=7)
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.posteriors, b.posteriors)
