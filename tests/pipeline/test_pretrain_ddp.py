"""DDP through torchrun on CPU (gloo, world size 2): both ranks train on their shard split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lakelabel.pipeline.config import IngestConfig
from lakelabel.pipeline.ingest import run_ingest
from tests.lakes import make_plain_lake


@pytest.mark.slow
def test_torchrun_gloo_world_size_2(tmp_path: Path):
    lake, root = tmp_path / "lake", tmp_path / "root"
    make_plain_lake(lake, 64, size=(16, 16))
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=16))  # 4 shards: 2 per rank
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lakelabel",
        "pretrain",
        str(root),
        "--batch-size",
        "8",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--run-name",
        "ddp",
        "--method",
        "simclr",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["steps"] == 64 // 16
    assert (root / "checkpoints" / "ddp" / "encoder.pt").exists()
