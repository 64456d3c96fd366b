"""`meta_train`: a `LearnedOptimizer` trained over a `ProblemFamily` with truncated unrolls
of the optax adapter's own compiled step.

`n_tasks` tasks run side by side (vmapped), each for `horizon` steps of the learned
optimizer, then replaced by a fresh task. Every meta-iteration unrolls each task
`truncation` steps and scores the unroll by its mean log loss; the meta-gradient of the
mean score over the tasks comes from one of two estimators:

- "unroll": the gradient through the unroll (truncated backpropagation);
- "es": antithetic evolution strategies, one pair of perturbations `theta +- sigma * eps`
  per task (no gradient of the inner step is taken; the task goes on from the `+` run).

The tasks start staggered, task i at step `(i * horizon / n_tasks)` rounded down to a
multiple of `truncation` (advanced there with the first weights), so that the unrolls
cover every part of the horizon at every meta-iteration. A meta-gradient that is not
finite is skipped (counted in `training.skipped`), and tasks whose loss turned non-finite
start over.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._checks import count, number
from ._checks import seed as check_seed
from .backends._lifecycle import Clock, Progress, Stop, call_back, stopped
from .backends._optax_step import OptaxMethod, OptaxSpec
from .backends.optax import OptaxState
from .derivatives import derivatives
from .errors import InvalidProblemError
from .family import ProblemFamily
from .learned import LearnedOptimizer
from .progress import as_progress
from .solution import OptimizationState, ReturnCode

ESTIMATORS = ("unroll", "es")
TINY = 1e-30  # added to a loss before its log


@dataclasses.dataclass(frozen=True)
class MetaTraining:
    """What `meta_train` did.

    Attributes:
        iterations: meta-iterations (meta-gradient steps attempted).
        meta_losses: (iterations,) the mean log loss of each meta-iteration's unrolls.
        skipped: meta-iterations whose meta-gradient was not finite (no step taken).
        time: seconds.
        retcode: `MaxIters`, `MaxTime` or `Terminated` (a callback or Ctrl-C).
    """

    iterations: int
    meta_losses: np.ndarray
    skipped: int
    time: float
    retcode: ReturnCode


def meta_train(
    family: ProblemFamily,
    lopt: LearnedOptimizer,
    *,
    horizon: int,
    truncation: int,
    n_tasks: int,
    estimator: str = "unroll",
    meta_optimizer: optax.GradientTransformation | None = None,
    sigma: float = 0.01,
    maxtime: float | None = None,
    maxiters: int | None = None,
    seed: int = 0,
    progress: Any = False,
    callback: Callable[..., Any] | None = None,
) -> LearnedOptimizer:
    """Meta-train `lopt` over `family` (see the module's doc).

    Args:
        family: the tasks; `fun` must be JAX-traceable.
        lopt: the learned optimizer to start from.
        horizon: steps of each task's inner run (a multiple of `truncation`); the result
            sees later step counts as this one (`LearnedOptimizer`).
        truncation: steps per unroll.
        n_tasks: tasks run side by side.
        estimator: "unroll" or "es".
        meta_optimizer: any optax transform (default: clip the global norm to 1, then
            Adam(3e-3)).
        sigma: the standard deviation of ES's perturbations.
        maxtime: the budget in seconds (compilation included); this or `maxiters`.
        maxiters: the budget in meta-iterations.
        seed: the tasks and perturbations drawn; the same seed gives the same result.
        progress: a progress bar, as `solve`'s.
        callback: `callback(state, meta_loss) -> bool | None` after each meta-iteration,
            `state.iter` the meta-iteration and `state.u` the weights; True stops.

    Returns:
        The trained optimizer, with `horizon` set and `training` (a `MetaTraining`).
    """
    call = "meta_train"
    if not isinstance(family, ProblemFamily):
        raise InvalidProblemError(f"`{call}(family=...)` must be an opf.ProblemFamily.")
    if not isinstance(lopt, LearnedOptimizer):
        raise InvalidProblemError(f"`{call}(lopt=...)` must be an opf.LearnedOptimizer.")
    horizon, truncation = count(call, "horizon", horizon), count(call, "truncation", truncation)
    n_tasks = count(call, "n_tasks", n_tasks)
    if horizon % truncation:
        raise InvalidProblemError(
            f"`{call}(horizon={horizon}, truncation={truncation})`: horizon must be a "
            "multiple of truncation (each task's run is a whole number of unrolls)."
        )
    if estimator not in ESTIMATORS:
        raise InvalidProblemError(
            f"`{call}(estimator={estimator!r})` must be one of {ESTIMATORS}."
        )
    sigma = number(call, "sigma", sigma, positive=True)
    maxtime = number(call, "maxtime", maxtime, positive=True, optional=True)
    maxiters = count(call, "maxiters", maxiters, optional=True)
    if maxtime is None and maxiters is None:
        raise InvalidProblemError(f"`{call}` needs a budget: pass maxiters=, maxtime= or both.")
    seed = check_seed(call, seed)
    if family.prob.f.ad != "jax":
        raise InvalidProblemError(
            f"`{call}`: the family's objective must be differentiable by JAX (ad='jax')."
        )
    meta_optimizer = meta_optimizer or optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(3e-3)
    )
    lopt = lopt.replace(horizon=horizon)
    program = _Program(family, lopt, horizon, truncation, estimator, sigma, meta_optimizer)
    return program.train(n_tasks, seed, maxtime, maxiters, progress, callback)


class _Program:
    """The compiled parts of one meta-training: the tasks' start, and one meta-iteration."""

    def __init__(self, family, lopt, horizon, truncation, estimator, sigma, meta_optimizer):
        self.family, self.lopt, self.horizon = family, lopt, horizon
        self.truncation, self.estimator, self.sigma = truncation, estimator, sigma
        self.meta_optimizer = meta_optimizer
        spec = OptaxSpec(False, False, False, False, False, False)
        self.method = OptaxMethod(lopt, derivatives(family.prob.f, family.prob.sense),
                                  spec, OptaxState)
        self.start = jax.jit(self._start, static_argnums=0)
        self.iterate = jax.jit(self._iterate)

    # -- one task (vmapped over the tasks)

    def _fresh(self, key: jax.Array) -> tuple[Any, Any]:
        """(inner state at step 0, p) of a new task drawn from `key`."""
        ps, u0s = self.family.draw(key, 1)
        p, u0 = jax.tree.map(lambda x: jnp.asarray(x[0]), (ps, u0s))
        state, _ = self.method.init(u0, p, None)
        return state, p

    def _with(self, state: Any, theta: Any) -> Any:
        """The inner state with the learned optimizer's weights `theta`."""
        params, opt_state, previous = state
        return params, opt_state._replace(theta=theta), previous

    def _unroll(self, theta: Any, state: Any, p: Any, steps: int) -> tuple[Any, Any]:
        """(mean log loss of `steps` steps, the state after them)."""

        def body(s, _):
            s, ev = self.method.step(s, p, (None, None))
            return s, ev.loss

        state, losses = jax.lax.scan(body, self._with(state, theta), None, length=steps)
        return jnp.mean(jnp.log(losses + TINY)), state

    # -- the programs

    def _start(self, n_tasks: int, theta: Any, key: jax.Array) -> tuple[Any, Any]:
        """(states, ps) of `n_tasks` tasks, task i advanced to its staggered start."""
        states, ps = jax.vmap(self._fresh)(jax.random.split(key, n_tasks))
        unrolls = self.horizon // self.truncation
        offsets = (jnp.arange(n_tasks) * unrolls // n_tasks) * self.truncation

        def advance(state, p, offset):
            def body(i, s):
                stepped = self.method.step(s, p, (None, None))[0]
                return jax.tree.map(lambda a, b: jnp.where(i < offset, a, b), stepped, s)

            return jax.lax.fori_loop(0, self.horizon, body, self._with(state, theta))

        return jax.vmap(advance)(states, ps, offsets), ps

    def _iterate(self, theta, meta_state, states, ps, key):
        """One meta-iteration: (theta, meta_state, states, ps, meta-loss, finite)."""
        n = jax.tree.leaves(ps)[0].shape[0]
        k_eps, k_new = jax.random.split(key)
        unroll = lambda th, s, p: self._unroll(th, s, p, self.truncation)
        if self.estimator == "unroll":
            def score(th):
                losses, after = jax.vmap(unroll, in_axes=(None, 0, 0))(th, states, ps)
                return jnp.mean(losses), after

            (meta_loss, after), grad = jax.value_and_grad(score, has_aux=True)(theta)
        else:
            leaves, tree = jax.tree.flatten(theta)
            keys = jax.random.split(k_eps, len(leaves))
            eps = tree.unflatten([
                self.sigma * jax.random.normal(k, (n, *x.shape), x.dtype)
                for k, x in zip(keys, leaves)
            ])
            shift = lambda sign: jax.tree.map(lambda t, e: t + sign * e, theta, eps)
            plus, after = jax.vmap(unroll)(shift(1.0), states, ps)
            minus, _ = jax.vmap(unroll)(shift(-1.0), states, ps)
            meta_loss = jnp.mean((plus + minus) / 2)
            weight = (plus - minus) / (2 * self.sigma**2 * n)
            grad = jax.tree.map(lambda e: jnp.tensordot(weight, e, axes=1), eps)
        finite = jnp.isfinite(meta_loss) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]
        ))
        updates, new_meta_state = self.meta_optimizer.update(grad, meta_state, theta)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        theta, meta_state = keep((optax.apply_updates(theta, updates), new_meta_state),
                                 (theta, meta_state))
        # tasks at the end of their horizon, or whose loss turned non-finite, start over
        count = after[1].count
        ok = jax.vmap(lambda s: jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(s[0])]
        )))(after)
        done = (count >= self.horizon) | ~ok
        fresh_states, fresh_ps = jax.vmap(self._fresh)(jax.random.split(k_new, n))
        fresh_states = jax.vmap(self._with, in_axes=(0, None))(fresh_states, theta)
        pick = lambda new, old: jax.tree.map(
            lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old
        )
        states, ps = pick((fresh_states, fresh_ps), (after, ps))
        return theta, meta_state, states, ps, meta_loss, finite

    # -- the host loop

    def train(self, n_tasks, seed, maxtime, maxiters, progress, callback) -> LearnedOptimizer:
        key = jax.random.key(seed)
        k_start, key = jax.random.split(key)
        theta = self.lopt.theta
        meta_state = self.meta_optimizer.init(theta)
        states, ps = self.start(n_tasks, theta, k_start)
        clock, bar = Clock(maxtime), Progress(as_progress(progress), maxiters)
        losses, skipped, stop = [], 0, Stop()
        tic = time.perf_counter()
        try:
            with stopped(stop, lambda: "the weights so far"):
                while maxiters is None or len(losses) < maxiters:
                    clock.check()
                    key, k = jax.random.split(key)
                    theta, meta_state, states, ps, meta_loss, finite = self.iterate(
                        theta, meta_state, states, ps, k
                    )
                    meta_loss, finite = float(meta_loss), bool(finite)
                    losses.append(meta_loss)
                    skipped += not finite
                    bar.show(len(losses), meta_loss)
                    if callback is not None:
                        call_back(callback, OptimizationState(
                            iter=len(losses), u=theta, objective=meta_loss, grad=None,
                            p=None, original=meta_state,
                        ))
        finally:
            bar.close(len(losses), losses[-1] if losses else float("nan"))
        retcode = stop.retcode or ReturnCode.MaxIters
        training = MetaTraining(len(losses), np.asarray(losses), skipped,
                                time.perf_counter() - tic, retcode)
        return self.lopt.replace(theta=theta, training=training)

