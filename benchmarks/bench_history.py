"""What a run history costs: `opf.solve(..., history=path)` against the same solve without
one, side by side in one process (interleaved rounds, medians; compilation excluded).

Workloads:

1. SciPy L-BFGS-B on a ~1 ms objective (a 10-D Rosenbrock plus a chain of 512 x 512
   matrix products that adds nothing to its value), at most 200 iterations. Target:
   <= 1.05x.
2. The fused optax loop on `bench_optax.py`'s MLP (2-32-32-2, Adam, full batch 256), 2000
   steps, the objective recorded every step and the parameters every k-th. Target:
   <= 1.10x.
3. Cost per evaluation: L-BFGS-B on the 10-D Rosenbrock from zeros (the problem on which
   optimagic 0.5.3's SQLite log was measured at 0.75 ms per evaluation on this machine:
   0.139 s with the log against 0.084 s without, 73 evaluations). Target: <= 0.2x that,
   i.e. <= 0.15 ms per evaluation, everything included (opening the file, the run's row,
   pickling the problem, the rows, the final checkpoint).

XLA runs on one thread (see XLA_FLAGS below), rounds alternate their order, and the ratio
is the median of the rounds' ratios. The history runs of a workload append to one file in
a temporary folder (as a script's repeated solves do; creating a file, with its schema,
costs about 3 ms more, once). Run: `python benchmarks/bench_history.py` (about a minute),
`--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable

# XLA on one thread: its matrix products then take the same time in every round (on two
# shared cores, a multi-threaded product's time varies by +-20%, more than the history's
# cost being measured).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # SciPy works in float64 (the MLP stays float32)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench_optax import FULL_BATCH, init_mlp, make_data, mse  # noqa: E402

import optiframe as opf  # noqa: E402

OPTIMAGIC_MS_PER_EVAL = 0.75  # measured here: (0.139 s - 0.084 s) / 73 evaluations


def rosenbrock(u, p=None):
    return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


def slow_rosenbrock(u, p):
    """The Rosenbrock function plus 0 * (a chain of products of p (512, 512)): ~1 ms."""
    x = jnp.tanh(jnp.tile(u, 52)[:512])
    for _ in range(9):
        x = jnp.tanh(p @ x)
    return rosenbrock(u) + 0.0 * jnp.sum(x)


def timed(plain: Callable[[], object], history: Callable[[], object], repeats: int
          ) -> tuple[float, float, float]:
    """(median seconds without, with, and the median of the rounds' ratios): interleaved
    rounds, the order alternating, each run once first. A round's two runs are back to
    back, so the ratio of a round cancels what drifts between rounds (other processes on
    the shared cores)."""
    plain(), history()
    times: dict[str, list[float]] = {"plain": [], "history": []}
    for i in range(repeats):
        order = (("plain", plain), ("history", history))
        for name, run in order if i % 2 else order[::-1]:
            tic = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - tic)
    plain_s, history_s = statistics.median(times["plain"]), statistics.median(times["history"])
    ratios = [h / p for p, h in zip(times["plain"], times["history"])]
    return plain_s, history_s, statistics.median(ratios)


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=101)
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    steps, iters = (200, 20) if args.quick else (2000, 200)
    folder = tempfile.TemporaryDirectory()
    one, two, three = (pathlib.Path(folder.name) / f"workload{i}.sqlite" for i in range(3))
    print(f"jax {jax.__version__}, optiframe history, medians of {repeats} interleaved rounds")
    rows = []

    a = jax.random.normal(jax.random.key(0), (512, 512)) / np.sqrt(512)
    slow = opf.OptimizationProblem(slow_rosenbrock, jnp.zeros(10), a)
    lbfgs = opf.LBFGSB()
    plain, with_history, ratio = timed(
        lambda: opf.solve(slow, lbfgs, maxiters=iters),
        lambda: opf.solve(slow, lbfgs, maxiters=iters, history=one), repeats,
    )
    nfev = opf.solve(slow, lbfgs, maxiters=iters).stats.fevals
    rows.append(("SciPy L-BFGS-B, ~1 ms objective", ratio, ratio <= 1.05))
    print(f"\n1. L-BFGS-B, {nfev} evaluations of {1e3 * plain / nfev:.2f} ms: "
          f"{1e3 * plain:.1f} ms plain, {1e3 * with_history:.1f} ms with history: "
          f"{ratio:.3f}x (target <= 1.05) {'PASS' if ratio <= 1.05 else 'MISS'}")

    kdata, kinit = jax.random.split(jax.random.key(0))
    with jax.enable_x64(False):
        batch, params = make_data(kdata, FULL_BATCH), init_mlp(kinit)
    mlp = opf.OptimizationProblem(mse, params, batch)
    adam = optax.adam(1e-3)
    block = lambda sol: jax.block_until_ready(sol.u)
    plain, with_history, ratio = timed(
        lambda: block(opf.solve(mlp, adam, maxiters=steps)),
        lambda: block(opf.solve(mlp, adam, maxiters=steps, history=two)), repeats,
    )
    rows.append(("fused optax MLP", ratio, ratio <= 1.10))
    print(f"2. optax fused, MLP, {steps} steps: {steps / plain:,.0f} steps/s plain, "
          f"{steps / with_history:,.0f} with history: {ratio:.3f}x (target <= 1.10) "
          f"{'PASS' if ratio <= 1.10 else 'MISS'}")

    rosen = opf.OptimizationProblem(rosenbrock, jnp.zeros(10))
    plain, with_history, _ = timed(
        lambda: opf.solve(rosen, lbfgs), lambda: opf.solve(rosen, lbfgs, history=three),
        repeats,
    )
    nfev = opf.solve(rosen, lbfgs).stats.fevals
    per_eval = 1e3 * (with_history - plain) / nfev
    ratio = per_eval / OPTIMAGIC_MS_PER_EVAL
    rows.append(("per evaluation vs optimagic", ratio, ratio <= 0.2))
    print(f"3. L-BFGS-B, 10-D Rosenbrock, {nfev} evaluations: {1e3 * plain:.2f} ms plain, "
          f"{1e3 * with_history:.2f} ms with history: {per_eval:.3f} ms per evaluation, "
          f"{ratio:.3f}x optimagic's {OPTIMAGIC_MS_PER_EVAL} ms (target <= 0.2) "
          f"{'PASS' if ratio <= 0.2 else 'MISS'}")
    folder.cleanup()
    print(f"\n{sum(ok for *_, ok in rows)}/{len(rows)} targets met")
    return rows


if __name__ == "__main__":
    main()
