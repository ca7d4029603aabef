"""Cluster the embeddings with the configured methods (``pipeline/clustering``: k-means, Sinkhorn, SeLa,
SCAN), part by part.

The methods fit on a bounded sample (``cluster.sample`` rows) and on reductions over the parts
(Sinkhorn); then every embeddings part gets its assignments part (``data_specs/clusters.md``), and
``assignments.json`` commits the run last. Memory: the sample and one part, whatever the lake's size.
A re-run with the same embeddings and config is skipped (fingerprint in ``summary.json``); a run killed
between parts refits (seeded: the same state) and writes only the parts it lacks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lakelabel.data_specs.clusters import (
    CLUSTERS_SCHEMA_VERSION,
    assignment_part_name,
    assignments_schema,
    validate_assignments,
)
from lakelabel.data_specs.embeddings import find_embeddings, read_embeddings
from lakelabel.data_specs.layout import Layout
from lakelabel.models.sinkhorn import check_target
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes
from lakelabel.pipeline.clustering import METHODS, ClusterInputs
from lakelabel.pipeline.clustering.base import state_digest
from lakelabel.pipeline.config import ClusterConfig

#: parquet metadata key of a part: the digest of the fitted states it was assigned with
_STATE_KEY = b"lakelabel.state"


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
    fingerprint = _fingerprint(emb.parts, config)
    if out.committed and out.summary.exists():
        previous = json.loads(out.summary.read_text())
        if previous.get("fingerprint") == fingerprint:
            return _without_histories(previous) | {"skipped": True}
    out.dir.mkdir(parents=True, exist_ok=True)
    out.commit.unlink(missing_ok=True)  # uncommit the old run before rewriting
    out.assignments.unlink(missing_ok=True)  # (a run of the single-file layout)

    _, sample = emb.sample(config.sample, config.seed)
    inputs = ClusterInputs(sample, config.k, config, target, log, root=root, emb=emb, scratch=out.dir)
    timings: dict[str, float] = {}
    methods: dict[str, dict] = {}
    assigners = []
    declared: list[tuple[str, str, str]] = []
    states: dict[str, object] = {}
    for name in config.methods:
        method = METHODS[name](getattr(config, name))
        start = time.perf_counter()
        output = method.run(inputs)
        declared += [(column, kind, name) for column, kind in method.columns()]
        assigners.append((name, [column for column, _ in method.columns()], output.assign))
        timings[f"{name}_s"] = round(time.perf_counter() - start, 2)
        methods[name] = output.summary
        for state_name, state in output.state.items():
            states[state_name] = state
            if isinstance(state, np.ndarray):
                atomic_write(
                    out.dir / f"{state_name}.npy", lambda f, a=state: np.save(f, a, allow_pickle=False)
                )
            else:
                atomic_write(out.dir / f"{state_name}.pt", lambda f, d=state: torch.save(d, f))
        if log:
            log({"method": name, "seconds": timings[f"{name}_s"]})
    inputs.cache.clear()

    start = time.perf_counter()
    schema = assignments_schema(declared)
    digest = state_digest(states)
    written, sizes = _assign_parts(emb, inputs, assigners, schema, config.k, digest, out.parts, log)
    timings["assign_s"] = round(time.perf_counter() - start, 2)
    summary = {
        "clusters": str(out.dir),
        "embeddings": str(emb.directory),
        "encoder": emb.meta["encoder"],
        "encoder_sha256": emb.meta["encoder_sha256"],
        "images": emb.n,
        "k": config.k,
        "sample": inputs.n,
        "methods": methods,
        "config": config.model_dump(),
        "fingerprint": fingerprint,
        "state_sha256": digest,
        "cluster_sizes": {name: counts.tolist() for name, counts in sizes.items()},
        "timings": timings,
    }
    atomic_write_bytes(out.summary, json.dumps(summary, indent=1).encode())
    commit = {
        "schema_version": CLUSTERS_SCHEMA_VERSION,
        "k": config.k,
        "state_sha256": digest,
        "parts": written,
    }
    atomic_write_bytes(out.commit, json.dumps(commit, indent=1).encode())  # the commit
    return _without_histories(summary) | {"skipped": False}


def _assign_parts(emb, inputs, assigners, schema, k, digest, folder: Path, log):
    """Write every embeddings part's assignments part (temp, then rename) unless one assigned with the
    same fitted states is there; remove parts of other embeddings. Returns ``([name, rows] per part,
    cluster sizes per label column)``."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [f.name for f in schema if f.type == pa.int32()]
    sizes = {name: np.zeros(k, np.int64) for name in labels}
    written, start, reused = [], 0, 0
    for i, (npy, rows) in enumerate(emb.parts):
        path = folder / assignment_part_name(npy)
        table = _reusable(path, digest, rows)
        if table is None:
            x = inputs.part(i)
            columns = emb.part_keys(i).select(["key", "shard"]).to_pydict()
            for name, declared, assign in assigners:
                values = assign(x, start)
                if list(values) != declared:
                    raise RuntimeError(f"clustering method {name!r} assigned {list(values)}, not {declared}")
                columns.update(values)
            table = validate_assignments(
                pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema), k
            )
            meta = {**table.schema.metadata, _STATE_KEY: digest.encode()}
            table = table.replace_schema_metadata(meta)
            atomic_write(path, lambda f, t=table: pq.write_table(t, f))
        else:
            reused += 1
        for name in labels:
            sizes[name] += np.bincount(table.column(name).to_numpy(), minlength=k)
        written.append([path.name, rows])
        start += rows
        if log:
            log({"assigned_parts": i + 1, "of": len(emb.parts), "reused": reused})
    keep = {name for name, _ in written}
    for stale in folder.iterdir():
        if stale.name not in keep:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    return written, sizes


def _reusable(path: Path, digest: str, rows: int) -> pa.Table | None:
    """The part at ``path`` when a run with the same fitted states wrote it (a resumed run), else None."""
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return None
    if (table.schema.metadata or {}).get(_STATE_KEY) != digest.encode() or table.num_rows != rows:
        return None
    return table


def _without_histories(summary: dict) -> dict:
    """The summary as returned to callers: the methods' training histories stay in summary.json."""
    methods = {
        m: {k: v for k, v in block.items() if k != "history"} for m, block in summary["methods"].items()
    }
    return {**summary, "methods": methods}
