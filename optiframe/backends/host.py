"""The objective as host code sees it: float64 NumPy vectors in, floats and vectors out.

`HostObjective` wraps a problem's JAX derivatives for solvers that live on the host
(SciPy). Every function is jitted once per objective and takes the flat vector `x` (n,);
it counts evaluations exactly, remembers recent evaluations (so a callback gets the
objective and gradient at an iterate without evaluating again), keeps the best finite
point evaluated, and stops the run (`Halt`) when the time budget is spent.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import derivatives
from ..flat import ravel, to_device
from ..problem import OptimizationProblem
from ..solution import ReturnCode


class Halt(Exception):
    """Raised from inside a host solver's callbacks to end the run with a return code."""

    def __init__(self, retcode: ReturnCode, message: str) -> None:
        super().__init__(message)
        self.retcode, self.message = retcode, message


def _flat_functions(problem: OptimizationProblem) -> dict[str, Callable[..., Any]]:
    """Jitted flat-vector versions of the problem's derivatives, built once per objective
    and sense (compiled anew only for new shapes)."""
    key = ("host", problem.sense)
    cache = problem.f._cache
    if key in cache:
        return cache[key]
    d = derivatives(problem.f, problem.sense)
    _, unravel = ravel(to_device(problem.u0))
    flat = lambda tree: ravel(tree)[0]  # noqa: E731
    fns: dict[str, Callable[..., Any]] = {"value": jax.jit(lambda x, p: d.value(unravel(x), p))}
    if d.value_and_grad is not None:

        def value_and_grad(x, p):
            (loss, _), grad = d.value_and_grad(unravel(x), p)
            return loss, flat(grad)

        fns["value_and_grad"] = jax.jit(value_and_grad)
    if d.hess is not None:
        fns["hess"] = jax.jit(lambda x, p: d.hess(unravel(x), p))
    if d.hvp is not None:
        fns["hvp"] = jax.jit(lambda x, v, p: flat(d.hvp(unravel(x), unravel(v), p)))
    if d.cons is not None:
        fns["cons"] = jax.jit(lambda x, p: jnp.atleast_1d(d.cons(unravel(x), p)))
    if d.cons_jac is not None:
        fns["cons_jac"] = jax.jit(lambda x, p: d.cons_jac(unravel(x), p))
    if d.cons is not None and problem.f.ad == "jax":
        # sum_i v_i * Hessian(cons_i): the constraints' part of the Lagrangian's Hessian.
        def cons_hess(x, v, p):
            return jax.hessian(lambda x: jnp.dot(v, jnp.atleast_1d(d.cons(unravel(x), p))))(x)

        fns["cons_hess"] = jax.jit(cons_hess)
    cache[key] = fns
    return fns


class HostObjective:
    """The objective of one host-solver run, on flat float64 vectors.

    Attributes:
        x0: the flat starting point (n,), float64.
        unravel: flat vector -> pytree shaped like `u0` (JAX arrays).
        fevals, gevals, hevals: evaluations so far.
        best_x, best_f: the best finite point evaluated and its signed loss.
    """

    def __init__(self, problem: OptimizationProblem, maxtime: float | None = None) -> None:
        self.problem, self.p = problem, problem.p
        self.fns = _flat_functions(problem)
        self.sign = derivatives(problem.f, problem.sense).sign
        x0, self.unravel = ravel(to_device(problem.u0))
        self.dtype = x0.dtype  # what JAX computes in
        self.x0 = np.asarray(x0, np.float64)
        self.fevals = self.gevals = self.hevals = 0
        self.best_x, self.best_f = None, np.inf
        self.recent: collections.deque = collections.deque(maxlen=4)  # (x, f, g)
        self.remember = False  # keep recent evaluations (a callback will ask for them)
        self.memo: dict[str, tuple[bytes, np.ndarray]] = {}
        self.start, self.maxtime = time.perf_counter(), maxtime

    def _x(self, x: np.ndarray) -> np.ndarray:
        # NumPy of JAX's dtype: jitted calls take it on their fast path (jnp.asarray does not).
        return np.asarray(x, self.dtype)

    def _seen(self, x: np.ndarray, f: float, g: np.ndarray | None) -> None:
        if f < self.best_f:  # NaN compares False
            self.best_x, self.best_f = np.array(x, np.float64), f
        if self.remember:
            self.recent.append((np.array(x, np.float64), f, g))
        if self.maxtime is not None and time.perf_counter() - self.start >= self.maxtime:
            raise Halt(ReturnCode.MaxTime, f"maxtime={self.maxtime} s reached")

    def value(self, x: np.ndarray) -> float:
        """The signed loss at `x`."""
        f = float(self.fns["value"](self._x(x), self.p))
        self.fevals += 1
        self._seen(x, f, None)
        return f

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """(signed loss, its gradient (n,)) from one fused call."""
        f, g = self.fns["value_and_grad"](self._x(x), self.p)
        f, g = float(f), np.asarray(g, np.float64)
        self.fevals += 1
        self.gevals += 1
        self._seen(x, f, g)
        return f, g

    def hess(self, x: np.ndarray) -> np.ndarray:
        self.hevals += 1
        return np.asarray(self.fns["hess"](self._x(x), self.p), np.float64)

    def hvp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        self.hevals += 1
        return np.asarray(self.fns["hvp"](self._x(x), self._x(v), self.p), np.float64)

    def _memo(self, name: str, x: np.ndarray) -> np.ndarray:
        """`name`'s value at `x`, computed once for consecutive calls at the same `x` (SciPy
        asks for equalities and inequalities apart)."""
        key = np.asarray(x, np.float64).tobytes()
        if self.memo.get(name, (None,))[0] != key:
            value = np.asarray(self.fns[name](self._x(x), self.p), np.float64)
            self.memo[name] = (key, value)
        return self.memo[name][1]

    def cons(self, x: np.ndarray) -> np.ndarray:
        return self._memo("cons", x)

    def cons_jac(self, x: np.ndarray) -> np.ndarray:
        return self._memo("cons_jac", x)

    def cons_hess(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.asarray(self.fns["cons_hess"](self._x(x), self._x(v), self.p), np.float64)

    def lookup(self, x: np.ndarray) -> tuple[float | None, np.ndarray | None]:
        """(signed loss, gradient) of a recent evaluation at exactly `x`, else (None, None)."""
        for seen_x, f, g in reversed(self.recent):
            if np.array_equal(seen_x, x):
                return f, g
        return None, None

    def u(self, x: np.ndarray) -> Any:
        """`x` as a pytree shaped like `u0`."""
        return self.unravel(self._x(x))

    def check_time(self) -> None:
        if self.maxtime is not None and time.perf_counter() - self.start >= self.maxtime:
            raise Halt(ReturnCode.MaxTime, f"maxtime={self.maxtime} s reached")
