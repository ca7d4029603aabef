"""Ingest throughput against GNU tar, and peak memory at 10k and 60k files, on the CIFAR-10 lake.

Usage: python benchmarks/ingest.py [--lake ../shared/datasets/cifar10/lake.tar.gz] [--repeats 2] [--grow N]

Extracts the lake to a temp dir, warms the page cache, then (in one run, alternating, best of
``--repeats``) times ``tar cf`` of the folder to a file and ``lakelabel ingest`` of the same folder
(full decode validation, sha256, shards + manifest, all cores). Peak RSS comes from the ingest's
own summary (the parent, and its largest worker) at 10k files (the test split) and 60k (all).
With the compiled core built, each repeat also times ``--no-compiled-core`` (the Python path).
``--grow N`` also ingests a lake of N distinct files (the CIFAR JPEGs again, each made unique by a
JPEG comment segment) to show peak memory past the lake sizes above. Prints one JSON object.

The project's modules are byte-compiled first (``compileall``), as ``pip install`` does for an
installed package: an editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` would otherwise
recompile ~3,000 lines of Python on every start (~25 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lakelabel.data_specs.layout import Layout
from lakelabel.pipeline.ingest.worker import HAS_COMPILED_CORE
from lakelabel.pipeline.lake_index import INDEX_DIR

DEFAULT_LAKE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10" / "lake.tar.gz"


def _timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.perf_counter() - start, proc


def _ingest(folder: Path, out: Path, *flags: str) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    seconds, proc = _timed(
        [sys.executable, "-m", "lakelabel", "ingest", str(folder), "--out", str(out), "--no-progress", *flags]
    )
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def _grown_lake(source: Path, dest: Path, n_files: int) -> None:
    """``n_files`` distinct valid JPEGs: lake files with a numbered COM segment after SOI."""
    files = sorted(p for p in source.rglob("*.jpg"))
    for i in range(n_files):
        raw = files[i % len(files)].read_bytes()
        comment = b"lakelabel-%d" % i
        folder = dest / f"part-{i // 10_000:04d}"
        if i % 10_000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:08d}.jpg").write_bytes(
            raw[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + raw[2:]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=DEFAULT_LAKE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grow", type=int, default=0, help="also ingest a lake of N distinct files")
    args = parser.parse_args()
    if not args.lake.is_file():
        sys.exit(f"lake archive not found: {args.lake}")
    tmp = Path(tempfile.mkdtemp(prefix="lakelabel-bench-"))
    try:
        subprocess.run(["tar", "xzf", str(args.lake), "-C", str(tmp)], check=True)
        folder = tmp / "lake"
        n_files = sum(len(files) for _, _, files in os.walk(folder))
        subprocess.run(f"tar cf - -C {tmp} lake | cat > /dev/null", shell=True, check=True)  # warm cache
        repo = Path(__file__).resolve().parents[1]
        packages = [str(repo / name) for name in ("pipeline", "flows", "data_specs")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True, capture_output=True)
        tar_s, ingest_s, python_s, summary = [], [], [], {}
        for _ in range(args.repeats):
            seconds, _ = _timed(["tar", "cf", str(tmp / "baseline.tar"), "-C", str(tmp), "lake"])
            tar_s.append(seconds)
            (tmp / "baseline.tar").unlink()
            seconds, summary = _ingest(folder, tmp / "out")
            ingest_s.append(seconds)
            if HAS_COMPILED_CORE:
                python_s.append(_ingest(folder, tmp / "out-python", "--no-compiled-core")[0])
        assert summary["found"] == n_files and summary["sharded"] + summary["duplicate"] == n_files, summary
        _, small = _ingest(folder / "test", tmp / "out10k")
        grown = None
        if args.grow:
            shutil.rmtree(tmp / "out10k", ignore_errors=True)
            shutil.rmtree(tmp / "out", ignore_errors=True)
            _grown_lake(folder, tmp / "grown", args.grow)
            os.sync()  # the new files stay cached; their writeback must not overlap the timed ingest
            grown_s, grown = _ingest(tmp / "grown", tmp / "out-grown")
            assert grown["sharded"] == args.grow, grown
        tar_fps = n_files / min(tar_s)
        ingest_fps = n_files / min(ingest_s)
        result = {
            "benchmark": "ingest",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "files": n_files,
            "tar_files_per_s": round(tar_fps),
            "ingest_files_per_s": round(ingest_fps),
            "ratio_vs_tar": round(ingest_fps / tar_fps, 3),
            "target_ratio": 0.5,
            "compiled_core": HAS_COMPILED_CORE,
            "python_path_files_per_s": round(n_files / min(python_s)) if python_s else None,
            "compiled_vs_python_path": round(min(python_s) / min(ingest_s), 2) if python_s else None,
            "ingest_seconds": [round(s, 3) for s in ingest_s],
            "tar_seconds": [round(s, 3) for s in tar_s],
            "shards": summary["shards_written"],
            "rejected": summary["rejected"],
            "peak_rss_mb": {
                "10k": {"parent": small["peak_rss_mb"], "largest_worker": small["peak_rss_workers_mb"]},
                "60k": {"parent": summary["peak_rss_mb"], "largest_worker": summary["peak_rss_workers_mb"]},
            },
        }
        if grown is not None:
            result["peak_rss_mb"][f"{args.grow // 1000}k"] = {
                "parent": grown["peak_rss_mb"],
                "largest_worker": grown["peak_rss_workers_mb"],
            }
            result[f"ingest_files_per_s_{args.grow // 1000}k"] = round(args.grow / grown_s)
            result["index_bytes_per_file"] = round(
                sum(p.stat().st_size for p in (Layout(tmp / "out-grown").manifest / INDEX_DIR).iterdir())
                / args.grow,
                1,
            )
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
