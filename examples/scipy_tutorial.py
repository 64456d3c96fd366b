"""The SciPy tutorial: the braintools `ScipyOptimizer` tutorial, point by point, with
optiframe (docs/scipy_tutorial.md walks through it).

1. a scalar problem with bounds (L-BFGS-B);
2. array parameters (a matrix and a vector) with array bounds;
3. named parameters: a dict `u0` with dict bounds (Rosenbrock);
4. a method comparison on Beale (L-BFGS-B, SLSQP, Powell), with a plot of their paths;
5. an MLP regression (26 parameters) with L-BFGS-B and bounds;
6. the constrained portfolio with SLSQP and trust-constr (weights sum to 1);
7. multistart on a multimodal function (Rastrigin);
8. callbacks and monitoring.

Run: python examples/scipy_tutorial.py [--quick] [--output beale.png]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import optiframe as opf


def scalar_parameters() -> opf.OptimizationSolution:
    """(x - 2)² + (y + 1)² over x ∈ [-5, 5], y ∈ [-3, 3]: parameters as a dict of scalars."""
    prob = opf.OptimizationProblem(
        lambda u, p: (u["x"] - 2.0) ** 2 + (u["y"] + 1.0) ** 2,
        {"x": 0.0, "y": 0.0},
        lb={"x": -5.0, "y": -3.0},
        ub={"x": 5.0, "y": 3.0},
    )
    sol = opf.solve(prob, opf.LBFGSB())
    print(f"1. scalars: x = {sol.u['x']:.4f}, y = {sol.u['y']:.4f} ({sol.retcode})")
    return sol


def array_parameters() -> opf.OptimizationSolution:
    """‖W x + b − target‖² with W (3, 2) in [-2, 2] and b (2,) in [-1, 1]."""
    x = jnp.array([1.0, -1.0, 0.5])
    target = jnp.array([0.5, -0.3])

    def loss(u, p):
        return jnp.sum((x @ u["W"] + u["b"] - target) ** 2) + 0.01 * jnp.sum(u["W"] ** 2)

    u0 = {"W": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    prob = opf.OptimizationProblem(loss, u0, lb={"W": -2.0, "b": -1.0}, ub={"W": 2.0, "b": 1.0})
    sol = opf.solve(prob, opf.LBFGSB())
    print(f"2. arrays: loss {sol.objective:.2e}, W {sol.u['W'].shape}, b {sol.u['b'].shape}")
    return sol


def named_parameters() -> opf.OptimizationSolution:
    """Rosenbrock with named parameters and named bounds."""

    def rosenbrock(u, p):
        return (1.0 - u["x"]) ** 2 + 100.0 * (u["y"] - u["x"] ** 2) ** 2

    prob = opf.OptimizationProblem(
        rosenbrock, {"x": 0.0, "y": 0.0}, lb={"x": -2.0, "y": -1.0}, ub={"x": 2.0, "y": 3.0}
    )
    sol = opf.solve(prob, "L-BFGS-B")
    print(
        f"3. named: x = {sol.u['x']:.6f}, y = {sol.u['y']:.6f}, "
        f"{sol.stats.fevals} evaluations ({sol.retcode})"
    )
    return sol


def beale(u, p):
    x, y = u[0], u[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def plot_window(
    paths: list[np.ndarray], pad: float = 0.1, least=((-1.0, 4.5), (-1.5, 2.0))
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (x, y) ranges of a plot that shows every point of `paths` ((k, 2) arrays): their
    min and max, padded by `pad` of the span on each side, and at least `least`."""
    points = np.concatenate([np.asarray(path, dtype=float) for path in paths])
    low, high = points.min(axis=0), points.max(axis=0)
    margin = pad * (high - low)
    return tuple(
        (float(min(lo - m, least_lo)), float(max(hi + m, least_hi)))
        for lo, hi, m, (least_lo, least_hi) in zip(low, high, margin, least)
    )


def method_comparison(output: pathlib.Path | None) -> dict[str, opf.OptimizationSolution]:
    """L-BFGS-B, SLSQP and Powell on Beale from inside its bounds; their paths plotted."""
    prob = opf.OptimizationProblem(beale, jnp.array([0.5, 0.5]), lb=-4.5, ub=4.5)
    results, paths = {}, {}
    for alg in (opf.LBFGSB(), opf.SLSQP(), opf.Powell()):
        path = [np.asarray(prob.u0)]
        sol = opf.solve(prob, alg, callback=lambda s, loss, path=path: path.append(np.asarray(s.u)))
        results[alg.method], paths[alg.method] = sol, np.array(path)
        print(
            f"4. {alg.method:<8} ({sol.u[0]:.4f}, {sol.u[1]:.4f}) f = {sol.objective:.2e}, "
            f"{sol.stats.fevals} evaluations, {sol.stats.iterations} iterations"
        )
    if output is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        (x0, x1), (y0, y1) = plot_window([*paths.values(), np.array([[3.0, 0.5]])])
        xs, ys = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
        zs = beale((xs, ys), None)  # NumPy arrays: the whole grid in one call
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.contour(xs, ys, np.log10(zs + 1e-12), levels=30, cmap="Greys", linewidths=0.6)
        for name, path in paths.items():
            ax.plot(path[:, 0], path[:, 1], marker=".", label=name)
        ax.plot(3.0, 0.5, "k*", markersize=12, label="optimum (3, 0.5)")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title("Beale: paths of three SciPy methods")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(output, dpi=110)
        plt.close(fig)
    return results


def mlp_regression() -> opf.OptimizationSolution:
    """A 3-5-1 ReLU network (26 parameters) fitted by L-BFGS-B within bounds."""
    rng = np.random.default_rng(42)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([2.0, -1.5, 0.8]) + 0.1 * rng.normal(size=200)
    X_train, y_train, X_test, y_test = X[:160], y[:160], X[160:], y[160:]

    def predict(u, X):
        return (jax.nn.relu(X @ u["W1"] + u["b1"]) @ u["W2"] + u["b2"]).ravel()

    def loss(u, p):
        X, y = p
        reg = 0.01 * (jnp.sum(u["W1"] ** 2) + jnp.sum(u["W2"] ** 2))
        return jnp.mean((predict(u, X) - y) ** 2) + reg

    k1, k2 = jax.random.split(jax.random.key(0))
    u0 = {
        "W1": 0.5 * jax.random.normal(k1, (3, 5)),
        "b1": jnp.zeros(5),
        "W2": 0.5 * jax.random.normal(k2, (5, 1)),
        "b2": jnp.zeros(1),
    }
    lb = {"W1": -2.0, "b1": -1.0, "W2": -2.0, "b2": -1.0}
    ub = {"W1": 2.0, "b1": 1.0, "W2": 2.0, "b2": 1.0}
    prob = opf.OptimizationProblem(loss, u0, (X_train, y_train), lb=lb, ub=ub)
    sol = opf.solve(prob, opf.LBFGSB(), maxiters=1000)
    test = float(jnp.mean((predict(sol.u, X_test) - y_test) ** 2))
    print(f"5. MLP: training loss {sol.objective:.4f}, test MSE {test:.4f} ({sol.retcode})")
    return sol


def portfolio() -> dict[str, opf.OptimizationSolution]:
    """Minimise the variance w'Cw subject to Σw = 1, an expected return ≥ 10%, 0 ≤ w ≤ 1."""
    cov = jnp.array([[0.04, 0.01, 0.005], [0.01, 0.09, 0.02], [0.005, 0.02, 0.16]])
    returns = jnp.array([0.08, 0.12, 0.15])
    f = opf.OptimizationFunction(
        lambda w, p: w @ cov @ w, cons=lambda w, p: jnp.stack([jnp.sum(w), w @ returns])
    )
    prob = opf.OptimizationProblem(
        f, jnp.full(3, 1 / 3), lb=0.0, ub=1.0, lcons=[1.0, 0.10], ucons=[1.0, jnp.inf]
    )
    results = {}
    for alg in (opf.SLSQP(), opf.TrustConstr()):
        sol = opf.solve(prob, alg, maxiters=500)
        w = np.asarray(sol.u)
        print(
            f"6. {alg.method:<12} w = {np.round(w, 4)}, sum {w.sum():.6f}, return "
            f"{w @ np.asarray(returns):.4f}, risk {np.sqrt(sol.objective):.4f} ({sol.retcode})"
        )
        results[alg.method] = sol
    return results


def multistart(n_starts: int) -> opf.OptimizationSolution:
    """Rastrigin in 2-D: local L-BFGS-B from Sobol' points finds the global minimum."""

    def rastrigin(u, p):
        return 10 * u.size + jnp.sum(u**2 - 10 * jnp.cos(2 * jnp.pi * u))

    prob = opf.OptimizationProblem(rastrigin, jnp.array([3.2, -2.1]), lb=-5.12, ub=5.12)
    single = opf.solve(prob, opf.LBFGSB())
    sol = opf.solve(prob, opf.MultiStart(opf.LBFGSB(), n_starts, seed=0))
    print(
        f"7. Rastrigin: one start f = {single.objective:.3f}; best of {n_starts} starts "
        f"f = {sol.objective:.2e} at {np.round(np.asarray(sol.u), 4)}"
    )
    return sol


def monitoring() -> list[float]:
    """A callback records the loss and the gradient norm each iteration, and stops early."""
    history: list[float] = []

    def callback(state, loss):
        history.append(loss)
        return float(jnp.linalg.norm(state.grad)) < 1e-3  # stop when the gradient is small

    def rosenbrock(u, p):
        return (1.0 - u[0]) ** 2 + 100.0 * (u[1] - u[0] ** 2) ** 2

    prob = opf.OptimizationProblem(rosenbrock, jnp.array([-1.2, 1.0]))
    sol = opf.solve(prob, opf.BFGS(), callback=callback)
    print(f"8. monitoring: {len(history)} iterations recorded, stopped with {sol.retcode}")
    return history


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer multistart points (tests)")
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("beale_methods.png"))
    args = parser.parse_args(argv)
    return {
        "scalar": scalar_parameters(),
        "arrays": array_parameters(),
        "named": named_parameters(),
        "beale": method_comparison(args.output),
        "mlp": mlp_regression(),
        "portfolio": portfolio(),
        "multistart": multistart(4 if args.quick else 64),
        "history": monitoring(),
    }


if __name__ == "__main__":
    main()
