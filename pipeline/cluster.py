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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from lakelabel.pipeline.atomic import atomic_write, atomic_write_bytes, parts_in_order
from lakelabel.pipeline.clustering import METHODS, ClusterInputs
from lakelabel.pipeline.clustering.base import state_digest
from lakelabel.pipeline.config import ClusterConfig

#: parquet metadata key of a part: the digest of the fitted states it was assigned with
_STATE_KEY = b"lakelabel.state"


def _fingerprint(parts: list[tuple[str, int]], config: ClusterConfig) -> str:
    digest = hashlib.sha256(config.model_dump_json(exclude={"parts_per_task"}).encode())  # (no result)
    for path, rows in parts:
        digest.update(f"{Path(path).name}:{rows}:{Path(path).stat().st_size}".encode())
    return digest.hexdigest()


@dataclass
class ClusterFit:
    """The fitted methods of one cluster run, what :func:`assign_parts` needs to assign any part
    anywhere (picklable: it travels to Dask workers), or ``skipped``: the unchanged run's summary."""

    skipped: dict | None
    config: ClusterConfig | None = None
    emb: Any = None
    out: Any = None  # the run's ClusterRunPaths
    assigners: list = field(default_factory=list)  # (method, its columns, assign) in order
    schema: pa.Schema | None = None
    digest: str = ""
    summary: dict = field(default_factory=dict)  # the summary so far (methods, timings, sample …)

    @property
    def parts(self) -> list[int]:
        return list(range(len(self.emb.parts))) if self.emb is not None else []


def fit_clusters(
    root: str | Path, config: ClusterConfig | None = None, embeddings: str | None = None, log=None
) -> ClusterFit:
    """Fit the configured methods on ROOT's embeddings (a bounded sample, and reductions over the
    parts), save their states and uncommit the old run; ``skipped`` when the run is unchanged."""
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
            return ClusterFit(_without_histories(previous) | {"skipped": True})
    out.dir.mkdir(parents=True, exist_ok=True)
    out.commit.unlink(missing_ok=True)  # uncommit the old run before rewriting
    out.assignments.unlink(missing_ok=True)  # (a run of the single-file layout)
    for scratch in out.dir.glob(".sinkhorn-*"):  # score files of a run that was killed
        shutil.rmtree(scratch, ignore_errors=True)

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
        "timings": timings,
    }
    digest = state_digest(states)
    return ClusterFit(None, config, emb, out, assigners, assignments_schema(declared), digest, summary)


@dataclass
class PartDone:
    """One assigned part: its file name, rows, cluster sizes per label column, and whether a resumed
    run found it already written."""

    index: int
    name: str
    rows: int
    sizes: dict[str, np.ndarray]
    reused: bool


def assign_parts(fit: ClusterFit, indices: list[int]) -> list[PartDone]:
    """Write the assignments parts of embeddings parts ``indices`` (temp, then rename) unless one
    assigned with the same fitted states is there. Pure in the parts: any process may run any subset."""
    fit.out.parts.mkdir(parents=True, exist_ok=True)
    starts = np.concatenate([[0], np.cumsum([rows for _, rows in fit.emb.parts])])
    labels = [f.name for f in fit.schema if f.type == pa.int32()]
    k, done = fit.config.k, []
    for i in indices:
        npy, rows = fit.emb.parts[i]
        path = fit.out.parts / assignment_part_name(npy)
        table = _reusable(path, fit.digest, rows, labels)
        reused = table is not None
        if table is None:
            x = fit.emb.unit_part(i)
            columns = fit.emb.part_keys(i).select(["key", "shard"]).to_pydict()
            for name, declared, assign in fit.assigners:
                values = assign(x, int(starts[i]))
                if list(values) != declared:
                    raise RuntimeError(f"clustering method {name!r} assigned {list(values)}, not {declared}")
                columns.update(values)
            table = validate_assignments(
                pa.table({f.name: pa.array(columns[f.name], f.type) for f in fit.schema}, schema=fit.schema),
                k,
            )
            table = table.replace_schema_metadata({**table.schema.metadata, _STATE_KEY: fit.digest.encode()})
            atomic_write(path, lambda f, t=table: pq.write_table(t, f))
        sizes = {name: np.bincount(table.column(name).to_numpy(), minlength=k) for name in labels}
        done.append(PartDone(i, path.name, rows, sizes, reused))
    return done


def commit_clusters(fit: ClusterFit, done: list[PartDone], seconds: float | None = None) -> dict:
    """Check that every part is assigned, remove parts of other embeddings, write the summary and then
    ``assignments.json`` (the commit); returns the summary (without the methods' histories)."""
    ordered = parts_in_order(fit.parts, done, fit.out.parts, "cluster")
    sizes = {name: sum(d.sizes[name] for d in ordered) for name in ordered[0].sizes}
    summary = {
        **fit.summary,
        "state_sha256": fit.digest,
        "cluster_sizes": {name: np.asarray(counts).tolist() for name, counts in sizes.items()},
        "parts_reused": sum(d.reused for d in ordered),
    }
    if seconds is not None:
        summary["timings"] = {**summary["timings"], "assign_s": round(seconds, 2)}
    atomic_write_bytes(fit.out.summary, json.dumps(summary, indent=1).encode())
    commit = {
        "schema_version": CLUSTERS_SCHEMA_VERSION,
        "k": fit.config.k,
        "state_sha256": fit.digest,
        "parts": [[d.name, d.rows] for d in ordered],
    }
    atomic_write_bytes(fit.out.commit, json.dumps(commit, indent=1).encode())  # the commit
    return _without_histories(summary) | {"skipped": False}


def cluster(
    root: str | Path,
    config: ClusterConfig | None = None,
    embeddings: str | None = None,
    log=None,
) -> dict:
    """Cluster ROOT's embeddings (``embeddings``: encoder run name or directory name; default the newest)
    in this process: :func:`fit_clusters`, :func:`assign_parts` part by part, :func:`commit_clusters`
    (``cluster_flow`` maps the parts over Prefect's task runner instead). Returns the summary; the
    methods' training histories are only in ``summary.json``."""
    fit = fit_clusters(root, config, embeddings, log)
    if fit.skipped is not None:
        return fit.skipped
    start, done, reused = time.perf_counter(), [], 0
    for i in fit.parts:
        done += assign_parts(fit, [i])
        reused += done[-1].reused
        if log:
            log({"assigned_parts": i + 1, "of": len(fit.parts), "reused": reused})
    return commit_clusters(fit, done, time.perf_counter() - start)


def _reusable(path: Path, digest: str, rows: int, labels: list[str]) -> pa.Table | None:
    """The label columns of the part at ``path`` when a run with the same fitted states wrote it (a
    resumed run), else None."""
    if not path.is_file():
        return None
    try:
        meta = pq.read_metadata(path)
        if (meta.metadata or {}).get(_STATE_KEY) != digest.encode() or meta.num_rows != rows:
            return None
        return pq.read_table(path, columns=labels)
    except (OSError, pa.ArrowInvalid):
        return None


def _without_histories(summary: dict) -> dict:
    """The summary as returned to callers: the methods' training histories stay in summary.json."""
    methods = {
        m: {k: v for k, v in block.items() if k != "history"} for m, block in summary["methods"].items()
    }
    return {**summary, "methods": methods}
