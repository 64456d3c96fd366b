"""Learning to optimize, measured: a learned optimizer against tuned Adam on the sine family
of `examples/learned_optimizer.py`, and a learned warm start for SciPy's L-BFGS-B on a
family of chained-Rosenbrock problems.

Learned optimizer (`learned_optimizer_rows`, float32): Adam's learning rate is tuned over
{1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3} by its median loss after 100 steps on 20 validation
tasks; `LearnedOptimizer.adam_residual(that rate)` is meta-trained for `--maxtime` seconds
(default 120, compilation included: 16 tasks, horizon 100, unrolls of 20, the gradient
through the unroll); then both run on 20 held-out tasks (another key), each task one
member of an `EnsembleProblem` (the loss after 20, 100 and 300 steps). Targets: the
learned median loss after 100 steps <= 0.6x Adam's, after 300 steps <= 1.1x. The cost of
a step: a fused 300-step solve of one task, learned against Adam.

Warm start: the family (8 variables, 15 parameters p = (a, b)):

    f(u; a, b) = Σ_{i<7} b_i (u_{i+1} - u_i²)² + Σ_i (a_i - u_i)²,
    a_i ~ U(0.5, 1.5), b_i ~ U(10, 100), every task starting from u = 0.

The chain pulls u towards 1 (the solutions' first coordinates vary by ~0.005 across tasks,
the last by ~0.26) and the minimum moves smoothly with p. Other local minima exist (u_0 < 0
branches), but on 200 tasks none of 8 random starts each found a lower one than L-BFGS-B from
zeros; with a_i ~ U(0, 2) some did, and a start predicted near the wrong basin ended 0.64
above f*.

Warm start (`warm_start_rows`): fit on 2,000 training tasks (one L-BFGS-B ensemble; a linear
map plus an MLP 15-64-64-8), then on 100 held-out tasks (another key) run L-BFGS-B from
zeros, from the mean training solution and from the prediction. Targets: median
evaluations from the prediction <= 0.5x those from zeros; >= 99% of the warm-started solves
within 1e-6 max(|f*|, 1) of f*, the optimum L-BFGS-B finds from zeros with tight tolerances
(reltol 1e-15, abstol 1e-10). Both are measured with SciPy's default tolerances and with
the warm-start path's (`ws.solve_kwargs`: reltol 1e-11 for L-BFGS-B, see
`optiframe/warm_start.py`'s WARM_RELTOL).

Run: `python benchmarks/bench_l2o.py` (about 3 minutes: 2 of meta-training, 2,000 SciPy
solves), `--quick` for a smoke run (a few meta-iterations; 300 training tasks, 40 held out;
about 30 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import time

# OpenBLAS on one thread: L-BFGS-B's small BLAS calls gain nothing from threads, and on two
# shared cores its spinning threads made each 8-variable solve 10-100x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # SciPy works in float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import optiframe as opf  # noqa: E402

N = 8  # variables
TIGHT = dict(reltol=1e-15, abstol=1e-10)  # the reference: L-BFGS-B from zeros, to the end
SHARE_TOL = 1e-6  # "within 1e-6 max(|f*|, 1) of f*"


def chained_rosenbrock(u, p):
    """Σ b_i (u_{i+1} - u_i²)² + Σ (a_i - u_i)², p = {"a": (N,), "b": (N - 1,)}."""
    return jnp.sum(p["b"] * (u[1:] - u[:-1] ** 2) ** 2) + jnp.sum((p["a"] - u) ** 2)


def sample_p(key):
    ka, kb = jax.random.split(key)
    return {"a": jax.random.uniform(ka, (N,), minval=0.5, maxval=1.5),
            "b": jax.random.uniform(kb, (N - 1,), minval=10.0, maxval=100.0)}


def family() -> opf.ProblemFamily:
    """The chained-Rosenbrock family, every task from zeros."""
    p = {"a": jnp.ones(N), "b": jnp.full(N - 1, 50.0)}
    return opf.ProblemFamily(opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(N), p),
                             sample_p)


def counts(esol: opf.EnsembleSolution) -> tuple[float, float]:
    """Median iterations and evaluations of an ensemble's members."""
    return (statistics.median(sol.stats.iterations for sol in esol),
            statistics.median(sol.stats.fevals for sol in esol))


def within(esol: opf.EnsembleSolution, fstar: np.ndarray) -> float:
    """The share of members within SHARE_TOL max(|f*|, 1) of f*."""
    gap = np.abs(esol.objective - fstar) / np.maximum(np.abs(fstar), 1.0)
    return float(np.mean(gap <= SHARE_TOL))


def worst(esol: opf.EnsembleSolution, fstar: np.ndarray) -> float:
    """The largest |f - f*| / max(|f*|, 1) among the members."""
    return float(np.max(np.abs(esol.objective - fstar) / np.maximum(np.abs(fstar), 1.0)))


def warm_start_rows(quick: bool) -> list[tuple[str, float, bool]]:
    """Fit `opf.fit_warm_start` on the family and compare L-BFGS-B's starts on held-out
    tasks; prints a table and returns (name, value, target met) rows."""
    n_train, n_test = (300, 40) if quick else (2000, 100)
    fam, lbfgsb = family(), opf.LBFGSB()
    tic = time.perf_counter()
    ws = opf.fit_warm_start(fam, lbfgsb, n=n_train, seed=0)
    fit_s = time.perf_counter() - tic
    print(f"\nWarm start: fitted on {int(ws.used.sum())}/{n_train} tasks in {fit_s:.1f} s "
          f"(the ensemble {ws.training.stats.time:.1f} s, the map {ws.fit.stats.time:.1f} s, "
          f"final standardized MSE {ws.fit.objective:.2e}); {ws!r}, "
          f"solve_kwargs={ws.solve_kwargs}")

    ps, zeros = fam.draw(jax.random.key(12345), n_test)  # held out: another key
    prob = fam.prob
    run = lambda u0s, **kw: opf.solve(opf.EnsembleProblem(prob, ps=ps, u0s=u0s), lbfgsb, **kw)
    fstar = run(zeros, **TIGHT).objective
    mean = jnp.broadcast_to(jnp.mean(ws.training.u[ws.used], axis=0), zeros.shape)
    default = {k: None for k in ws.solve_kwargs}  # SciPy's own tolerances
    starts = [
        ("zeros", zeros, default), ("mean solution", mean, default),
        ("prediction", ws.batch(ps), default),
        ("zeros, warm-start tol.", zeros, ws.solve_kwargs),
        ("prediction, warm-start tol.", ws.batch(ps), ws.solve_kwargs),
    ]
    print(f"{n_test} held-out tasks, L-BFGS-B; f* from zeros with {TIGHT}")
    print(f"  {'start':30s} {'iters':>6s} {'evals':>6s} {'within 1e-6':>12s} {'worst gap':>10s}")
    results = {}
    for name, u0s, kw in starts:
        esol = run(u0s, **kw)
        results[name] = (*counts(esol), within(esol, fstar))
        print(f"  {name:30s} {results[name][0]:6.1f} {results[name][1]:6.1f} "
              f"{results[name][2]:12.1%} {worst(esol, fstar):10.1e}")

    rows = []
    for label, pred, cold in (("SciPy defaults", "prediction", "zeros"),
                              ("warm-start tol.", "prediction, warm-start tol.",
                               "zeros, warm-start tol.")):
        ratio = results[pred][1] / results[cold][1]
        share = results[pred][2]
        rows.append((f"evaluations prediction/zeros, {label}", ratio, ratio <= 0.5))
        rows.append((f"share within 1e-6, {label}", share, share >= 0.99))
        print(f"  {label}: evaluations {ratio:.2f}x zeros' (target <= 0.5) "
              f"{'PASS' if ratio <= 0.5 else 'MISS'}; {share:.1%} within 1e-6 max(|f*|, 1) "
              f"(target >= 99%) {'PASS' if share >= 0.99 else 'MISS'}")
    print(f"  the warm-start path against zeros with SciPy's defaults: evaluations "
          f"{results['prediction, warm-start tol.'][1] / results['zeros'][1]:.2f}x")

    p = jax.tree.map(lambda x: x[0], ps)
    one_s = _median_time(lambda: jax.block_until_ready(ws(p)))
    batch_s = _median_time(lambda: jax.block_until_ready(ws.batch(ps))) / n_test
    solve_s = _median_time(lambda: ws.solve(p), repeats=5)
    print(f"  prediction: {1e6 * one_s:.0f} us for one ws(p), {1e6 * batch_s:.1f} us per task "
          f"in one ws.batch of {n_test} (one ws.solve(p), prediction included: "
          f"{1e3 * solve_s:.1f} ms)")
    return rows


def _example():
    """examples/learned_optimizer.py, as a module (its sine family)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "learned_optimizer.py"
    spec = importlib.util.spec_from_file_location("learned_optimizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def learned_optimizer_rows(quick: bool, maxtime: float) -> list[tuple[str, float, bool]]:
    """Tune Adam, meta-train `adam_residual`, compare them on held-out tasks; prints a table
    and returns (name, value, target met) rows."""
    family = _example().sine_family()
    steps = (5, 10, 20) if quick else (20, 100, 300)
    tasks = 4 if quick else 20

    def losses(alg, key, n_steps):
        ps, u0s = family.draw(key, tasks)
        ensemble = opf.EnsembleProblem(family.prob, ps=ps, u0s=u0s)
        return np.asarray(opf.solve(ensemble, alg, maxiters=n_steps).objective)

    rates = (1e-2, 0.1) if quick else (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
    validation = {lr: np.median(losses(optax.adam(lr), jax.random.key(7), steps[1]))
                  for lr in rates}
    rate = min(validation, key=validation.get)
    print(f"\nLearned optimizer, sine family: Adam's learning rate tuned on {tasks} validation "
          f"tasks: {rate:g} (median loss after {steps[1]} steps: "
          + ", ".join(f"{lr:g}: {v:.3g}" for lr, v in validation.items()) + ")")
    lopt = opf.meta_train(
        family, opf.LearnedOptimizer.adam_residual(rate), horizon=steps[1],
        truncation=steps[1] // 5, n_tasks=16, seed=0,
        maxiters=3 if quick else None, maxtime=None if quick else maxtime,
    )
    training = lopt.training
    print(f"meta-trained {training.iterations} meta-iterations in {training.time:.0f} s "
          f"(compilation included), {training.skipped} skipped; {lopt!r}")
    held_out = jax.random.key(2026)
    adam, learned = optax.adam(rate), lopt
    print(f"{tasks} held-out tasks: median loss (learned better on how many tasks)")
    rows = []
    for n_steps, target in zip(steps, (None, 0.6, 1.1)):
        a, b = losses(adam, held_out, n_steps), losses(learned, held_out, n_steps)
        ratio = float(np.median(b) / np.median(a))
        met = target is None or ratio <= target
        goal = "" if target is None else f" (target <= {target}) {'PASS' if met else 'MISS'}"
        print(f"  after {n_steps:>3} steps: Adam {np.median(a):.3g}, learned {np.median(b):.3g}: "
              f"{ratio:.2f}x, better on {int((b < a).sum())}/{tasks}{goal}")
        if target is not None:
            rows.append((f"learned / Adam median loss after {n_steps} steps", ratio, met))
    if not quick:
        rows.append(("meta-training seconds", training.time, training.time <= 120 + 5))
    prob = family.sample(jax.random.key(1))
    block = lambda alg: lambda: jax.block_until_ready(opf.solve(prob, alg, maxiters=300).u)
    adam_s, learned_s = _median_time(block(adam), 7), _median_time(block(learned), 7)
    print(f"  a step of one task (fused 300-step solve): Adam {1e6 * adam_s / 300:.0f} us, "
          f"learned {1e6 * learned_s / 300:.0f} us ({learned_s / adam_s:.1f}x)")
    return rows


def _median_time(fn, repeats: int = 21) -> float:
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--maxtime", type=float, default=120.0, help="meta-training seconds")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, optiframe learning to optimize")
    with jax.enable_x64(False):  # the learned optimizer in float32, as it is measured
        rows = learned_optimizer_rows(args.quick, args.maxtime)
    rows += warm_start_rows(args.quick)
    print(f"\n{sum(ok for *_, ok in rows)}/{len(rows)} targets met")
    return rows


if __name__ == "__main__":
    main()
