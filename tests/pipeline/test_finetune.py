"""The shared end-to-end training loop of fine-tuning (select --finetune, SCAN's encoder update)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from lakelabel.pipeline.training import train_steps, training_record


def _batches():
    gen = torch.Generator().manual_seed(0)
    while True:
        yield {
            "image": torch.randn(8, 3, 8, 8, generator=gen) + 2,
            "label": torch.randint(0, 3, (8,), generator=gen),
        }


@pytest.mark.parametrize("keep", [False, True])
def test_train_steps_can_keep_the_norm_statistics(keep: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 3, 8, 8))
    norm = model[1]
    mean, weight = norm.running_mean.clone(), norm.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = []
    losses = train_steps(
        model,
        _batches(),
        5,
        optimizer,
        lambda logits, batch: nn.functional.cross_entropy(logits, batch["label"]),
        "fp32",
        torch.device("cpu"),
        log=seen.append,
        keep_norm_statistics=keep,
    )
    assert len(losses) == 5 and seen[-1]["step"] == 5
    assert torch.equal(norm.running_mean, mean) == keep  # stored statistics untouched only when kept
    assert not torch.equal(norm.weight.detach(), weight)  # its affine parameters train either way
    record = training_record("t", losses, 8, 2.0)
    assert record["t_steps"] == 5 and record["t_images"] == 40 and record["t_images_per_s"] == 20.0


def test_train_steps_says_when_the_stream_runs_dry() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="ended after 2 of 5 steps"):
        train_steps(
            model,
            itertools.islice(_batches(), 2),
            5,
            optimizer,
            lambda logits, batch: nn.functional.cross_entropy(logits, batch["label"]),
            "fp32",
            torch.device("cpu"),
        )
