"""The Nevergrad backend against Nevergrad itself, and batched against one-at-a-time
evaluation.

1. Overhead: Rastrigin in 10-D ([-5.12, 5.12]^10, u0 = 2), budget 2,000, CMA and NGOpt.
   A  Nevergrad's own `optimizer.minimize(f)` with a NumPy objective and the parametrization
      optiframe builds (same bounds, bounding, step, seed);
   B  `opf.solve` of the same NumPy objective (`OptimizationFunction(f, ad=None)`);
   C  (information) `opf.solve` of the JAX objective (batches of one through the jitted path).
   Round r runs A, B and C with seed r. Target: median time(B) / median time(A) <= 1.1 with
   an equal or better median final value (A: f at Nevergrad's recommendation; B: the best
   point evaluated, the recommendation included).

2. Batching: TwoPointsDE with num_workers = 1, 8, 32, 64 on
   - a Lotka-Volterra fit: diffrax Tsit5 over t in [0, 100], 256 save points, 4 bounded
     parameters, squared error against data from known parameters (~1 ms an evaluation);
   - an MLP loss: a 2-32-32-1 tanh network (1,185 parameters) over 10,000 samples.
   "one at a time" asks the same batches and evaluates each candidate with one jitted call;
   "batched" is `opf.solve(..., Nevergrad("TwoPointsDE", num_workers=k, chunk=c))`: one
   jitted call per batch, vmapped over the whole batch (c = None) or over c candidates at a
   time in a loop. The limit is what Nevergrad's ask/tell alone allows (the same loop with
   an objective that costs nothing): evaluations per second can never exceed it.
   Target: batched >= 1.5x one-at-a-time at num_workers = 64 on the MLP.

3. `--bounding`: the study behind `DEFAULT_BOUNDING` (median final value over seeds of each
   bounding method per optimizer family, on problems with interior and boundary optima).

Every contender runs once before timing (compilation excluded); timings are medians over
`--repeats` interleaved rounds, in one process, with the same seeds and budgets.

Run: `python benchmarks/bench_nevergrad.py` (a few minutes on two CPU cores), `--quick` for
a smoke run, `--bounding` for the bounding study.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import optiframe as opf
from optiframe.backends import nevergrad as ngb

warnings.filterwarnings("ignore", module=r"(nevergrad|cma)\..*")
# NGOpt's metamodel runs scipy's Powell on a fitted quadratic, which overflows noisily.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"scipy\..*")


def median_time(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), out


# --------------------------------------------------------------------------- 1. overhead


def rastrigin_np(x: np.ndarray) -> float:
    return float(10.0 * x.size + np.sum(x**2 - 10.0 * np.cos(2.0 * np.pi * x)))


def rastrigin_jax(u, p):
    return 10.0 * u.size + jnp.sum(u**2 - 10.0 * jnp.cos(2.0 * jnp.pi * u))


def overhead(
    names: list[str], budget: int, repeats: int, n: int = 10
) -> list[tuple[str, float, bool]]:
    import nevergrad as ng

    u0, lb, ub = np.full(n, 2.0), -5.12, 5.12
    host = opf.OptimizationProblem(
        opf.OptimizationFunction(lambda u, p: rastrigin_np(u), ad=None), u0, lb=lb, ub=ub
    )
    device = opf.OptimizationProblem(rastrigin_jax, jnp.asarray(u0), lb=lb, ub=ub)
    print(f"\n1. Overhead: Rastrigin n={n}, budget {budget}, median of {repeats} runs "
          f"(seeds 0-{repeats - 1})")
    header = (f"{'optimizer':<8} {'A ng.minimize s':>15} {'B opf host s':>13} {'B/A':>6} "
              f"{'C opf jax s':>12} {'f(A rec)':>10} {'f(B best)':>10}  result")
    print(header + "\n" + "-" * len(header))
    results = []
    for name in names:
        factory, _ = ngb.resolve_optimizer(name)
        bounding = ngb.DEFAULT_BOUNDING[ngb.family(factory)]

        def nevergrad_run(seed, factory=factory, bounding=bounding):
            param = ng.p.Array(init=u0).set_mutation(sigma=(ub - lb) / 6)
            param.set_bounds(lb, ub, method=bounding, full_range_sampling=True)
            param.random_state = np.random.RandomState(seed)
            opt = factory(parametrization=param, budget=budget)
            with ngb.seeded_cma(seed):  # the seed opf.solve gives cma.fmin (CmaFmin2)
                rec = opt.minimize(rastrigin_np)
            ngb._stop_threads(opt)
            return rastrigin_np(rec.value)

        def runs(seed, name=name, nevergrad_run=nevergrad_run):
            alg = opf.Nevergrad(name, seed=seed)
            return {
                "A": lambda: nevergrad_run(seed),
                "B": lambda: opf.solve(host, alg, maxiters=budget).objective,
                "C": lambda: opf.solve(device, alg, maxiters=budget).objective,
            }

        for run in runs(0).values():  # warm up: imports, compilation
            run()
        seconds: dict[str, list[float]] = {k: [] for k in "ABC"}
        values: dict[str, list[float]] = {k: [] for k in "ABC"}
        for seed in range(repeats):  # interleaved rounds
            for key, run in runs(seed).items():
                tic = time.perf_counter()
                values[key].append(run())
                seconds[key].append(time.perf_counter() - tic)
        med = {k: statistics.median(v) for k, v in seconds.items()}
        f = {k: statistics.median(v) for k, v in values.items()}
        ratio = med["B"] / med["A"]
        passed = ratio <= 1.1 and f["B"] <= f["A"] + 1e-9
        print(f"{name:<8} {med['A']:>15.3f} {med['B']:>13.3f} {ratio:>6.3f} {med['C']:>12.3f} "
              f"{f['A']:>10.4g} {f['B']:>10.4g}  {'PASS' if passed else 'MISS'}")
        print(f"{'':<8} per seed: f(A) {', '.join(f'{v:.4g}' for v in values['A'])}; "
              f"f(B) {', '.join(f'{v:.4g}' for v in values['B'])}")
        results.append((f"overhead {name}", ratio, passed))
    return results


# --------------------------------------------------------------------------- 2. batching


def lotka_volterra_problem() -> tuple[Callable[..., Any], Any, Any, tuple[float, float]]:
    import diffrax

    ts = jnp.linspace(0.0, 100.0, 256)
    y0 = jnp.array([10.0, 5.0])

    def solve(theta):
        a, b, c, d = theta[0], theta[1], theta[2], theta[3]

        def field(t, y, args):
            x, z = y[0], y[1]
            return jnp.stack([a * x - b * x * z, -c * z + d * x * z])

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 100.0, 0.1, y0.astype(theta.dtype),
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
            max_steps=8192, throw=False,
        )
        return sol.ys

    truth = jnp.array([0.5, 0.1, 0.5, 0.1])
    data = solve(truth)

    def loss(theta, data):
        return jnp.mean((solve(theta) - data) ** 2)

    return loss, jnp.array([0.4, 0.12, 0.6, 0.08]), data, (0.05, 1.0)


def mlp_problem(
    samples: int = 10_000, hidden: int = 32
) -> tuple[Callable[..., Any], Any, Any, tuple[float, float]]:
    key_x, key_w = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (samples, 2), jnp.float32)
    y = jnp.sin(2 * x[:, :1]) * jnp.cos(x[:, 1:])
    sizes = (2, hidden, hidden, 1)
    params = []
    for k, (i, o) in zip(jax.random.split(key_w, 3), zip(sizes, sizes[1:])):
        params.append({"w": jax.random.normal(k, (i, o)) / jnp.sqrt(i), "b": jnp.zeros(o)})

    def loss(params, batch):
        x, y = batch
        for layer in params[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return jnp.mean((x @ params[-1]["w"] + params[-1]["b"] - y) ** 2)

    return loss, params, (x, y), (-3.0, 3.0)


def batching(
    budget: int, workers: list[int], repeats: int, chunk: int
) -> list[tuple[str, float, bool]]:
    results = []
    cases = (
        ("Lotka-Volterra", lotka_volterra_problem, None),
        ("MLP 10k", mlp_problem, None),
        (f"MLP 10k, chunk={chunk}", mlp_problem, chunk),
    )
    for label, make, chunk in cases:
        results += batching_case(label, make, chunk, budget, workers, repeats)
    return results


def batching_case(
    label: str, make: Callable[[], Any], chunk: int | None, budget: int, workers: list[int],
    repeats: int,
) -> list[tuple[str, float, bool]]:
    import nevergrad as ng

    results = []
    loss, u0, p, (lb, ub) = make()
    prob = opf.OptimizationProblem(loss, u0, p, lb=lb, ub=ub)
    space = ngb.SearchSpace(prob)
    single = jax.jit(loss)
    cost = median_time(lambda: float(single(u0, p)), 20)[0]
    print(f"\n2. Batching: {label}, {space.dimension} parameters, one evaluation "
          f"{1e3 * cost:.2f} ms, TwoPointsDE, budget {budget}, median of {repeats}")
    header = (f"{'workers':>7} {'one-at-a-time ev/s':>19} {'batched ev/s':>13} {'ratio':>6} "
              f"{'ask/tell limit ev/s':>20} {'batched/limit':>14}")
    print(header + "\n" + "-" * len(header))
    for k in workers:
        bounding = ngb.DEFAULT_BOUNDING["DE"]

        def loop(evaluate: Callable[[np.ndarray], float], k=k, bounding=bounding) -> None:
            param = space.parametrization(ng, bounding)
            param.random_state = np.random.RandomState(0)
            opt = ng.optimizers.registry["TwoPointsDE"](param, budget=budget, num_workers=k)
            done = 0
            while done < budget:
                cands = [opt.ask() for _ in range(min(k, budget - done))]
                for c in cands:
                    opt.tell(c, evaluate(space.flat(c.value)))
                done += len(cands)

        one = lambda: loop(lambda x: float(single(space.tree(x), p)))
        free = lambda: loop(lambda x: 0.0)
        alg = opf.Nevergrad("TwoPointsDE", seed=0, num_workers=k, chunk=chunk)
        batched = lambda alg=alg: opf.solve(prob, alg, maxiters=budget)
        for run in (one, free, batched):
            run()
        times: dict[str, list[float]] = {"one": [], "free": [], "batched": []}
        for _ in range(repeats):
            for key, run in (("one", one), ("free", free), ("batched", batched)):
                tic = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - tic)
        rate = {key: budget / statistics.median(v) for key, v in times.items()}
        ratio = rate["batched"] / rate["one"]
        print(f"{k:>7} {rate['one']:>19,.0f} {rate['batched']:>13,.0f} {ratio:>6.2f} "
              f"{rate['free']:>20,.0f} {rate['batched'] / rate['free']:>14.2f}")
        if label.startswith("MLP") and k == max(workers):
            results.append((f"batching {label} k={k}", ratio, ratio >= 1.5))
    return results


# --------------------------------------------------------------------------- 3. bounding


def bounding_study(budget: int, seeds: int) -> None:
    shift = jnp.array([1.0, -2.0, 0.5, 3.0])
    edge = jnp.array([6.0, -2.0, 0.5, 3.0])  # the optimum in [-5, 5]^4 is on the boundary
    problems = {
        "sphere": opf.OptimizationProblem(lambda u, p: jnp.sum((u - p) ** 2), jnp.zeros(4),
                                          shift, lb=-5.0, ub=5.0),
        "edge sphere (f*=1)": opf.OptimizationProblem(lambda u, p: jnp.sum((u - p) ** 2),
                                                     jnp.zeros(4), edge, lb=-5.0, ub=5.0),
        "rastrigin": opf.OptimizationProblem(rastrigin_jax, jnp.full(4, 2.0), lb=-5.12,
                                             ub=5.12),
    }
    methods = ("bouncing", "clipping", "arctan", "tanh", "penalty")
    print(f"\n3. Bounding: median final f over seeds 0-{seeds - 1}, budget {budget}, 4-D")
    for name in ("CMA", "TwoPointsDE", "PSO", "OnePlusOne", "NGOpt", "Cobyla"):
        for label, prob in problems.items():
            row = []
            for method in methods:
                values = [
                    opf.solve(prob, opf.Nevergrad(name, seed=s, bounding=method),
                              maxiters=budget).objective
                    for s in range(seeds)
                ]
                row.append(f"{method}={statistics.median(values):.3g}")
            print(f"{name:<12} {label:<19} " + "  ".join(row), flush=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--bounding", action="store_true", help="run the bounding study")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=8, help="the MLP's chunked rows")
    parser.add_argument("--only", choices=("overhead", "batching"), help="run one part")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, numpy {np.__version__}, backend {jax.default_backend()}")
    if args.bounding:
        bounding_study(300 if args.quick else 1500, 1 if args.quick else 3)
        return []
    results = []
    if args.only != "batching":
        if args.quick:
            results += overhead(["CMA"], budget=100, repeats=1)
        else:
            results += overhead(["CMA", "NGOpt"], budget=2000, repeats=args.repeats)
    if args.only != "overhead":
        if args.quick:
            results += batching(budget=64, workers=[1, 8], repeats=1, chunk=args.chunk)
        else:
            results += batching(budget=1024, workers=[1, 8, 32, 64], repeats=args.repeats,
                                chunk=args.chunk)
    missed = [name for name, _, passed in results if not passed]
    print(f"\n{len(results) - len(missed)}/{len(results)} targets met"
          + (f" (missed: {', '.join(missed)})" if missed else ""))
    return results


if __name__ == "__main__":
    main()
