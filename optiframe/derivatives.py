"""Derivatives of an `OptimizationFunction`: JAX-derived, finite differences, or the
user's own, always for *minimising* `sign * fun` (sign = -1 under `MaxSense`).

Every function here takes the iterate `u` as a pytree shaped like `u0`; Hessians and
constraint Jacobians are matrices in the flat order of `ravel(u)`. The functions are pure
and unjitted: backends jit them inside their own loops. `answer` gives the jitted
derivatives of `fun` itself that `f.grad`, `f.hess`, ... call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ObjectiveError, UnsupportedFeatureError
from .flat import host_unraveler, ravel

# `f` below is an `OptimizationFunction`, `sense` an `ObjSense`: problem.py imports this
# module (the function answers with its derivatives), so they are not imported here.
Function = Any


@dataclasses.dataclass(frozen=True)
class Derivatives:
    """The functions a backend may call. A field is None when it cannot be had.

    Attributes:
        sign: +1 to minimise `fun`, -1 to maximise it.
        value_aux: `(u, p) -> (sign * fun, aux)`, the loss a JAX scalar (also where
            `fun` returns a Python float); aux is None without `has_aux`.
        value: `(u, p) -> sign * fun`, a JAX scalar.
        value_and_grad: `(u, p) -> ((loss, aux), grad)` in one fused call.
        hvp: `(u, v, p) -> H v`, shaped like `u`.
        hess: `(u, p) -> (n, n)`.
        cons: `(u, p) -> (m,)`, never negated.
        cons_jac: `(u, p) -> (m, n)`.
        sources: where "value_and_grad", "hess" and "hvp" come from: "user", "jax" or
            "finite" (what `fevals_per` counts).
    """

    sign: float
    value_aux: Callable[..., Any]
    value: Callable[..., Any]
    value_and_grad: Callable[..., Any] | None
    hvp: Callable[..., Any] | None
    hess: Callable[..., Any] | None
    cons: Callable[..., Any] | None
    cons_jac: Callable[..., Any] | None
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def finite(self) -> bool:
        """`value_and_grad` is by finite differences (ad="finite", no `grad` given)."""
        return self.sources.get("value_and_grad") == "finite"

    def fevals_per(self, what: str, n: int) -> int:
        """Calls of `fun` one evaluation of `what` ("value_and_grad", "hess", "hvp") costs
        in n variables: the forward pass of a JAX derivative (one), none for the user's
        own Hessian, and for finite differences 1 + 2n, 4n² and 4n."""
        source = self.sources.get(what)
        if source == "finite":
            return {"value_and_grad": 1 + 2 * n, "hess": 4 * n * n, "hvp": 4 * n}[what]
        return 1 if source == "jax" or what == "value_and_grad" else 0


def derivatives(f: Function, sense: Any) -> Derivatives:
    """The derivatives of `f` for `sense`, built once per function and cached in the dict
    shared by every `OptimizationFunction` of the same callables (`f._cache`).

    They reach the user's callables through weak references (so that the cache dies with
    `fun`): use them while `f` is alive."""
    return _signed(f, sense.sign)


def _signed(f: Function, sign: float) -> Derivatives:
    key = ("derivatives", sign)
    if key not in f._cache:
        f._cache[key] = _build(f, sign)
    return f._cache[key]


def _scaled(sign: float, tree: Any) -> Any:
    return tree if sign == 1.0 else jax.tree.map(lambda x: sign * x, tree)


def _build(f: Function, sign: float) -> Derivatives:
    # The closures hold `f._calls` (weak references where the cache is shared), never `f`:
    # the result is cached for `fun` and must not keep it alive.
    c, ad, has_aux = f._calls, f.ad, f.has_aux
    derived: dict[str, Callable[..., Any]] = {}
    if ad == "finite":
        value, derived = _finite(c.fun, sign)

        def value_aux(u, p):
            return value(u, p), None

    else:

        def value_aux(u, p):
            out = c.fun(u, p)
            loss, aux = out if has_aux else (out, None)
            return jnp.asarray(sign * loss), aux  # an array even where fun returns a float

        def value(u, p):
            return value_aux(u, p)[0]

        if ad == "jax":
            derived = _derived(value_aux, value, c.cons)

    if c.grad is not None:

        def value_and_grad(u, p):
            return value_aux(u, p), _scaled(sign, c.grad(u, p))

    else:
        value_and_grad = derived.get("value_and_grad")

    if c.hess is not None:

        def hess(u, p):
            return sign * jnp.asarray(c.hess(u, p))

    else:
        hess = derived.get("hess")

    if c.hvp is not None:

        def hvp(u, v, p):
            return _scaled(sign, c.hvp(u, v, p))

    elif c.hess is not None:

        def hvp(u, v, p):
            vx, unravel = ravel(v)
            return unravel(hess(u, p) @ vx)

    else:
        hvp = derived.get("hvp")

    if c.cons_jac is not None:

        def cons_jac(u, p):
            return jnp.asarray(c.cons_jac(u, p))

    else:
        cons_jac = derived.get("cons_jac")

    derived_by = "finite" if ad == "finite" else "jax"
    sources = {
        "value_and_grad": "user" if c.grad is not None else derived_by,
        "hess": "user" if c.hess is not None else derived_by,
        "hvp": "user" if c.hvp is not None or c.hess is not None else derived_by,
    }
    return Derivatives(
        sign, value_aux, value, value_and_grad, hvp, hess, c.cons, cons_jac, sources=sources
    )


def _derived(
    value_aux: Callable[..., Any], value: Callable[..., Any], cons: Callable[..., Any] | None
) -> dict[str, Callable[..., Any]]:
    """value_and_grad, hess, hvp and (with `cons`) cons_jac derived with JAX."""

    def hess(u, p):
        x, unravel = ravel(u)
        return jax.hessian(lambda x: value(unravel(x), p))(x)

    def hvp(u, v, p):
        grad = lambda w: jax.grad(value)(w, p)
        return jax.jvp(grad, (u,), (v,))[1]

    derived = dict(
        value_and_grad=jax.value_and_grad(value_aux, has_aux=True), hess=hess, hvp=hvp
    )
    if cons is not None:

        def cons_jac(u, p):
            x, unravel = ravel(u)
            return jax.jacrev(lambda x: jnp.atleast_1d(cons(unravel(x), p)))(x)

        derived["cons_jac"] = cons_jac
    return derived


def finite_value(fun: Callable[..., Any], sign: float, x: np.ndarray, p: Any, unravel) -> float:
    """`sign * fun` at the flat float64 point `x` (one call of `fun` on NumPy)."""
    return sign * float(fun(unravel(x), p))


def finite_grad(fun: Callable[..., Any], sign: float, x: np.ndarray, p: Any, unravel) -> np.ndarray:
    """The gradient of `sign * fun` at `x` (n,) by central differences: 2n calls of `fun`."""
    g = np.empty_like(x)
    for i in range(x.size):
        h = np.cbrt(np.finfo(float).eps) * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = h
        forward = finite_value(fun, sign, x + e, p, unravel)
        g[i] = (forward - finite_value(fun, sign, x - e, p, unravel)) / (2 * h)
    return g


# Exceptions raised by the user's host code inside a compiled call (`pure_callback`), which
# JAX cannot carry out of the callback: kept here, the callback returns NaN, and the run
# raises them when the call is done (`raise_host_error`).
_HOST_ERRORS: list[BaseException] = []


def raise_host_error() -> None:
    """Raise the first exception the objective's host code raised inside a compiled call
    (a KeyboardInterrupt included), if any."""
    if _HOST_ERRORS:
        error = _HOST_ERRORS[0]
        _HOST_ERRORS.clear()
        raise error


def _host_call(shape: tuple[int, ...], compute: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """`compute(x, p)` as a `pure_callback` target: NumPy in (x in float64), an array of
    `shape` in x's dtype out; NaN where it raised (the exception is kept)."""

    def call(x, p):
        try:
            out = compute(np.asarray(x, float), jax.tree.map(np.asarray, p))
            return np.asarray(out, x.dtype)
        except BaseException as error:  # re-raised by raise_host_error after the call
            _HOST_ERRORS.append(error)
            return np.full(shape, np.nan, x.dtype)

    return call


def _finite(
    fun: Callable[..., Any], sign: float
) -> tuple[Callable[..., Any], dict[str, Callable[..., Any]]]:
    """The value and value_and_grad, hess, hvp by central differences on the host, reached
    from JAX through `pure_callback` (the user's code gets NumPy, `u` in float64)."""

    def value(u, p):
        x, _ = ravel(u)
        unravel = host_unraveler(u)
        fn = _host_call((), lambda x, p: finite_value(fun, sign, x, p, unravel))
        return jax.pure_callback(fn, jax.ShapeDtypeStruct((), x.dtype), x, p)

    def grad_flat(x, unravel, p):
        fn = _host_call(x.shape, lambda x, p: finite_grad(fun, sign, x, p, unravel))
        return jax.pure_callback(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x, p)

    def value_and_grad(u, p):
        x, unravel = ravel(u)
        return (value(u, p), None), unravel(grad_flat(x, host_unraveler(u), p))

    def hess(u, p):
        x, _ = ravel(u)
        unravel = host_unraveler(u)
        n = x.size
        h = jnp.cbrt(jnp.finfo(x.dtype).eps) * jnp.maximum(1.0, jnp.abs(x))
        cols = [
            (grad_flat(x.at[i].add(h[i]), unravel, p) - grad_flat(x.at[i].add(-h[i]), unravel, p))
            / (2 * h[i])
            for i in range(n)
        ]
        H = jnp.stack(cols, axis=1)
        return (H + H.T) / 2

    def hvp(u, v, p):
        x, unravel = ravel(u)
        vx, _ = ravel(v)
        h = jnp.cbrt(jnp.finfo(x.dtype).eps) * jnp.maximum(1.0, jnp.linalg.norm(x))
        h = h / jnp.maximum(jnp.linalg.norm(vx), 1e-30)
        host = host_unraveler(u)
        diff = grad_flat(x + h * vx, host, p) - grad_flat(x - h * vx, host, p)
        return unravel(diff / (2 * h))

    return value, dict(value_and_grad=value_and_grad, hess=hess, hvp=hvp)


def answer(f: Function, name: str) -> Callable[..., Any]:
    """The jitted derivative of `fun` itself (not negated) that `f.<name>` calls: `name` is
    "grad", "value_and_grad", "hess", "hvp", "cons_jac" or "cons_hess". Built once per
    function and cached in `f._cache`, so every wrapper of `fun` reuses it.

    Raises:
        UnsupportedFeatureError: `f` has no such derivative; the message names the fix.
    """
    key = ("answer", name)
    if key not in f._cache:
        f._cache[key] = jax.jit(_answer(f, name))
    return f._cache[key]


_MISSING = {  # name -> (what is missing, what to pass)
    "grad": ("gradient", "grad=..."), "value_and_grad": ("gradient", "grad=..."),
    "hess": ("Hessian", "hess=..."), "hvp": ("Hessian-vector product", "hvp=... or hess=..."),
    "cons_jac": ("constraint Jacobian", "cons_jac=..."),
    "cons_hess": ("constraint Hessians", "cons_hess=..."),
}


def _answer(f: Function, name: str) -> Callable[..., Any]:
    """The unjitted `answer(f, name)`."""
    d, c = _signed(f, 1.0), f._calls
    if name.startswith("cons") and c.cons is None:
        raise UnsupportedFeatureError(
            f"`f.{name}(u, p)`: the OptimizationFunction has no constraints; pass "
            "OptimizationFunction(fun, cons=...)."
        )
    if name == "cons_hess":
        fn = c.cons_hess if c.cons_hess is not None else _cons_hess(c.cons, f.ad)
    elif name in ("grad", "value_and_grad"):
        fn = d.value_and_grad
    else:
        fn = getattr(d, name)
    if fn is None:
        what, fix = _MISSING[name]
        raise UnsupportedFeatureError(
            f"`f.{name}(...)`: OptimizationFunction(ad={f.ad!r}) has no {what}; pass "
            f"OptimizationFunction(fun, {fix}), or use ad='jax'."
        )
    if name == "grad":
        if c.grad is not None:  # without evaluating fun
            return lambda u, p: c.grad(u, p)
        return lambda u, p: fn(u, p)[1]
    if name == "value_and_grad":

        def value_and_grad(u, p):
            (loss, _), grad = fn(u, p)
            return loss, grad

        return value_and_grad
    if name == "hvp":
        return lambda u, p, v: fn(u, v, p)
    return lambda u, p: jnp.asarray(fn(u, p))


def _cons_hess(cons: Callable[..., Any], ad: str | None) -> Callable[..., Any] | None:
    """The constraints' Hessians (m, n, n) derived with JAX; None unless ad="jax"."""
    if ad != "jax":
        return None

    def cons_hess(u, p):
        x, unravel = ravel(u)
        return jax.hessian(lambda x: jnp.atleast_1d(cons(unravel(x), p)))(x)

    return cons_hess


_TRACE_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _signature(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        (np.shape(x), np.result_type(x.dtype if hasattr(x, "dtype") else x))
        if isinstance(x, (jax.Array, np.ndarray, np.generic, float, int, jax.ShapeDtypeStruct))
        else type(x)
        for x in leaves
    )


def check_objective(f: Function, u: Any, p: Any, residuals: bool = False) -> None:
    """Trace `f.fun(u, p)` (no evaluation; once per shapes of `u` and `p`) and check it
    returns a scalar, or with `residuals=True` a vector of residuals.

    Raises:
        ObjectiveError: the objective is not traceable with ad="jax", or not scalar.
    """
    if f.ad == "finite":
        return
    key = ("checked", _signature(u), _signature(p), residuals)
    if key in f._cache:
        return
    try:
        out = jax.eval_shape(f.fun, u, p)
    except _TRACE_ERRORS as err:
        raise ObjectiveError(
            f"The objective cannot be traced by JAX ({type(err).__name__}); write it with "
            "jax.numpy, or pass OptimizationFunction(fun, ad='finite') to use finite "
            "differences on the host."
        ) from err
    except Exception as err:
        raise ObjectiveError(
            f"Evaluating the objective fun(u0, p) failed: {type(err).__name__}: {err}"
        ) from err
    if f.has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ObjectiveError(
                "OptimizationFunction(has_aux=True) expects fun(u, p) to return "
                f"(loss, aux), got {type(out).__name__}."
            )
        out = out[0]
    if residuals:
        if not hasattr(out, "shape") or out.ndim < 1 or out.size == 0:
            raise ObjectiveError(
                "A least-squares method needs fun(u, p) to return the residual vector r (m,) "
                f"and minimises ½‖r‖²; got {getattr(out, 'shape', type(out).__name__)}."
            )
    elif not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ObjectiveError(
            f"The objective must return a scalar, got shape {shape}; reduce it (e.g. "
            "jnp.sum or jnp.mean), or use a least-squares method for residual vectors."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ObjectiveError(f"The objective must return a float, got dtype {out.dtype}.")
    f._cache[key] = True
