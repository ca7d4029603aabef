"""benchmarks/gpu.py end to end on the CPU with a tiny budget (the GPU run is the same command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cifar import CIFAR, cifar_available

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_benchmark_runs_end_to_end_on_a_cpu(tmp_path: Path) -> None:
    if not cifar_available():
        pytest.skip(f"shared CIFAR-10 lake not found at {CIFAR}")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu.py"),
            "--data",
            str(CIFAR),
            "--images",
            "1500",
            "--budget-min",
            "0.5",
            "--reserve-min",
            "0",
            "--batch-size",
            "64",
            "--workers",
            "1",
            "--throughput-steps",
            "6",
            "--warmup-steps",
            "1",
            "--stem",
            "imagenet",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    assert 500 < result["images"] <= 1500 and result["throughput"]["augment"] == "device"
    assert result["throughput"]["real_images_per_s"] > 0 and result["throughput"]["ratio"] > 0
    assert result["pretrain"]["steps"] >= result["images"] // 64
    assert 0 <= result["knn_top1"] <= 1 and 0 <= result["clusters"]["kmeans"]["acc"] <= 1
    assert 0 <= result["seed250"]["accuracy_full_coverage"] <= 1
    assert set(result["timings_s"]) >= {"ingest", "pretrain", "embed", "cluster", "select (seed-250)"}
