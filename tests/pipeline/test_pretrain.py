from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lakelabel.data_specs.manifest import read_manifest
from lakelabel.pipeline.config import IngestConfig, PretrainConfig
from lakelabel.pipeline.encoders import CheckpointError
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.pretrain import Pretrainer, pretrain
from tests.lakes import make_plain_lake
from tests.roots import copy_root


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """One ingest of a 96-image lake for the module (shards and manifest, no checkpoints)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    lake, root = tmp / "lake", tmp / "root"
    make_plain_lake(lake, 96, size=(20, 20))
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=30))
    return root


@pytest.fixture
def shard_root(ingested, tmp_path) -> Path:
    """The module's ingest in this test's own folder: its checkpoints go when the test passes."""
    return copy_root(ingested, tmp_path / "root")


def _config(**over) -> PretrainConfig:
    base = dict(
        batch_size=8, image_size=16, epochs=2, workers=0, shuffle_buffer=16, checkpoint_every=2, seed=3
    )
    base.update(over)
    return PretrainConfig(**base)


RESUME_CASES = [
    ("simsiam", "default", 2),
    ("simclr", "default", 1),  # with augment="loader" below: torchvision views in the loader worker
    ("simsiam", "default", 0),
    ("simsiam", "wasserstein", 0),
    ("byol", "default", 0),
    ("byol", "wasserstein", 0),
    ("barlow_twins", "default", 0),
    ("simclr", "default", 0),
    ("simclr", "wasserstein", 0),
]


@pytest.mark.parametrize(("method", "loss", "workers"), RESUME_CASES)
def test_resume_gives_the_same_next_step_loss(shard_root, method, loss, workers):
    """Every method and loss trains from ingest shards and resumes exactly (same next-step loss)."""
    cfg = dict(
        method=method,
        loss=loss,
        workers=workers,
        max_steps=5,
        stem="imagenet" if workers == 0 else "auto",
        augment="loader" if workers == 1 else "auto",
    )
    name = f"{method}-{loss}-{workers}"
    full = Pretrainer(shard_root, _config(run_name=f"full-{name}", **cfg))
    uninterrupted = full.train_steps()
    assert len(uninterrupted) == 5

    first = Pretrainer(shard_root, _config(run_name=f"cut-{name}", **cfg))
    first.train_steps(4)  # checkpoint_every=2: last.pt holds step 4
    resumed = Pretrainer(shard_root, _config(run_name=f"cut-{name}", **cfg))
    assert resumed.resume() and resumed.step == 4
    (next_loss,) = resumed.train_steps(1)
    assert next_loss == pytest.approx(uninterrupted[4], rel=1e-5, abs=1e-6)


def test_pretrain_writes_encoder_and_summary_and_runs_knn(shard_root, tmp_path):
    manifest = read_manifest(shard_root).to_pandas()
    paths = manifest.source_uri.str.split("/lake/").str[1]
    labels = pd.DataFrame(
        {
            "path": paths,
            "label": [i % 3 for i in range(len(paths))],
            "split": ["test" if i % 4 == 0 else "train" for i in range(len(paths))],
        }
    )
    csv = tmp_path / "labels.csv"
    labels.to_csv(csv, index=False)
    summary = pretrain(shard_root, _config(run_name="knn", epochs=1, knn_labels=str(csv), method="byol"))
    assert summary["steps"] == summary["steps_per_epoch"] == 96 // 8
    assert 0 < summary["steady_step_s"] <= summary["seconds"] / (summary["steps"] // 2)  # 12 steps timed
    assert 0.0 <= summary["history"][-1]["knn_top1"] <= 1.0
    encoder = torch.load(summary["encoder"], weights_only=True)
    assert "conv1.weight" in encoder and encoder["conv1.weight"].shape[-1] == 3  # small-image stem
    assert json.loads((shard_root / "checkpoints" / "knn" / "summary.json").read_text())["method"] == "byol"
    # re-running a finished run trains nothing more
    again = pretrain(shard_root, _config(run_name="knn", epochs=1, knn_labels=str(csv), method="byol"))
    assert again["steps"] == summary["steps"]


def test_epochs_are_counted_once_whatever_the_loader_workers(shard_root):
    summary = pretrain(shard_root, _config(run_name="epochs-w2", epochs=2, workers=2, stem="imagenet"))
    spe = summary["steps_per_epoch"]
    assert [h["step"] for h in summary["history"]] == [spe, 2 * spe]
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    meta = json.loads((shard_root / "checkpoints" / "epochs-w2" / "encoder.json").read_text())
    assert meta == {
        "backbone": "resnet18",
        "small_stem": False,
        "image_size": 16,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "init_from": None,
        "init_weights_sha256": None,
        "method": "simsiam",
        "loss": "default",
        "steps": 2 * spe,
    }


def test_init_from_user_checkpoint_and_pickled_code_refused(shard_root, tmp_path):
    from lakelabel.models.backbones import build_backbone

    backbone, _ = build_backbone("resnet18", small_images=True)
    torch.nn.init.constant_(backbone.conv1.weight, 0.25)
    good = tmp_path / "user.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in backbone.state_dict().items()}}, good)
    trainer = Pretrainer(shard_root, _config(run_name="init", init_from=str(good)))
    assert trainer.init_report["matched"] == trainer.init_report["backbone_tensors"]
    assert torch.all(trainer.method.backbone.conv1.weight == 0.25)

    evil = tmp_path / "evil.pt"
    torch.save(
        {"state_dict": backbone.state_dict(), "hook": Path("/tmp")}, evil
    )  # a pickled object, not a tensor
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        Pretrainer(shard_root, _config(run_name="evil", init_from=str(evil)))


def test_bad_options_are_named(shard_root):
    with pytest.raises(ValueError, match="valid: sgd, lars"):
        Pretrainer(shard_root, _config(optimizer="adam"))
    with pytest.raises(ValueError, match="exceeds the 96 images"):
        Pretrainer(shard_root, _config(batch_size=200))


def test_one_stream_serves_every_epoch_and_restarts_exactly_at_an_epoch(shard_root):
    """The run's single loader: epoch e of the continuous stream equals a stream started at epoch e,
    with 2 loader workers; epochs differ from each other."""
    from lakelabel.pipeline.augment import DecodeUint8
    from lakelabel.pipeline.shard_data import list_shards, train_batches

    shards, spe = list_shards(shard_root), 5  # 2 workers: 3 batches each per epoch, 1 dropped
    make = lambda start: train_batches(shards, DecodeUint8(16), 8, spe, 2, 16, seed=4, start_epoch=start)  # noqa: E731
    continuous = [b for _, b in zip(range(3 * spe), make(0), strict=False)]
    restarted = [b for _, b in zip(range(spe), make(2), strict=False)]
    assert all(torch.equal(a, b) for a, b in zip(continuous[2 * spe :], restarted, strict=True))
    assert not torch.equal(continuous[0], continuous[spe])
    assert continuous[0].dtype == torch.uint8 and continuous[0].shape == (8, 3, 16, 16)


def test_device_augmentation_per_sample_parameters_deterministic_and_on_recipe():
    """BatchViews (kornia) on CPU tensors: per-sample parameters, same seed → same views, the
    recipe's ranges (normalised output, grayscale in about 20 %, BYOL's second view solarized)."""
    from lakelabel.pipeline.augment import MEAN, STD, BatchViews
    from lakelabel.pipeline.ssl import METHODS as SSL_METHODS

    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8, generator=gen)
    batch = image.repeat(400, 1, 1, 1)  # one image 400 times: any difference is per-sample randomness
    views = BatchViews(SSL_METHODS["byol"].views, 32)
    v1, v2 = views(batch, seed=1)
    assert v1.shape == v2.shape == (400, 3, 32, 32)
    assert len({tuple(v.flatten()[:16].tolist()) for v in v1}) > 390
    w1, w2 = views(batch, seed=1)
    assert torch.equal(v1, w1) and torch.equal(v2, w2) and not torch.equal(v1, views(batch, seed=2)[0])
    lo = min((0 - m) / s for m, s in zip(MEAN, STD, strict=True))
    hi = max((1 - m) / s for m, s in zip(MEAN, STD, strict=True))
    assert v1.min() >= lo - 1e-4 and v1.max() <= hi + 1e-4
    raw = v1 * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    gray = (raw[:, 0] - raw[:, 1]).abs().amax((1, 2)) < 1e-4
    assert 0.1 < gray.float().mean() < 0.3


def test_pretrain_on_a_terminal_shows_its_bar_and_says_when_it_resumes(shard_root, tmp_path):
    """stderr on a pseudo-terminal: a step bar; the second run resumes and says so in one line."""
    import sys

    from tests.terminal import run_on_a_terminal

    root = shard_root
    argv = [
        sys.executable,
        "-m",
        "lakelabel",
        "pretrain",
        str(root),
        "--method",
        "simclr",
        "--stem",
        "imagenet",
    ]
    argv += ["--image-size", "32", "--batch-size", "16", "--workers", "0", "--run-name", "tty"]
    proc, drawn = run_on_a_terminal([*argv, "--max-steps", "2"])
    assert proc.returncode == 0, drawn.decode(errors="replace")
    assert b"pretrain" in drawn and b"step" in drawn and b"2/2" in drawn
    proc, drawn = run_on_a_terminal([*argv, "--max-steps", "3"])
    assert proc.returncode == 0 and b"resumed from step 2" in drawn, drawn.decode(errors="replace")
