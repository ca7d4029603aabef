"""Atomic writes (pipeline/atomic.py): readers see the old or the new file, and concurrent writers of
one file never trip over each other's temp file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes


def test_writers_of_one_file_side_by_side_all_succeed(tmp_path: Path) -> None:
    """Eight threads write the same file 50 times each (the embed tasks' meta.json): no write fails,
    the file holds one writer's complete bytes, and no temp file is left."""
    path, errors = tmp_path / "meta.json", []

    def writer(i: int) -> None:
        try:
            for _ in range(50):
                atomic_write_bytes(path, f"writer {i} ".encode() * 1000)
        except OSError as exc:  # pragma: no cover - the failure this test is for
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    text = path.read_text()
    assert len(set(text.split())) == 2 and len(text) == len("writer 0 ") * 1000
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "part.bin"
    atomic_write_bytes(path, b"old")

    def fails(f) -> None:
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]  # the temp file went with the failure
