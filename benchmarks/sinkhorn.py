"""Sinkhorn-Knopp equipartition: ours (models/sinkhorn.py) against POT's ``ot.sinkhorn``, in one run.

Usage: python benchmarks/sinkhorn.py [--quick] [--stream-rows 10000000]
       python benchmarks/sinkhorn.py --embeddings ROOT/embeddings/NAME [--truth labels.csv.gz --root ROOT]

``--embeddings``: the real workload instead — the score matrices the cluster stage solves on those
embeddings (one k-means + Sinkhorn per SeLa head on ``log_softmax(sim / τ)`` at λ = 1, then every
SeLa label update on the heads' log-probabilities at the configured λ), at K = 10 on all of them and
at K = 6 on a 5,000-image subset of six classes (``--truth``): iterations, seconds and the marginal
error reached per head, and POT on the same centroid matrix at our error.

Problem (both solvers): scores ``S = log P`` with ``P = softmax(z)``, ``z ~ N(0, 1)``; cost
``M = -S``, ``reg = 1/λ``, uniform marginals, float32. Ours stops when every cluster mass is within
``--tol`` (relative) of its target; POT then gets ``stopThr`` = our final L2 column error (POT's own
stopping quantity). POT checks it only every 10th iteration and so ends below that threshold;
two equal-error comparisons are printed as well: ours run down to POT's final error
(``speedup_at_pot_error``) and POT run for the fewest iterations that reach our final error
(``speedup_at_our_error``). λ = 10 by default:
at λ = 25 POT's (non-log) ``ot.sinkhorn`` underflows in float32, stops at iteration 0 with
"numerical errors" and returns a plan whose marginals are off by 100 %, which this benchmark also
shows (the ``lambda25`` row).

Prints JSON lines: per case, both wall times (best of ``REPEATS`` runs each) and their ratios; our
time per iteration against a memory-bandwidth floor (two numpy passes ``A @ v`` and ``u @ A`` over the
same float32 array);
and for the streamed case (N × 100 read from an ``.npy`` on disk in a subprocess) the peak RSS
against ``N × K × 4`` bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lakelabel.models.sinkhorn import sinkhorn_knopp
from lakelabel.pipeline.arrays import NpyRows, write_npy_rows


def make_scores(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, k)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        out[start : start + rows] = torch.log_softmax(torch.randn(rows, k, generator=gen), dim=1)
    return out


def column_errors(plan: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    mass = plan.sum(axis=0, dtype=np.float64)
    return float(np.abs(mass / target - 1).max()), float(np.linalg.norm(mass - target))


def bandwidth_floor(a: np.ndarray, repeats: int = 3) -> float:
    v, u = np.ones(a.shape[1], np.float32), np.ones(a.shape[0], np.float32)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ v
        u @ a
        best = min(best, time.perf_counter() - start)
    return best


#: Timed calls per solver (best kept). The first call of a process pays first-touch page faults for
#: its N × K buffer (0.4 s for 400 MB on this VM), POT's too; the machine is shared, so single
#: timings vary by up to 2×.
REPEATS = 5


def best_of(repeats: int, run):
    """``(best wall seconds, last result)`` of ``repeats`` calls (warm thread pools and allocator)."""
    best, result = np.inf, None
    for _ in range(repeats):
        result = None
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def in_memory_case(n: int, k: int, lam: float, tol: float) -> dict:
    import ot

    scores = make_scores(n, k, seed=0)
    ours_s, ours = best_of(REPEATS, lambda: sinkhorn_knopp(scores, lam, tol=tol, max_iter=10_000))
    one_iter_s, _ = best_of(REPEATS, lambda: sinkhorn_knopp(scores, lam, tol=1e9, max_iter=1))
    per_iter = max(ours_s - one_iter_s, 0.0) / max(ours.iterations - 1, 1)
    floor = bandwidth_floor(scores.numpy())

    cost = -scores.numpy()
    a, b = np.full(n, 1 / n, dtype=np.float32), np.full(k, 1 / k, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pot_s, (plan, log) = best_of(
            REPEATS,
            lambda: ot.sinkhorn(a, b, cost, 1 / lam, stopThr=ours.l2_error, numItermax=100_000, log=True),
        )
        pot_rel, pot_l2 = column_errors(plan, b)
        del plan
        # POT can stop only every 10th iteration: the fewest POT iterations that reach our final
        # error (bisection on numItermax, stopThr=0), timed on their own = POT at exactly our error
        lo, hi = 1, int(log["niter"])
        while lo < hi:
            mid = (lo + hi) // 2
            plan = ot.sinkhorn(a, b, cost, 1 / lam, stopThr=0.0, numItermax=mid)
            lo, hi = (lo, mid) if column_errors(plan, b)[0] <= ours.marginal_error else (mid + 1, hi)
            del plan
        pot_eq_s, _ = best_of(REPEATS, lambda: ot.sinkhorn(a, b, cost, 1 / lam, stopThr=0.0, numItermax=lo))
    # POT checks its error every 10 iterations and so overshoots: also time ours to POT's final error
    ours_eq_s, ours_eq = best_of(REPEATS, lambda: sinkhorn_knopp(scores, lam, tol=pot_rel, max_iter=10_000))
    return {
        "case": f"{n}x{k}",
        "lambda": lam,
        "ours_s": round(ours_s, 3),
        "ours_iterations": ours.iterations,
        "ours_max_rel_error": ours.marginal_error,
        "ours_l2_error": ours.l2_error,
        "pot_s": round(pot_s, 3),
        "pot_iterations": int(log["niter"]),
        "pot_max_rel_error": pot_rel,
        "pot_l2_error": pot_l2,
        "speedup_vs_pot": round(pot_s / ours_s, 2),
        "pot_iterations_to_our_error": lo,
        "pot_s_to_our_error": round(pot_eq_s, 3),
        "speedup_at_our_error": round(pot_eq_s / ours_s, 2),
        "ours_s_at_pot_error": round(ours_eq_s, 3),
        "ours_iterations_at_pot_error": ours_eq.iterations,
        "speedup_at_pot_error": round(pot_s / ours_eq_s, 2),
        "ours_s_per_iteration": round(per_iter, 4),
        "floor_s_two_numpy_passes": round(floor, 4),
        "per_iteration_vs_floor": round(per_iter / floor, 2),
        "target_speedup_met": pot_s / ours_s >= 5,
        "target_floor_met": per_iter / floor <= 2,
    }


def pot_at_lambda_25(n: int = 20_000, k: int = 1000) -> dict:
    import ot

    scores = make_scores(n, k, seed=1)
    a, b = np.full(n, 1 / n, dtype=np.float32), np.full(k, 1 / k, dtype=np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = ot.sinkhorn(a, b, -scores.numpy(), 1 / 25, numItermax=1000)
    ours = sinkhorn_knopp(scores, 25.0, tol=1e-3)
    return {
        "case": f"lambda25 {n}x{k}",
        "pot_max_rel_error": column_errors(plan, b)[0],
        "pot_warnings": sorted({str(w.message)[:60] for w in caught}),
        "ours_max_rel_error": ours.marginal_error,
        "ours_lambda25_converged": ours.converged,
        "ours_iterations": ours.iterations,
        "ours_finite": bool(torch.isfinite(ours.log_scale).all()),
    }


def streamed_case(n: int, k: int, lam: float, tol: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="lakelabel-sinkhorn-") as tmp:
        path = Path(tmp) / "scores.npy"
        subprocess.run(
            [sys.executable, __file__, "--_write", str(path), "--_n", str(n), "--_k", str(k)], check=True
        )
        out = subprocess.run(
            [sys.executable, __file__, "--_solve", str(path), "--lam", str(lam), "--tol", str(tol)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    matrix_bytes = n * k * 4
    result.update(
        case=f"streamed {n}x{k}",
        matrix_mib=round(matrix_bytes / 2**20),
        peak_rss_fraction_of_matrix=round(result["peak_rss_mib"] * 2**20 / matrix_bytes, 4),
        solver_growth_fraction_of_matrix=round(
            (result["peak_rss_mib"] - result["rss_before_solve_mib"]) * 2**20 / matrix_bytes, 4
        ),
    )
    return result


def _write(path: str, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(2)
    chunks = (
        torch.log_softmax(torch.randn(min(65536, n - s), k, generator=gen), dim=1).numpy()
        for s in range(0, n, 65536)
    )
    write_npy_rows(path, chunks, n, k)


def _status_mib(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process (``ru_maxrss`` survives exec and would report the parent's
    peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _solve(path: str, lam: float, tol: float) -> None:
    rows = NpyRows(path, chunk_rows=65536)
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    result = sinkhorn_knopp(rows, lam, n_rows=rows.n_rows, n_cols=rows.n_cols, tol=tol, max_iter=200)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "iterations": result.iterations,
                "converged": result.converged,
                "max_rel_error": result.marginal_error,
                "s_per_iteration": round(seconds / result.iterations, 3),
                "rss_before_solve_mib": round(before, 1),
                "peak_rss_mib": round(peak, 1),
            }
        )
    )


def real_cases(directory: str, truth: str | None, root: str | None) -> list[dict]:
    """The cluster stage's own Sinkhorn problems on real embeddings (see the module docstring)."""
    from lakelabel.data_specs.embeddings import read_embeddings
    from lakelabel.pipeline.clustering import METHODS, ClusterInputs
    from lakelabel.pipeline.config import ClusterConfig

    emb = read_embeddings(directory)
    x = emb.matrix(np.float32)
    cases = [(f"{emb.n} images, K=10", x, 10)]
    if truth:
        from lakelabel.pipeline.truth import attach_keys, read_label_csv

        labels = attach_keys(root or Path(directory).parents[1], read_label_csv(truth)).drop_duplicates("key")
        label = labels.set_index("key").label.reindex(emb.keys).to_numpy()
        rows = np.flatnonzero(np.isin(label, [0, 1, 2, 3, 4, 5]))[:5000]
        cases.append((f"{len(rows)} images of 6 classes, K=6", x[rows], 6))
    out = []
    for name, matrix, k in cases:
        config = ClusterConfig(k=k, methods=["sinkhorn", "sela"])
        inputs = ClusterInputs(matrix, k, config)
        heads = []
        for t in range(config.sela.heads):
            inputs.kmeans(t)
            start = time.perf_counter()
            solved = inputs.balanced(t)
            heads.append(
                {
                    "iterations": solved.result.iterations,
                    "seconds": round(time.perf_counter() - start, 3),
                    "marginal_error": round(solved.result.marginal_error, 6),
                    "lambda": solved.result.lam,
                }
            )
        start = time.perf_counter()
        sela = METHODS["sela"](config.sela).run(inputs)
        updates = sela.summary["sinkhorn_iterations"]
        row = {
            "case": name,
            "centroid_scores": {"tau": config.sinkhorn.centroid_temperature, "heads": heads},
            "sela_label_updates": {
                "lambda": config.sela.lam,
                "iterations_per_update_per_head": updates,
                "max": max(sum(updates, [])),
                "sela_seconds": round(time.perf_counter() - start, 2),
            },
        }
        row["max_iterations"] = max(row["sela_label_updates"]["max"], *(h["iterations"] for h in heads))
        row["target_50_met"] = row["max_iterations"] <= 50
        row["vs_pot"] = _pot_on(inputs, config)
        out.append(row)
    return out


def _pot_on(inputs, config) -> dict:
    """Ours against POT on head 0's centroid-score matrix (λ = 1), POT stopped at our L2 error."""
    import ot

    scores = torch.log_softmax(inputs.similarities(0) / config.sinkhorn.centroid_temperature, dim=1)
    ours_s, ours = best_of(REPEATS, lambda: sinkhorn_knopp(scores, 1.0, tol=config.sinkhorn.tol))
    n, k = scores.shape
    a, b = np.full(n, 1 / n, dtype=np.float32), np.full(k, 1 / k, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pot_s, (plan, log) = best_of(
            REPEATS,
            lambda: ot.sinkhorn(
                a, b, -scores.numpy(), 1.0, stopThr=ours.l2_error, numItermax=100_000, log=True
            ),
        )
    pot_rel = column_errors(plan, b)[0]
    # POT checks its error every 10th iteration and so ends far below stopThr: ours to that error too
    ours_eq_s, ours_eq = best_of(REPEATS, lambda: sinkhorn_knopp(scores, 1.0, tol=max(pot_rel, 1e-7)))
    return {
        "ours_s": round(ours_s, 4),
        "ours_iterations": ours.iterations,
        "ours_max_rel_error": round(ours.marginal_error, 6),
        "pot_s": round(pot_s, 4),
        "pot_iterations": int(log["niter"]),
        "pot_max_rel_error": round(pot_rel, 7),
        "speedup_vs_pot": round(pot_s / ours_s, 2),
        "ours_s_at_pot_error": round(ours_eq_s, 4),
        "ours_iterations_at_pot_error": ours_eq.iterations,
        "speedup_at_pot_error": round(pot_s / ours_eq_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--lam", type=float, default=10.0)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--stream-rows", type=int, default=10_000_000)
    parser.add_argument("--embeddings", help="real workload: an embeddings directory (ROOT/embeddings/NAME)")
    parser.add_argument("--truth", help="with --embeddings: ground truth, to build the 6-class subset")
    parser.add_argument("--root", help="with --truth: the ROOT whose manifest maps paths to keys")
    parser.add_argument("--_write")
    parser.add_argument("--_solve")
    parser.add_argument("--_n", type=int)
    parser.add_argument("--_k", type=int)
    args = parser.parse_args()
    if args._write:
        return _write(args._write, args._n, args._k)
    if args._solve:
        return _solve(args._solve, args.lam, args.tol)
    torch.manual_seed(0)
    if args.embeddings:
        for row in real_cases(args.embeddings, args.truth, args.root):
            print(json.dumps(row), flush=True)
        return
    cases = [(20_000, 1000), (100_000, 100)] if args.quick else [(200_000, 1000), (1_000_000, 100)]
    results = [in_memory_case(n, k, args.lam, args.tol) for n, k in cases]
    results.append(pot_at_lambda_25())
    results.append(streamed_case(100_000 if args.quick else args.stream_rows, 100, args.lam, args.tol))
    for row in results:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
