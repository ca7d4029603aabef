"""Cluster the embeddings with the configured methods (``pipeline/clustering``: k-means, Sinkhorn, SeLa,
SCAN).

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

from lakelabel.data_specs.clusters import assignments_schema, label_columns, validate_assignments
from lakelabel.data_specs.embeddings import find_embeddings, read_embeddings
from lakelabel.data_specs.layout import Layout
from lakelabel.models.sinkhorn import check_target
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes
from lakelabel.pipeline.clustering import METHODS, ClusterInputs
from lakelabel.pipeline.config import ClusterConfig


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
    """Cluster ROOT's embeddings (``embeddings``: encoder run name or directory name; default the newest).
    Returns the summary; the methods' training histories are only in ``summary.json``."""
    config = config or ClusterConfig()
    root = Path(root)
    emb = read_embeddings(find_embeddings(root, embeddings))
    if emb.n < config.k:
        raise ValueError(f"k={config.k} exceeds the {emb.n} embedded images")
    target = check_target(torch.tensor(config.target), config.k) if config.target is not None else None
    out = Layout(root).clusters(config.run_name)
    out_dir, summary_path = out.dir, out.summary
    fingerprint = _fingerprint(emb.parts, config)
    if out.assignments.exists() and summary_path.exists():
        previous = json.loads(summary_path.read_text())
        if previous.get("fingerprint") == fingerprint:
            return _without_histories(previous) | {"skipped": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    out.assignments.unlink(missing_ok=True)  # uncommit the old run before rewriting

    inputs = ClusterInputs(emb.matrix(np.float32), config.k, config, target, log, root=root, emb=emb)
    timings: dict[str, float] = {}
    columns: dict[str, np.ndarray] = {"key": np.asarray(emb.keys), "shard": np.asarray(emb.shards)}
    methods: dict[str, dict] = {}
    declared: list[tuple[str, str, str]] = []
    for name in config.methods:
        method = METHODS[name](getattr(config, name))
        start = time.perf_counter()
        output = method.run(inputs)
        declared += [(column, kind, name) for column, kind in method.columns()]
        if list(output.columns) != [column for column, _ in method.columns()]:
            raise RuntimeError(
                f"clustering method {name!r} wrote {list(output.columns)}, not its declared columns"
            )
        timings[f"{name}_s"] = round(time.perf_counter() - start, 2)
        columns.update(output.columns)
        methods[name] = output.summary
        for state_name, state in output.state.items():
            if isinstance(state, np.ndarray):
                atomic_write(
                    out_dir / f"{state_name}.npy", lambda f, a=state: np.save(f, a, allow_pickle=False)
                )
            else:
                atomic_write(out_dir / f"{state_name}.pt", lambda f, d=state: torch.save(d, f))
        if log:
            log({"method": name, "seconds": timings[f"{name}_s"]})
    schema = assignments_schema(declared)
    table = validate_assignments(
        pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema), config.k
    )
    summary = {
        "clusters": str(out_dir),
        "embeddings": str(emb.directory),
        "encoder": emb.meta["encoder"],
        "encoder_sha256": emb.meta["encoder_sha256"],
        "images": emb.n,
        "k": config.k,
        "methods": methods,
        "config": config.model_dump(),
        "fingerprint": fingerprint,
        "cluster_sizes": {
            name: np.bincount(table.column(name).to_numpy(), minlength=config.k).tolist()
            for name in label_columns(table)
        },
        "timings": timings,
    }
    atomic_write_bytes(summary_path, json.dumps(summary, indent=1).encode())
    atomic_write(out.assignments, lambda f: pq.write_table(table, f))  # the commit
    return _without_histories(summary) | {"skipped": False}


def _without_histories(summary: dict) -> dict:
    """The summary as returned to callers: the methods' training histories stay in summary.json."""
    methods = {
        m: {k: v for k, v in block.items() if k != "history"} for m, block in summary["methods"].items()
    }
    return {**summary, "methods": methods}
