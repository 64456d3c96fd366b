"""The compiled side of the evosax backend: one generation, and the fused loop around it.

One generation asks the evosax algorithm for a population, clips it into the box (if any),
evaluates it with one `jax.vmap` of the objective, tells the algorithm the fitness (a
non-finite value told as worse than every finite value seen), and records the best
candidate and the stall test. `GenerationProgram` holds the jitted functions for one
(objective, evosax algorithm, static settings); `evosax.py` drives them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..derivatives import Derivatives
from ..flat import ravel

# Stop states, in `counts[STATUS]`.
RUNNING, CONVERGED_ABSTOL, CONVERGED_RELTOL = 0, 1, 2
# Slots of `Carry.counts` (int32) and `Carry.losses` (the search's float dtype).
GENERATION, ITERATIONS, FEVALS, NONFINITE, STATUS = range(5)
BEST, WORST = range(2)


class Carry(NamedTuple):
    """The loop state.

    Attributes:
        state: the evosax algorithm's state.
        key: the run's key; generation g draws from `fold_in(key, g)`.
        counts: int32[5]: generations since the first solve of a warm-start chain (they
            pick the keys), generations of this solve, evaluations of this solve,
            non-finite evaluations of this solve, stop status.
        losses: [2]: the best finite fitness seen (inf if none) and the worst (-inf if none).
        best_u: (n,) the candidate with the best fitness, flat, in the search dtype.
        history: (patience,) the best fitness at the end of each of the last `patience`
            generations of this solve (a ring buffer; inf where not yet filled).
    """

    state: Any
    key: jax.Array
    counts: jax.Array
    losses: jax.Array
    best_u: jax.Array
    history: jax.Array


def search_dtype() -> Any:
    """The float dtype evosax computes in (float64 only with JAX_ENABLE_X64)."""
    return jnp.result_type(float)


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static settings a compiled loop depends on (besides shapes).

    Attributes:
        population_based: the algorithm's `init` takes an evaluated population (PSO, DE,
            GAs) rather than a mean (CMA-ES, NES, ...).
        bounded: clip asked candidates into `[lb, ub]`.
        init_box: draw a population-based algorithm's first population uniformly in the
            box (else around `u0` with standard deviation `init_std`).
        stall: the stall tests run (`abstol` and `reltol`; an unset one is -inf).
        patience: the generations the stall tests look back over.
        progress: call the progress hook from inside the fused loop.
    """

    population_based: bool
    bounded: bool
    init_box: bool
    stall: bool
    patience: int
    progress: bool


class GenerationProgram:
    """The jitted functions of one (objective, sense, evosax algorithm, spec), built once
    and cached by the backend so that later solves never trace again.

    - `init(key, u, p, lb, ub, params, tol, init_std) -> (carry, generation)`: a fresh
      run; for a population-based algorithm the first generation (its initial
      population) is evaluated here and returned as `(population, fitness, aux)`, else
      `generation` is None;
    - `step(carry, p, lb, ub, params, tol) -> (carry, (population, fitness, aux))`: one
      generation, `fitness` signed (`sign * fun`) and unreplaced;
    - `run(carry, limit, p, lb, ub, params, tol, every) -> carry`: generations until
      `limit` generations of this solve or a stop, as one `lax.while_loop`.

    Args:
        algorithm: the evosax algorithm, built with `u`'s structure in the search dtype.
        derivs: the objective's derivatives (only `value_aux` is used).
        dtypes: `u0`'s leaf dtypes (candidates are evaluated in them).
        spec: the static settings.
    """

    def __init__(self, algorithm: Any, derivs: Derivatives, dtypes: Any, spec: LoopSpec):
        self.algorithm, self.derivs, self.dtypes, self.spec = algorithm, derivs, dtypes, spec
        # Stein variational algorithms run `num_populations` populations side by side.
        self.groups = getattr(algorithm, "num_populations", None)
        self.size = getattr(algorithm, "total_population_size", algorithm.population_size)
        self.progress_hook = lambda generation, loss: None
        self.init = jax.jit(self._init)
        self.step = jax.jit(self._step)
        self.run = jax.jit(self._run)

    # -- pieces of a generation

    def _into_box(self, population: Any, lb: Any, ub: Any) -> Any:
        if not self.spec.bounded:
            return population
        return jax.tree.map(jnp.clip, population, lb, ub)

    def _evaluate(self, population: Any, p: Any) -> tuple[Any, Any, jax.Array]:
        """(the population as evaluated, aux, fitness (size,)): candidates in `u0`'s
        dtypes, the fitness `sign * fun` in the search dtype."""
        dtype = search_dtype()
        evaluated = jax.tree.map(lambda x, d: x.astype(d), population, self.dtypes)
        fitness, aux = jax.vmap(self.derivs.value_aux, in_axes=(0, None))(evaluated, p)
        told = jax.tree.map(lambda x: x.astype(dtype), evaluated)
        return told, aux, fitness.astype(dtype)

    def _told(self, fitness: jax.Array, worst: jax.Array) -> jax.Array:
        """The fitness told to evosax: a non-finite value becomes `W + |W| + 1`, with `W`
        the worst finite fitness seen in the run, so it is worse than every finite value
        seen and never enters an elite, a personal best or a DE population."""
        bad = jnp.where(jnp.isfinite(worst), worst + jnp.abs(worst) + 1, 0.0)
        bad = jnp.where(jnp.isfinite(bad), bad, jnp.finfo(fitness.dtype).max)
        return jnp.where(jnp.isfinite(fitness), fitness, bad.astype(fitness.dtype))

    def _worst(self, carry: Carry, fitness: jax.Array) -> jax.Array:
        finite = jnp.where(jnp.isfinite(fitness), fitness, -jnp.inf)
        return jnp.maximum(carry.losses[WORST], jnp.max(finite))

    def _record(self, carry: Carry, population: Any, fitness: jax.Array, tol: Any) -> Carry:
        """Count the generation, keep its best candidate if it is the best yet, and run the
        stall tests."""
        spec, losses = self.spec, carry.losses
        finite = jnp.isfinite(fitness)
        masked = jnp.where(finite, fitness, jnp.inf)
        i = jnp.argmin(masked)
        better = masked[i] < losses[BEST]
        candidate = ravel(jax.tree.map(lambda x: x[i], population))[0]
        best = jnp.where(better, masked[i], losses[BEST])
        best_u = jnp.where(better, candidate, carry.best_u)
        status, history = jnp.asarray(RUNNING), carry.history
        if spec.stall:
            slot = carry.counts[ITERATIONS] % spec.patience
            gain = history[slot] - best  # inf until `patience` generations are done
            status = jnp.where(gain <= tol[1] * jnp.abs(best), CONVERGED_RELTOL, status)
            status = jnp.where(gain <= tol[0], CONVERGED_ABSTOL, status)
            history = history.at[slot].set(best)
        nonfinite = jnp.sum(~finite)
        counts = carry.counts + jnp.stack(
            [1, 1, fitness.size, nonfinite, status]
        ).astype(jnp.int32)
        losses = jnp.stack([best, self._worst(carry, fitness)])
        return carry._replace(counts=counts, losses=losses, best_u=best_u, history=history)

    def _tell(self, key: Any, population: Any, fitness: jax.Array, state: Any, params: Any):
        if self.groups is not None:  # evosax wants (num_populations, population_size, ...)
            population = jax.tree.map(
                lambda x: x.reshape(self.groups, -1, *x.shape[1:]), population
            )
        return self.algorithm.tell(key, population, fitness, state, params)[0]

    # -- a run

    def _init(self, key, u, p, lb, ub, params, tol, init_std):
        dtype = search_dtype()
        u = jax.tree.map(lambda x: x.astype(dtype), u)
        x0 = ravel(u)[0]
        init_key, run_key = jax.random.split(key)
        carry = Carry(
            state=None,
            key=run_key,
            counts=jnp.zeros(5, jnp.int32),
            losses=jnp.array([jnp.inf, -jnp.inf], dtype),
            best_u=jnp.zeros_like(x0),
            history=jnp.full(self.spec.patience, jnp.inf, dtype),
        )
        if not self.spec.population_based:
            mean = u
            if self.groups is not None:
                mean = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.groups, *x.shape)), u)
            state = self.algorithm.init(init_key, mean, params)
            return self._settled(carry._replace(state=state), p, lb, ub, params, tol), None
        draw_key, init_key = jax.random.split(init_key)
        population = self._first_population(draw_key, u, lb, ub, init_std)
        population, aux, fitness = self._evaluate(population, p)
        told = self._told(fitness, self._worst(carry, fitness))
        state = self.algorithm.init(init_key, population, told, params)
        carry = self._record(carry._replace(state=state), population, fitness, tol)
        return self._settled(carry, p, lb, ub, params, tol), (population, fitness, aux)

    def _settled(self, carry: Carry, p, lb, ub, params, tol) -> Carry:
        """`carry` with the types a generation gives back. evosax's `init` leaves some
        leaves weakly typed (a counter from a Python 0) or in another dtype than its `tell`
        returns (CMAAnchoredLES's float32 step size under JAX_ENABLE_X64): made alike here,
        the fused loop accepts the carry and a fresh carry and a stepped one hit the same
        compiled code."""
        out = jax.eval_shape(lambda c: self._step(c, p, lb, ub, params, tol)[0], carry)
        return jax.tree.map(
            lambda x, s: jax.lax.convert_element_type(x, s.dtype), carry, out
        )

    def _first_population(self, key, u, lb, ub, init_std):
        """`u0` and `size - 1` draws: uniform in the box, or around `u0`."""
        x0, unravel = ravel(u)
        shape = (self.size - 1, x0.size)
        if self.spec.init_box:
            lo, hi = ravel(lb)[0], ravel(ub)[0]
            draws = jax.random.uniform(key, shape, x0.dtype, lo, hi)
        else:
            draws = x0 + init_std * jax.random.normal(key, shape, x0.dtype)
        population = jax.vmap(unravel)(jnp.concatenate([x0[None], draws]))
        return self._into_box(population, lb, ub)

    def _step(self, carry: Carry, p, lb, ub, params, tol):
        key = jax.random.fold_in(carry.key, carry.counts[GENERATION])
        ask_key, tell_key = jax.random.split(key)
        population, state = self.algorithm.ask(ask_key, carry.state, params)
        population = self._into_box(population, lb, ub)
        population, aux, fitness = self._evaluate(population, p)
        told = self._told(fitness, self._worst(carry, fitness))
        state = self._tell(tell_key, population, told, state, params)
        carry = self._record(carry._replace(state=state), population, fitness, tol)
        return carry, (population, fitness, aux)

    def _report(self, carry: Carry, every: Any) -> None:
        if self.spec.progress:
            i = carry.counts[ITERATIONS]
            jax.lax.cond(
                i % every == 0,
                lambda: jax.debug.callback(
                    lambda i, loss: self.progress_hook(i, loss), i, carry.losses[BEST]
                ),
                lambda: None,
            )

    def _run(self, carry, limit, p, lb, ub, params, tol, every) -> Carry:
        def body(c):
            c = self._step(c, p, lb, ub, params, tol)[0]
            self._report(c, every)
            return c

        def going(c):
            return (c.counts[STATUS] == RUNNING) & (c.counts[ITERATIONS] < limit)

        return jax.lax.while_loop(going, body, carry)

