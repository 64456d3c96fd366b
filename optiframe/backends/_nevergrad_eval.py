"""Evaluating Nevergrad's candidates: a batch at a time on JAX (in float64, whatever JAX's
default precision), one call at a time on the host, or in parallel through a
`concurrent.futures.Executor`.

Every evaluator's `start(X)` takes flat float64 candidates (rows of `X`), starts their
evaluation and returns a `Pending`: calling it waits and gives a `Batch` of the signed
losses Nevergrad is told (`sign * fun`), the values of `fun` itself and, for a constrained
problem, how far each constraint is violated. On JAX (asynchronous dispatch) and through an
executor the evaluation runs while the caller asks Nevergrad for more candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import derivatives
from ..errors import ObjectiveError, OptiframeError
from ..flat import ravel, to_device
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


Pending = Callable[[], Batch]  # waits for a started evaluation and returns its Batch


def join(batches: Sequence[Batch]) -> Batch:
    """One `Batch` of the candidates of `batches`, in order."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    viol = None if first.violations is None else np.concatenate([b.violations for b in batches])
    if first.aux is None:
        aux = None
    elif isinstance(first.aux, list):
        aux = [a for b in batches for a in b.aux]
    else:
        aux = jax.tree.map(lambda *a: jnp.concatenate(a), *[b.aux for b in batches])
    return Batch(
        np.concatenate([b.losses for b in batches]),
        np.concatenate([b.objectives for b in batches]),
        viol,
        aux,
    )


def violations(values: np.ndarray, lcons: np.ndarray, ucons: np.ndarray) -> np.ndarray:
    """(b, m) amounts by which constraint values (b, m) leave `[lcons, ucons]`."""
    with np.errstate(invalid="ignore"):
        v = np.maximum(np.maximum(lcons - values, values - ucons), 0.0)
    return np.where(np.isnan(v), np.inf, v)


def aux_at(aux: Any, i: int) -> Any:
    """The auxiliary output of candidate `i` of a batch."""
    if aux is None:
        return None
    if isinstance(aux, list):
        return aux[i]
    return jax.tree.map(lambda a: a[i], aux)


# --------------------------------------------------------------------------- JAX


def _unravel(u0: Any, x64: bool) -> Any:
    """The inverse of `ravel` for `u0`'s structure, giving float64 leaves (or `u0`'s
    dtypes on the device)."""
    with float64(x64):
        template = to_device(u0)
        if x64:
            template = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float64), template)
        return ravel(template)[1]


class JaxProgram:
    """`fun` (and `cons`) over `size` flat candidates: one jitted call in float64 under
    JAX's x64 mode (or, with `x64=False`, in `u0`'s dtypes), `jax.vmap`-ed over all of them
    or, with `chunk`, over `chunk` at a time in a loop. Built once per (user function,
    sense, shapes of u0, size, chunk, precision), so later solves never trace again."""

    def __init__(
        self, problem: OptimizationProblem, size: int, chunk: int | None, x64: bool
    ) -> None:
        derivs = derivatives(problem.f, problem.sense)
        unravel = _unravel(problem.u0, x64)
        with_cons = problem.has_constraints
        self.size, self.x64 = size, x64
        self.dtype = np.float64 if x64 else jnp.result_type(*jax.tree.leaves(to_device(problem.u0)))
        cons = derivs.cons if with_cons else None

        def one(x, p):
            u = unravel(x)
            loss, aux = derivs.value_aux(u, p)
            c = jnp.atleast_1d(cons(u, p)).astype(loss.dtype) if cons is not None else None
            return loss, aux, c

        if size == 1:  # no vmap: a batched while loop (an adaptive ODE solve) costs more
            self.evaluate = jax.jit(
                lambda X, p: jax.tree.map(lambda a: a[None], one(X[0], p))
            )
        elif chunk is None or chunk >= size:
            self.evaluate = jax.jit(jax.vmap(one, in_axes=(0, None)))
        else:  # vmap over `chunk` candidates at a time, the chunks in a loop, one call
            self.evaluate = jax.jit(
                lambda X, p: jax.lax.map(lambda x: one(x, p), X, batch_size=chunk)
            )

    def __call__(self, X: np.ndarray, p: Any) -> tuple[Any, Any, Any]:
        """Dispatch the evaluation of the rows of `X` (at most `size`); returns at once."""
        b = X.shape[0]
        if b < self.size:  # a partial batch: pad it, so no other size compiles
            X = np.concatenate([X, np.repeat(X[-1:], self.size - b, axis=0)])
        with float64(self.x64):
            return self.evaluate(np.asarray(X, self.dtype), p)


def jax_program(problem: OptimizationProblem, size: int, chunk: int | None, x64: bool):
    leaves, treedef = jax.tree.flatten(problem.u0)
    key = (
        problem.sense, treedef, tuple(np.shape(x) for x in leaves), size,
        problem.has_constraints, chunk, x64,
    )
    build = lambda: JaxProgram(problem, size, chunk, x64)  # noqa: E731
    return cached(problem.f, "nevergrad", key, build)


class JaxEvaluator:
    """Up to `size` candidates in one jitted call of `fun` (and `cons`), vmapped over all of
    them or over `chunk` at a time, dispatched asynchronously."""

    def __init__(self, problem: OptimizationProblem, size: int, chunk: int | None) -> None:
        self.problem, self.sign, self.size, self.chunk = problem, problem.sense.sign, size, chunk
        self.program = jax_program(problem, size, chunk, x64=True)
        self.p = as_float64(problem.p)
        self._checked = not problem.has_constraints

    def start(self, X: np.ndarray) -> Pending:
        b = X.shape[0]
        try:
            out = self.program(X, self.p)
        except (TypeError, ValueError) as err:  # not traceable in float64
            if not self.program.x64:
                raise
            unsupported(err)
            self.program = jax_program(self.problem, self.size, self.chunk, x64=False)
            self.p = self.problem.p
            out = self.program(X, self.p)
        return lambda: self._batch(b, *out)

    def _batch(self, b: int, loss: Any, aux: Any, cons: Any) -> Batch:
        loss, cons = jax.device_get((loss, cons))
        losses = np.asarray(loss, float)[:b]
        viol = None
        if cons is not None:
            cons = np.asarray(cons, float)[:b]
            if not self._checked:
                _check_cons_shape(cons.shape[1], self.problem)
                self._checked = True
            viol = violations(cons, self.problem.lcons, self.problem.ucons)
        if aux is not None and b < self.program.size:
            aux = jax.tree.map(lambda a: a[:b], aux)
        return Batch(losses, self.sign * losses, viol, aux)


def _check_cons_shape(m: int, problem: OptimizationProblem) -> None:
    if m != problem.lcons.size:
        raise ObjectiveError(
            f"`OptimizationFunction(cons=...)` returns {m} values but the problem bounds "
            f"{problem.lcons.size} (lcons/ucons); make them agree."
        )


# --------------------------------------------------------------------------- host


def host_value(fun: Callable[..., Any], has_aux: bool, u: Any, p: Any) -> tuple[float, Any]:
    """`fun(u, p)` as (float, aux), checked to be a scalar."""
    try:
        out = fun(u, p)
    except OptiframeError:
        raise
    except Exception as err:
        raise ObjectiveError(
            f"Evaluating the objective fun(u, p) at a candidate failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    return scalar_result(out, has_aux)


def scalar_result(out: Any, has_aux: bool) -> tuple[float, Any]:
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ObjectiveError(
                "OptimizationFunction(has_aux=True) expects fun(u, p) to return (loss, aux), "
                f"got {type(out).__name__}."
            )
        loss, aux = out
    else:
        loss, aux = out, None
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
    """`cons` on the host (NumPy in, float64 out), or on JAX in one batched call when the
    function is JAX (`ad="jax"`)."""

    def __init__(self, problem: OptimizationProblem, space: SearchSpace) -> None:
        self.problem, self.space = problem, space
        self.jax, self.p = None, problem.p
        if problem.f.ad == "jax":
            self.p = as_float64(problem.p)
            cons, unravel = problem.f.cons, _unravel(problem.u0, x64=True)
            one = lambda x, p: jnp.atleast_1d(cons(unravel(x), p))  # noqa: E731
            self.jax = jax.jit(jax.vmap(one, in_axes=(0, None)))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        p = self.p
        if self.jax is not None:
            with float64():
                values = np.asarray(self.jax(np.asarray(X, np.float64), p), float)
        else:
            rows = []
            for x in X:
                try:
                    c = self.problem.f.cons(self.space.tree(x), p)
                except Exception as err:
                    raise ObjectiveError(
                        f"Evaluating the constraints cons(u, p) at a candidate failed: "
                        f"{type(err).__name__}: {err}"
                    ) from err
                rows.append(np.atleast_1d(np.asarray(c, float)))
            values = np.stack(rows)
        _check_cons_shape(values.shape[1], self.problem)
        return violations(values, self.problem.lcons, self.problem.ucons)


class HostEvaluator:
    """One call of `fun` per candidate, on NumPy float64 `u` in `u0`'s structure, made when
    the candidates are started."""

    def __init__(self, problem: OptimizationProblem, space: SearchSpace) -> None:
        self.problem, self.space, self.sign = problem, space, problem.sense.sign
        self.cons = HostConstraints(problem, space) if problem.has_constraints else None

    def start(self, X: np.ndarray) -> Pending:
        f, p = self.problem.f, self.problem.p
        values = [host_value(f.fun, f.has_aux, self.space.tree(x), p) for x in X]
        batch = host_batch(values, self.sign, f.has_aux, self.cons, X)
        return lambda: batch


class ExecutorEvaluator:
    """`executor.submit(fun, u, p)` per candidate, as Nevergrad's own
    `minimize(executor=...)` does; `u` is NumPy float64 in `u0`'s structure. Constraints
    are evaluated in this process."""

    def __init__(self, problem: OptimizationProblem, space: SearchSpace, executor: Any) -> None:
        self.problem, self.space, self.executor = problem, space, executor
        self.cons = HostConstraints(problem, space) if problem.has_constraints else None

    def submit(self, x: np.ndarray) -> Any:
        return self.executor.submit(self.problem.f.fun, self.space.tree(x), self.problem.p)

    def result(self, future: Any) -> tuple[float, Any]:
        try:
            out = future.result()
        except OptiframeError:
            raise
        except Exception as err:
            raise ObjectiveError(
                f"Evaluating the objective fun(u, p) through the executor failed: "
                f"{type(err).__name__}: {err}"
            ) from err
        return scalar_result(out, self.problem.f.has_aux)

    def collect(self, X: np.ndarray, futures: Sequence[Any]) -> Batch:
        values = [self.result(f) for f in futures]
        return host_batch(values, self.problem.sense.sign, self.problem.f.has_aux, self.cons, X)

    def start(self, X: np.ndarray) -> Pending:
        futures = [self.submit(x) for x in X]
        return lambda: self.collect(X, futures)


def host_batch(
    values: list[tuple[float, Any]], sign: float, has_aux: bool, cons: Any, X: np.ndarray
) -> Batch:
    """The `Batch` of host evaluations `(fun, aux)` of the rows of `X`."""
    objectives = np.array([v for v, _ in values], float)
    aux = [a for _, a in values] if has_aux else None
    viol = cons(X) if cons is not None else None
    return Batch(sign * objectives, objectives, viol, aux)
