"""The evosax backend against a hand-written evosax loop and against Nevergrad's CMA.

Two objectives (the same as benchmarks/bench_nevergrad.py's batching study):
- a Lotka-Volterra fit: diffrax Tsit5 over t in [0, 100], 256 save points, 4 bounded
  parameters, squared error against data from known parameters (~1 ms an evaluation);
- an MLP loss: a 2-32-32-1 tanh network (1,185 parameters) over 10,000 samples.

Contenders, with the same budget (generations x population evaluations):
  A  `opf.solve(prob, opf.EvoSax("CMA_ES", population_size=64), maxiters=generations)`;
  B  a hand-written evosax loop: `CMA_ES` ask, clip to the box, `jax.vmap` of the
     objective, tell, the whole run one jitted `lax.scan` over generations;
  C  `opf.solve(prob, opf.Nevergrad("CMA"), maxiters=evaluations)`: Nevergrad's CMA, one
     candidate at a time (each a jitted call of the objective).
A and B start CMA-ES at u0 with std_init = (ub - lb) / 6 on Lotka-Volterra (Nevergrad's own
initial step for a bounded variable) and 0.1 on the MLP (with 1 the first generations of
random networks are far worse than u0). Targets: A >= 0.95x B's evaluations per second;
A >= 3x C's with a final loss no higher than C's. On the MLP, `EvoSax("Sep_CMA_ES")` is
timed too, for information: evosax's CMA_ES decomposes its 1185 x 1185 covariance every
generation.

Every contender runs once before timing (compilation excluded); timings are medians over
`--repeats` interleaved rounds, in one process, with seed 0 throughout.

Run: `python benchmarks/bench_evosax.py` (a few minutes on two CPU cores); `--quick` for a
smoke run (small MLP only); `--population 1024` for the GPU figures.
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
from bench_nevergrad import lotka_volterra_problem, mlp_problem

import optiframe as opf

warnings.filterwarnings("ignore", module=r"(nevergrad|cma)\..*")


# --------------------------------------------------------------------------- contenders


def hand_loop(
    loss, u0, p, bounds, population: int, generations: int, std_init: float
) -> Callable[[], float]:
    """evosax as its README drives it: one jitted `lax.scan` over generations."""
    from evosax.algorithms import CMA_ES

    lb, ub = bounds
    es = CMA_ES(population_size=population, solution=u0)
    params = es.default_params.replace(std_init=jnp.asarray(std_init))
    evaluate = jax.vmap(loss, in_axes=(0, None))

    @jax.jit
    def run(key):
        state = es.init(key, u0, params)

        def generation(state, key):
            ask_key, tell_key = jax.random.split(key)
            population, state = es.ask(ask_key, state, params)
            population = jax.tree.map(lambda x: jnp.clip(x, lb, ub), population)
            fitness = evaluate(population, p)
            state, _ = es.tell(tell_key, population, fitness, state, params)
            return state, None

        state, _ = jax.lax.scan(generation, state, jax.random.split(key, generations))
        return state.best_fitness

    return lambda: float(run(jax.random.key(0)))


def case(
    label: str, make: Callable[[], Any], population: int, generations: int, repeats: int,
    nevergrad: bool, std_init: float | None = None, separable: bool = False,
) -> list[tuple[str, float, bool]]:
    """Time the contenders on one objective; std_init None is (ub - lb) / 6. `separable`
    adds `EvoSax("Sep_CMA_ES")` for information (a diagonal covariance: no eigendecomposition
    per generation)."""
    loss, u0, p, (lb, ub) = make()
    prob = opf.OptimizationProblem(loss, u0, p, lb=lb, ub=ub)
    budget = population * generations
    single = jax.jit(loss)
    cost = statistics.median(_seconds(lambda: float(single(u0, p))) for _ in range(20))
    n = sum(x.size for x in jax.tree.leaves(u0))
    std_init = (ub - lb) / 6 if std_init is None else std_init
    alg = opf.EvoSax("CMA_ES", population_size=population, std_init=std_init)
    runs: dict[str, Callable[[], float]] = {
        "A opf EvoSax": lambda: opf.solve(prob, alg, maxiters=generations).objective,
        "B evosax scan": hand_loop(loss, u0, p, (lb, ub), population, generations, std_init),
    }
    if nevergrad:
        ng = opf.Nevergrad("CMA", seed=0)
        runs["C opf Nevergrad"] = lambda: opf.solve(prob, ng, maxiters=budget).objective
    if separable:
        sep = opf.EvoSax("Sep_CMA_ES", population_size=population, std_init=std_init)
        runs["(Sep_CMA_ES)"] = lambda: opf.solve(prob, sep, maxiters=generations).objective
    for run in runs.values():  # warm up: imports, compilation
        run()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    values: dict[str, float] = {}
    for _ in range(repeats):  # interleaved rounds
        for key, run in runs.items():
            tic = time.perf_counter()
            values[key] = run()
            seconds[key].append(time.perf_counter() - tic)
    rate = {k: budget / statistics.median(v) for k, v in seconds.items()}
    print(f"\n{label}: {n} parameters, one evaluation {1e3 * cost:.2f} ms, CMA-ES population "
          f"{population}, {generations} generations ({budget:,} evaluations), std_init "
          f"{std_init:.3g}, median of {repeats}")
    header = f"{'contender':<16} {'median s':>9} {'evaluations/s':>14} {'final loss':>11}"
    print(header + "\n" + "-" * len(header))
    for key in runs:
        print(f"{key:<16} {statistics.median(seconds[key]):>9.3f} {rate[key]:>14,.0f} "
              f"{values[key]:>11.4g}")
    a = rate["A opf EvoSax"]
    vs_hand = a / rate["B evosax scan"]
    results = [(f"{label} A/B", vs_hand, vs_hand >= 0.95)]
    line = f"A/B {vs_hand:.3f} (target >= 0.95)"
    if nevergrad:
        vs_ng = a / rate["C opf Nevergrad"]
        better = values["A opf EvoSax"] <= values["C opf Nevergrad"]
        results.append((f"{label} A/C", vs_ng, vs_ng >= 3.0 and better))
        line += f"; A/C {vs_ng:.2f} (target >= 3), A's loss {'<=' if better else '>'} C's"
    print(line)
    return results


def _seconds(run: Callable[[], Any]) -> float:
    tic = time.perf_counter()
    run()
    return time.perf_counter() - tic


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--generations", type=int, default=50, help="Lotka-Volterra's")
    parser.add_argument("--mlp-generations", type=int, default=20)
    parser.add_argument("--no-nevergrad", action="store_true", help="skip contender C")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    print(f"jax {jax.__version__}, evosax {version('evosax')}, nevergrad "
          f"{version('nevergrad')}, backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind})")
    if args.quick:
        small = lambda: mlp_problem(500, 8)
        results = case("MLP 500 samples", small, 8, 3, 1, True, 0.1)
    else:
        nevergrad = not args.no_nevergrad
        pop, repeats = args.population, args.repeats
        results = case("Lotka-Volterra", lotka_volterra_problem, pop, args.generations, repeats,
                       nevergrad)
        results += case("MLP 10k", mlp_problem, pop, args.mlp_generations, repeats, nevergrad,
                        0.1, separable=True)
    missed = [name for name, _, passed in results if not passed]
    print(f"\n{len(results) - len(missed)}/{len(results)} targets met"
          + (f" (missed: {', '.join(missed)})" if missed else ""))
    return results


if __name__ == "__main__":
    main()
