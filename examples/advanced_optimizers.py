"""The advanced-optimizers tutorial: every optimizer of the braintools "Advanced Optimizers"
tutorial through `opf.solve`, compared on one problem, then Adam chained into L-BFGS
(docs/advanced_optimizers.md walks through it).

The problem: a 2-16-16-1 tanh MLP regressing a smooth function on 512 samples, trained on
minibatches of 64 (an `opf.DataLoader`) with each optimizer for the same number of epochs.
A callback records the loss; a plot compares the curves.

Run: python examples/advanced_optimizers.py [--quick] [--output optimizers.png]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optiframe as opf


def optimizers(steps: int) -> dict[str, optax.GradientTransformation]:
    """The tutorial's optimizers, as optax transforms (no wrapper classes needed)."""
    decay = optax.cosine_decay_schedule(1e-2, steps)
    return {
        "Adam": optax.adam(1e-2),
        "AdamW": optax.adamw(1e-2, weight_decay=1e-4),
        "Lion": optax.lion(1e-3, weight_decay=1e-4),
        "Adafactor": optax.adafactor(1e-2, multiply_by_parameter_scale=False),
        "Lookahead(SGD)": optax.lookahead(optax.sgd(0.1, momentum=0.9), 5, 0.5),
        "RAdam": optax.radam(1e-2),
        "LAMB": optax.lamb(decay),
        "LARS": optax.lars(0.1, weight_decay=0.0, trust_coefficient=0.1),
        "SM3": optax.sm3(0.1),
        "Rprop": optax.rprop(1e-3),  # full batch only: it needs consistent gradient signs
        "Yogi": optax.yogi(1e-2),
        "SGD+momentum": optax.sgd(0.05, momentum=0.9),
        "L-BFGS": optax.lbfgs(),  # full batch only: its line search needs a fixed objective
    }


FULL_BATCH_ONLY = ("Rprop", "L-BFGS")


def init_mlp(key, sizes=(2, 16, 16, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    glorot = jax.nn.initializers.glorot_uniform()
    return [
        {"w": glorot(k, (a, b)), "b": jnp.zeros(b)} for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mse(params, batch):
    x, y = batch
    return jnp.mean((mlp(params, x) - y) ** 2)


def make_data(n=512):
    x = jax.random.uniform(jax.random.key(0), (n, 2), minval=-2.0, maxval=2.0)
    y = jnp.sin(x[:, :1]) * jnp.cos(x[:, 1:]) + 0.1 * x[:, :1] ** 2
    return x, y


def compare(epochs: int) -> dict[str, tuple[list[float], float]]:
    """{optimizer: (loss per iteration, final full-data MSE)}."""
    x, y = make_data()
    loader = opf.DataLoader((x, y), batch_size=64, shuffle=True, key=jax.random.key(1))
    objective = opf.OptimizationFunction(mse)  # shared: one compiled step per optimizer
    u0 = init_mlp(jax.random.key(2))
    results = {}
    for name, alg in optimizers(epochs * len(loader)).items():
        history: list[float] = []
        record = lambda state, loss, history=history: history.append(loss)
        if name in FULL_BATCH_ONLY:
            prob = opf.OptimizationProblem(objective, u0, (x, y))
            sol = opf.solve(prob, alg, maxiters=epochs * len(loader), callback=record)
        else:
            prob = opf.OptimizationProblem(objective, u0, loader)
            sol = opf.solve(prob, alg, epochs=epochs, callback=record)
        results[name] = (history, float(mse(sol.u, (x, y))))
        print(f"{name:<15} full-data MSE {results[name][1]:.3e} ({sol.stats.iterations} steps)")
    return results


def chained(adam_steps: int, lbfgs_steps: int) -> tuple[float, float]:
    """Adam for `adam_steps`, then L-BFGS from its result on the full data."""
    x, y = make_data()
    prob = opf.OptimizationProblem(mse, init_mlp(jax.random.key(2)), (x, y))
    adam = opf.solve(prob, optax.adam(1e-2), maxiters=adam_steps)
    tuned = opf.solve(prob.remake(u0=adam.u), optax.lbfgs(), maxiters=lbfgs_steps)
    print(f"Adam x {adam_steps}: {adam.objective:.3e}; then L-BFGS x {lbfgs_steps}: ", end="")
    print(f"{tuned.objective:.3e}")
    return adam.objective, tuned.objective


def plot(results, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20(np.linspace(0, 1, len(results))))
    for name, (history, _) in results.items():
        ax.semilogy(np.asarray(history), label=name, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (batch or full)")
    ax.set_title("The tutorial's optimizers on one MLP")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs (tests)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("optimizers.png"))
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    results = compare(epochs)
    plot(results, args.output)
    adam, tuned = chained(20 if args.quick else 300, 10 if args.quick else 200)
    return {"results": results, "chained": (adam, tuned)}


if __name__ == "__main__":
    main()
