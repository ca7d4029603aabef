"""Cluster the embeddings: FAISS k-means → Sinkhorn-Knopp equipartition → SeLa heads (K × T).

Writes ``ROOT/clusters/<run>/`` (``data_specs/clusters.md``). A re-run with the same embeddings and
config is skipped (fingerprint in ``summary.json``); new embeddings or another config re-cluster.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_specs.clusters import assignments_schema, label_columns, validate_assignments
from models.kmeans import centroid_scores, kmeans_assign, spherical_kmeans
from models.scan import mine_neighbours, train_scan
from models.sela import train_sela
from models.sinkhorn import balanced_labels, check_target, tensor_chunks
from pipeline.atomic import atomic_write, atomic_write_bytes
from pipeline.config import ClusterConfig
from pipeline.embed import find_embeddings, read_embeddings

#: Below this size the N × K centroid scores are held in memory for Sinkhorn; above, streamed per part.
SCORES_IN_MEMORY_BYTES = 2**30


def _fingerprint(parts: list[tuple[str, int]], config: ClusterConfig) -> str:
    digest = hashlib.sha256(config.model_dump_json().encode())
    for path, rows in parts:
        digest.update(f"{Path(path).name}:{rows}:{Path(path).stat().st_size}".encode())
    return digest.hexdigest()


def cluster(
    root: str | Path,
    config: ClusterConfig | None = None,
    embeddings: str | None = None,
    log=None,
) -> dict:
    """Cluster ROOT's embeddings (``embeddings``: encoder run name or directory name; default the newest)."""
    config = config or ClusterConfig()
    root = Path(root)
    emb = read_embeddings(find_embeddings(root, embeddings))
    if emb.n < config.k:
        raise ValueError(f"k={config.k} exceeds the {emb.n} embedded images")
    target = check_target(torch.tensor(config.target), config.k) if config.target is not None else None
    out_dir = root / "clusters" / config.run_name
    fingerprint = _fingerprint(emb.parts, config)
    summary_path = out_dir / "summary.json"
    if (out_dir / "assignments.parquet").exists() and summary_path.exists():
        previous = json.loads(summary_path.read_text())
        if previous.get("fingerprint") == fingerprint:
            return {**previous, "skipped": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "assignments.parquet").unlink(missing_ok=True)  # uncommit the old run before rewriting

    timings: dict[str, float] = {}
    start = time.perf_counter()
    x_np = emb.matrix(np.float32)
    x = torch.from_numpy(x_np)
    timings["load_s"] = time.perf_counter() - start

    # 1. k-means, one run per head (different seeds: diverse SeLa heads), head 0's is the baseline
    start = time.perf_counter()
    runs = [
        spherical_kmeans(
            x_np,
            config.k,
            iters=config.kmeans_iters,
            redo=config.kmeans_redo,
            max_points_per_centroid=config.max_points_per_centroid,
            seed=config.seed + t,
            use_gpu=config.use_gpu,
        )
        for t in range(config.heads)
    ]
    kmeans_labels, kmeans_sims = kmeans_assign(emb.chunks(), runs[0].centroids)
    timings["kmeans_s"] = time.perf_counter() - start

    # 2. Sinkhorn-Knopp on centroid similarities, streamed part by part (each part = one shard)
    start = time.perf_counter()
    init_labels, sinkhorn_iters, sinkhorn_lams = [], [], []
    in_memory = emb.n * config.k * 4 <= SCORES_IN_MEMORY_BYTES
    for run in runs:
        source = _scores_source(emb, run.centroids, config.centroid_temperature)
        if in_memory:
            scores = torch.cat(list(source()))
            source = tensor_chunks(scores, max(1, 2**20 // config.k))
        solved = balanced_labels(
            source,
            1.0,  # the scores are log_softmax(sim / τ): τ already sets their sharpness (λ on top slows Sinkhorn ~20×)
            n_rows=emb.n,
            n_cols=config.k,
            target=target,
            tol=config.sinkhorn_tol,
            balance=config.balance,
            max_iter=5000,
        )
        sinkhorn_iters.append(solved.result.iterations)
        sinkhorn_lams.append(solved.result.lam)
        init_labels.append(solved.labels)
    init = torch.stack(init_labels, dim=1)
    timings["sinkhorn_s"] = time.perf_counter() - start

    # 3. SeLa heads
    start = time.perf_counter()
    sela = train_sela(
        x,
        init,
        config.k,
        hidden=config.head_hidden,
        epochs=config.epochs,
        label_updates=config.label_updates,
        lam=config.lam,
        target=target,
        tol=config.sinkhorn_tol,
        balance=config.balance,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        log=log,
    )
    timings["sela_s"] = time.perf_counter() - start

    # 4. SCAN heads on the mined neighbours
    scan = None
    if config.scan is not None:
        start = time.perf_counter()
        neighbours = mine_neighbours(x_np, min(config.scan.neighbours, emb.n - 1))
        timings["scan_neighbours_s"] = time.perf_counter() - start
        scan = train_scan(
            x * float(np.sqrt(x.shape[1])),  # unit rows scaled to coordinates of order 1
            torch.from_numpy(neighbours),
            config.k,
            **config.scan.model_dump(exclude={"neighbours", "batch_size"}),
            batch_size=min(config.scan.batch_size, emb.n),
            seed=config.seed,
            log=log,
        )
        timings["scan_s"] = time.perf_counter() - start

    columns = {
        "key": pa.array(emb.keys, pa.string()),
        "shard": pa.array(emb.shards, pa.string()),
        "kmeans": pa.array(kmeans_labels.astype(np.int32)),
        "kmeans_similarity": pa.array(kmeans_sims),
        "sinkhorn": pa.array(init[:, 0].numpy().astype(np.int32)),
    }
    for t in range(config.heads):
        columns[f"head_{t}"] = pa.array(sela.labels[:, t].numpy().astype(np.int32))
        columns[f"posterior_{t}"] = pa.array(sela.posteriors[:, t].numpy().astype(np.float32))
    if scan is not None:
        columns["scan"] = pa.array(scan.labels.numpy().astype(np.int32))
        columns["scan_confidence"] = pa.array(scan.confidence.numpy().astype(np.float32))
    schema = assignments_schema(config.heads, scan is not None)
    table = validate_assignments(pa.table(columns, schema=schema), config.k)

    summary = {
        "clusters": str(out_dir),
        "embeddings": str(emb.directory),
        "encoder": emb.meta["encoder"],
        "encoder_sha256": emb.meta["encoder_sha256"],
        "images": emb.n,
        "k": config.k,
        "heads": config.heads,
        "config": config.model_dump(),
        "fingerprint": fingerprint,
        "kmeans_objective": [round(r.objective, 3) for r in runs],
        "kmeans_trained_on": runs[0].trained_on,
        "kmeans_gpu": runs[0].gpu,
        "sinkhorn_iterations": sinkhorn_iters,
        "sela_sinkhorn_iterations": [
            r["sinkhorn_iterations"] for r in sela.history if "sinkhorn_iterations" in r
        ],
        "sinkhorn_lambda_used": sinkhorn_lams,
        "cluster_sizes": {
            name: np.bincount(table.column(name).to_numpy(), minlength=config.k).tolist()
            for name in label_columns(table)
        },
        "scan": {"head": scan.head, "history": scan.history} if scan is not None else None,
        "history": sela.history,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    atomic_write(out_dir / "centroids.npy", lambda f: np.save(f, runs[0].centroids, allow_pickle=False))
    atomic_write(out_dir / "heads.pt", lambda f: torch.save(sela.model.state_dict(), f))
    if scan is not None:
        atomic_write(out_dir / "scan_head.pt", lambda f: torch.save(scan.model.state_dict(), f))
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    atomic_write(out_dir / "assignments.parquet", lambda f: pq.write_table(table, f))  # the commit
    return {**summary, "skipped": False}


def _scores_source(emb, centroids: np.ndarray, temperature: float):
    """Chunks of ``log_softmax(sim / τ)`` over the centroids, one embedding part at a time."""
    chunks = emb.chunks()
    return lambda: (
        torch.log_softmax(centroid_scores(chunk, centroids) / temperature, dim=1) for chunk in chunks()
    )


def read_assignments(root: str | Path, run: str = "default") -> pa.Table:
    """The committed assignments of ``ROOT/clusters/<run>`` (validated)."""
    path = Path(root) / "clusters" / run / "assignments.parquet"
    if not path.exists():
        runs = sorted(p.parent.name for p in (Path(root) / "clusters").glob("*/assignments.parquet"))
        raise FileNotFoundError(
            f"no committed cluster run {run!r} under {str(Path(root) / 'clusters')!r} "
            f"(committed runs: {', '.join(runs) or 'none'}); run `lakelabel cluster` first"
        )
    return validate_assignments(pq.read_table(path))
