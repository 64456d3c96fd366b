"""The compiled side of the optax backend: one iteration, and the fused loops around it.

One iteration evaluates the loss and gradient at the current iterate, tests for a stop, and
applies the optimizer's update (projected onto the bounds, if any). `LoopProgram` holds
the jitted functions for one (objective, optimizer, static settings); `optax.py` drives
them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..derivatives import Derivatives

# Stop states, in `counts[STATUS]`.
RUNNING, CONVERGED_ABSTOL, CONVERGED_RELTOL, NONFINITE = 0, 1, 2, 3
# Slots of `Carry.counts` (int32) and `Carry.losses` (the widest float JAX allows).
STEPS, ITERATIONS, FEVALS, GEVALS, STATUS = range(5)
LAST, BEST, FINAL = range(3)


class Carry(NamedTuple):
    """The loop state. Scalars are packed into two small arrays, so a stepwise call moves
    few buffers.

    Attributes:
        params: the iterate as the optimizer sees it (`LookaheadParams` under lookahead).
        opt_state: the optax state.
        counts: int32[5]: steps since the first solve of a warm-start chain (they position a
            data loader), iterations of this solve, fevals, gevals, stop status.
        losses: [3]: the signed loss of the last evaluated iterate, the best loss seen
            (when tracked), the loss at the final iterate (once evaluated). inf when unknown.
        best_u: the evaluated iterate with the lowest loss, when tracked, else None.
    """

    params: Any
    opt_state: Any
    counts: jax.Array
    losses: jax.Array
    best_u: Any


def linesearch_states(state: Any) -> list[Any]:
    kinds = (optax.ScaleByZoomLinesearchState, optax.ScaleByBacktrackingLinesearchState)
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kinds))
    return [node for node in nodes if isinstance(node, kinds)]


def loss_dtype() -> Any:
    return jnp.result_type(float)


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static settings a compiled loop depends on (besides array shapes).

    Attributes:
        lookahead: params are `optax.LookaheadParams`; gradients at the fast weights.
        linesearch: the optimizer runs a line search (its evaluations are counted, and
            with `reuse_value` its stored value and gradient are used for the next step).
        reuse_value: take the loss and gradient from the line search's state.
        bounded: project onto `[lb, ub]` after each update.
        abstol, reltol: which convergence tests run.
        track_best: keep the best evaluated iterate on the device.
        loader: (num_samples, batch_size, last_batch_size) of a fused `DataLoader`.
        progress: call the progress hook from inside the fused loop.
    """

    lookahead: bool
    linesearch: bool
    reuse_value: bool
    bounded: bool
    abstol: bool
    reltol: bool
    track_best: bool
    loader: tuple[int, int, int] | None
    progress: bool

    @property
    def stops_early(self) -> bool:
        """A convergence test can stop the run at an evaluated iterate, which must then be
        kept rather than updated."""
        return self.abstol or self.reltol


class LoopProgram:
    """The jitted functions of one (objective, sense, optimizer, spec), built once and
    cached by the backend so that later solves never trace again.

    - `init(u) -> carry` for a fresh run, `resume(params, opt_state, steps) -> carry` to
      continue one;
    - `step(carry, p, lb, ub, tol) -> (carry, (loss, grad, aux))`: one iteration, the
      loss and gradient in the user's sign;
    - `run(carry, limit, p, key, lb, ub, tol, every) -> carry`: iterations until `limit`
      iterations of this solve or a stop, as one `lax.while_loop` (for a `DataLoader`, `p`
      is its arrays and `key` its shuffling key or None); ends by evaluating the final
      iterate when no stop occurred;
    - `final(carry, p) -> loss`: the signed loss at the user's point of `carry`.
    """

    def __init__(
        self, transform: optax.GradientTransformation, derivs: Derivatives, spec: LoopSpec
    ):
        self.transform, self.derivs, self.spec = transform, derivs, spec
        self.progress_hook = lambda iteration, loss: None
        self.init = jax.jit(self._init)
        self.resume = jax.jit(self._resume)
        self.step = jax.jit(self._step)
        self.run = jax.jit(self._run_loader if spec.loader else self._run)
        self.final = jax.jit(self._final)

    def eval_point(self, params: Any) -> Any:
        """Where the gradient is taken: the fast weights under lookahead."""
        return params.fast if self.spec.lookahead else params

    def user_point(self, params: Any) -> Any:
        """What the user gets back: the slow weights under lookahead."""
        return params.slow if self.spec.lookahead else params

    def _resume(self, params: Any, opt_state: Any, steps: Any) -> Carry:
        counts = jnp.zeros(5, jnp.int32).at[STEPS].set(steps)
        best_u = self.eval_point(params) if self.spec.track_best else None
        losses = jnp.full(3, jnp.inf, loss_dtype())
        return Carry(params, opt_state, counts, losses, best_u)

    def _init(self, u: Any) -> Carry:
        params = optax.LookaheadParams.init_synced(u) if self.spec.lookahead else u
        return self._resume(params, self.transform.init(params), 0)

    # -- one iteration

    def _evaluate(self, carry: Carry, p: Any) -> tuple[Any, Any, Any, Any, Any]:
        """(loss, aux, grad, fevals, gevals) at the carry's evaluation point."""
        point = self.eval_point(carry.params)
        cost = self.derivs.fevals_per_grad(sum(x.size for x in jax.tree.leaves(point)))

        def evaluate():
            (loss, aux), grad = self.derivs.value_and_grad(point, p)
            return loss.astype(loss_dtype()), aux, grad

        if not self.spec.reuse_value:
            return *evaluate(), cost, 1
        stored = linesearch_states(carry.opt_state)[0]
        have = jnp.isfinite(stored.value)
        loss, grad = jax.lax.cond(
            have,
            lambda: (stored.value.astype(loss_dtype()), stored.grad),
            lambda: (lambda loss, aux, grad: (loss, grad))(*evaluate()),
        )
        fresh = jnp.where(have, 0, 1)
        return loss, None, grad, fresh * cost, fresh

    def _update(self, carry: Carry, grad: Any, loss: Any, p: Any, lb: Any, ub: Any):
        """(params, opt_state, line-search fevals, line-search gevals) after one update."""
        tx, params = self.transform, carry.params
        if isinstance(tx, optax.GradientTransformationExtraArgs):
            value_fn = lambda w: self.derivs.value(w, p)  # noqa: E731
            updates, opt_state = tx.update(
                grad, carry.opt_state, params, value=loss, grad=grad, value_fn=value_fn
            )
        else:
            updates, opt_state = tx.update(grad, carry.opt_state, params)
        params = optax.apply_updates(params, updates)
        if self.spec.bounded:
            project = lambda x: optax.projections.projection_box(x, lb, ub)  # noqa: E731
            if self.spec.lookahead:
                params = optax.LookaheadParams(project(params.fast), project(params.slow))
            else:
                params = project(params)
        fevals = gevals = jnp.zeros((), jnp.int32)
        for node in linesearch_states(opt_state) if self.spec.linesearch else ():
            count = node.info.num_linesearch_steps.astype(jnp.int32)
            fevals += count
            if isinstance(node, optax.ScaleByZoomLinesearchState):
                gevals += count
            elif node.grad is not None:
                gevals += 1
        return params, opt_state, fevals, gevals

    def _step(self, carry: Carry, p: Any, lb: Any, ub: Any, tol: Any):
        """One iteration: evaluate at the current iterate, test, update.

        A step taken after a stop counts nothing. With a convergence test (`stops_early`)
        it also changes nothing, so the run ends on the iterate that passed the test; a
        NaN loss needs no such guard, since the drivers then return the best iterate.
        """
        spec, counts, losses = self.spec, carry.counts, carry.losses
        running = counts[STATUS] == RUNNING
        loss, aux, grad, fe, ge = self._evaluate(carry, p)
        finite = jnp.isfinite(loss)
        status = jnp.where(finite, RUNNING, NONFINITE)
        if spec.abstol:
            small = optax.tree.norm(grad) <= tol[0]
            status = jnp.where(finite & small, CONVERGED_ABSTOL, status)
        if spec.reltol:
            prev = losses[LAST]
            still = jnp.isfinite(prev) & (jnp.abs(loss - prev) <= tol[1] * jnp.abs(prev))
            status = jnp.where((status == RUNNING) & still, CONVERGED_RELTOL, status)
        params, opt_state, ls_fe, ls_ge = self._update(carry, grad, loss, p, lb, ub)
        go = running & (status == RUNNING)
        if spec.stops_early:
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)  # noqa: E731
            params, opt_state = keep(params, carry.params), keep(opt_state, carry.opt_state)
        best_u = carry.best_u
        if spec.track_best:
            improved = finite & (loss < losses[BEST]) & running
            best_u = jax.tree.map(
                lambda new, old: jnp.where(improved, new, old),
                self.eval_point(carry.params), best_u,
            )
            losses = losses.at[BEST].set(jnp.where(improved, loss, losses[BEST]))
        go_ = go.astype(jnp.int32)
        counts = counts + running * jnp.stack(
            [go_, go_, fe + go_ * ls_fe, ge + go_ * ls_ge, status]
        ).astype(jnp.int32)
        losses = losses.at[LAST].set(jnp.where(running, loss, losses[LAST]))
        new = Carry(params, opt_state, counts, losses, best_u)
        sign = self.derivs.sign
        return new, (sign * loss, jax.tree.map(lambda g: sign * g, grad), aux)

    def _final(self, carry: Carry, p: Any) -> Any:
        return self.derivs.value(self.user_point(carry.params), p).astype(loss_dtype())

    def _with_final(self, carry: Carry, p: Any, limit: Any) -> Carry:
        """Evaluate the final iterate (on `p`) if the loop ended at its limit."""
        done = (carry.counts[STATUS] == RUNNING) & (carry.counts[ITERATIONS] >= limit)
        final = jax.lax.cond(done, lambda: self._final(carry, p), lambda: carry.losses[FINAL])
        counts = carry.counts.at[FEVALS].add(done.astype(jnp.int32))
        return carry._replace(counts=counts, losses=carry.losses.at[FINAL].set(final))

    def _report(self, carry: Carry, every: Any) -> None:
        if self.spec.progress:
            i = carry.counts[ITERATIONS]
            jax.lax.cond(
                i % every == 0,
                lambda: jax.debug.callback(
                    lambda i, loss: self.progress_hook(i, loss), i, carry.losses[LAST]
                ),
                lambda: None,
            )

    # -- fused loops

    def _running(self, carry: Carry, limit: Any) -> Any:
        return (carry.counts[STATUS] == RUNNING) & (carry.counts[ITERATIONS] < limit)

    def _run(self, carry, limit, p, key, lb, ub, tol, every) -> Carry:
        def body(c):
            c = self._step(c, p, lb, ub, tol)[0]
            self._report(c, every)
            return c

        carry = jax.lax.while_loop(lambda c: self._running(c, limit), body, carry)
        return self._with_final(carry, p, limit)

    def _run_loader(self, carry, limit, arrays, key, lb, ub, tol, every) -> Carry:
        """Epochs over a `DataLoader`'s arrays, each batch gathered by index on the device.

        An outer loop over epochs draws each epoch's order once; an inner loop steps through
        the epoch's batches (resuming mid-epoch after a warm start). A trailing partial
        batch is the other branch of a `lax.cond`, since its shape differs.
        """
        n, size, last = self.spec.loader
        full = n // size
        per_epoch = full + (last > 0)

        def batch(order, index):
            def gather(start, count):
                take = jax.lax.dynamic_slice_in_dim(order, start, count)
                return jax.tree.map(lambda a: jnp.take(a, take, axis=0), arrays)

            return gather, index < full

        def epoch_body(c):
            epoch = c.counts[STEPS] // per_epoch
            end = (epoch + 1) * per_epoch
            order = (
                jnp.arange(n) if key is None
                else jax.random.permutation(jax.random.fold_in(key, epoch), n)
            )

            def step_body(c):
                index = c.counts[STEPS] % per_epoch
                gather, is_full = batch(order, index)
                step = lambda b: lambda c: self._step(c, b, lb, ub, tol)[0]  # noqa: E731
                if last:
                    c = jax.lax.cond(
                        is_full,
                        lambda c: step(gather(index * size, size))(c),
                        lambda c: step(gather(full * size, last))(c),
                        c,
                    )
                else:
                    c = step(gather(index * size, size))(c)
                self._report(c, every)
                return c

            c = jax.lax.while_loop(
                lambda c: self._running(c, limit) & (c.counts[STEPS] < end), step_body, c
            )
            # The final iterate is evaluated on the last batch it was stepped with.
            index = (c.counts[STEPS] - 1) % per_epoch
            gather, is_full = batch(order, index)
            if last:
                return jax.lax.cond(
                    is_full,
                    lambda c: self._with_final(c, gather(index * size, size), limit),
                    lambda c: self._with_final(c, gather(full * size, last), limit),
                    c,
                )
            return self._with_final(c, gather(index * size, size), limit)

        return jax.lax.while_loop(lambda c: self._running(c, limit), epoch_body, carry)
