"""Many problems at once: `solve(EnsembleProblem(...), alg)` against hand-written vmapped
programs and against a Python loop of single solves, side by side in one process, float64.

Workload: N chained-Rosenbrock problems in 10 dimensions,
`f(u; a, b) = Σ b (u[i+1] - u[i]²)² + (a - u[i])²`, from u0 = 0, with (a, b) drawn per
problem from a ∈ [0.5, 1.5], b ∈ [50, 150] (fixed seed). N = 1,000 (`--quick`: 40;
`--gpu`: 100,000, the vmapped contenders only).

1. BFGS (`optx.BFGS(rtol=1e-8, atol=1e-8)`, at most 1,000 steps):
   A  `jax.vmap` over `optimistix.minimise(...)` inside one `jax.jit`, by hand;
   B  `opf.solve(EnsembleProblem(prob, ps=ps), opf.Optimistix(that solver))`;
   L  a Python loop of `opf.solve(prob.remake(p=ps[i]), opf.LBFGSB())`.
   Targets: B ≥ 0.9x A's warm throughput; B ≥ 25x L warm, and ≥ 2x L when each one's
   first call (compilation included) is counted.
2. Adam (`optax.adam(1e-3)`, 2,000 steps; `--quick`: 200):
   S  a jitted `jax.vmap` of a `lax.scan` over the steps, by hand;
   E  `opf.solve(EnsembleProblem(prob, ps=ps), optax.adam(1e-3), maxiters=steps)`.
   Target: E ≥ 0.9x S.
3. Host members: 16 problems (`--quick`: 4) whose NumPy objective costs ~20 ms (single
   threaded), solved by `opf.NelderMead()` (10 iterations each) serially and on a
   `concurrent.futures.ProcessPoolExecutor` of 2 workers (started and warmed before
   timing). Target: the pool ≥ 1.6x serial.

Warm figures are medians of `--repeats` interleaved rounds after a first call; "cold" is
the first call of each contender in the process (compilation included). The vmapped
results are checked against the loop's (the same objectives to 1e-6). `--figure PATH` also
draws the time of B and L against N (docs/ensemble_scaling.png).

Run: `python benchmarks/bench_ensemble.py` (about two minutes on two cores), `--quick` for
a smoke run, `--gpu` on a machine with a GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)  # as the baselines were measured

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import optimistix as optx  # noqa: E402

import optiframe as opf  # noqa: E402

DIM = 10
SOLVER = optx.BFGS(rtol=1e-8, atol=1e-8)


def rosenbrock(u, p):
    """Σ b (u[i+1] - u[i]²)² + (a - u[i])² with p = (a, b): minimum 0 at u = 1 for
    a = 1, elsewhere a compromise between the terms."""
    return jnp.sum(p[1] * (u[1:] - u[:-1] ** 2) ** 2 + (p[0] - u[:-1]) ** 2)


def coefficients(n: int) -> jax.Array:
    rng = np.random.default_rng(0)
    return jnp.asarray(np.stack([rng.uniform(0.5, 1.5, n), rng.uniform(50, 150, n)], axis=1))


PROBLEM = opf.OptimizationProblem(rosenbrock, jnp.zeros(DIM), jnp.array([1.0, 100.0]))


# --------------------------------------------------------------------------- contenders


@jax.jit
def hand_bfgs(ps: jax.Array) -> jax.Array:
    """The hand-written vmapped optimistix program: each problem's minimiser."""
    solve = lambda p: optx.minimise(
        rosenbrock, SOLVER, jnp.zeros(DIM), p, max_steps=1000, throw=False
    ).value
    return jax.vmap(solve)(ps)


def hand_adam(steps: int) -> Callable[[jax.Array], jax.Array]:
    opt = optax.adam(1e-3)

    @jax.jit
    def run(ps):
        def one(p):
            def body(carry, _):
                u, state = carry
                grad = jax.grad(rosenbrock)(u, p)
                updates, state = opt.update(grad, state, u)
                return (optax.apply_updates(u, updates), state), None

            u0 = jnp.zeros(DIM)
            return jax.lax.scan(body, (u0, opt.init(u0)), None, length=steps)[0][0]

        return jax.vmap(one)(ps)

    return run


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    tic = time.perf_counter()
    out = jax.block_until_ready(run())
    return time.perf_counter() - tic, out


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each contender over `repeats` interleaved rounds (each
    called once before)."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            seconds[name].append(timed(run)[0])
    return {name: statistics.median(s) for name, s in seconds.items()}


def loop_lbfgsb(ps: jax.Array) -> np.ndarray:
    return np.array([opf.solve(PROBLEM.remake(p=p), opf.LBFGSB()).objective for p in ps])


# --------------------------------------------------------------------------- host members


def busy(u, p):
    """~20 ms of single-threaded NumPy (`p` rounds of a 10⁵-element update), then a
    quadratic in u: a costly host objective."""
    x = np.linspace(0.0, 1.0, 100_000)
    for _ in range(int(p[0])):
        x = np.sin(x) * 0.5 + 0.25
    return float(np.sum((np.asarray(u) - p[1]) ** 2) + 1e-9 * x[0])


def calibrate(target: float) -> int:
    """Rounds of `busy` that take about `target` seconds here."""
    tic = time.perf_counter()
    busy(np.zeros(2), (20, 0.0))
    per_round = (time.perf_counter() - tic) / 20
    return max(1, round(target / per_round))


def _warm(_: int) -> int:
    return os.getpid()


def host_members(n: int, seconds: float) -> tuple[float, float]:
    """(serial seconds, pool seconds) for n members of `busy` with Nelder–Mead."""
    rounds = calibrate(seconds)
    f = opf.OptimizationFunction(busy, ad="finite")  # NumPy: called on the host
    prob = opf.OptimizationProblem(f, np.zeros(2), np.array([rounds, 0.0]))
    ps = np.stack([np.full(n, rounds), np.linspace(-1.0, 1.0, n)], axis=1)
    ens = opf.EnsembleProblem(prob, ps=ps)
    serial_t, serial = timed(lambda: opf.solve(ens, opf.NelderMead(), maxiters=10))
    context = multiprocessing.get_context("spawn")  # JAX's threads do not survive a fork
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        list(pool.map(_warm, range(2)))  # start the workers (imports) before timing
        opf.solve(opf.EnsembleProblem(prob, ps=ps[:2]), opf.NelderMead(), maxiters=1,
                  executor=pool)
        pool_t, pooled = timed(lambda: opf.solve(ens, opf.NelderMead(), maxiters=10,
                                                 executor=pool))
    assert np.array_equal(serial.objective, pooled.objective)
    return serial_t, pool_t


# --------------------------------------------------------------------------- the report


def report(rows: list[tuple[str, float, float]]) -> list[tuple[str, float, bool]]:
    """Print (name, ratio, target) rows; return (name, ratio, met)."""
    out = []
    for name, ratio, target in rows:
        met = ratio >= target
        print(f"  {name:<46} {ratio:>8.2f}x  target >= {target:<5}  {'PASS' if met else 'MISS'}")
        out.append((name, ratio, met))
    return out


def figure(path: str, sizes: tuple[int, ...]) -> None:
    """Seconds against N for the ensemble (warm and cold) and the loop (warm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alg = opf.Optimistix(SOLVER)
    warm, cold, loop = [], [], []
    for n in sizes:
        ps = coefficients(n)
        ens = opf.EnsembleProblem(PROBLEM, ps=ps)
        # a new function: its first solve compiles
        fresh = opf.EnsembleProblem(PROBLEM.remake(f=lambda u, p: rosenbrock(u, p)), ps=ps)
        solve = lambda ens: opf.solve(ens, alg, maxiters=1000).objective
        cold.append(timed(functools.partial(solve, fresh))[0])
        solve(ens)
        warm.append(min(timed(functools.partial(solve, ens))[0] for _ in range(3)))
        loop.append(timed(functools.partial(loop_lbfgsb, ps))[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(sizes, loop, "o-", label="loop of solve(prob.remake(p=...), LBFGSB())")
    ax.loglog(sizes, cold, "s--", label="EnsembleProblem + Optimistix(BFGS), first call")
    ax.loglog(sizes, warm, "s-", label="EnsembleProblem + Optimistix(BFGS), warm")
    ax.set_xlabel("problems N (10-D chained Rosenbrock)")
    ax.set_ylabel("seconds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--gpu", action="store_true", help="100,000 problems, vmapped only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--figure", help="draw time against N into this file")
    args = parser.parse_args(argv)
    n = 40 if args.quick else 100_000 if args.gpu else 1000
    steps = 200 if args.quick else 2000
    repeats = 2 if args.quick else args.repeats
    print(f"jax {jax.__version__}, optimistix {optx.__version__}, devices {jax.devices()}")
    ps = coefficients(n)
    ens = opf.EnsembleProblem(PROBLEM, ps=ps)
    alg = opf.Optimistix(SOLVER)
    rows = []

    print(f"\n1. BFGS on {n:,} chained-Rosenbrock problems (10-D), float64")
    cold_a, a = timed(lambda: hand_bfgs(ps))
    cold_b, b = timed(lambda: opf.solve(ens, alg, maxiters=1000).u)
    warm = interleaved({"A": lambda: hand_bfgs(ps),
                        "B": lambda: opf.solve(ens, alg, maxiters=1000).u}, repeats)
    for name, cold, what in (("A", cold_a, "hand-written vmap(optx.minimise)"),
                             ("B", cold_b, "solve(EnsembleProblem, Optimistix)")):
        print(f"  {name} {what:<38} first call {cold:.3f} s, warm {warm[name]:.4f} s")
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 1e-4, "B and A disagree"
    table = [("B / A (warm throughput)", warm["A"] / warm["B"], 0.9)]
    if not args.gpu:
        cold_l, first = timed(lambda: loop_lbfgsb(ps))
        warm_l, again = timed(lambda: loop_lbfgsb(ps))
        objectives = opf.solve(ens, alg, maxiters=1000).objective
        gap = float(np.max(np.abs(objectives - again)))
        print(f"  L {'loop of solve(..., LBFGSB())':<38} first pass {cold_l:.3f} s, "
              f"second {warm_l:.3f} s; max |f_B - f_L| = {gap:.1e}")
        assert gap < 1e-6, "the ensemble and the loop reach different objectives"
        table += [("B vs L (warm)", warm_l / warm["B"], 25.0),
                  ("B vs L (first calls, compilation included)", cold_l / cold_b, 2.0)]
    rows += report(table)

    print(f"\n2. Adam(1e-3), {steps} steps, on the same {n:,} problems")
    scan = hand_adam(steps)
    cold_s, s = timed(lambda: scan(ps))
    cold_e, e = timed(lambda: opf.solve(ens, optax.adam(1e-3), maxiters=steps).u)
    adam = optax.adam(1e-3)
    opf.solve(ens, adam, maxiters=steps)
    warm = interleaved({"S": lambda: scan(ps),
                        "E": lambda: opf.solve(ens, adam, maxiters=steps).u}, repeats)
    for name, cold, what in (("S", cold_s, "hand-written vmap(lax.scan)"),
                             ("E", cold_e, "solve(EnsembleProblem, adam)")):
        print(f"  {name} {what:<38} first call {cold:.3f} s, warm {warm[name]:.4f} s")
    assert np.max(np.abs(np.asarray(s) - np.asarray(e))) < 1e-9, "E and S disagree"
    rows += report([("E / S (warm throughput)", warm["S"] / warm["E"], 0.9)])

    if not args.gpu:
        members, seconds = (4, 0.002) if args.quick else (16, 0.02)
        print(f"\n3. {members} host members, a ~{1e3 * seconds:.0f} ms NumPy objective, "
              "Nelder-Mead (10 iterations each)")
        serial_t, pool_t = host_members(members, seconds)
        print(f"  serial {serial_t:.2f} s, ProcessPoolExecutor(2) {pool_t:.2f} s")
        rows += report([("pool / serial", serial_t / pool_t, 1.6)])

    met = sum(ok for _, _, ok in rows)
    print(f"\n{met}/{len(rows)} targets met")
    if args.figure:
        figure(args.figure, (10, 30, 100, 300, 1000))
    return rows


if __name__ == "__main__":
    main()
