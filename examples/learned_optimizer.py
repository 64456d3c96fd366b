"""Meta-train a learned optimizer on a family of small fits, save it, load it, and compare it
with tuned Adam on held-out tasks.

The family: a 1-16-16-1 tanh network (321 parameters) fits `a sin(b x + c)` on 64 points
of [-pi, pi], with `a` in [0.1, 5], `b` in [0.5, 2] and `c` in [0, pi]; the loss is the mean
squared error divided by var(y), and every task starts from its own random weights.
`opf.LearnedOptimizer.adam_residual(0.1)` (Adam at its tuned learning rate plus a learned
correction, equal to Adam before training) is meta-trained with truncated unrolls
(`opf.meta_train`), saved to an `.npz` file, loaded back, and run with `opf.solve` on 20
held-out tasks beside `optax.adam(0.1)`; the median loss curves are drawn.

Run: `python examples/learned_optimizer.py [--quick] [--output l2o.png] [--maxtime 120]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import optiframe as opf

X = jnp.linspace(-np.pi, np.pi, 64)[:, None]  # (64, 1)
SIZES = ((1, 16), (16, 16), (16, 1))
ADAM_LEARNING_RATE = 0.1  # tuned over {1e-3, ..., 0.3} on 20 validation tasks


def network(u: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ u["w0"] + u["b0"])
    h = jnp.tanh(h @ u["w1"] + u["b1"])
    return h @ u["w2"] + u["b2"]


def loss(u: dict, p: jax.Array) -> jax.Array:
    """The normalised MSE of the fit of `p[0] sin(p[1] x + p[2])`."""
    y = p[0] * jnp.sin(p[1] * X + p[2])
    return jnp.mean((network(u, X) - y) ** 2) / jnp.var(y)


def sample_p(key: jax.Array) -> jax.Array:
    low, high = jnp.array([0.1, 0.5, 0.0]), jnp.array([5.0, 2.0, np.pi])
    return low + (high - low) * jax.random.uniform(key, (3,))


def sample_u0(key: jax.Array) -> dict:
    """LeCun-normal weights, zero biases."""
    u = {}
    for i, (k, shape) in enumerate(zip(jax.random.split(key, len(SIZES)), SIZES)):
        u[f"w{i}"] = jax.random.normal(k, shape) / np.sqrt(shape[0])
        u[f"b{i}"] = jnp.zeros(shape[1])
    return u


def sine_family() -> opf.ProblemFamily:
    prob = opf.OptimizationProblem(loss, sample_u0(jax.random.key(0)), sample_p(jax.random.key(0)))
    return opf.ProblemFamily(prob, sample_p, sample_u0)


def loss_curves(family: opf.ProblemFamily, alg, keys, steps: int) -> np.ndarray:
    """(tasks, steps): each task's loss at every step of `solve(task, alg)`."""
    curves = []
    for key in keys:
        seen = []
        opf.solve(family.sample(key), alg, maxiters=steps,
                  callback=lambda state, loss, seen=seen: seen.append(loss))
        curves.append(seen)
    return np.array(curves)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for a smoke test")
    parser.add_argument("--output", default="l2o.png", help="where to save the figure")
    parser.add_argument("--maxtime", type=float, default=120.0, help="meta-training seconds")
    args = parser.parse_args(argv)
    family = sine_family()
    horizon, steps, tasks = (20, 40, 4) if args.quick else (100, 300, 20)

    # 1. meta-train: 16 tasks side by side, unrolls of 20 steps over a horizon of 100
    lopt = opf.meta_train(
        family, opf.LearnedOptimizer.adam_residual(ADAM_LEARNING_RATE),
        horizon=horizon, truncation=10 if args.quick else 20, n_tasks=16,
        maxiters=5 if args.quick else None, maxtime=None if args.quick else args.maxtime,
        seed=0, progress=not args.quick,
    )
    training = lopt.training
    print(f"meta-trained: {training.iterations} meta-iterations in {training.time:.0f} s, "
          f"mean log loss {training.meta_losses[0]:.2f} -> {training.meta_losses[-1]:.2f}, "
          f"{training.skipped} skipped")

    # 2. save and load it
    path = os.path.join(tempfile.mkdtemp(), "lopt.npz")
    lopt.save(path)
    lopt = opf.LearnedOptimizer.load(path)

    # 3. held-out tasks: Adam against the learned optimizer
    held_out = jax.random.split(jax.random.key(2026), tasks)
    adam = loss_curves(family, optax.adam(ADAM_LEARNING_RATE), held_out, steps)
    learned = loss_curves(family, lopt, held_out, steps)
    for step in sorted({20, horizon, steps}):
        a, b = np.median(adam[:, step - 1]), np.median(learned[:, step - 1])
        wins = int((learned[:, step - 1] < adam[:, step - 1]).sum())
        print(f"step {step:>3}: median loss Adam {a:.3g}, learned {b:.3g} ({b / a:.2f}x), "
              f"learned better on {wins}/{tasks} tasks")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for curves, label in ((adam, f"Adam({ADAM_LEARNING_RATE:g})"), (learned, repr(lopt))):
        ax.semilogy(np.arange(1, steps + 1), np.median(curves, axis=0), label=label)
    ax.axvline(horizon, color="grey", linestyle=":", label="meta-training horizon")
    ax.set(xlabel="step", ylabel=f"median loss over {tasks} held-out tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"saved {args.output}")
    return {"lopt": lopt, "adam": adam, "learned": learned, "path": path}


if __name__ == "__main__":
    main()
