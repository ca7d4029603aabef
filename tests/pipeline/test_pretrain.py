from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.config import IngestConfig, PretrainConfig
from pipeline.ingest import read_manifest, run_ingest
from pipeline.pretrain import CheckpointError, Pretrainer, pretrain
from tests.lakes import make_plain_lake


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pretrain")
    lake, root = tmp / "lake", tmp / "root"
    make_plain_lake(lake, 96, size=(20, 20))
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=30))
    return root


def _config(**over) -> PretrainConfig:
    base = dict(
        batch_size=8, image_size=16, epochs=2, workers=0, shuffle_buffer=16, checkpoint_every=2, seed=3
    )
    base.update(over)
    return PretrainConfig(**base)


RESUME_CASES = [
    ("simsiam", "default", 2),
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
        method=method, loss=loss, workers=workers, max_steps=5, stem="imagenet" if workers == 0 else "auto"
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
        "method": "simsiam",
        "loss": "default",
        "steps": 2 * spe,
    }


def test_init_from_user_checkpoint_and_pickled_code_refused(shard_root, tmp_path):
    from models.backbones import build_backbone

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
