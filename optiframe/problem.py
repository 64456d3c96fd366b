"""`OptimizationFunction`, `OptimizationProblem` and `remake`, validated at construction."""

from __future__ import annotations

import dataclasses
import enum
import types
import weakref
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .derivatives import answer
from .errors import InvalidProblemError


class ObjSense(enum.Enum):
    """Whether to minimise or maximise `fun`."""

    MinSense = 1
    MaxSense = -1

    @property
    def sign(self) -> float:
        """+1 for `MinSense`, -1 for `MaxSense`: the solvers minimise `sign * fun`."""
        return float(self.value)


MinSense = ObjSense.MinSense
MaxSense = ObjSense.MaxSense

_AD_MODES = ("jax", "finite", None)
_SUPPLIED = ("grad", "hess", "hvp", "cons_jac", "cons_hess")

# The compiled programs of every user function: `fun` (a bound method's `__self__`) ->
# {(method's function, ad, has_aux, weak references to cons and the supplied derivatives):
# the cache dict}. An entry dies with its function, so what a cache holds must reach the
# user's callables only weakly (`OptimizationFunction._calls`), never through the wrapper.
_CACHES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], dict[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


@dataclasses.dataclass(frozen=True)
class Supplied:
    """The derivatives given to `OptimizationFunction`, None where not given (conventions
    as in its Args)."""

    grad: Callable[..., Any] | None = None
    hess: Callable[..., Any] | None = None
    hvp: Callable[..., Any] | None = None
    cons_jac: Callable[..., Any] | None = None
    cons_hess: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class _Calls:
    """The user's callables as a cached program may hold them: called through weak
    references when the cache is shared, the callables themselves when it is the wrapper's."""

    fun: Callable[..., Any]
    cons: Callable[..., Any] | None
    grad: Callable[..., Any] | None
    hess: Callable[..., Any] | None
    hvp: Callable[..., Any] | None
    cons_jac: Callable[..., Any] | None
    cons_hess: Callable[..., Any] | None


class _WeakCall:
    """Calls a function through a weak reference."""

    def __init__(self, ref: weakref.ref) -> None:
        self.ref = ref

    def __call__(self, *args: Any) -> Any:
        target = self.ref()
        if target is None:
            raise ReferenceError(
                "The function behind these cached derivatives was garbage-collected; keep "
                "the OptimizationFunction (or its callables) alive while using them."
            )
        return target(*args)


def _weak(c: Callable[..., Any]) -> weakref.ref | None:
    """A weak reference to `c` that compares by identity (a bound method: by its object and
    function), or None where there is none."""
    method = isinstance(c, types.MethodType)
    if type(c.__self__ if method else c).__eq__ is not object.__eq__:
        return None  # equal but distinct objects must not share one entry
    try:
        return weakref.WeakMethod(c) if method else weakref.ref(c)
    except TypeError:
        return None


def _shared_cache(
    fun: Callable[..., Any], ad: str | None, has_aux: bool, named: dict[str, Any]
) -> tuple[dict[Any, Any], _Calls]:
    """The cache of every `OptimizationFunction` of these callables and settings, and the
    callables as it may hold them; a cache of the wrapper's own where `fun` or a supplied
    callable cannot be weakly referenced by identity."""
    own: tuple[dict[Any, Any], _Calls] = ({}, _Calls(fun, **named))
    fun_ref = _weak(fun)
    refs = {name: _weak(c) for name, c in named.items() if c is not None}
    if fun_ref is None or None in refs.values():
        return own
    method = isinstance(fun, types.MethodType)
    key = (fun.__func__ if method else None, ad, has_aux, tuple(map(refs.get, named)))
    try:
        by_settings = _CACHES.setdefault(fun.__self__ if method else fun, {})
        # Entries whose supplied callables died can no longer be reached: drop them.
        for dead in [k for k in by_settings if any(r is not None and r() is None for r in k[3])]:
            del by_settings[dead]
        cache = by_settings.setdefault(key, {})
    except TypeError:  # unhashable
        return own
    weak = {name: _WeakCall(ref) for name, ref in refs.items()}
    return cache, _Calls(_WeakCall(fun_ref), **{name: weak.get(name) for name in named})


class OptimizationFunction:
    """The objective, its derivatives and the constraints.

    The function answers with whichever derivative applies (the supplied one, else derived
    with JAX, or finite differences with ad="finite"): `f.grad(u, p)`,
    `f.value_and_grad(u, p)`, `f.hess(u, p)`, `f.hvp(u, p, v)`, `f.cons_jac(u, p)`,
    `f.cons_hess(u, p)`; these are derivatives of `fun` itself, jitted once per function.
    Compiled programs belong to the user's `fun`: every `OptimizationFunction` of the same
    callables and settings shares them (in `f._cache`), and they die with `fun`.

    Args:
        fun: `fun(u, p) -> scalar`, or `(scalar, aux)` with `has_aux=True`. `u` is a pytree
            of float arrays shaped like `u0`.
        ad: "jax" derives every missing derivative with JAX; "finite" uses central finite
            differences on the host (for objectives JAX cannot trace); None means the
            derivatives must be given or the solver must be derivative-free.
        grad: `grad(u, p) -> pytree like u`, overrides the derived gradient.
        hess: `hess(u, p) -> (n, n)` in the flat order of `u` (see `ravel_pytree`).
        hvp: `hvp(u, v, p) -> pytree like u`, the Hessian times `v`. Note the order: the
            answering method is `f.hvp(u, p, v)`, the supplied `hvp` takes `(u, v, p)`.
        cons: `cons(u, p) -> (m,)` constraint values, bounded by the problem's
            `lcons <= cons <= ucons`.
        cons_jac: `cons_jac(u, p) -> (m, n)`, overrides the derived constraint Jacobian.
        cons_hess: `cons_hess(u, p) -> (m, n, n)`, the constraints' Hessians.
        has_aux: `fun` returns `(loss, aux)`; derivatives ignore `aux`, callbacks see it
            as `state.aux`.

    `f.fun`, `f.ad`, `f.cons` and `f.has_aux` are as given; `f.supplied` holds the given
    `grad`, `hess`, `hvp`, `cons_jac` and `cons_hess` (a `Supplied`).

    Example:
        >>> f = OptimizationFunction(lambda u, p: ((u - p) ** 2).sum())
        >>> f.grad(jnp.zeros(2), 1.0)
        Array([-2., -2.], dtype=float32)
    """

    __slots__ = ("fun", "ad", "cons", "has_aux", "supplied", "_calls", "_cache")

    def __init__(
        self,
        fun: Callable[..., Any],
        ad: str | None = "jax",
        *,
        grad: Callable[..., Any] | None = None,
        hess: Callable[..., Any] | None = None,
        hvp: Callable[..., Any] | None = None,
        cons: Callable[..., Any] | None = None,
        cons_jac: Callable[..., Any] | None = None,
        cons_hess: Callable[..., Any] | None = None,
        has_aux: bool = False,
    ) -> None:
        if not callable(fun):
            raise InvalidProblemError(
                f"`OptimizationFunction(fun=...)` must be callable as fun(u, p), got "
                f"{type(fun).__name__}."
            )
        if ad not in _AD_MODES:
            raise InvalidProblemError(
                f"`OptimizationFunction(ad={ad!r})` is not one of "
                f"{', '.join(map(repr, _AD_MODES))}."
            )
        named = dict(cons=cons, grad=grad, hess=hess, hvp=hvp, cons_jac=cons_jac,
                     cons_hess=cons_hess)
        for name in ("grad", "hess", "hvp", "cons", "cons_jac", "cons_hess"):
            value = named[name]
            if value is not None and not callable(value):
                raise InvalidProblemError(
                    f"`OptimizationFunction({name}=...)` must be callable, got "
                    f"{type(value).__name__}."
                )
        if has_aux and ad == "finite":
            raise InvalidProblemError(
                "`OptimizationFunction(has_aux=True)` needs ad='jax': finite differences "
                "cannot tell the loss from the auxiliary output."
            )
        # Jitted derivatives and the backends' programs are cached in `_cache`, keyed by
        # what they depend on; it is shared by every wrapper of the same callables.
        cache, calls = _shared_cache(fun, ad, has_aux, named)
        values = dict(
            fun=fun, ad=ad, cons=cons, has_aux=has_aux,
            supplied=Supplied(**{name: named[name] for name in _SUPPLIED}),
            _calls=calls, _cache=cache,
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            "OptimizationFunction is immutable; build a new one (it shares the compiled code "
            "of `fun`)."
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError("OptimizationFunction is immutable.")

    def __reduce__(self) -> tuple[Any, ...]:
        supplied = {name: getattr(self.supplied, name) for name in _SUPPLIED}
        return _rebuild, (self.fun, self.ad, self.cons, self.has_aux, supplied)

    def __repr__(self) -> str:
        given = [name for name in _SUPPLIED if getattr(self.supplied, name) is not None]
        cons = "" if self.cons is None else f", cons={self.cons!r}"
        extra = f", supplied={given}" if given else ""
        return (
            f"OptimizationFunction(fun={self.fun!r}, ad={self.ad!r}{cons}, "
            f"has_aux={self.has_aux}{extra})"
        )

    def grad(self, u: Any, p: Any) -> Any:
        """The gradient of `fun` at `u`, a pytree like `u`.

        Raises:
            UnsupportedFeatureError: with ad=None and no `grad` supplied.
        """
        return self._answer("grad")(u, p)

    def value_and_grad(self, u: Any, p: Any) -> tuple[jax.Array, Any]:
        """`(fun(u, p), grad)` in one call; with `has_aux` the value is the loss alone.

        Raises:
            UnsupportedFeatureError: with ad=None and no `grad` supplied.
        """
        return self._answer("value_and_grad")(u, p)

    def hess(self, u: Any, p: Any) -> jax.Array:
        """The Hessian of `fun` at `u`, (n, n) in the flat order of `u`.

        Raises:
            UnsupportedFeatureError: with ad=None and no `hess` supplied.
        """
        return self._answer("hess")(u, p)

    def hvp(self, u: Any, p: Any, v: Any) -> Any:
        """The Hessian of `fun` at `u` times `v` (a pytree like `u`), a pytree like `u`.

        Raises:
            UnsupportedFeatureError: with ad=None and neither `hvp` nor `hess` supplied.
        """
        return self._answer("hvp")(u, p, v)

    def cons_jac(self, u: Any, p: Any) -> jax.Array:
        """The Jacobian of `cons` at `u`, (m, n) in the flat order of `u`.

        Raises:
            UnsupportedFeatureError: without `cons`, or with ad other than "jax" and no
                `cons_jac` supplied.
        """
        return self._answer("cons_jac")(u, p)

    def cons_hess(self, u: Any, p: Any) -> jax.Array:
        """The Hessians of the constraints at `u`, (m, n, n) in the flat order of `u`.

        Raises:
            UnsupportedFeatureError: without `cons`, or with ad other than "jax" and no
                `cons_hess` supplied.
        """
        return self._answer("cons_hess")(u, p)

    def _answer(self, name: str) -> Callable[..., Any]:
        return answer(self, name)


def _rebuild(fun: Callable[..., Any], ad: str | None, cons: Any, has_aux: bool,
             supplied: dict[str, Any]) -> OptimizationFunction:
    return OptimizationFunction(fun, ad, cons=cons, has_aux=has_aux, **supplied)


def _leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def _where(arg: str, path: str) -> str:
    return f"`{arg}{path}`" if path else f"`{arg}`"


def _check_u0(u0: Any) -> None:
    leaves = _leaf_paths(u0)
    if not leaves:
        raise InvalidProblemError(
            "`OptimizationProblem(u0=...)` has no array leaves; pass the starting point "
            "as an array or a pytree (dict, list, tuple) of float arrays."
        )
    for path, leaf in leaves:
        dtype = _dtype(leaf) if _is_arraylike(leaf) else None
        if dtype is None or not np.issubdtype(dtype, np.floating):
            what = f"dtype {dtype}" if dtype is not None else f"type {type(leaf).__name__}"
            raise InvalidProblemError(
                f"`OptimizationProblem(u0=...)`: leaf {_where('u0', path)} has {what}; "
                "every leaf of u0 must be a float array. Convert it (e.g. "
                "jnp.asarray(x, float)), or for an equinox module pass only its array "
                "leaves (eqx.partition(model, eqx.is_inexact_array))."
            )
        values = np.asarray(leaf)
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values.ravel()))[0])
            raise InvalidProblemError(
                f"`OptimizationProblem(u0=...)`: {_where('u0', path)} holds a non-finite "
                f"value ({values.ravel()[bad]}) at flat index {bad}; pass a finite "
                "starting point."
            )


def _dtype(x: Any) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.result_type(x)


def _is_arraylike(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int))


def _broadcast_like_u0(value: Any, u0: Any, arg: str) -> Any:
    """`value` as a pytree of NumPy arrays shaped like `u0`'s leaves."""
    u0_def = jax.tree.structure(u0)
    if np.ndim(value) == 0 and not isinstance(value, (dict, list, tuple)):
        return jax.tree.map(lambda leaf: np.full(np.shape(leaf), value, float), u0)
    value_def = jax.tree.structure(value)
    if value_def != u0_def:
        raise InvalidProblemError(
            f"`OptimizationProblem({arg}=...)` has pytree structure {value_def} but u0 has "
            f"{u0_def}; pass a scalar or a pytree shaped like u0."
        )

    def leaf(path, v, ref):
        v = np.asarray(v, float)
        if v.shape != np.shape(ref) and v.ndim != 0:
            raise InvalidProblemError(
                f"`OptimizationProblem({arg}=...)`: {_where(arg, jax.tree_util.keystr(path))} "
                f"has shape {v.shape} but u0 has shape {np.shape(ref)} there; pass a "
                "scalar or an array of u0's shape."
            )
        return np.broadcast_to(v, np.shape(ref)).copy()

    return jax.tree_util.tree_map_with_path(leaf, value, u0)


def _check_bounds(u0: Any, lb: Any, ub: Any) -> tuple[Any, Any]:
    if (lb is None) != (ub is None):
        given, missing = ("lb", "ub") if ub is None else ("ub", "lb")
        raise InvalidProblemError(
            f"`OptimizationProblem({given}=...)` was given without `{missing}`; pass both "
            f"(use {'jnp.inf' if missing == 'ub' else '-jnp.inf'} for an unbounded side)."
        )
    if lb is None:
        return None, None
    lb = _broadcast_like_u0(lb, u0, "lb")
    ub = _broadcast_like_u0(ub, u0, "ub")
    for (path, lo), hi, x in zip(_leaf_paths(lb), jax.tree.leaves(ub), jax.tree.leaves(u0)):
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
            raise InvalidProblemError(
                f"`OptimizationProblem(lb=..., ub=...)`: {_where('lb/ub', path)} holds NaN; "
                "use -jnp.inf / jnp.inf for an unbounded side."
            )
        if np.any(lo > hi):
            i = int(np.flatnonzero((lo > hi).ravel())[0])
            raise InvalidProblemError(
                f"`OptimizationProblem(lb=..., ub=...)`: lb > ub at {_where('lb', path)} flat "
                f"index {i} ({lo.ravel()[i]} > {hi.ravel()[i]}); every lower bound must be "
                "at most its upper bound."
            )
        x = np.asarray(x)
        outside = (x < lo) | (x > hi)
        if np.any(outside):
            i = int(np.flatnonzero(outside.ravel())[0])
            raise InvalidProblemError(
                f"`OptimizationProblem(u0=...)`: {_where('u0', path)} flat index {i} is "
                f"{x.ravel()[i]}, outside [{lo.ravel()[i]}, {hi.ravel()[i]}]; start inside "
                "the bounds (e.g. u0 = jnp.clip(u0, lb, ub))."
            )
    return lb, ub


def _check_cons(f: OptimizationFunction, lcons: Any, ucons: Any) -> tuple[Any, Any]:
    if (lcons is None) != (ucons is None):
        given, missing = ("lcons", "ucons") if ucons is None else ("ucons", "lcons")
        raise InvalidProblemError(
            f"`OptimizationProblem({given}=...)` was given without `{missing}`; pass both "
            "(an entry with lcons == ucons is an equality, use ±jnp.inf for a free side)."
        )
    if lcons is None:
        if f.cons is not None:
            raise InvalidProblemError(
                "`OptimizationFunction(cons=...)` is set but the problem has no "
                "`lcons`/`ucons`; pass both to `OptimizationProblem`."
            )
        return None, None
    if f.cons is None:
        raise InvalidProblemError(
            "`OptimizationProblem(lcons=..., ucons=...)` bound constraints but the function "
            "has none; pass `OptimizationFunction(fun, cons=...)`."
        )
    lcons = np.atleast_1d(np.asarray(lcons, float))
    ucons = np.atleast_1d(np.asarray(ucons, float))
    if lcons.ndim != 1 or lcons.shape != ucons.shape:
        raise InvalidProblemError(
            f"`OptimizationProblem(lcons=..., ucons=...)` must be 1-D arrays of one length, "
            f"got shapes {lcons.shape} and {ucons.shape}."
        )
    if np.any(lcons > ucons):
        i = int(np.flatnonzero(lcons > ucons)[0])
        raise InvalidProblemError(
            f"`OptimizationProblem(lcons=..., ucons=...)`: lcons[{i}] = {lcons[i]} > "
            f"ucons[{i}] = {ucons[i]}; every lower constraint bound must be at most its upper."
        )
    return lcons, ucons


def _check_integrality(u0: Any, integrality: Any) -> Any:
    if integrality is None:
        return None
    if isinstance(integrality, bool):
        return jax.tree.map(lambda leaf: np.full(np.shape(leaf), integrality), u0)
    if jax.tree.structure(integrality) != jax.tree.structure(u0):
        raise InvalidProblemError(
            "`OptimizationProblem(integrality=...)` must be a bool or a pytree of bools "
            "shaped like u0."
        )

    def leaf(path, v, ref):
        v = np.asarray(v)
        if v.dtype != bool or (v.shape != np.shape(ref) and v.ndim != 0):
            raise InvalidProblemError(
                f"`OptimizationProblem(integrality=...)`: "
                f"{_where('integrality', jax.tree_util.keystr(path))} must be bools of "
                f"shape {np.shape(ref)}, got {v.dtype} of shape {v.shape}."
            )
        return np.broadcast_to(v, np.shape(ref)).copy()

    return jax.tree_util.tree_map_with_path(leaf, integrality, u0)


class OptimizationProblem:
    """An objective, a starting point and everything that constrains the search.

    Problems are immutable: `remake` returns a new one.

    Args:
        f: an `OptimizationFunction`, or a plain `fun(u, p)` (wrapped with ad="jax").
        u0: the starting point, an array or a pytree (dict, list, tuple) of float arrays.
        p: the parameters passed to `fun`, or a data iterator (an `opf.DataLoader`, or any
            iterable that is not a pytree of arrays), walked one batch per iteration.
        lb: lower box bounds, a scalar or a pytree shaped like `u0` (with `ub`, or neither).
        ub: upper box bounds, like `lb`.
        lcons: lower bounds of `f.cons(u, p)`, 1-D (with `ucons`, or neither).
        ucons: upper bounds of `f.cons(u, p)`, like `lcons`.
        integrality: bools shaped like `u0`, True where a variable is an integer.
        sense: `MinSense` (default) or `MaxSense`.
        **solver_kwargs: default keywords for `solve` (its own keywords override them).

    Raises:
        InvalidProblemError: naming the argument and the fix.

    Example:
        >>> prob = OptimizationProblem(lambda u, p: ((u - p) ** 2).sum(), jnp.zeros(2), 1.0)
    """

    __slots__ = ("f", "u0", "p", "lb", "ub", "lcons", "ucons", "integrality", "sense", "kwargs")

    def __init__(
        self,
        f: OptimizationFunction | Callable[..., Any],
        u0: Any,
        p: Any = None,
        *,
        lb: Any = None,
        ub: Any = None,
        lcons: Any = None,
        ucons: Any = None,
        integrality: Any = None,
        sense: ObjSense = MinSense,
        **solver_kwargs: Any,
    ) -> None:
        if not isinstance(f, OptimizationFunction):
            if not callable(f):
                raise InvalidProblemError(
                    f"`OptimizationProblem(f=...)` must be an OptimizationFunction or a "
                    f"callable fun(u, p), got {type(f).__name__}."
                )
            f = OptimizationFunction(f)
        if not isinstance(sense, ObjSense):
            raise InvalidProblemError(
                f"`OptimizationProblem(sense={sense!r})` must be opf.MinSense or opf.MaxSense."
            )
        _check_u0(u0)
        lb, ub = _check_bounds(u0, lb, ub)
        lcons, ucons = _check_cons(f, lcons, ucons)
        integrality = _check_integrality(u0, integrality)
        values = dict(
            f=f, u0=u0, p=p, lb=lb, ub=ub, lcons=lcons, ucons=ucons,
            integrality=integrality, sense=sense, kwargs=dict(solver_kwargs),
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"OptimizationProblem is immutable; use prob.remake({name}=...) for a new one."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its fields (for a process pool or a dask worker), rebuilt anew."""
        return _rebuild_problem, (self._fields(), self.kwargs)

    def _fields(self) -> dict[str, Any]:
        return dict(
            f=self.f, u0=self.u0, p=self.p, lb=self.lb, ub=self.ub, lcons=self.lcons,
            ucons=self.ucons, integrality=self.integrality, sense=self.sense,
        )

    @property
    def has_bounds(self) -> bool:
        return self.lb is not None

    @property
    def has_constraints(self) -> bool:
        return self.lcons is not None

    @property
    def has_integrality(self) -> bool:
        return self.integrality is not None and any(
            bool(np.any(leaf)) for leaf in jax.tree.leaves(self.integrality)
        )

    def remake(self, **changes: Any) -> OptimizationProblem:
        """A new problem with the given fields replaced (validated anew).

        Example:
            >>> prob2 = prob.remake(u0=sol.u)
        """
        fields = self._fields()
        kwargs = dict(self.kwargs)
        for name, value in changes.items():
            if name in fields:
                fields[name] = value
            else:
                kwargs[name] = value
        return OptimizationProblem(**fields, **kwargs)

    def __repr__(self) -> str:
        shapes = jax.tree.map(np.shape, self.u0)
        extras = [
            name for name, on in (
                ("bounds", self.has_bounds), ("constraints", self.has_constraints),
                ("integrality", self.has_integrality),
            ) if on
        ]
        return f"OptimizationProblem(u0 shapes={shapes}, sense={self.sense.name}, {extras})"


def _rebuild_problem(fields: dict[str, Any], kwargs: dict[str, Any]) -> OptimizationProblem:
    return OptimizationProblem(**fields, **kwargs)


def remake(prob: OptimizationProblem, **changes: Any) -> OptimizationProblem:
    """`prob.remake(**changes)`: a new problem with the given fields replaced."""
    return prob.remake(**changes)
