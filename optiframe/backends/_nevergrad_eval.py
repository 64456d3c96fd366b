"""Evaluating Nevergrad's candidates: a batch at a time on JAX (in float64, whatever JAX's
default precision), one call at a time on the host, or in parallel through a
`concurrent.futures.Executor`. An evaluator's `start(X)` starts the evaluation of flat
float64 candidates (rows of `X`) and returns a `Pending`; on JAX (asynchronous dispatch) and
through an executor the evaluation runs while the caller asks Nevergrad for more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import derivatives
from ..errors import ObjectiveError, OptiframeError
from ..flat import to_device, unraveler
from ..problem import OptimizationProblem
from ._lifecycle import cached
from ._nevergrad_space import SearchSpace
from ._x64 import as_float64, float64, unsupported


class Batch(NamedTuple):
    """The evaluations of one batch of candidates.

    Attributes:
        losses: (b,) float64, `sign * fun`: what Nevergrad minimises.
        objectives: (b,) float64, `fun` itself.
        violations: (b, m) float64 >= 0, by how much each constraint is violated (0 where
            it holds; inf where it is NaN), or None without constraints.
        aux: the auxiliary outputs (`has_aux=True`), batched on the device or a list, or None.
    """

    losses: np.ndarray
    objectives: np.ndarray
    violations: np.ndarray | None
    aux: Any


@dataclasses.dataclass(frozen=True)
class Pending:
    """A started evaluation: `result()` waits for its `Batch`; `futures` are the executor's
    (none on JAX or the host)."""

    result: Callable[[], Batch]
    futures: tuple[Any, ...] = ()

    def done(self) -> bool:
        return all(future.done() for future in self.futures)

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


def join(batches: Sequence[Batch]) -> Batch:
    """One `Batch` of the candidates of `batches`, in order (several come from the host only,
    with aux in lists)."""
    if len(batches) == 1:
        return batches[0]
    losses, objectives, violations, aux = zip(*batches)
    return Batch(
        np.concatenate(losses),
        np.concatenate(objectives),
        None if violations[0] is None else np.concatenate(violations),
        None if aux[0] is None else [a for part in aux for a in part],
    )


def aux_at(aux: Any, i: int) -> Any:
    """The auxiliary output of candidate `i` of a batch."""
    if aux is None:
        return None
    return aux[i] if isinstance(aux, list) else jax.tree.map(lambda a: a[i], aux)


def _violations(values: np.ndarray, problem: OptimizationProblem) -> np.ndarray:
    """(b, m) amounts by which constraint values (b, m) leave `[lcons, ucons]`."""
    if values.shape[1] != problem.lcons.size:
        raise ObjectiveError(
            f"`OptimizationFunction(cons=...)` returns {values.shape[1]} values but the "
            f"problem bounds {problem.lcons.size} (lcons/ucons); make them agree."
        )
    with np.errstate(invalid="ignore"):
        v = np.maximum(np.maximum(problem.lcons - values, values - problem.ucons), 0.0)
    return np.where(np.isnan(v), np.inf, v)


# --------------------------------------------------------------------------- JAX


def _program(problem: OptimizationProblem, size: int, chunk: int | None, x64: bool) -> Any:
    """`fun` (and `cons`) over `size` flat candidates in one jitted call, in float64 under
    JAX's x64 mode (or in `u0`'s dtypes), `jax.vmap`-ed over all of them or over `chunk` at a
    time in a loop. Built once per (user function, sense, shapes of u0, size, chunk,
    precision), so later solves never trace again."""

    def build() -> Any:
        derivs = derivatives(problem.f, problem.sense)
        unravel = unraveler(problem.u0, jnp.float64 if x64 else None)
        cons = derivs.cons if problem.has_constraints else None

        def one(x, p):
            u = unravel(x)
            loss, aux = derivs.value_aux(u, p)
            c = jnp.atleast_1d(cons(u, p)).astype(loss.dtype) if cons is not None else None
            return loss, aux, c

        if size == 1:  # no vmap: a batched while loop (an adaptive ODE solve) costs more
            return jax.jit(lambda X, p: jax.tree.map(lambda a: a[None], one(X[0], p)))
        if chunk is None or chunk >= size:
            return jax.jit(jax.vmap(one, in_axes=(0, None)))
        return jax.jit(lambda X, p: jax.lax.map(lambda x: one(x, p), X, batch_size=chunk))

    leaves, treedef = jax.tree.flatten(problem.u0)
    key = (
        problem.sense, treedef, tuple(np.shape(x) for x in leaves), size,
        problem.has_constraints, chunk, x64,
    )
    return cached(problem.f, "nevergrad", key, build)


class JaxEvaluator:
    """Up to `size` candidates in one jitted call of `fun` (and `cons`), dispatched
    asynchronously; an objective that cannot be traced in float64 runs in JAX's default
    precision (with a warning)."""

    def __init__(self, problem: OptimizationProblem, size: int, chunk: int | None) -> None:
        self.problem, self.sign, self.size, self.chunk = problem, problem.sense.sign, size, chunk
        self.x64, self.p, self.dtype = True, as_float64(problem.p), np.float64
        self.program = _program(problem, size, chunk, x64=True)

    def start(self, X: np.ndarray) -> Pending:
        b = X.shape[0]
        if b < self.size:  # a partial batch: pad it, so no other size compiles
            X = np.concatenate([X, np.repeat(X[-1:], self.size - b, axis=0)])

        def dispatch() -> Any:
            with float64(self.x64):
                return self.program(np.asarray(X, self.dtype), self.p)

        try:
            out = dispatch()
        except (TypeError, ValueError) as err:  # not traceable in float64
            if not self.x64:
                raise
            unsupported(err)
            self.x64, self.p = False, self.problem.p
            self.dtype = jnp.result_type(*jax.tree.leaves(to_device(self.problem.u0)))
            self.program = _program(self.problem, self.size, self.chunk, x64=False)
            out = dispatch()
        return Pending(lambda: self._batch(b, *out))

    def _batch(self, b: int, loss: Any, aux: Any, cons: Any) -> Batch:
        loss, cons = jax.device_get((loss, cons))
        losses = np.asarray(loss, float)[:b]
        viol = None if cons is None else _violations(np.asarray(cons, float)[:b], self.problem)
        if aux is not None and b < self.size:
            aux = jax.tree.map(lambda a: a[:b], aux)
        return Batch(losses, self.sign * losses, viol, aux)


# --------------------------------------------------------------------------- host


def _guarded(what: str, call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`; an exception other than optiframe's is an `ObjectiveError` naming
    `what` was evaluated."""
    try:
        return call(*args)
    except OptiframeError:
        raise
    except Exception as err:
        raise ObjectiveError(f"Evaluating {what} failed: {type(err).__name__}: {err}") from err


def _scalar(out: Any, has_aux: bool) -> tuple[float, Any]:
    """`fun`'s output as (float, aux), checked to be a real scalar."""
    if has_aux and not (isinstance(out, tuple) and len(out) == 2):
        raise ObjectiveError(
            "OptimizationFunction(has_aux=True) expects fun(u, p) to return (loss, aux), "
            f"got {type(out).__name__}."
        )
    loss, aux = out if has_aux else (out, None)
    if np.ndim(loss) != 0:
        raise ObjectiveError(
            f"The objective must return a scalar, got shape {np.shape(loss)}; reduce it "
            "(e.g. np.sum or np.mean)."
        )
    try:
        return float(np.asarray(loss)), aux
    except (TypeError, ValueError) as err:
        raise ObjectiveError(
            f"The objective must return a real number, got {type(loss).__name__}."
        ) from err


class HostConstraints:
    """The constraint violations (b, m) of flat candidates (b, n): `cons` on the host (NumPy
    in, float64 out), or on JAX in one batched call when the function is JAX (`ad="jax"`)."""

    def __init__(self, problem: OptimizationProblem, space: SearchSpace) -> None:
        self.problem, self.space = problem, space
        self.jax, self.p = None, problem.p
        if problem.f.ad == "jax":
            self.p = as_float64(problem.p)
            cons, unravel = problem.f.cons, unraveler(problem.u0, jnp.float64)
            one = lambda x, p: jnp.atleast_1d(cons(unravel(x), p))
            self.jax = jax.jit(jax.vmap(one, in_axes=(0, None)))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.jax is not None:
            with float64():
                values = np.asarray(self.jax(np.asarray(X, np.float64), self.p), float)
        else:
            where, cons = "the constraints cons(u, p) at a candidate", self.problem.f.cons
            values = np.stack([
                np.atleast_1d(np.asarray(_guarded(where, cons, self.space.tree(x), self.p), float))
                for x in X
            ])
        return _violations(values, self.problem)


class HostEvaluator:
    """`fun(u, p)` once per candidate, `u` NumPy float64 in `u0`'s structure: called at
    once, or submitted to `executor` (as Nevergrad's own `minimize(executor=...)` does).
    Constraints are evaluated in this process."""

    def __init__(self, problem: OptimizationProblem, space: SearchSpace, executor: Any) -> None:
        self.problem, self.space, self.executor = problem, space, executor
        self.cons = HostConstraints(problem, space) if problem.has_constraints else None

    def start(self, X: np.ndarray) -> Pending:
        fun, p, us = self.problem.f.fun, self.problem.p, [self.space.tree(x) for x in X]
        if self.executor is None:
            where = "the objective fun(u, p) at a candidate"
            batch = self._batch(X, [_guarded(where, fun, u, p) for u in us])
            return Pending(lambda: batch)
        futures = tuple(self.executor.submit(fun, u, p) for u in us)
        where = "the objective fun(u, p) through the executor"
        outs = lambda: [_guarded(where, future.result) for future in futures]
        return Pending(lambda: self._batch(X, outs()), futures)

    def _batch(self, X: np.ndarray, outs: list[Any]) -> Batch:
        values = [_scalar(out, self.problem.f.has_aux) for out in outs]
        objectives = np.array([v for v, _ in values], float)
        return Batch(
            self.problem.sense.sign * objectives,
            objectives,
            None if self.cons is None else self.cons(X),
            [a for _, a in values] if self.problem.f.has_aux else None,
        )
