"""Shared fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakelabel.pipeline.cluster import cluster
from lakelabel.pipeline.config import ClusterConfig, EmbedConfig, IngestConfig, PretrainConfig, SelectConfig
from lakelabel.pipeline.embed import embed
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.pretrain import pretrain
from lakelabel.pipeline.select import select
from tests.cifar import cifar_subset
from tests.roots import copy_root


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
    copy_root(cifar_root[0], root)
    embed(root, EmbedConfig(encoder="tiny", workers=0))
    cluster(root, ClusterConfig(k=10, sela={"heads": heads, "epochs": epochs}))
    return root


#: the three selection runs of ``selected_root``: three different label runs
RUNS = ("default", "looser", "stricter")


@pytest.fixture(scope="session")
def selected_root(cifar_root, tmp_path_factory):
    """A clustered CIFAR root with the three selection runs of :data:`RUNS` (nothing published)."""
    root = clustered_copy(cifar_root, tmp_path_factory.mktemp("labels"), heads=2, epochs=1)
    small = dict(rounds=1, epochs=1, min_steps=20, passes=3, hidden=32, review_budget=20)
    select(root, SelectConfig(**small))
    select(root, SelectConfig(**small, ups={"tau_p": 0.2}, run_name="looser"))
    select(root, SelectConfig(**small, ups={"tau_p": 0.9, "kappa_p": 0.01}, run_name="stricter"))
    return root


@pytest.fixture
def s3_endpoint(port, monkeypatch):
    """An S3-compatible server (moto) on 127.0.0.1 with test credentials, in its own process (delta-rs
    holds the GIL through some object-store calls: a server thread in this process would starve);
    yields its endpoint URL."""
    import subprocess
    import sys
    import time
    import urllib.request

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
