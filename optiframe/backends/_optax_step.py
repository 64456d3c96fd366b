"""One optax iteration as a method of the shared on-device run (`_program.DeviceMethod`):
evaluate the loss and gradient, test for a stop, apply the optimizer's update (projected
onto the bounds, if any). Imported when an optax run starts (`optax.py` is the public side).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ..derivatives import Derivatives
from ..solution import ReturnCode
from ._program import FIRST_STOP, RUNNING, DeviceMethod, Evaluation, counts, loss_dtype

ABSTOL, RELTOL = FIRST_STOP, FIRST_STOP + 1


def linesearch_states(state: Any) -> list[Any]:
    kinds = (optax.ScaleByZoomLinesearchState, optax.ScaleByBacktrackingLinesearchState)
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kinds))
    return [node for node in nodes if isinstance(node, kinds)]


@dataclasses.dataclass(frozen=True)
class OptaxSpec:
    """The static settings one optax program depends on (besides shapes).

    Attributes:
        lookahead: params are `optax.LookaheadParams`; gradients at the fast weights.
        linesearch: the optimizer runs a line search (its evaluations are counted).
        reuse_value: take the loss and gradient from the line search's state.
        bounded: project onto `[lb, ub]` after each update.
        abstol, reltol: which convergence tests run.
    """

    lookahead: bool
    linesearch: bool
    reuse_value: bool
    bounded: bool
    abstol: bool
    reltol: bool


class OptaxMethod(DeviceMethod):
    """One optax iteration (the stops: see `Optax`). The state is `(params, opt_state,
    previous loss)`, the previous loss None without `reltol` (a copy of the loss the loop
    records costs time every step)."""

    stops = {
        ABSTOL: (ReturnCode.Success, "gradient norm <= abstol={options.abstol}"),
        RELTOL: (
            ReturnCode.Success, "relative change of the objective <= reltol={options.reltol}"
        ),
    }

    def __init__(
        self, transform: Any, derivs: Derivatives, spec: OptaxSpec, state_type: type
    ) -> None:
        self.transform, self.derivs, self.spec = transform, derivs, spec
        self.state_type = state_type  # `sol.state`: `optax.OptaxState`

    def _eval_point(self, params: Any) -> Any:
        """Where the gradient is taken: the fast weights under lookahead."""
        return params.fast if self.spec.lookahead else params

    def point(self, state: Any) -> Any:
        """What the user gets back: the slow weights under lookahead."""
        return state[0].slow if self.spec.lookahead else state[0]

    def evaluated(self, before: Any, after: Any) -> Any:
        return self._eval_point(before[0])

    def init(self, u: Any, p: Any, consts: Any) -> tuple[Any, None]:
        params = optax.LookaheadParams.init_synced(u) if self.spec.lookahead else u
        return (params, self.transform.init(params), self._no_loss()), None

    def _no_loss(self) -> Any:
        return jnp.asarray(jnp.inf, loss_dtype()) if self.spec.reltol else None

    def _evaluate(self, point: Any, opt_state: Any, p: Any) -> tuple[Any, Any, Any, Any]:
        """(loss, aux, grad, fresh evaluations) at `point`; with `reuse_value`, the line
        search's stored value and gradient where it has them."""

        def evaluate():
            (loss, aux), grad = self.derivs.value_and_grad(point, p)
            return jnp.asarray(loss, loss_dtype()), aux, grad

        stored = linesearch_states(opt_state)[0] if self.spec.reuse_value else None
        if stored is None or stored.grad is None:  # a backtracking search without store_grad
            return *evaluate(), 1
        have = jnp.isfinite(stored.value)
        loss, grad = jax.lax.cond(
            have, lambda: (stored.value.astype(loss_dtype()), stored.grad), lambda: evaluate()[::2]
        )
        return loss, None, grad, jnp.where(have, 0, 1)

    def _update(self, state: Any, grad: Any, loss: Any, p: Any, bounds: Any):
        """(params, opt_state, line-search fevals, line-search gevals) after one update."""
        (params, opt_state, _), tx = state, self.transform
        extra = {} if not isinstance(tx, optax.GradientTransformationExtraArgs) else dict(
            value=loss, grad=grad, value_fn=lambda w: self.derivs.value(w, p)
        )
        updates, opt_state = tx.update(grad, opt_state, params, **extra)
        params = optax.apply_updates(params, updates)
        if self.spec.bounded:
            project = lambda x: optax.projections.projection_box(x, *bounds)
            params = type(params)(*map(project, params)) if self.spec.lookahead else project(params)
        fevals = gevals = jnp.zeros((), jnp.int32)
        for node in linesearch_states(opt_state) if self.spec.linesearch else ():
            count = node.info.num_linesearch_steps.astype(jnp.int32)
            fevals += count
            if isinstance(node, optax.ScaleByZoomLinesearchState):
                gevals += count
            elif node.grad is not None:
                gevals += 1
        return params, opt_state, fevals, gevals

    def step(self, state: Any, p: Any, consts: Any) -> tuple[Any, Evaluation]:
        spec, (bounds, tol), previous = self.spec, consts, state[2]
        point = self._eval_point(state[0])
        loss, aux, grad, fresh = self._evaluate(point, state[1], p)
        finite = jnp.isfinite(loss)
        status = jnp.asarray(RUNNING, jnp.int32)
        if spec.abstol:
            status = jnp.where(finite & (optax.tree.norm(grad) <= tol[0]), ABSTOL, status)
        if spec.reltol:
            change = jnp.abs(loss - previous)
            still = jnp.isfinite(previous) & (change <= tol[1] * jnp.abs(previous))
            status = jnp.where((status == RUNNING) & still, RELTOL, status)
        params, opt_state, ls_fevals, ls_gevals = self._update(state, grad, loss, p, bounds)
        go = finite & (status == RUNNING)
        stops = spec.abstol or spec.reltol
        if stops:  # keep the iterate that passed the test
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)
            params, opt_state = keep((params, opt_state), state[:2])
        cost = self.derivs.fevals_per("value_and_grad", sum(x.size for x in jax.tree.leaves(point)))
        go_ = go.astype(jnp.int32)
        evaluation = Evaluation(
            u=point, loss=loss, grad=grad, aux=aux, status=status,
            counts=counts(go_, fresh * cost + go_ * ls_fevals, fresh + go_ * ls_gevals),
            at_state=~go & stops & (not spec.lookahead),
        )
        return (params, opt_state, loss if spec.reltol else None), evaluation

    def steady(self, state: Any) -> jax.Array | None:
        if self.spec.abstol or self.spec.reltol or self.spec.linesearch:
            return None
        n = sum(x.size for x in jax.tree.leaves(self._eval_point(state[0])))
        return counts(1, self.derivs.fevals_per("value_and_grad", n), 1)

    def final(self, state: Any, p: Any, consts: Any) -> tuple[Any, jax.Array]:
        return self.derivs.value(self.point(state), p).astype(loss_dtype()), counts(0, 1, 0)

    def export(self, state: Any, steps: Any, best: Any) -> Any:
        return self.state_type(state[0], state[1], steps)

    def restore(self, public: Any) -> tuple[Any, Any, None]:
        return (public.params, public.opt_state, self._no_loss()), public.steps, None

    def original(self, before: Any, after: Any, evaluation: Evaluation) -> Any:
        return before[1]

    def result(self, state: Any, consts: Any, extra: Any) -> Any:
        return state[1]
