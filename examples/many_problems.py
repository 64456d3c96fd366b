"""Many problems at once (docs/ensembles.md walks through it).

1. A parameter sweep: 1,000 chained-Rosenbrock problems whose two coefficients vary,
   solved by optimistix's BFGS as one vmapped program (`opf.EnsembleProblem`), against a
   Python loop of single solves over the first few.
2. A fit per experiment: 200 decay curves y(t) = c/k + (y0 - c/k) e^(-k t), each fitted by
   Levenberg–Marquardt on its own residuals, all in one program.
3. A multistart on the device: Rastrigin from 256 Sobol' starts with Adam, one program.
4. Host members: the same sweep's first problems with SciPy's L-BFGS-B, on a thread pool.

Run: python examples/many_problems.py [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time

import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx

import optiframe as opf


def rosenbrock(u, p):
    """Σ b (u[i+1] - u[i]²)² + (a - u[i])² with p = (a, b): minimum 0 at u = 1 for
    a = 1, elsewhere a compromise between the terms."""
    return jnp.sum(p[1] * (u[1:] - u[:-1] ** 2) ** 2 + (p[0] - u[:-1]) ** 2)


def sweep(n: int) -> opf.EnsembleSolution:
    rng = np.random.default_rng(0)
    ps = jnp.asarray(np.stack([rng.uniform(0.5, 1.5, n), rng.uniform(50, 150, n)], axis=1))
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(10), ps[0])
    ensemble = opf.EnsembleProblem(prob, ps=ps)
    alg = opf.Optimistix(optx.BFGS(rtol=1e-6, atol=1e-6))
    tic = time.perf_counter()
    esol = opf.solve(ensemble, alg, maxiters=1000)
    print(f"1. {n} Rosenbrock problems, one vmapped BFGS: {time.perf_counter() - tic:.2f} s "
          f"(first call, compilation included); {esol}")
    tic = time.perf_counter()
    esol = opf.solve(ensemble, alg, maxiters=1000)
    print(f"   again: {time.perf_counter() - tic:.3f} s; iterations per member "
          f"{min(s.stats.iterations for s in esol)}-{max(s.stats.iterations for s in esol)}")
    tic = time.perf_counter()
    for i in range(5):
        opf.solve(ensemble.member(i), alg, maxiters=1000)
    print(f"   the first 5 members one by one: {time.perf_counter() - tic:.3f} s; member 0 "
          f"reaches f = {esol.objective[0]:.6f} at u = {np.asarray(esol.u[0, :3]).round(4)}...")
    return esol


def decay(theta, data):
    """Residuals of y(t) = c/k + (y0 - c/k) e^(-k t) (theta = (k, c), y0 = 2) at the
    measured times."""
    times, observed = data
    k, c = theta
    return c / k + (2.0 - c / k) * jnp.exp(-k * times) - observed


def experiments(n: int) -> tuple[opf.EnsembleSolution, np.ndarray]:
    rng = np.random.default_rng(1)
    truth = np.stack([rng.uniform(0.5, 2.0, n), rng.uniform(0.0, 1.0, n)], axis=1)
    times = np.linspace(0.0, 4.0, 25)
    observed = np.array([np.asarray(decay(t, (times, 0.0))) for t in truth])
    observed += 0.01 * rng.standard_normal(observed.shape)
    prob = opf.OptimizationProblem(decay, jnp.array([1.0, 0.5]), (times, observed[0]))
    ps = (np.broadcast_to(times, (n, times.size)), observed)  # every experiment's data
    esol = opf.solve(opf.EnsembleProblem(prob, ps=ps), "optimistix:LevenbergMarquardt")
    error = np.abs(np.asarray(esol.u) - truth).max()
    print(f"2. {n} decay fits by Levenberg-Marquardt: {esol}; largest error in (k, c) "
          f"{error:.3f} (noise 0.01)")
    return esol, truth


def multistart(n: int) -> opf.OptimizationSolution:
    def rastrigin(u, p):
        return 10 * u.size + jnp.sum(u**2 - 10 * jnp.cos(2 * jnp.pi * u))

    prob = opf.OptimizationProblem(rastrigin, jnp.full(2, 2.0), lb=-5.12, ub=5.12)
    sol = opf.solve(prob, opf.MultiStart(optax.adam(0.05), n, seed=0), maxiters=300)
    print(f"3. Rastrigin from {n} starts with Adam, one program: f = {sol.objective:.4f} at "
          f"{np.asarray(sol.u).round(3)}; every start's result in sol.original")
    return sol


def host(ensemble_size: int) -> opf.EnsembleSolution:
    rng = np.random.default_rng(0)
    ps = np.stack([rng.uniform(0.5, 1.5, ensemble_size), rng.uniform(50, 150, ensemble_size)], 1)
    prob = opf.OptimizationProblem(rosenbrock, np.zeros(10), ps[0])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        esol = opf.solve(opf.EnsembleProblem(prob, ps=ps), opf.LBFGSB(), executor=pool)
    print(f"4. {ensemble_size} members with SciPy's L-BFGS-B on a thread pool: {esol}")
    return esol


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for the tests")
    args = parser.parse_args(argv)
    n, fits, starts, members = (50, 20, 32, 4) if args.quick else (1000, 200, 256, 16)
    swept = sweep(n)
    fitted, truth = experiments(fits)
    return dict(sweep=swept, fits=fitted, truth=truth, multistart=multistart(starts),
                host=host(members))


if __name__ == "__main__":
    main()
