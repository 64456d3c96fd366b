"""The optax backend: any `optax.GradientTransformation` behind `solve`.

One iteration evaluates the loss and gradient, tests for a stop and applies the optimizer's
update, projected onto the bounds if any (`OptaxMethod`); the shared on-device lifecycle
(`_device.py`) owns the loop, the callback, the data and the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..derivatives import Derivatives, derivatives
from ..errors import OptiframeError
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._device import DeviceRun
from ._lifecycle import check_options
from ._program import FIRST_STOP, RUNNING, DeviceMethod, Evaluation, counts, loss_dtype
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, register_adapter

ABSTOL, RELTOL = FIRST_STOP, FIRST_STOP + 1


class OptaxState(NamedTuple):
    """What a warm start continues: the optimizer's parameters and state.

    Attributes:
        params: the last iterate as the optimizer sees it (`optax.LookaheadParams` under
            lookahead).
        opt_state: the optax optimizer state (moments, step count, ...).
        steps: steps taken since the first solve of the chain (positions a data loader).
    """

    params: Any
    opt_state: Any
    steps: jax.Array


def _fingerprint(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """A hashable summary of how an optax transform was built: code objects and the values
    they close over, so two `optax.adam(1e-3)` built apart share compiled code. Anything
    else is compared by identity (the cached program keeps it alive)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = ("cycle", id(obj))
    fp = lambda x: _fingerprint(x, memo)
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        out = (type(obj), obj)
    elif isinstance(obj, (tuple, list)):
        out = (type(obj), tuple(fp(x) for x in obj))
    elif isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        out = (dict, tuple((k, fp(v)) for k, v in sorted(obj.items())))
    elif isinstance(obj, functools.partial):
        out = (functools.partial, fp(obj.func), fp(obj.args), fp(obj.keywords))
    elif isinstance(obj, types.FunctionType):
        out = (obj.__code__, fp(obj.__defaults__), fp(obj.__kwdefaults__), fp(obj.__closure__))
    elif isinstance(obj, types.CellType):
        try:
            out = fp(obj.cell_contents)
        except ValueError:  # an empty cell
            out = ("empty cell", id(obj))
    else:
        out = ("id", id(obj))
    memo[id(obj)] = out
    return out


_STRUCTURES: dict[Any, tuple[bool, bool]] = {}


def _structure(alg: Optax) -> tuple[bool, bool]:
    """(lookahead, line search) of `alg.transform`, inspected once per fingerprint."""
    if alg.fingerprint not in _STRUCTURES:
        init = alg.transform.init
        lookahead = getattr(init, "__qualname__", "").startswith("lookahead.")
        params = optax.LookaheadParams.init_synced(jnp.zeros(1)) if lookahead else jnp.zeros(1)
        linesearch = bool(_linesearch_states(jax.eval_shape(init, params)))
        if len(_STRUCTURES) > 256:
            _STRUCTURES.clear()
        _STRUCTURES[alg.fingerprint] = (lookahead, linesearch)
    return _STRUCTURES[alg.fingerprint]


@dataclasses.dataclass(frozen=True, eq=False)
class Optax(Algorithm):
    """An optax optimizer as an optiframe algorithm.

    `solve` wraps any `optax.GradientTransformation` in this adapter, so
    `solve(prob, optax.adam(1e-3))` and `solve(prob, opf.Optax(optax.adam(1e-3)))` are the
    same. Optimizers with a line search (`optax.lbfgs()`) receive the value, the gradient
    and `value_fn`; `optax.lookahead` receives `optax.LookaheadParams` and the slow weights
    are returned.

    Convergence: `abstol` stops when the gradient's 2-norm (over all leaves) is at most
    `abstol`; `reltol` when the loss changes by at most `reltol * |previous loss|`. Either
    returns `Success`, with the iterate that passed the test (its update not applied).

    Args:
        transform: the optax optimizer.
        name: how the algorithm is shown in messages.

    Example:
        >>> sol = opf.solve(prob, optax.adamw(1e-3, weight_decay=1e-4), maxiters=500)
    """

    transform: optax.GradientTransformation
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.transform, optax.GradientTransformation):
            raise OptiframeError(
                f"`Optax(transform=...)` must be an optax.GradientTransformation, got "
                f"{type(self.transform).__name__}."
            )

    @functools.cached_property
    def fingerprint(self) -> Any:
        return _fingerprint(tuple(self.transform))

    @property
    def lookahead(self) -> bool:
        """The transform is `optax.lookahead` (it works on `LookaheadParams`)."""
        return _structure(self)[0]

    @property
    def linesearch(self) -> bool:
        """The transform runs a line search (it needs a fixed objective)."""
        return _structure(self)[1]

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True, data=not self.linesearch, needs=frozenset({"grad"}), needs_budget=True,
            keywords=frozenset(COMMON_KEYWORDS), ensemble=True,
        )

    def __repr__(self) -> str:
        name = self.name or getattr(self.transform.init, "__qualname__", "").split(".")[0]
        return f"Optax({name})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        check_options(
            options.solver_options, (), "solve(..., **options) with optax",
            "Configure the optimizer itself, e.g. optax.adam(learning_rate, b1=...).",
        )
        bounded, lookahead, linesearch = problem.has_bounds, self.lookahead, self.linesearch
        spec = OptaxSpec(
            lookahead, linesearch,
            reuse_value=linesearch and not (lookahead or bounded or problem.f.has_aux),
            bounded=bounded, abstol=options.abstol is not None, reltol=options.reltol is not None,
        )
        build = lambda: OptaxMethod(self, derivatives(problem.f, problem.sense), spec)
        run = DeviceRun(self, problem, options, ("optax", self.fingerprint, spec), build)
        bounds = None if not bounded else tuple(
            jax.tree.map(lambda b, x: jnp.asarray(b, x.dtype), bound, run.u)
            for bound in (problem.lb, problem.ub)
        )
        tol = jnp.asarray([options.abstol or 0.0, options.reltol or 0.0], loss_dtype())
        return run.solve((bounds, tol))


def _linesearch_states(state: Any) -> list[Any]:
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

    def __init__(self, alg: Optax, derivs: Derivatives, spec: OptaxSpec) -> None:
        self.transform, self.derivs, self.spec = alg.transform, derivs, spec

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

        stored = _linesearch_states(opt_state)[0] if self.spec.reuse_value else None
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
        for node in _linesearch_states(opt_state) if self.spec.linesearch else ():
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

    def export(self, state: Any, steps: Any, best: Any) -> OptaxState:
        return OptaxState(state[0], state[1], steps)

    def restore(self, public: OptaxState) -> tuple[Any, Any, None]:
        return (public.params, public.opt_state, self._no_loss()), public.steps, None

    def original(self, before: Any, after: Any, evaluation: Evaluation) -> Any:
        return before[1]

    def result(self, state: Any, consts: Any, extra: Any) -> Any:
        return state[1]


@functools.cache
def _named(name: str, learning_rate: float | None) -> Optax:
    """One instance per registered name, so repeated solves reuse compiled code."""
    defaults = {} if learning_rate is None else {"learning_rate": learning_rate}
    return Optax(getattr(optax, name)(**defaults), name=name)


register_adapter(lambda alg: isinstance(alg, optax.GradientTransformation), Optax)
for _name, _rate in dict(  # each registered name's default learning rate
    adam=1e-3, adamw=1e-3, sgd=1e-2, lion=1e-4, radam=1e-3, rmsprop=1e-3, adagrad=1e-2,
    yogi=1e-2, lbfgs=None,
).items():
    _make = functools.partial(_named, _name, _rate)
    register(_name, _make)
    register(f"optax:{_name}", _make)
