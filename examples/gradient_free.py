"""The gradient-free tutorial: problems a gradient cannot help with, through the same
`solve` (docs/gradient_free.md walks through it).

1. A rugged objective (Rastrigin, 4-D): Nevergrad's NGOpt and CMA, SciPy's differential
   evolution, against L-BFGS-B stuck in a local minimum.
2. Integer variables: choosing how many units of three items to buy (`integrality`).
3. An objective JAX cannot trace (host NumPy code with a branch), with `ad="finite"`
   declaring it host code: Nevergrad calls it on NumPy.
4. Batched evaluation: TwoPointsDE asking 32 candidates at a time, evaluated in one
   vmapped call of a JAX objective.
5. On the device: evosax's CMA-ES, 64 candidates a generation, the whole run one compiled
   loop (`opf.EvoSax`).

Run: python examples/gradient_free.py [--quick] [--output gradient_free.png]
"""

from __future__ import annotations

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np

import optiframe as opf


def rastrigin(u, p):
    return 10 * u.size + jnp.sum(u**2 - 10 * jnp.cos(2 * jnp.pi * u))


def rugged(budget: int) -> dict[str, list[float]]:
    """The best objective seen after each evaluation batch, per algorithm."""
    prob = opf.OptimizationProblem(rastrigin, jnp.full(4, 3.3), lb=-5.12, ub=5.12)
    local = opf.solve(prob, opf.LBFGSB())
    print(f"1. L-BFGS-B from (3.3, ...): f = {local.objective:.3f} (a local minimum)")
    curves = {}
    for name, alg in (
        ("NGOpt", opf.Nevergrad("NGOpt", seed=0)),
        ("CMA", opf.Nevergrad("CMA", seed=0)),
        ("DifferentialEvolution (SciPy)", opf.DifferentialEvolution(seed=0)),
    ):
        best: list[float] = []

        def record(state, loss, best=best):
            best.append(min(loss, best[-1]) if best else loss)

        maxiters = budget if name != "DifferentialEvolution (SciPy)" else budget // 60
        sol = opf.solve(prob, alg, maxiters=maxiters, callback=record)
        curves[name] = best
        print(f"   {name:<30} f = {sol.objective:.2e} after {sol.stats.fevals} evaluations")
    return curves


def integers() -> opf.OptimizationSolution:
    """The integer point nearest a target, where rounding each coordinate alone is wrong:
    the coordinates must also sum to an even number (a penalty)."""
    target = jnp.array([2.4, -1.7, 3.5])

    def cost(u, p):
        return jnp.sum((u - target) ** 2) + 10.0 * jnp.abs(jnp.sin(jnp.pi * jnp.sum(u) / 2))

    prob = opf.OptimizationProblem(cost, jnp.zeros(3), lb=-5.0, ub=5.0, integrality=True)
    sol = opf.solve(prob, opf.Nevergrad("TwoPointsDE", seed=0), maxiters=600)
    print(f"2. integers {np.asarray(sol.u)} (sum even), f = {sol.objective:.2f}")
    return sol


def host_objective() -> opf.OptimizationSolution:
    """A simulator in plain NumPy with a branch: JAX cannot trace it."""

    def simulate(u, p):
        x = np.asarray(u, float)
        cost = np.sum((x - np.array([1.0, -2.0])) ** 2)
        return cost + (0.5 if x[0] > 2.0 else 0.0)  # a step: no gradient anywhere

    prob = opf.OptimizationProblem(
        opf.OptimizationFunction(simulate, ad="finite"), np.zeros(2), lb=-5.0, ub=5.0
    )
    sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0), maxiters=400)
    print(f"3. host objective: u = {np.round(sol.u, 3)}, f = {sol.objective:.2e}")
    return sol


def batched(budget: int) -> opf.OptimizationSolution:
    """32 candidates per batch, evaluated in one vmapped, jitted call."""
    prob = opf.OptimizationProblem(rastrigin, jnp.full(4, 3.3), lb=-5.12, ub=5.12)
    sol = opf.solve(prob, opf.Nevergrad("TwoPointsDE", seed=0, num_workers=32), maxiters=budget)
    print(
        f"4. TwoPointsDE, 32 per batch: f = {sol.objective:.2e}, "
        f"{sol.stats.fevals} evaluations in {sol.stats.iterations} batches"
    )
    return sol


def on_device(budget: int) -> opf.OptimizationSolution:
    """evosax's CMA-ES: ask, a vmapped evaluation and tell per generation, all generations
    one jitted loop."""
    prob = opf.OptimizationProblem(rastrigin, jnp.full(4, 3.3), lb=-5.12, ub=5.12)
    alg = opf.EvoSax("CMA_ES", population_size=64, std_init=2.0, seed=0)
    sol = opf.solve(prob, alg, maxiters=budget // 64)
    print(
        f"5. evosax CMA_ES, 64 per generation: f = {sol.objective:.2e}, "
        f"{sol.stats.fevals} evaluations in {sol.stats.iterations} generations"
    )
    return sol


def plot(curves: dict[str, list[float]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, best in curves.items():
        ax.semilogy(np.maximum(np.asarray(best), 1e-12), label=name)
    ax.set_xlabel("batch of evaluations (a callback call)")
    ax.set_ylabel("best objective so far")
    ax.set_title("Rastrigin 4-D: gradient-free search")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (tests)")
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("gradient_free.png"))
    args = parser.parse_args(argv)
    budget = 300 if args.quick else 3000
    curves = rugged(budget)
    plot(curves, args.output)
    return {
        "curves": curves,
        "integers": integers(),
        "host": host_objective(),
        "batched": batched(budget),
        "on_device": on_device(budget),
    }


if __name__ == "__main__":
    main()
