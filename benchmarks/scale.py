"""The stages after embed at lake scale: peak memory and time per row of ``lakelabel cluster``,
``select`` (from the clusters, and from 10 seed labels per class) and ``publish`` as the lake grows,
on synthetic embeddings whose classes are known; ``--dask`` runs cluster and select once more as
Prefect flows on a Dask ``LocalCluster`` (2 worker processes, a memory limit each).

Usage: python benchmarks/scale.py --work /big/disk/scale [--sizes 1000000,4000000,8000000] [--dim 256]
           [--methods kmeans,sinkhorn,scan] [--stages cluster,select,publish] [--dask]
           [--baseline-src DIR] > results.json

Input: a Gaussian mixture of ``--classes`` classes (random unit centres, isotropic noise set so that
k-means is right about 85 % of the time), rows L2-normalised and stored as float16 in the
``data_specs/embeddings.md`` layout, parts of 10,000 rows; generated once per size into
``--work/<rows>x<dim>/`` (a done-marker: a later run reuses it). Each stage runs as its own
``python -m lakelabel`` process; its peak RSS comes from ``wait4`` (the kernel's ``ru_maxrss`` of that
process and its children), its wall time from the parent. ACC: Hungarian accuracy of each label column
(of a selection: its ``predicted`` column, and the precision and coverage of its positives) against
the mixture's classes, counted part by part. The root also gets a manifest (one part per shard, as
ingest writes it) and ``seeds.csv`` (key, label: 10 rows per class) so that select and publish run
as they do on a real lake; select's review queue is off (there are no images to show).

``--baseline-src DIR``: a checkout of an earlier lakelabel whose ``cluster`` is run on the smallest
size too (its package first on ``sys.path``; ``--baseline-methods``), for the same-run comparison of
ACC, memory and time.

Prints one JSON line per (size, stage) and a final summary line with the ratios the goals name
(peak RSS at the largest size over the smallest, time per row likewise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment

PART = 10_000
SEED = 7


def generate(folder: Path, rows: int, dim: int, classes: int, noise: float) -> Path:
    """Write ``rows`` mixture embeddings as ROOT ``folder`` (``embeddings/synthetic-<sha>/``) plus the
    classes per part (``truth/part-NNNNNN.npy``); skipped when its done-marker exists."""
    done = folder / "generated.json"
    emb_dir = folder / "embeddings" / "synthetic-000000000000"
    if done.is_file():
        return emb_dir
    emb_dir.mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    meta = {
        "schema_version": "1",
        "encoder": "synthetic",
        "encoder_sha256": "0" * 64,
        "backbone": "none",
        "small_stem": False,
        "image_size": 0,
        "dim": dim,
        "dtype": "float16",
        "normalized": True,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "weights": None,
    }
    (emb_dir / "meta.json").write_text(json.dumps(meta))
    schema = pa.schema(
        [pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)],
        metadata={"lakelabel.contract": "embeddings", "lakelabel.schema_version": "1"},
    )
    for part, start in enumerate(range(0, rows, PART)):
        n = min(PART, rows - start)
        truth = rng.integers(0, classes, n)
        x = centres[truth] + rng.normal(scale=noise / np.sqrt(dim), size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(emb_dir / f"emb-{part:06d}.npy", x.astype(np.float16))
        np.save(folder / "truth" / f"part-{part:06d}.npy", truth.astype(np.int16))
        keys = [f"{i:032x}" for i in range(start, start + n)]
        shard = f"shard-{part:06d}.tar"
        table = pa.table({"key": keys, "shard": [shard] * n}, schema=schema)
        pq.write_table(table, emb_dir / f"emb-{part:06d}.parquet")
    done.write_text(json.dumps({"rows": rows, "dim": dim, "classes": classes, "noise": noise}))
    return emb_dir


def add_manifest(folder: Path, classes: int) -> None:
    """``manifest/part-NNNNNN.parquet`` for each embeddings part (its keys, status sharded) and
    ``seeds.csv`` (10 keys per class from the first parts); skipped when ``seeds.csv`` exists."""
    from datetime import UTC, datetime

    from lakelabel.data_specs.manifest import MANIFEST_SCHEMA

    if (folder / "seeds.csv").is_file():
        return
    (folder / "manifest").mkdir(exist_ok=True)
    emb_dir = folder / "embeddings" / "synthetic-000000000000"
    seeds: dict[int, list[str]] = {c: [] for c in range(classes)}
    now = datetime.now(UTC)
    for keys_path in sorted(emb_dir.glob("emb-*.parquet")):
        keys = pq.read_table(keys_path)
        n, number = keys.num_rows, keys_path.stem.removeprefix("emb-")
        key = keys.column("key").to_pylist()
        table = pa.table(
            {
                "source_uri": [f"file:///synthetic/{k}.jpg" for k in key],
                "status": ["sharded"] * n,
                "reason": pa.nulls(n, pa.string()),
                "key": key,
                "shard": keys.column("shard"),
                "width": [32] * n,
                "height": [32] * n,
                "bytes": [1000] * n,
                "sha256": [k * 2 for k in key],
                "format": ["jpeg"] * n,
                "reencoded": [False] * n,
                "run_id": ["synthetic"] * n,
                "ingested_at": pa.array([now] * n, MANIFEST_SCHEMA.field("ingested_at").type),
            }
        ).cast(MANIFEST_SCHEMA)
        pq.write_table(table, folder / "manifest" / f"part-{number}.parquet")
        truth = np.load(folder / "truth" / f"part-{number}.npy")
        for k, c in zip(key, truth, strict=True):
            if len(seeds[int(c)]) < 10:
                seeds[int(c)].append(k)
    lines = ["key,label"] + [f"{k},{c}" for c, ks in seeds.items() for k in ks]
    (folder / "seeds.csv").write_text("\n".join(lines) + "\n")


def run_stage(argv: list[str], src: str | None = None) -> dict:
    """Run ``python -m lakelabel ARGV`` (``src``: an older checkout first on the path); wall seconds,
    peak RSS (MiB) of the process tree, and rc."""
    env = dict(os.environ)
    code = "import sys; from lakelabel.cli import main; sys.exit(main(sys.argv[1:]))"
    if src:
        code = f"import sys; sys.path.insert(0, {src!r}); " + code
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{argv} exited {rc}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": out}


def accuracy(root: Path, run: str, classes: int) -> dict[str, float]:
    """Hungarian ACC of every label column of cluster run ``run``, from per-part contingency tables."""
    from lakelabel.data_specs.clusters import iter_assignments, label_columns

    tables: dict[str, np.ndarray] = {}
    parts = iter(sorted((root / "truth").glob("part-*.npy")))
    pending = np.empty(0, np.int64)
    for table in iter_assignments(root, run):  # (a single-file run is one table of every row)
        while len(pending) < table.num_rows:
            pending = np.concatenate([pending, np.load(next(parts)).astype(np.int64)])
        truth, pending = pending[: table.num_rows], pending[table.num_rows :]
        for column in label_columns(table):  # (K = classes: the benchmark clusters with k = classes)
            labels = table.column(column).to_numpy().astype(np.int64)
            counts = tables.setdefault(column, np.zeros((classes, classes), np.int64))
            np.add.at(counts, (labels, truth), 1)
    out = {}
    for column, counts in tables.items():
        rows, cols = linear_sum_assignment(-counts)
        out[column] = round(float(counts[rows, cols].sum() / counts.sum()), 4)
    return out


def selection_quality(root: Path, run: str, classes: int) -> dict[str, float]:
    """ACC of selection ``run``'s ``predicted`` column, and precision/coverage of its non-seed positives
    (predicted classes mapped to the mixture's by the Hungarian match), part by part."""
    from lakelabel.data_specs.selections import iter_selection

    counts = np.zeros((classes, classes), np.int64)
    positive = np.zeros((classes, classes), np.int64)
    parts = iter(sorted((root / "truth").glob("part-*.npy")))
    for table in iter_selection(root, run, columns=["predicted", "role", "is_seed"]):
        truth = np.load(next(parts)).astype(np.int64)
        predicted = table.column("predicted").to_numpy().astype(np.int64)
        np.add.at(counts, (predicted, truth), 1)
        chosen = (table.column("role").to_numpy(zero_copy_only=False) == "positive") & ~table.column(
            "is_seed"
        ).to_numpy(zero_copy_only=False)
        np.add.at(positive, (predicted[chosen], truth[chosen]), 1)
    rows, cols = linear_sum_assignment(-counts)
    hits = positive[rows, cols].sum()
    return {
        "acc": round(float(counts[rows, cols].sum() / counts.sum()), 4),
        "positive_precision": round(float(hits / max(positive.sum(), 1)), 4),
        "coverage": round(float(positive.sum() / counts.sum()), 4),
    }


def on_dask(root: Path, size: int, args) -> list[dict]:
    """cluster_flow and select_flow (from the clusters) on a Dask LocalCluster of 2 worker processes
    (``--worker-memory`` each), under a temporary Prefect server; peak RSS of this driver and of each
    worker, labels' quality as above."""
    import resource

    from distributed import Client, LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from lakelabel.flows.cluster import cluster_flow
    from lakelabel.flows.select import select_flow
    from lakelabel.pipeline.config import ClusterConfig, RunnerConfig, SelectConfig

    out = []
    with (
        prefect_test_harness(server_startup_timeout=180),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=args.worker_memory,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        runner = RunnerConfig(dask_address=cluster.scheduler_address)
        for stage in ("cluster", "select"):
            start = time.perf_counter()
            if stage == "cluster":
                config = ClusterConfig(
                    k=args.classes, methods=args.methods.split(","), sample=args.sample, run_name="dask"
                )
                cluster_flow(str(root), config, runner=runner)
                quality = {"acc": accuracy(root, "dask", args.classes)}
            else:
                config = SelectConfig(cluster_run="dask", review_budget=0, run_name="dask")
                select_flow(str(root), config, runner=runner)
                quality = selection_quality(root, "dask", args.classes)
            seconds = time.perf_counter() - start
            workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            row = {
                "size": size,
                "dim": args.dim,
                "stage": f"{stage}-dask",
                "seconds": round(seconds, 1),
                "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "worker_peak_rss_mib": sorted(round(v, 1) for v in workers.values()),
                "rows_per_s": round(size / seconds),
                **quality,
            }
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--sizes", default="1000000,4000000,8000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--noise", type=float, default=6.0, help="noise norm relative to a centre's")
    parser.add_argument("--methods", default="kmeans,sinkhorn,scan")
    parser.add_argument("--sample", type=int, default=100_000, help="cluster.sample")
    parser.add_argument("--stages", default="cluster,select,publish")
    parser.add_argument("--dask", action="store_true", help="cluster and select on a Dask LocalCluster too")
    parser.add_argument("--dask-sizes", default="1000000", help="the sizes --dask runs")
    parser.add_argument("--worker-memory", default="3GiB", help="memory limit of each Dask worker")
    parser.add_argument("--baseline-src", help="an earlier checkout, run on the smallest size too")
    parser.add_argument(
        "--baseline-methods",
        default="kmeans,sinkhorn",
        help="its methods (SCAN in memory mines neighbours among all N rows: hours at 1 M on a CPU)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows_out = []
    for size in sizes:
        root = Path(args.work) / f"{size}x{args.dim}"
        started = time.perf_counter()
        generate(root, size, args.dim, args.classes, args.noise)
        add_manifest(root, args.classes)
        print(json.dumps({"size": size, "generated_s": round(time.perf_counter() - started, 1)}), flush=True)
        stages = args.stages.split(",")
        runs = [("cluster", None)] if "cluster" in stages else []
        if args.baseline_src and size == min(sizes):
            runs.append(("cluster-baseline", args.baseline_src))
        for stage, src in runs:
            methods = (args.methods if src is None else args.baseline_methods).split(",")
            argv = ["cluster", str(root), "--k", str(args.classes), "--methods", *methods]
            argv += ["--run-name", stage]
            if src is None:
                argv += ["--sample", str(args.sample)]
            result = run_stage(argv, src)
            result.pop("stdout")
            row = {
                "size": size,
                "dim": args.dim,
                "stage": stage,
                **result,
                "rows_per_s": round(size / result["seconds"]),
                "us_per_row": round(1e6 * result["seconds"] / size, 2),
                "acc": accuracy(root, stage, args.classes),
            }
            rows_out.append(row)
            print(json.dumps(row), flush=True)
        later = [("select-clusters", ["--cluster-run", "cluster"])] if "select" in stages else []
        if "select" in stages:
            later.append(
                ("select-seeds", ["--labels-from", "seed", "--seed-labels", str(root / "seeds.csv")])
            )
        for stage, flags in later:
            argv = ["select", str(root), *flags, "--review-budget", "0", "--run-name", stage]
            result = run_stage(argv + ["--cluster-run", "cluster"] if "--cluster-run" not in flags else argv)
            result.pop("stdout")
            row = {"size": size, "dim": args.dim, "stage": stage, **result}
            row |= {
                "rows_per_s": round(size / result["seconds"]),
                "us_per_row": round(1e6 * result["seconds"] / size, 2),
            }
            row |= selection_quality(root, stage, args.classes)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
        if "publish" in stages:
            shutil.rmtree(root / "labels", ignore_errors=True)
            result = run_stage(["publish", str(root), "--selection", "select-seeds"])
            result.pop("stdout")
            row = {"size": size, "dim": args.dim, "stage": "publish", **result}
            row |= {
                "rows_per_s": round(size / result["seconds"]),
                "us_per_row": round(1e6 * result["seconds"] / size, 2),
            }
            row["table_mib"] = round(
                sum(f.stat().st_size for f in (root / "labels").rglob("*") if f.is_file()) / 2**20, 1
            )
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    for size in [int(s) for s in args.dask_sizes.split(",")] if args.dask else []:
        # last: a child forked from a process that ran Dask would report that process's peak as its own
        rows_out += on_dask(Path(args.work) / f"{size}x{args.dim}", size, args)
    for stage in ("cluster", "select-clusters", "select-seeds", "publish"):
        ours = [r for r in rows_out if r["stage"] == stage]
        if len(ours) < 2:
            continue
        small, large = ours[0], ours[-1]
        print(
            json.dumps(
                {
                    "summary": stage,
                    "sizes": [small["size"], large["size"]],
                    "peak_rss_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
                    "max_peak_rss_mib": max(r["peak_rss_mib"] for r in ours),
                    "time_ratio": round(large["seconds"] / small["seconds"], 3),
                    "size_ratio": large["size"] / small["size"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
