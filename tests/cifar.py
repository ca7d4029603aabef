"""A small real-data lake: the first files of the shared CIFAR-10 JPEG lake, extracted to a temp dir.

Ground truth (``labels.csv.gz``) is only ever used for evaluation and as seed labels in tests.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest

_CANDIDATES = [
    os.environ.get("LAKELABEL_CIFAR10", ""),
    str(
        Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
    ),  # ../shared next to the repo
    "/work/shared/datasets/cifar10",
]
CIFAR = next(
    (Path(c) for c in _CANDIDATES if c and (Path(c) / "lake.tar.gz").is_file()), Path(_CANDIDATES[1])
)


def cifar_available() -> bool:
    return (CIFAR / "lake.tar.gz").is_file() and (CIFAR / "labels.csv.gz").is_file()


def cifar_subset(dest: Path, n_train: int, n_test: int = 0) -> tuple[Path, Path]:
    """Extract ``n_train`` train and ``n_test`` test images into ``dest/lake``; returns ``(lake,
    truth_csv)``."""
    if not cifar_available():
        pytest.skip(f"shared CIFAR-10 lake not found at {CIFAR}")
    lake = dest / "lake"
    wanted = {"train": n_train, "test": n_test}
    taken: list[str] = []
    with tarfile.open(CIFAR / "lake.tar.gz", "r|gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith("lake/"):
                continue
            rel = member.name.removeprefix("lake/")
            split = rel.split("/", 1)[0]
            if wanted.get(split, 0) <= 0:
                if all(v <= 0 for v in wanted.values()):
                    break
                continue
            wanted[split] -= 1
            target = lake / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            taken.append(rel)
    with gzip.open(CIFAR / "labels.csv.gz", "rt") as f:
        truth = pd.read_csv(f)
    truth = truth[truth.path.isin(set(taken))]
    csv = dest / "truth.csv"
    truth.to_csv(csv, index=False)
    return lake, csv
