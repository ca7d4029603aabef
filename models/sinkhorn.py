"""Sinkhorn-Knopp equipartition for self-labelling (SeLa: Asano, Rupprecht & Vedaldi, ICLR 2020, §3.1).

Problem. Scores ``S`` ``(N, K)`` (log-probabilities, logits or centroid similarities) and a sharpness
``λ``. Find ``Q = diag(α) exp(λS) diag(β)`` whose rows each sum to 1 and whose columns sum to
``N · target`` (uniform ``1/K`` by default): the entropic optimal transport of SeLa eq. (6), i.e.
POT's ``ot.sinkhorn(1/N, target, M=-S, reg=1/λ)`` scaled by ``N``.

Representation. The whole solution is one K-vector ``b`` (log column scaling): row ``i`` of ``Q`` is
``softmax(λ S_i + b)``. Any process can therefore assign its own rows once it holds ``b``.

Structure (as SwAV's distributed Sinkhorn, Caron et al. 2020, Alg. 1). One iteration is one pass
over the rows in chunks; every chunk contributes a partial column mass ``Σ_i softmax(λS_i + b)``
(a K-vector); the partials are summed — in this process, or across processes/machines by the
``reduce`` callable (e.g. ``torch.distributed.all_reduce``) — and ``b`` is updated from the total.
Rows are never all in memory at once unless the caller passes one tensor; ``N × K`` is never
materialised beyond one chunk in the streaming path.

Numerics. Everything is float32 and max-shifted (softmax form), so no overflow for any ``λ``
(25, 1e3, 1e6): a column whose mass underflows to 0 gets a large but finite boost instead of
``inf``. The in-memory fast path precomputes the row-max-shifted kernel ``exp(λ(S_i - max S_i))``
once (the same pass yields iteration 1's column mass) and runs the two matrix-vector products of
classic Sinkhorn on each cache-resident chunk (one memory pass per iteration, one thread per core
over contiguous runs of chunks, chunk partials summed in float64); it falls back to the exact
log-domain pass if a row sum underflows.
Convergence: the column marginal error after exact row normalisation (rows are exact by
construction). The column update is over-relaxed (``b += ω (log target − log mass)``, Thibault et
al. 2021, "Overrelaxed Sinkhorn-Knopp"); ``ω`` drops to 1 (plain Sinkhorn, globally convergent) as
soon as the error stops falling.
"""

from __future__ import annotations

import math
import mmap
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

#: Smallest column mass used in ``log``: keeps ``b`` finite when a column underflows entirely.
_TINY = torch.finfo(torch.float32).tiny

ChunkSource = Callable[[], Iterable[torch.Tensor]]


@dataclass
class SinkhornResult:
    """``log_scale`` ``(K,)``: the solution (row ``i`` of Q is ``softmax(λ S_i + log_scale)``)."""

    log_scale: torch.Tensor
    lam: float
    iterations: int
    marginal_error: float  # max_j |mass_j / (N target_j) - 1| at the last iteration
    l2_error: float  # ||mass / N - target||_2 (POT's stopping quantity) at the last iteration
    converged: bool
    n_rows: int


def tensor_chunks(scores: torch.Tensor, chunk_rows: int) -> ChunkSource:
    """Chunk source over an in-memory ``(N, K)`` tensor (views, no copies)."""
    return lambda: (scores[i : i + chunk_rows] for i in range(0, scores.shape[0], chunk_rows))


def check_target(target: torch.Tensor | None, k: int) -> torch.Tensor:
    """Validate a column-marginal target ``(K,)``: positive, finite; normalised to sum 1."""
    if target is None:
        return torch.full((k,), 1.0 / k)
    target = torch.as_tensor(target, dtype=torch.float64).flatten()
    if target.numel() != k:
        raise ValueError(f"target has {target.numel()} entries, scores have {k} columns")
    if not torch.isfinite(target).all() or (target <= 0).any():
        raise ValueError(f"target must be positive and finite, got {target.tolist()}")
    return (target / target.sum()).float()


def sinkhorn_knopp(
    scores: torch.Tensor | ChunkSource,
    lam: float,
    *,
    n_rows: int | None = None,
    n_cols: int | None = None,
    target: torch.Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 1000,
    chunk_rows: int | None = None,
    overrelax: float = 1.8,
    cache_kernel: bool = True,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    init_log_scale: torch.Tensor | None = None,
) -> SinkhornResult:
    """Solve the equipartition problem; returns the log column scaling ``b`` ``(K,)``.

    ``scores``: ``(N, K)`` tensor, or a zero-argument callable returning a fresh iterator of
    ``(n_c, K)`` chunks in a fixed row order (a file, a memory map, this worker's shards) — then
    ``n_cols`` is required and ``n_rows`` is this process's row count. ``target``: ``(K,)`` column
    proportions (uniform when None). ``tol``: stop when every cluster's mass is within ``tol``
    (relative) of its target. ``reduce``: in-place sum of a tensor across processes (identity when
    None); with it each process passes only its own rows and all get the same ``b``.
    ``chunk_rows``: rows per chunk of a tensor input (default: 2 MiB of scores, resident in a core's L2).
    """
    lam = float(lam)
    if not math.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam must be a positive finite number, got {lam!r}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if not 1.0 <= overrelax < 2.0:
        raise ValueError(f"overrelax must be in [1, 2), got {overrelax!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if isinstance(scores, torch.Tensor):
        if scores.ndim != 2 or scores.shape[1] < 1:
            raise ValueError(f"scores must be (N, K) with K >= 1, got shape {tuple(scores.shape)}")
        n_rows, n_cols = scores.shape
        chunk_rows = chunk_rows or max(64, 2**19 // n_cols)
        source = tensor_chunks(scores, chunk_rows)
    else:
        if n_cols is None or n_rows is None:
            raise ValueError("a chunk source needs n_rows and n_cols")
        source = scores
        cache_kernel = False
    reduce = reduce or (lambda t: t)
    target = check_target(target, n_cols)
    total_rows = float(reduce(torch.tensor([float(n_rows)], dtype=torch.float64)).item())
    if total_rows < 1:
        raise ValueError("scores have no rows")
    log_target_mass = torch.log(target.double() * total_rows).float()
    b = torch.zeros(n_cols) if init_log_scale is None else init_log_scale.float().clone()

    threads = torch.get_num_threads() if cache_kernel and scores.device.type == "cpu" else 1
    with _Workers(threads) as workers:
        kernels: list[torch.Tensor] | None = None
        first_mass: torch.Tensor | None = None
        if cache_kernel:  # the kernel pass also yields iteration 1's mass (one memory pass saved)
            kernels, first_mass = _row_kernels(source(), lam, n_rows, n_cols, b, workers)
        omega, best, iterations, err, l2 = overrelax, math.inf, 0, math.inf, math.inf
        previous_step: torch.Tensor | None = None
        for iterations in range(1, max_iter + 1):
            mass = None
            if first_mass is not None:
                mass, first_mass = first_mass, None
            elif kernels is not None:
                mass = _mass_from_kernels(kernels, b, workers)
                if mass is None:  # a row sum underflowed: exact log-domain passes from here on
                    kernels = None
            if mass is None:
                mass = _mass_log_domain(source(), lam, b).cpu()
            mass = reduce(mass.double()).float()
            rel = mass / torch.exp(log_target_mass)
            err = float((rel - 1).abs().max())
            l2 = float(torch.linalg.vector_norm((mass - torch.exp(log_target_mass)) / total_rows))
            if err <= tol:
                return SinkhornResult(b, lam, iterations, err, l2, True, int(total_rows))
            step = log_target_mass - torch.log(mass.clamp_min(_TINY))
            if err > best or (previous_step is not None and float(step @ previous_step) < 0):
                # over-relaxation stopped helping (error rose, or the step reversed: overshoot);
                # plain Sinkhorn converges globally
                omega = 1.0
            best, previous_step = min(best, err), step
            b = b + omega * step
            b = b - b.max()  # softmax is shift-invariant; keeps b bounded
        return SinkhornResult(b, lam, iterations, err, l2, False, int(total_rows))


def _row_kernels(
    chunks: Iterable[torch.Tensor], lam: float, n_rows: int, n_cols: int, b: torch.Tensor, workers: _Workers
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """``exp(λ(S_i − max_j S_ij))`` chunk by chunk into one buffer (entries in (0, 1], row max 1),
    and the column mass at ``b`` from each chunk while it is still in cache (None if a row underflowed)."""
    pairs, start, buffer = [], 0, None
    for chunk in chunks:
        if buffer is None:
            buffer = _empty_float32(n_rows * n_cols, chunk.device).view(n_rows, n_cols)
        pairs.append((chunk, buffer[start : start + chunk.shape[0]]))
        start += chunk.shape[0]
    w = torch.exp(b - b.max())

    def build(group: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        acc = torch.zeros(n_cols, dtype=torch.float64, device=buffer.device)
        wd = w.to(buffer.device)
        for chunk, view in group:
            torch.mul(chunk, lam, out=view)
            view.sub_(view.amax(dim=1, keepdim=True)).exp_()  # amax: 10x faster than max(dim) (no indices)
            acc += torch.mv(view.T, torch.mv(view, wd).reciprocal_())
        return acc

    acc = workers.total(build, pairs)
    kernels = [view for _, view in pairs]
    return kernels, ((acc * w).float() if bool(torch.isfinite(acc).all()) else None)


def _empty_float32(n: int, device: torch.device | None = None) -> torch.Tensor:
    """An uninitialised float32 buffer; large ones on transparent huge pages (Linux).

    Faulting in 4 KiB pages costs ~1 s per GB on a VM, more than all Sinkhorn iterations; with
    ``MADV_HUGEPAGE`` the same buffer is ready in ~0.05 s.
    """
    nbytes = 4 * n
    if device is not None and torch.device(device).type != "cpu":
        return torch.empty(n, device=device)
    if nbytes < 64 * 2**20 or not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(n)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(region, dtype=torch.float32)  # the tensor keeps the mapping alive


class _Workers:
    """Sum a per-chunk K-vector over chunk groups on CPU threads.

    ``torch.mv`` on a cache-sized chunk runs on one core (it is below torch's parallel grain), so
    one Python thread per core, each on a contiguous run of chunks (torch releases the GIL), halves
    an iteration on 2 cores. The partials are added in a fixed order: results are deterministic
    for a given thread count. One thread (or a GPU tensor): a plain loop.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def total(self, fn: Callable[[list], torch.Tensor], items: list) -> torch.Tensor:
        if self.pool is None or len(items) < 2 * self.threads:
            return fn(items).cpu()
        bounds = [round(i * len(items) / self.threads) for i in range(self.threads + 1)]
        parts = list(self.pool.map(fn, [items[a:z] for a, z in zip(bounds[:-1], bounds[1:], strict=True)]))
        return torch.stack(parts).sum(0).cpu()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _mass_from_kernels(
    kernels: list[torch.Tensor], b: torch.Tensor, workers: _Workers
) -> torch.Tensor | None:
    w = torch.exp(b - b.max())

    def mass(group: list[torch.Tensor]) -> torch.Tensor:
        wd = w.to(group[0].device)
        acc = torch.zeros_like(wd, dtype=torch.float64)
        for kernel in group:
            # chunk partials summed in float64 (``addmv_`` into a running float32 total would add
            # every row to the total: relative error ~1e-4 at a million rows)
            acc += torch.mv(kernel.T, torch.mv(kernel, wd).reciprocal_())
        return acc

    acc = workers.total(mass, kernels)
    if not bool(torch.isfinite(acc).all()):  # some row sum underflowed to 0 (1/0 = inf)
        return None
    return (acc * w).float()


def _mass_log_domain(chunks: Iterator[torch.Tensor] | Iterable[torch.Tensor], lam: float, b: torch.Tensor):
    acc = torch.zeros_like(b, dtype=torch.float64)
    for chunk in chunks:
        acc += torch.softmax(chunk.float() * lam + b.to(chunk.device), dim=1).sum(0).to(acc.device)
    return acc


def sinkhorn_assign(
    scores: torch.Tensor, lam: float, log_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard labels and their posterior for a chunk: ``argmax`` and ``max`` of ``softmax(λS + b)``.

    ``scores`` ``(n, K)``, ``log_scale`` ``(K,)`` from :func:`sinkhorn_knopp` → ``(n,)`` int64,
    ``(n,)`` float32.
    """
    q = torch.softmax(scores.float() * float(lam) + log_scale, dim=1)
    posterior, labels = q.max(dim=1)
    return labels, posterior


@dataclass
class BalancedScaling:
    result: SinkhornResult  # the last solve (its ``lam`` is the λ finally used)
    imbalance: float  # max_j |count_j / (N target_j) - 1| of the hard labels argmax(λS + b)


def balanced_scaling(
    scores: torch.Tensor | ChunkSource,
    lam: float,
    *,
    balance: float = 0.1,
    max_lam_factor: float = 64.0,
    **kwargs,
) -> BalancedScaling:
    """The Sinkhorn solution whose hard labels ``argmax(λS + b)`` have cluster sizes within ``balance``
    of the target, found without holding the labels: each candidate's sizes are counted chunk by chunk.

    Sinkhorn makes the *soft* marginals exact; when rows are diffuse (an untrained head, similar
    scores) the argmax can still be unbalanced. Then λ is doubled (warm-started: ``b`` scales with
    λ) up to ``lam × max_lam_factor``; as λ grows the rounding approaches the exact balanced
    assignment. ``kwargs`` go to :func:`sinkhorn_knopp` (``target``, ``tol``, ``n_rows``/``n_cols``,
    ``reduce`` …); with ``reduce`` the counts are summed across processes too.
    """
    if not balance > 0:
        raise ValueError(f"balance must be > 0, got {balance!r}")
    source = tensor_chunks(scores, 1 << 16) if isinstance(scores, torch.Tensor) else scores
    target, reduce = kwargs.get("target"), kwargs.get("reduce") or (lambda t: t)
    init, current, limit = kwargs.pop("init_log_scale", None), float(lam), float(lam) * max_lam_factor
    while True:
        result = sinkhorn_knopp(scores, current, init_log_scale=init, **kwargs)
        k = result.log_scale.numel()
        counts = torch.zeros(k, dtype=torch.float64)
        for chunk in source():
            labels, _ = sinkhorn_assign(chunk, current, result.log_scale.to(chunk.device))
            counts += torch.bincount(labels.cpu(), minlength=k).double()
        counts = reduce(counts)
        expected = check_target(target, k).double() * result.n_rows
        imbalance = float((counts / expected - 1).abs().max())
        if imbalance <= balance or current * 2 > limit:
            return BalancedScaling(result, imbalance)
        init, current = result.log_scale * 2, current * 2


@dataclass
class BalancedLabels:
    labels: torch.Tensor  # (N,) int64
    posterior: torch.Tensor  # (N,) float32, max of softmax(λS + b)
    result: SinkhornResult  # the last solve (its ``lam`` is the λ finally used)
    imbalance: float  # max_j |count_j / (N target_j) - 1| of the hard labels


def balanced_labels(scores: torch.Tensor | ChunkSource, lam: float, **kwargs) -> BalancedLabels:
    """:func:`balanced_scaling`, then every row's hard label and posterior in memory (``(N,)`` each);
    per-chunk labels of a large input come from :func:`sinkhorn_assign` with the scaling instead."""
    solved = balanced_scaling(scores, lam, **kwargs)
    source = tensor_chunks(scores, 1 << 16) if isinstance(scores, torch.Tensor) else scores
    parts = [sinkhorn_assign(chunk, solved.result.lam, solved.result.log_scale) for chunk in source()]
    labels = torch.cat([p[0] for p in parts])
    posterior = torch.cat([p[1] for p in parts])
    return BalancedLabels(labels, posterior, solved.result, solved.imbalance)
