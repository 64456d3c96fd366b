"""The optax backend: any `optax.GradientTransformation` behind `solve`.

One iteration evaluates the loss and gradient, tests for a stop and applies the optimizer's
update, projected onto the bounds if any (`_optax_step.OptaxMethod`); the shared on-device
lifecycle (`_device.py`) owns the loop, the callback, the data and the rest. optax itself is
imported when a transform is made or a run starts, not with optiframe.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import derivatives
from ..errors import OptiframeError
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution
from ._device import DeviceRun
from ._lifecycle import check_options
from ._program import loss_dtype
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, register_adapter

if TYPE_CHECKING:
    import optax


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
_FINGERPRINTS: dict[int, tuple[Any, Any]] = {}  # id(transform): (transform, fingerprint)


def _fingerprint_of(transform: Any) -> Any:
    """`_fingerprint` of an optax transform, computed once per transform object (`solve`
    wraps the same transform in a new `Optax` every call)."""
    hit = _FINGERPRINTS.get(id(transform))
    if hit is None or hit[0] is not transform:
        if len(_FINGERPRINTS) > 256:
            _FINGERPRINTS.clear()
        hit = _FINGERPRINTS[id(transform)] = (transform, _fingerprint(tuple(transform)))
    return hit[1]


def _is_transform(obj: Any) -> bool:
    """`obj` is an `optax.GradientTransformation` (optax is imported if the user made one)."""
    optax = sys.modules.get("optax")
    return optax is not None and isinstance(obj, optax.GradientTransformation)


def _structure(alg: Optax) -> tuple[bool, bool]:
    """(lookahead, line search) of `alg.transform`, inspected once per fingerprint."""
    import optax

    from ._optax_step import linesearch_states

    if alg.fingerprint not in _STRUCTURES:
        init = alg.transform.init
        lookahead = getattr(init, "__qualname__", "").startswith("lookahead.")
        wrap = optax.LookaheadParams.init_synced if lookahead else lambda params: params
        one = jax.ShapeDtypeStruct((1,), jnp.float32)
        shapes = jax.eval_shape(lambda params: init(wrap(params)), one)
        linesearch = bool(linesearch_states(shapes))
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
        if not _is_transform(self.transform):
            raise OptiframeError(
                f"`Optax(transform=...)` must be an optax.GradientTransformation, got "
                f"{type(self.transform).__name__}."
            )

    @functools.cached_property
    def fingerprint(self) -> Any:
        return _fingerprint_of(self.transform)

    @functools.cached_property
    def lookahead(self) -> bool:
        """The transform is `optax.lookahead` (it works on `LookaheadParams`)."""
        return _structure(self)[0]

    @functools.cached_property
    def linesearch(self) -> bool:
        """The transform runs a line search (it needs a fixed objective)."""
        return _structure(self)[1]

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True, data=not self.linesearch, needs=frozenset({"grad"}), needs_budget=True,
            keywords=frozenset(COMMON_KEYWORDS), ensemble=True, processes=True,
        )

    def __repr__(self) -> str:
        name = self.name or getattr(self.transform.init, "__qualname__", "").split(".")[0]
        return f"Optax({name})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        from ._optax_step import OptaxMethod, OptaxSpec

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
        build = lambda: OptaxMethod(
            self.transform, derivatives(problem.f, problem.sense), spec, OptaxState
        )
        run = DeviceRun(self, problem, options, ("optax", self.fingerprint, spec), build)
        bounds = None if not bounded else tuple(
            jax.tree.map(lambda b, x: jnp.asarray(b, x.dtype), bound, run.u)
            for bound in (problem.lb, problem.ub)
        )
        tol = np.asarray([options.abstol or 0.0, options.reltol or 0.0], loss_dtype())
        return run.solve((bounds, tol))


@functools.cache
def _named(name: str, learning_rate: float | None) -> Optax:
    """One instance per registered name, so repeated solves reuse compiled code."""
    import optax

    defaults = {} if learning_rate is None else {"learning_rate": learning_rate}
    return Optax(getattr(optax, name)(**defaults), name=name)


register_adapter(_is_transform, Optax)
for _name, _rate in dict(  # each registered name's default learning rate
    adam=1e-3, adamw=1e-3, sgd=1e-2, lion=1e-4, radam=1e-3, rmsprop=1e-3, adagrad=1e-2,
    yogi=1e-2, lbfgs=None,
).items():
    _make = functools.partial(_named, _name, _rate)
    register(_name, _make)
    register(f"optax:{_name}", _make)
