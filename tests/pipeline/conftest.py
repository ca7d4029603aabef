"""Shared fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import IngestConfig, PretrainConfig
from pipeline.ingest import run_ingest
from pipeline.pretrain import pretrain
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
