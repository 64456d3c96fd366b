"""Fits that test_history.py records, kills and resumes; run as a script, one fit with a
history: `python fit_history.py PATH KIND` (KIND: full, loader, evosax)."""

import sys

import jax
import jax.numpy as jnp
import optax

import optiframe as opf

CHECKPOINT_EVERY = 500
BUDGET = {"full": {"maxiters": 20_000}, "loader": {"epochs": 2_000}, "evosax": {"maxiters": 3_000}}


def mse(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def problem(kind: str) -> opf.OptimizationProblem:
    """A 4-32-1 tanh network on 512 samples, on full data or a shuffled DataLoader."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (512, 4))
    y = jnp.sin(x.sum(1, keepdims=True))
    params = {
        "w1": 0.5 * jax.random.normal(k2, (4, 32)), "b1": jnp.zeros(32),
        "w2": 0.5 * jax.random.normal(k3, (32, 1)),
    }
    if kind == "evosax":
        params = {"w1": params["w1"][:, :4], "b1": params["b1"][:4], "w2": params["w2"][:4]}
    p = (x, y)
    if kind == "loader":
        p = opf.DataLoader(p, batch_size=64, shuffle=True, key=jax.random.key(1))
    return opf.OptimizationProblem(mse, params, p)


def algorithm(kind: str):
    return opf.EvoSax("SimpleES", population_size=16, seed=3) if kind == "evosax" else (
        optax.adam(1e-3)
    )


def fit(path, kind: str, **keywords):
    history = opf.History(path, checkpoint_every=CHECKPOINT_EVERY, checkpoint_seconds=None)
    return opf.solve(problem(kind), algorithm(kind), history=history,
                     **{**BUDGET[kind], **keywords})


if __name__ == "__main__":
    from fit_history import fit as fit_here  # functions pickled by reference to this module

    fit_here(sys.argv[1], sys.argv[2])
