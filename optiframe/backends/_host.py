"""The run of a host method (SciPy's methods, Nevergrad): the library owns its loop, this
module everything around it.

- `HostObjective` is the problem as host code sees it: flat float64 NumPy vectors in,
  floats and float64 vectors out. A JAX objective is evaluated under JAX's x64 mode on
  float64 inputs (in JAX's default float32 mode too), jitted once per user function and
  shape; finite differences call `fun` directly on the host. It counts every call of `fun`
  exactly, keeps the best finite point evaluated (line-search points included) and checks
  the clock at every evaluation.
- `HostRun` is one call of `solve`: the library's loop (`minimize`, a subclass's), the
  callback once per iteration, the progress bar, `maxtime`, Ctrl-C, and the solution: a run
  that met a non-finite objective returns the best finite point with `Failure`, one whose
  end point violates the bounds or constraints is `Infeasible`, and `save_best` returns the
  best point evaluated.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import Derivatives, derivatives, finite_grad, finite_value, raise_host_error
from ..errors import InvalidProblemError, ObjectiveError, OptiframeError
from ..flat import host_unraveler, ravel, restore_like, unraveler
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from ._lifecycle import Clock, Halt, Progress, Stop, budget_message, cached, call_back, stopped
from ._record import Recorder
from ._x64 import as_float64, float64, unsupported
from .base import Algorithm, SolveOptions

FEASIBILITY_TOL = 1e-6  # relative violation (of 1 + |bound|) that counts as rounding
BAD_VALUE = 1e300  # what a search method is told for a non-finite value: worse than any


def flat_bounds(problem: OptimizationProblem) -> tuple[np.ndarray, np.ndarray] | None:
    """The box bounds as flat float64 vectors, in the order of `ravel(u0)`."""
    if not problem.has_bounds:
        return None
    return tuple(
        np.concatenate([np.ravel(b) for b in jax.tree.leaves(bound)]).astype(np.float64)
        for bound in (problem.lb, problem.ub)
    )


def _flat_functions(problem: OptimizationProblem, x64: bool) -> dict[str, Callable[..., Any]]:
    """The problem's derivatives on flat vectors `x` (n,), jitted, in float64 under JAX's
    x64 mode (or in `u0`'s dtypes): built once per user function, sense and shapes."""
    leaves, treedef = jax.tree.flatten(problem.u0)
    key = (problem.sense, treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves), x64)

    def build() -> dict[str, Callable[..., Any]]:
        unravel = unraveler(problem.u0, jnp.float64 if x64 else None)
        return _build(derivatives(problem.f, problem.sense), unravel, problem.f.ad)

    return cached(problem.f, "host", key, build)


def _build(d: Derivatives, unravel: Callable[..., Any], ad: str | None) -> dict[str, Any]:
    flat = lambda tree: ravel(tree)[0]
    fns: dict[str, Callable[..., Any]] = {"value": lambda x, p: d.value(unravel(x), p)}
    if d.value_and_grad is not None:

        def value_and_grad(x, p):  # one vector [loss, *grad]: one transfer, not two
            (loss, _), grad = d.value_and_grad(unravel(x), p)
            grad = flat(grad)
            dtype = jnp.result_type(loss, grad)  # the wider: a float16 leaf keeps the loss
            return jnp.concatenate([jnp.reshape(loss, 1).astype(dtype), grad.astype(dtype)])

        fns["value_and_grad"] = value_and_grad
    if d.hess is not None:
        fns["hess"] = lambda x, p: d.hess(unravel(x), p)
    if d.hvp is not None:
        fns["hvp"] = lambda x, v, p: flat(d.hvp(unravel(x), unravel(v), p))
    if d.cons is not None:
        fns["cons"] = lambda x, p: jnp.atleast_1d(d.cons(unravel(x), p))
    if d.cons_jac is not None:
        fns["cons_jac"] = lambda x, p: d.cons_jac(unravel(x), p)
    # Least squares: `fun` returns residuals r (m,); their Jacobian (m, n) by reverse mode
    # (m < n) or forward mode, traced only for the mode the run picks.
    fns["residuals"] = lambda x, p: jnp.ravel(d.value(unravel(x), p))
    if ad == "jax":
        fns["residuals_jacrev"] = jax.jacrev(fns["residuals"])
        fns["residuals_jacfwd"] = jax.jacfwd(fns["residuals"])
    if d.cons is not None and ad == "jax":
        # sum_i v_i * Hessian(cons_i): the constraints' part of the Lagrangian's Hessian.
        def cons_hess(x, v, p):
            return jax.hessian(lambda x: jnp.dot(v, jnp.atleast_1d(d.cons(unravel(x), p))))(x)

        fns["cons_hess"] = cons_hess
    return {name: jax.jit(fn) for name, fn in fns.items()}


def _float64(out: jax.Array) -> np.ndarray:
    return np.asarray(out, np.float64)


def _loss_and_grad(out: jax.Array) -> tuple[float, np.ndarray]:
    """(loss, gradient (n,)) from the packed [loss, *grad]."""
    out = np.asarray(out, np.float64)
    return float(out[0]), out[1:]


class BestPoint:
    """The best point evaluated: a feasible one (violation at most `tol`) before an
    infeasible one, then the lowest signed loss; among infeasible ones, the least violation.
    Non-finite values are never kept.

    Attributes:
        x: the point (n,) float64, or None before a finite evaluation.
        loss: its signed loss (`sign * fun`).
        violation: its largest constraint violation (0 without constraints).
    """

    def __init__(self, tol: float = FEASIBILITY_TOL) -> None:
        self.tol, self.x, self.loss, self.violation = tol, None, np.inf, np.inf

    def _key(self, loss: float, violation: float) -> tuple[int, float]:
        return (0, loss) if violation <= self.tol else (1, violation)

    def offer(self, x: np.ndarray, loss: float, violation: float = 0.0) -> None:
        """Keep `x` (not copied) if it is the best so far."""
        if violation <= self.tol >= self.violation:  # both feasible: the lower loss
            better = loss < self.loss
        else:
            better = self._key(loss, violation) < self._key(self.loss, self.violation)
        if better and math.isfinite(loss):
            self.x, self.loss, self.violation = x, float(loss), violation


class HostObjective:
    """The objective of one host run, on flat float64 vectors.

    Args:
        problem: the problem.
        clock: checked at every evaluation (`Halt(MaxTime)` once `maxtime` is spent).
        best: told every finite evaluation.
        stop_at_nonfinite: raise `Halt(Failure)` at the first non-finite value (a local
            method); else tell the library `BAD_VALUE` instead (a search method).

    Attributes:
        x0: the flat starting point (n,), float64.
        fevals, gevals, hevals: calls of `fun` (finite differences included), gradients,
            Hessians or Hessian-vector products so far.
        nonfinite: evaluations that were NaN or inf.
    """

    def __init__(
        self, problem: OptimizationProblem, clock: Clock, best: BestPoint,
        stop_at_nonfinite: bool,
    ) -> None:
        self.problem, self.clock, self.best = problem, clock, best
        # JAX computes in float64 on float64 data; host code (finite differences) gets p.
        self.p = problem.p if problem.f.ad == "finite" else as_float64(problem.p)
        self.stop_at_nonfinite = stop_at_nonfinite
        self.derivs = derivatives(problem.f, problem.sense)
        self.finite = problem.f.ad == "finite"
        self.x64, self.scoped = True, not jax.config.jax_enable_x64
        self.fns = _flat_functions(problem, self.x64)
        self.unravel = host_unraveler(problem.u0)
        self.x0 = np.concatenate([np.ravel(np.asarray(x, np.float64))
                                  for x in jax.tree.leaves(problem.u0)])
        self.n = self.x0.size
        self.sign = self.derivs.sign
        self.grad_cost = self.derivs.fevals_per("value_and_grad", self.n)  # calls of fun
        self.constrained = problem.has_constraints
        self.fevals = self.gevals = self.hevals = self.nonfinite = 0
        self.recent: collections.deque = collections.deque(maxlen=4)  # (x, loss, grad)
        self.memo: dict[str, tuple[bytes, np.ndarray]] = {}

    def settle(self) -> None:
        """The run is over: evaluations from here on are bookkeeping (no clock, no stop)."""
        self.clock.maxtime, self.stop_at_nonfinite = None, False

    def _call(self, name: str, *args: Any, read: Callable[[Any], Any] = _float64) -> Any:
        """`read` of the jitted `name` at `args` (NumPy), evaluated under JAX's x64 mode; an
        objective that cannot be traced in float64 runs in JAX's default precision (with a
        warning)."""
        try:
            if self.scoped:  # JAX converts the float64 arguments without it
                with float64():
                    out = read(self.fns[name](*args, self.p))
            else:  # JAX_ENABLE_X64 is on, or the objective fell back (a `with` costs 1%)
                out = read(self.fns[name](*args, self.p))
        except (TypeError, ValueError) as err:
            if not self.x64:
                raise
            unsupported(err)
            self.x64, self.p, self.scoped = False, self.problem.p, False
            self.fns = _flat_functions(self.problem, self.x64)
            return self._call(name, *args, read=read)
        raise_host_error()
        return out

    def _host(self, fun: Callable[..., Any], x: np.ndarray) -> Any:
        """`fun(fun, sign, x, p, unravel)`: finite differences on the host."""
        return fun(self.problem.f.fun, self.sign, x, self.p, self.unravel)

    def _seen(self, x: np.ndarray, loss: float, grad: np.ndarray | None = None) -> float:
        """Record an evaluation at `x`; return the loss the library is told."""
        x = np.array(x, np.float64)  # the library may reuse its array
        self.recent.append((x, loss, grad))
        self.best.offer(x, loss, self.violation(x) if self.constrained else 0.0)
        self.clock.check()
        if math.isfinite(loss):
            return loss
        self.nonfinite += 1
        if self.stop_at_nonfinite:
            raise Halt(ReturnCode.Failure, (
                f"the objective was {self.sign * loss} at an evaluated point; returning the "
                "best finite point"
            ))
        return BAD_VALUE

    def value(self, x: np.ndarray) -> float:
        """The signed loss at `x`."""
        self.fevals += 1
        loss = self._host(finite_value, x) if self.finite else self._call("value", x)
        return self._seen(x, float(loss))

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """(signed loss, its gradient (n,)) from one fused call (or 1 + 2n calls of `fun`
        with finite differences)."""
        self.fevals += self.grad_cost
        self.gevals += 1
        if self.finite:
            loss, grad = self._host(finite_value, x), self._host(finite_grad, x)
        else:
            loss, grad = self._call("value_and_grad", x, read=_loss_and_grad)
        return self._seen(x, float(loss), grad), grad

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """The residuals r (m,) at `x` (a least-squares problem: the loss is ½‖r‖²)."""
        self.fevals += 1
        if self.finite:
            r = np.asarray(self.problem.f.fun(self.unravel(x), self.p), np.float64)
        else:
            r = self._call("residuals", x)
        r = np.ravel(r)
        self.m = r.size
        self._seen(x, 0.5 * float(r @ r))
        return r

    def residuals_jac(self, x: np.ndarray) -> np.ndarray:
        """The residuals' Jacobian (m, n) at `x`: reverse mode for m < n, else forward
        (after a first `residuals` call, which SciPy always makes); it runs `fun` once."""
        self.fevals += 1
        self.gevals += 1
        mode = "residuals_jacrev" if self.m < self.n else "residuals_jacfwd"
        return self._call(mode, x)

    def hess(self, x: np.ndarray) -> np.ndarray:
        self.fevals += self.derivs.fevals_per("hess", self.n)
        self.hevals += 1
        return self._call("hess", x)

    def hvp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        self.fevals += self.derivs.fevals_per("hvp", self.n)
        self.hevals += 1
        return self._call("hvp", x, np.asarray(v, np.float64))

    def _memo(self, name: str, x: np.ndarray) -> np.ndarray:
        """`name`'s value at `x`, computed once for consecutive calls at the same `x` (SciPy
        asks for equalities and inequalities apart)."""
        key = np.asarray(x, np.float64).tobytes()
        if self.memo.get(name, (None,))[0] != key:
            self.memo[name] = (key, self._call(name, x))
        return self.memo[name][1]

    def cons(self, x: np.ndarray) -> np.ndarray:
        return self._memo("cons", x)

    def cons_jac(self, x: np.ndarray) -> np.ndarray:
        return self._memo("cons_jac", x)

    def cons_hess(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._call("cons_hess", x, np.asarray(v, np.float64))

    def violation(self, x: np.ndarray) -> float:
        """The largest violation of the bounds and constraints at `x`, each relative to
        1 + |bound| (0 when feasible)."""

        def worst(low, high, value):
            low, high = np.broadcast_to(low, value.shape), np.broadcast_to(high, value.shape)
            below = (low - value) / (1 + np.abs(np.where(np.isfinite(low), low, 0)))
            above = (value - high) / (1 + np.abs(np.where(np.isfinite(high), high, 0)))
            return float(np.max(np.maximum(below, above), initial=0.0))

        out, bounds = 0.0, flat_bounds(self.problem)
        if bounds is not None:
            out = worst(*bounds, x)
        if self.problem.has_constraints:
            out = max(out, worst(self.problem.lcons, self.problem.ucons, self.cons(x)))
        return out

    def lookup(self, x: np.ndarray) -> tuple[float | None, np.ndarray | None]:
        """(signed loss, gradient) of a recent evaluation at exactly `x`, else (None, None)."""
        for seen_x, loss, grad in reversed(self.recent):
            if np.array_equal(seen_x, x):
                return loss, grad
        return None, None

    def u(self, x: np.ndarray) -> Any:
        """`x` in `u0`'s structure, leaf types and dtypes."""
        return restore_like(self.unravel(x), self.problem.u0)


class HostRun:
    """One call of `solve` with a host method. A subclass runs the library in
    `minimize()` and calls `iteration` once per iteration; `final` and `verdict` read the
    library's result.

    Attributes:
        search: a search method: `sol.u` is the best point evaluated, and a non-finite value
            is a bad candidate (told as `BAD_VALUE`), not the end of the run.
    """

    search: ClassVar[bool] = False

    def __init__(self, alg: Algorithm, problem: OptimizationProblem, options: SolveOptions):
        self.alg, self.problem, self.options = alg, problem, options
        self.sign = problem.sense.sign
        self.clock = Clock(options.maxtime)
        self.best = BestPoint()
        self.iterations = 0
        self.recorder = None if options.history is None else Recorder(
            options.history, problem, alg, options
        )
        # A callback, a progress bar or a history follows the iterations (else a library's
        # own iteration callback, which costs time, may be left out).
        self.watched = not (options.callback is None and options.progress is None and
                            options.history is None)

    @functools.cached_property
    def objective(self) -> HostObjective:
        """The problem on flat float64 vectors, for a library that calls it."""
        return HostObjective(self.problem, self.clock, self.best, not self.search)

    def minimize(self) -> Any:
        """Run the library; return its result."""
        raise NotImplementedError

    def final(self, result: Any) -> tuple[np.ndarray, float | None]:
        """(the point the library ended on, its signed loss or None if unknown)."""
        fun = getattr(result, "fun", None)
        return np.asarray(result.x, np.float64), float(fun) if np.ndim(fun) == 0 else None

    def verdict(self, result: Any) -> tuple[ReturnCode, str]:
        """The return code and message of the library's result."""
        raise NotImplementedError

    def iteration(self, x: np.ndarray, loss: float | None = None, original: Any = None) -> None:
        """Called by the library once per iteration with the iterate (and, where it has
        it, the signed loss there): the history, the bar, the callback, the clock."""
        self.iterations += 1
        x = self.last_x = np.array(x, np.float64)  # a copy: SciPy updates its own in place
        if self.watched:
            obj, callback = self.objective, self.options.callback
            seen, grad = (None, None) if callback is None and loss is not None else obj.lookup(x)
            loss = seen if seen is not None else loss if loss is not None else obj.value(x)
            objective = obj.sign * float(loss)
            self.record(objective, x)
            self.progress.show(self.iterations, objective)
            if callback is not None:
                call_back(callback, OptimizationState(
                    iter=self.iterations, u=obj.u(x), objective=objective,
                    grad=None if grad is None else obj.u(obj.sign * grad), p=self.problem.p,
                    original=x if original is None else original,
                ))
        self.clock.check()

    def record(self, objective: float, x: np.ndarray) -> None:
        """Tell the history (if any) the iteration just done, at `x` (n,), which is not
        changed afterwards, with `objective`; write a checkpoint of `x` when one is due."""
        recorder = self.recorder
        if recorder is None:
            return
        fevals = self.objective.fevals
        recorder.row(self.iterations, objective, fevals, x)
        if recorder.due(self.iterations):
            recorder.checkpoint(self.iterations, fevals, "point", self.objective.u(x))

    def settings(
        self, owner: str, given: dict[str, Any], sets: dict[str, str | None]
    ) -> dict[str, Any]:
        """The options of `owner` (a method's name): `given` (the algorithm's and `solve`'s)
        and what the common keywords set, `sets` mapping a keyword ("maxiters") to its
        option (or None).

        Raises:
            InvalidProblemError: a keyword that sets an option also given.
        """
        settings = dict(given)
        for keyword, option in sets.items():
            value = getattr(self.options, keyword)
            if value is None or option is None:
                continue
            if option in given:
                raise InvalidProblemError(
                    f"`solve({keyword}=...)` sets {owner}'s `{option}`, which is given "
                    f"as an option too ({option}={given[option]!r}); pass one of them."
                )
            settings[option] = value
        return settings

    def solve(self) -> OptimizationSolution:
        self.progress = Progress(self.options.progress, self.options.maxiters)
        self.last_x, result, stop = None, None, Stop()
        try:
            with stopped(stop, lambda: "the best point evaluated so far"):
                result = self.minimize()
        finally:
            self.progress.close(self.done, self.sign * self.best.loss)
        sol = self.solution(result, stop)
        if self.recorder is not None:
            sol = self.recorder.finish(sol, "point", sol.u)
        return sol

    @property
    def done(self) -> int:
        """What the bar counts: iterations."""
        return self.iterations

    def original(self, result: Any, x: np.ndarray, loss: float, message: str) -> Any:
        """`sol.original`: the library's result (None if the run was stopped)."""
        return result

    def solution(self, result: Any, stop: Stop) -> OptimizationSolution:
        obj, options, best = self.objective, self.options, self.best
        obj.settle()
        retcode, message = stop.retcode, stop.message
        failed = retcode is ReturnCode.Failure  # a non-finite value stopped it
        if result is None or self.search or failed or stop.interrupted:
            x, loss = (obj.x0 if self.last_x is None else self.last_x), None
        else:
            x, loss = self.final(result)
        if self.search or failed or stop.interrupted or (
            options.save_best and best.x is not None and best.loss < (loss or np.inf)
        ):
            x, loss = best.x, best.loss
        if x is None:  # nothing finite was evaluated
            if self.search:  # every candidate was bad
                message = "no evaluation returned a finite objective; returning u0"
                return self.pack(result, obj.x0, np.nan, ReturnCode.Failure, message)
            start = obj.lookup(obj.x0)[0]
            raise ObjectiveError(
                f"The objective is {'not finite' if start is None else obj.sign * start} at u0; "
                "start from a point where it is finite."
            )
        if loss is None:
            loss = obj.lookup(x)[0]
        if loss is None:
            loss = obj.value(x)
        if not np.isfinite(loss) or not np.all(np.isfinite(x)):
            if best.x is None:
                raise OptiframeError(f"{self.alg!r} evaluated no finite point.")
            x, loss = best.x, best.loss
            retcode = retcode or ReturnCode.Failure
            message = message or "non-finite result; the best finite point is returned"
        if retcode is None:
            retcode, message = self.verdict(result) if result is not None else budget_message(
                options, self.alg.capabilities.budget
            )
        worst = obj.violation(x)
        if worst > FEASIBILITY_TOL and retcode in (
            ReturnCode.Success, ReturnCode.MaxIters, ReturnCode.Stalled, ReturnCode.Failure
        ):
            retcode = ReturnCode.Infeasible
            message += f" (the bounds or constraints are violated by {worst:.2e})"
        return self.pack(result, x, loss, retcode, message)

    def pack(
        self, result: Any, x: np.ndarray, loss: float, retcode: ReturnCode, message: str
    ) -> OptimizationSolution:
        """The solution at `x` (signed loss `loss`)."""
        obj = self.objective
        if obj.nonfinite and self.search:
            message += f"; {obj.nonfinite} evaluations were NaN or inf"
        return OptimizationSolution(
            u=obj.u(x),
            objective=float(obj.sign * loss),
            retcode=retcode,
            stats=Stats(
                iterations=int(getattr(result, "nit", None) or self.iterations),
                fevals=obj.fevals, gevals=obj.gevals, hevals=obj.hevals,
            ),
            original=self.original(result, x, loss, message),
            message=message,
        )
