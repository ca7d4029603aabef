"""Shared fixtures of the pipeline tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lakelabel.pipeline.cluster import cluster
from lakelabel.pipeline.config import ClusterConfig, EmbedConfig, IngestConfig, PretrainConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.pretrain import pretrain
from tests.cifar import cifar_subset


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("embed")
    lake, truth = cifar_subset(tmp, n_train=0, n_test=400)
    root = tmp / "root"
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=100))
    pretrain(
        root,
        PretrainConfig(
            method="simclr", stem="imagenet", batch_size=32, max_steps=2, workers=0, run_name="tiny", seed=1
        ),
    )
    return root, truth, lake


def clustered_copy(cifar_root: tuple[Path, Path, Path], folder: Path, heads: int, epochs: int) -> Path:
    """``folder/root``: a copy of the session's CIFAR root, embedded (encoder "tiny") and clustered
    (K = 10, ``heads`` SeLa heads trained ``epochs`` epochs)."""
    root = folder / "root"
    shutil.copytree(cifar_root[0], root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    cluster(root, ClusterConfig(k=10, sela={"heads": heads, "epochs": epochs}))
    return root


@pytest.fixture
def s3_endpoint(port, monkeypatch):
    """An S3-compatible server (moto) on 127.0.0.1 with test credentials; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
