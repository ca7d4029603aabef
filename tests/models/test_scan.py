"""SCAN on embeddings (models/scan.py): neighbour mining, the loss, heads and self-labelling."""

from __future__ import annotations

import numpy as np
import torch

from lakelabel.models.scan import mine_neighbours, scan_loss, train_scan
from lakelabel.pipeline.metrics import hungarian_accuracy
from tests.models.test_kmeans import blobs


def test_neighbours_exclude_self_and_come_from_the_same_blob() -> None:
    x, truth = blobs(60, 4, dim=16, spread=0.1, seed=3)
    nb = mine_neighbours(x, 5, pca_dims=8)
    assert nb.shape == (240, 5) and nb.dtype == np.int64
    assert not (nb == np.arange(240)[:, None]).any()
    assert (truth[nb] == truth[:, None]).mean() > 0.98


def test_loss_rewards_agreeing_confident_pairs_and_penalises_collapse() -> None:
    eye = torch.eye(4) * 10
    agree, _, entropy = scan_loss(eye, eye, entropy_weight=1.0)
    disagree, _, _ = scan_loss(eye, eye.roll(1, dims=0), entropy_weight=1.0)
    assert agree < disagree and abs(float(entropy) - np.log(4)) < 1e-3
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = 10
    total, consistency, entropy = scan_loss(collapsed, collapsed, entropy_weight=5.0)
    assert float(consistency) < 1e-2 and float(entropy) < 1e-2  # consistent but one cluster: no entropy bonus
    assert float(total) > float(agree) - 5.0 * np.log(4) + 4.0


def test_scan_recovers_blobs_and_is_deterministic() -> None:
    x, truth = blobs(150, 4, dim=32, spread=0.2, seed=4)
    nb = torch.from_numpy(mine_neighbours(x, 10))
    xs = torch.from_numpy(x) * np.sqrt(32)
    a = train_scan(xs, nb, 4, heads=3, epochs=30, self_label_epochs=3, batch_size=128, seed=1)
    b = train_scan(xs, nb, 4, heads=3, epochs=30, self_label_epochs=3, batch_size=128, seed=1)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.confidence, b.confidence)
    acc, _ = hungarian_accuracy(a.labels.numpy(), truth)
    assert acc > 0.95
    assert 0 <= a.head < 3 and ((a.confidence > 0) & (a.confidence <= 1)).all()
    assert any("scan_loss" in h for h in a.history)
