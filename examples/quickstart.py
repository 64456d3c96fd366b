"""optiframe in one page: one problem, several optimizers, minibatches, callbacks.

1. Rosenbrock: Adam (optax), then SciPy's L-BFGS-B from Adam's result (`remake`).
2. A 2-32-32-2 tanh MLP fitted on minibatches of a `DataLoader` with Adam (the whole run is
   one compiled loop), then fine-tuned with L-BFGS on the full data, with a callback that
   prints every N iterations.

Run: python examples/quickstart.py [--quick]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import optiframe as opf


def rosenbrock(u, p):
    return (p[0] - u[0]) ** 2 + p[1] * (u[1] - u[0] ** 2) ** 2


def init_mlp(key, sizes=(2, 32, 32, 2)):
    """Glorot-uniform weights and zero biases, as a list of {"w", "b"} dicts."""
    keys = jax.random.split(key, len(sizes) - 1)
    init = jax.nn.initializers.glorot_uniform()
    return [
        {"w": init(k, (n_in, n_out)), "b": jnp.zeros(n_out)}
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mse(params, batch):
    x, y = batch
    return jnp.mean((mlp(params, x) - y) ** 2)


def make_data(key, n):
    """Targets (sin x0 * cos x1, x0 * x1) on [-2, 2]^2: a smooth map an MLP can fit."""
    x = jax.random.uniform(key, (n, 2), minval=-2.0, maxval=2.0)
    y = jnp.stack([jnp.sin(x[:, 0]) * jnp.cos(x[:, 1]), 0.5 * x[:, 0] * x[:, 1]], axis=1)
    return x, y


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run (tests)")
    parser.add_argument("--epochs", type=int, default=200, help="Adam epochs on minibatches")
    args = parser.parse_args(argv)
    epochs = 5 if args.quick else args.epochs

    # 1. Rosenbrock: Adam, then L-BFGS from Adam's end point.
    prob = opf.OptimizationProblem(rosenbrock, jnp.zeros(2), jnp.array([1.0, 100.0]))
    adam = opf.solve(prob, optax.adam(1e-2), maxiters=100)
    lbfgs = opf.solve(prob.remake(u0=adam.u), opf.LBFGSB(), maxiters=100)
    print(f"Rosenbrock  Adam: f = {adam.objective:.3e} ({adam.retcode})")
    print(f"Rosenbrock L-BFGS-B: f = {lbfgs.objective:.3e} ({lbfgs.retcode}) at u = {lbfgs.u}")

    # 2. An MLP on minibatches, then L-BFGS on the full data.
    x, y = make_data(jax.random.key(0), 1024)
    loader = opf.DataLoader((x, y), batch_size=64, shuffle=True, key=jax.random.key(1))
    net = opf.OptimizationProblem(mse, init_mlp(jax.random.key(2)), loader)
    fit = opf.solve(net, optax.adam(3e-3), epochs=epochs)
    print(f"MLP Adam, {fit.stats.iterations} minibatch steps: last-batch MSE {fit.objective:.3e}")

    def report(state, loss):
        if state.iter % 50 == 0:
            print(f"  L-BFGS iteration {state.iter}: full-data MSE {loss:.3e}")

    initial = float(mse(net.u0, (x, y)))
    full = net.remake(u0=fit.u, p=(x, y))
    tuned = opf.solve(full, optax.lbfgs(), maxiters=20 if args.quick else 200, callback=report)
    print(f"MLP L-BFGS: full-data MSE {tuned.objective:.3e} ({tuned.retcode})")
    return {"rosenbrock": lbfgs.objective, "mlp_initial": initial, "mlp": tuned.objective}


if __name__ == "__main__":
    main()
