"""Gradient flows against L-BFGS-B and Adam: gradient evaluations and wall time to reach
`f(u) - f* <= 1e-6` (the `--target`).

Problems (from tests/problems.py; f* = 0 for each):

  least squares   the Discourse seed: A is 50x5, U is 5x2, B = A U, minimise
                  1/2 ||A X - B||^2 from a random X0; curvatures 2.1 ... 76;
  Rosenbrock      (1 - x)^2 + 100 (y - x^2)^2 from (1.5, 2): a curved valley, curvature
                  up to ~2,000 on the way, ~0.4 along the valley at the minimum;
  stiff quadratic 1/2 sum lambda_i u_i^2, lambda log-spaced from 1 to 1,000, from ones(10);
  rotated stiff   the same quadratic in a random orthonormal basis (not axis-aligned, so
                  a diagonal preconditioner such as Adam's gains nothing from it).

Contenders:

  Euler (dt)      opf.ODEGradientDescent(dt): dt = 0.01, the step of Optimization.jl's
                  docs, and the largest stable step for the problem rounded down
                  (below 2 / lambda_max);
  Tsit5           opf.RKAccelerated() (integration tolerances rtol=1e-6, atol=1e-8), and
                  with an ODE solver's usual rtol=1e-3, atol=1e-6;
  Dopri8          opf.HighOrderDescent();
  RKC             opf.RKChebyshevDescent();
  L-BFGS-B        scipy.optimize.minimize(method="L-BFGS-B", jac=True) on a jitted JAX
                  value-and-gradient, called directly (optiframe's own SciPy backend is not
                  used, so this measures SciPy itself);
  Adam            opf.solve(prob, optax.adam(lr)), with the best lr of 1e-3, 1e-2, 1e-1.

Method. Each contender is first run step by step (a callback; for SciPy its `callback`)
to find the first iteration `k` at which the target is met, with a cap of `--cap`
iterations. Then the timed run is `opf.solve(..., maxiters=k)` (for SciPy, `maxiter=k`),
fused, no stopping test, compiled beforehand: its `stats.gevals` (SciPy: `nfev`, every
call returns value and gradient) is the gradient count, and the median wall time of
`--repeats` runs is reported. A contender that does not meet the target within the cap is
reported with the objective it reached. Every count includes the final evaluation of the
objective.

SciPy runs with one BLAS thread (threadpoolctl, when installed; otherwise set
OPENBLAS_NUM_THREADS=1): its per-iteration BLAS calls on tiny matrices are otherwise
dominated by OpenBLAS's thread pool on a busy machine.

Precision: whatever JAX runs in (float32 unless JAX_ENABLE_X64=1; SciPy always gets
float64 arrays). The table in docs/ode.md is from `JAX_ENABLE_X64=1`.

Run: `JAX_ENABLE_X64=1 python benchmarks/bench_ode.py` (a few minutes on two cores), or
`--quick` for a smoke run (least squares only, Euler at dt = 0.01, Tsit5, RKC, L-BFGS-B
and Adam at lr = 0.1, small caps).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

import optiframe as opf

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: then set OPENBLAS_NUM_THREADS=1 yourself
    threadpool_limits = None

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from problems import (  # noqa: E402
    LEAST_SQUARES,
    ROSENBROCK_FAR,
    STIFF_LAMBDAS,
    STIFF_QUADRATIC,
    Problem,
)

# The stiff quadratic in a random orthonormal basis: the same spectrum, but no longer
# axis-aligned, so that a per-coordinate (diagonal) preconditioner such as Adam's gains
# nothing from the basis.
_Q = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 10)))[0]


def rotated_quadratic(u, p):
    return 0.5 * u @ (p @ u)


ROTATED_QUADRATIC = Problem(
    "rotated stiff quadratic", rotated_quadratic, jnp.ones(10),
    jnp.asarray(_Q.T @ np.diag(STIFF_LAMBDAS) @ _Q), np.zeros(10), 0.0,
)
PROBLEMS = {
    "least squares": (LEAST_SQUARES, 0.025),  # largest stable Euler step: 2 / 76 = 0.026
    "Rosenbrock": (ROSENBROCK_FAR, 1e-3),  # 2 / 2000 = 1e-3 at the start
    "stiff quadratic": (STIFF_QUADRATIC, 1.9e-3),  # 2 / 1000
    "rotated stiff": (ROTATED_QUADRATIC, 1.9e-3),
}
ADAM_RATES = (1e-3, 1e-2, 1e-1)
QUICK = ("Euler (dt=0.01)", "Tsit5 (rtol=1e-6)", "RKC (rtol=1e-3)")  # and L-BFGS-B, Adam


@dataclasses.dataclass
class Row:
    problem: str
    method: str
    iterations: int | None  # to the target; None if not reached within the cap
    gevals: int | None
    seconds: float | None  # median wall time of the run to the target
    best: float  # f - f* reached (at the target iteration, or the best seen within the cap)
    note: str = ""

    @property
    def reached(self) -> bool:
        return self.iterations is not None


class _Reached(Exception):
    pass


def _median_time(run: Callable[[], Any], repeats: int) -> float:
    run()  # compiled and warm
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def first_hit(prob: opf.OptimizationProblem, alg: Any, f_star: float, target: float,
              cap: int) -> tuple[int | None, float]:
    """(first iteration meeting the target, or None; best f - f* seen), by a callback."""
    best = [np.inf]

    def callback(state: opf.OptimizationState, loss: float) -> bool:
        best[0] = min(best[0], loss - f_star)
        return loss - f_star <= target

    sol = opf.solve(prob, alg, maxiters=cap, callback=callback)
    if sol.retcode is opf.ReturnCode.Terminated:
        return sol.stats.iterations, best[0]
    return None, min(best[0], sol.objective - f_star)


def run_opf(name: str, label: str, prob: opf.OptimizationProblem, alg: Any, f_star: float,
            args: argparse.Namespace, note: str = "", before_update: bool = False) -> Row:
    """`before_update`: the callback's iterate is the one before the iteration's update (the
    optax backend), so the target is met after `k - 1` iterations."""
    k, best = first_hit(prob, alg, f_star, args.target, args.cap)
    if k is None:
        return Row(name, label, None, None, None, best, note)
    k = max(k - 1, 1) if before_update else k
    sol = opf.solve(prob, alg, maxiters=k)
    gap = sol.objective - f_star
    if not gap <= args.target * 1.01:
        raise AssertionError(f"{label} on {name}: the fused run ends at {gap:.3g}")
    seconds = _median_time(lambda: jax.block_until_ready(opf.solve(prob, alg, maxiters=k).u),
                           args.repeats)
    return Row(name, label, k, sol.stats.gevals, seconds, gap, note)


def run_lbfgsb(name: str, problem: Any, f_star: float, args: argparse.Namespace) -> Row:
    """SciPy's L-BFGS-B on a jitted JAX value-and-gradient, float64 at the boundary, with
    one BLAS thread (see `single_blas_thread`)."""
    with single_blas_thread():
        return _run_lbfgsb(name, problem, f_star, args)


def single_blas_thread() -> contextlib.AbstractContextManager:
    """L-BFGS-B calls BLAS on tiny matrices every iteration; OpenBLAS's thread pool then
    costs milliseconds per call on a busy machine (on a loaded 2-core machine, 60
    iterations took 470 ms with the default threads and 2.8 ms with one)."""
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _run_lbfgsb(name: str, problem: Any, f_star: float, args: argparse.Namespace) -> Row:
    shape = np.shape(problem.u0)
    value_and_grad = jax.jit(jax.value_and_grad(problem.fun))
    p = problem.p

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(jnp.asarray(x.reshape(shape)), p)
        return float(value), np.asarray(grad, np.float64).ravel()

    x0 = np.asarray(problem.u0, np.float64).ravel()
    history = []

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        history.append(intermediate_result.fun - f_star)
        if history[-1] <= args.target:
            raise StopIteration

    options = dict(maxiter=args.cap, gtol=0.0, ftol=0.0)
    scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                            options=options)
    hits = [i for i, gap in enumerate(history) if gap <= args.target]
    if not hits:
        return Row(name, "L-BFGS-B (SciPy)", None, None, None, min(history, default=np.inf))
    k = hits[0] + 1
    options = dict(maxiter=k, gtol=0.0, ftol=0.0)
    result = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options)
    seconds = _median_time(
        lambda: scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options=options),
        args.repeats,
    )
    return Row(name, "L-BFGS-B (SciPy)", int(result.nit), int(result.nfev), seconds,
               float(result.fun) - f_star)


def run_adam(name: str, prob: opf.OptimizationProblem, f_star: float,
             args: argparse.Namespace) -> Row:
    rates = ADAM_RATES[-1:] if args.quick else ADAM_RATES
    rows = [
        run_opf(name, f"Adam (lr={lr:g})", prob, optax.adam(lr), f_star, args,
                before_update=True)
        for lr in rates
    ]
    reached = [r for r in rows if r.reached]
    if reached:
        return min(reached, key=lambda r: r.gevals)
    return min(rows, key=lambda r: r.best)


def contenders(euler_dt: float) -> list[tuple[str, Any, str]]:
    return [
        ("Euler (dt=0.01)", opf.ODEGradientDescent(dt=0.01), ""),
        (f"Euler (dt={euler_dt:g})", opf.ODEGradientDescent(dt=euler_dt), "stable step"),
        ("Tsit5 (rtol=1e-6)", opf.RKAccelerated(), "RKAccelerated()"),
        ("Tsit5 (rtol=1e-3)", opf.RKAccelerated(rtol=1e-3, atol=1e-6), "ODE defaults"),
        ("Dopri8 (rtol=1e-6)", opf.HighOrderDescent(), "HighOrderDescent()"),
        ("RKC (rtol=1e-3)", opf.RKChebyshevDescent(), "RKChebyshevDescent()"),
    ]


def print_table(rows: list[Row], target: float) -> None:
    header = (
        f"{'problem':<16} {'method':<20} {'iterations':>10} {'gradients':>10} "
        f"{'wall ms':>9}  {'f - f*':>9}  note"
    )
    print(f"\nTo f - f* <= {target:g}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.reached:
            cells = f"{r.iterations:>10,} {r.gevals:>10,} {1e3 * r.seconds:>9.2f}"
        else:
            cells = f"{'—':>10} {'—':>10} {'—':>9}"
        note = r.note if r.reached else f"not reached in the cap; best {r.best:.2g}"
        print(f"{r.problem:<16} {r.method:<20} {cells}  {r.best:>9.2e}  {note}")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: see the docstring")
    parser.add_argument("--target", type=float, default=1e-6, help="f - f* to reach")
    parser.add_argument("--cap", type=int, default=60_000, help="iterations per contender")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median taken)")
    args = parser.parse_args(argv)
    names = list(PROBLEMS)
    if args.quick:
        names, args.cap, args.repeats = ["least squares"], 3_000, 1
    x64 = bool(jax.config.jax_enable_x64)
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{'float64' if x64 else 'float32'} (JAX_ENABLE_X64={int(x64)}), cap {args.cap:,}"
    )
    rows = []
    for name in names:
        problem, euler_dt = PROBLEMS[name]
        prob = opf.OptimizationProblem(problem.fun, problem.u0, problem.p)
        for label, alg, note in contenders(euler_dt):
            if args.quick and label not in QUICK:
                continue
            rows.append(run_opf(name, label, prob, alg, problem.f_star, args, note))
        rows.append(run_lbfgsb(name, problem, problem.f_star, args))
        rows.append(run_adam(name, prob, problem.f_star, args))
    print_table(rows, args.target)
    return rows


if __name__ == "__main__":
    main()
