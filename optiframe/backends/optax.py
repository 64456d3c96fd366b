"""The optax backend: any `optax.GradientTransformation` behind `solve`.

One iteration evaluates the loss and gradient at the current iterate, tests for
convergence, and applies the optimizer's update (projected onto the bounds, if any).
The same step function runs under three drivers:

- fused: no callback and `p` fixed or an `opf.DataLoader` — the whole run is one jitted
  `lax.while_loop` (batches gathered by index on the device);
- stepwise: a callback or any other data iterator — one jitted step per iteration, the
  next step dispatched before the callback of the current one runs;
- with `maxtime`, the fused loop runs in chunks so the clock can be read between them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data import DataLoader, is_data_iterator
from ..derivatives import Derivatives, derivatives
from ..errors import ObjectiveError, OptiframeError
from ..flat import restore_like, to_device
from ..problem import OptimizationProblem
from ..progress import advance
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, register_adapter

RUNNING, CONVERGED_ABSTOL, CONVERGED_RELTOL, NONFINITE = 0, 1, 2, 3


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


class _Carry(NamedTuple):
    params: Any
    opt_state: Any
    steps: jax.Array  # steps since the first solve of a warm-start chain
    iterations: jax.Array  # steps in this solve
    loss: jax.Array  # signed loss of the last evaluated iterate (inf before the first)
    best_u: Any
    best_loss: jax.Array
    fevals: jax.Array
    gevals: jax.Array
    status: jax.Array
    order: jax.Array | None  # the current epoch's sample order (DataLoader, fused)


def _linesearch_states(state: Any) -> list[Any]:
    kinds = (optax.ScaleByZoomLinesearchState, optax.ScaleByBacktrackingLinesearchState)
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kinds))
    return [node for node in nodes if isinstance(node, kinds)]


def _is_lookahead(transform: optax.GradientTransformation) -> bool:
    return getattr(transform.init, "__qualname__", "").startswith("lookahead.")


@dataclasses.dataclass(frozen=True, eq=False)
class Optax(Algorithm):
    """An optax optimizer as an optiframe algorithm.

    `solve` wraps any `optax.GradientTransformation` in this adapter, so
    `solve(prob, optax.adam(1e-3))` and `solve(prob, opf.Optax(optax.adam(1e-3)))` are
    the same. Optimizers with a line search (`optax.lbfgs()`) receive the value, the
    gradient and `value_fn`; `optax.lookahead` receives `optax.LookaheadParams` and the
    slow weights are returned.

    Convergence: `abstol` stops when the gradient's 2-norm (over all leaves) is at most
    `abstol`; `reltol` stops when the loss changes by at most `reltol * |previous loss|`.
    Either stop returns `Success`.

    Args:
        transform: the optax optimizer.

    Example:
        >>> sol = opf.solve(prob, optax.adamw(1e-3, weight_decay=1e-4), maxiters=500)
    """

    transform: optax.GradientTransformation

    def __post_init__(self) -> None:
        if not isinstance(self.transform, optax.GradientTransformation):
            raise OptiframeError(
                f"`Optax(transform=...)` must be an optax.GradientTransformation, got "
                f"{type(self.transform).__name__}."
            )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True,
            data=not self._has_linesearch,
            needs=frozenset({"grad"}),
            keywords=frozenset(COMMON_KEYWORDS),
        )

    @functools.cached_property
    def _has_linesearch(self) -> bool:
        params = jnp.zeros(1)
        if _is_lookahead(self.transform):
            params = optax.LookaheadParams.init_synced(params)
        return bool(_linesearch_states(jax.eval_shape(self.transform.init, params)))

    def __repr__(self) -> str:
        name = getattr(self.transform.init, "__qualname__", "transform").split(".")[0]
        return f"Optax({name})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        if options.solver_options:
            raise OptiframeError(
                f"Unknown options for the optax backend: {sorted(options.solver_options)}; "
                "configure the optimizer itself (e.g. optax.adam(learning_rate, b1=...))."
            )
        return _Run(self, problem, options).run()


# --------------------------------------------------------------------------- programs


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything the compiled step depends on besides array shapes."""

    transform: optax.GradientTransformation
    lookahead: bool
    reuse_value: bool  # take the loss and gradient from the line search's state
    bounded: bool
    abstol: bool
    reltol: bool
    data: str  # "none" | "loader" | "iterable"
    loader_shape: tuple[int, int, int] | None  # (num_samples, batch_size, last_batch_size)
    progress_every: int | None


class _Program:
    """The jitted functions of one (function, sense, optimizer, spec): built once, cached
    on the `OptimizationFunction`, so later solves never re-trace."""

    def __init__(self, derivs: Derivatives, spec: _Spec) -> None:
        self.derivs, self.spec = derivs, spec
        self.progress_hook: Callable[[Any, Any], None] = lambda iteration, loss: None
        self.init = jax.jit(self._init)
        self.step = jax.jit(self._step)
        self.run = jax.jit(self._run)
        self.finish = jax.jit(self._finish)

    # -- pieces

    def eval_point(self, params: Any) -> Any:
        return params.fast if self.spec.lookahead else params

    def user_point(self, params: Any) -> Any:
        return params.slow if self.spec.lookahead else params

    def _init(self, u: Any) -> tuple[Any, Any]:
        params = optax.LookaheadParams.init_synced(u) if self.spec.lookahead else u
        return params, self.spec.transform.init(params)

    def _evaluate(self, carry: _Carry, p: Any) -> tuple[Any, Any, Any, Any, Any]:
        """(loss, aux, grad, fevals, gevals) at the carry's evaluation point."""
        point = self.eval_point(carry.params)
        vg = self.derivs.value_and_grad
        cost = self.derivs.fevals_per_grad(sum(x.size for x in jax.tree.leaves(point)))
        if not self.spec.reuse_value:
            (loss, aux), grad = vg(point, p)
            return loss, aux, grad, cost, 1
        stored = _linesearch_states(carry.opt_state)[0]
        have = jnp.isfinite(stored.value)
        loss, grad = jax.lax.cond(
            have,
            lambda: (stored.value.astype(jnp.result_type(float)), stored.grad),
            lambda: (lambda out: (out[0][0].astype(jnp.result_type(float)), out[1]))(vg(point, p)),
        )
        fresh = jnp.where(have, 0, 1)
        return loss, None, grad, fresh * cost, fresh

    def _update(self, carry: _Carry, grad: Any, loss: Any, p: Any, lb: Any, ub: Any):
        tx, params = self.spec.transform, carry.params
        if isinstance(tx, optax.GradientTransformationExtraArgs):
            value_fn = lambda w: self.derivs.value(w, p)  # noqa: E731
            updates, opt_state = tx.update(
                grad, carry.opt_state, params, value=loss, grad=grad, value_fn=value_fn
            )
        else:
            updates, opt_state = tx.update(grad, carry.opt_state, params)
        params = optax.apply_updates(params, updates)
        if self.spec.bounded:
            if self.spec.lookahead:
                params = optax.LookaheadParams(
                    fast=optax.projections.projection_box(params.fast, lb, ub),
                    slow=optax.projections.projection_box(params.slow, lb, ub),
                )
            else:
                params = optax.projections.projection_box(params, lb, ub)
        fevals = gevals = jnp.zeros((), jnp.int32)
        for node in _linesearch_states(opt_state):
            fevals += node.info.num_linesearch_steps.astype(jnp.int32)
            if isinstance(node, optax.ScaleByZoomLinesearchState):
                gevals += node.info.num_linesearch_steps.astype(jnp.int32)
            elif node.grad is not None:
                gevals += 1
        return params, opt_state, fevals, gevals

    def _step(self, carry: _Carry, p: Any, lb: Any, ub: Any, tol: Any):
        """One iteration: evaluate at the current iterate, test, update unless stopped.

        Once `carry.status` is not RUNNING a step changes nothing and counts nothing.
        Returns the new carry and (fun, its gradient, aux) at the evaluated iterate, in the
        user's sign (not negated under MaxSense).
        """
        running = carry.status == RUNNING
        loss, aux, grad, fe, ge = self._evaluate(carry, p)
        loss = loss.astype(carry.loss.dtype)
        finite = jnp.isfinite(loss)
        status = jnp.where(finite, RUNNING, NONFINITE)
        if self.spec.abstol:
            small = optax.tree.norm(grad) <= tol[0]
            status = jnp.where(finite & small, CONVERGED_ABSTOL, status)
        if self.spec.reltol:
            prev = carry.loss
            still = jnp.isfinite(prev) & (jnp.abs(loss - prev) <= tol[1] * jnp.abs(prev))
            status = jnp.where((status == RUNNING) & still, CONVERGED_RELTOL, status)
        improved = finite & (loss < carry.best_loss) & running
        best_u = jax.tree.map(
            lambda new, old: jnp.where(improved, new, old),
            self.eval_point(carry.params), carry.best_u,
        )
        params, opt_state, ls_fe, ls_ge = self._update(carry, grad, loss, p, lb, ub)
        go = running & (status == RUNNING)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(go, a, b), new, old)  # noqa: E731
        new = carry._replace(
            params=keep(params, carry.params),
            opt_state=keep(opt_state, carry.opt_state),
            steps=carry.steps + go,
            iterations=carry.iterations + go,
            loss=jnp.where(running, loss, carry.loss),
            best_u=best_u,
            best_loss=jnp.where(improved, loss, carry.best_loss),
            fevals=carry.fevals + jnp.where(running, fe + jnp.where(go, ls_fe, 0), 0),
            gevals=carry.gevals + jnp.where(running, ge + jnp.where(go, ls_ge, 0), 0),
            status=jnp.where(running, status, carry.status),
        )
        sign = self.derivs.sign
        return new, (sign * loss, jax.tree.map(lambda g: sign * g, grad), aux)

    def _loader_step(
        self, carry: _Carry, arrays: Any, key: Any, lb: Any, ub: Any, tol: Any
    ) -> _Carry:
        """A step on the next batch of a `DataLoader`, gathered on the device."""
        n, size, last = self.spec.loader_shape
        full = n // size
        per_epoch = full + (last > 0)
        index = carry.steps % per_epoch

        def gather(start, count):
            take = jax.lax.dynamic_slice_in_dim(carry.order, start, count)
            return jax.tree.map(lambda a: jnp.take(a, take, axis=0), arrays)

        def full_batch(c):
            return self._step(c, gather(index * size, size), lb, ub, tol)[0]

        if last:
            partial = lambda c: self._step(c, gather(full * size, last), lb, ub, tol)[0]  # noqa: E731
            carry = jax.lax.cond(index < full, full_batch, partial, carry)
        else:
            carry = full_batch(carry)
        if key is not None:  # a new order at the start of every epoch
            epoch = carry.steps // per_epoch
            order = jax.lax.cond(
                carry.steps % per_epoch == 0,
                lambda: jax.random.permutation(jax.random.fold_in(key, epoch), n),
                lambda: carry.order,
            )
            carry = carry._replace(order=order)
        return carry

    def _run(
        self, carry: _Carry, limit: Any, p: Any, key: Any, lb: Any, ub: Any, tol: Any
    ) -> _Carry:
        """Steps until `limit` iterations in this solve or a stop (fused). `p` is the
        loader's arrays in loader mode, and `key` its shuffling key (None: no shuffle)."""
        every = self.spec.progress_every

        def body(c):
            if self.spec.data == "loader":
                c = self._loader_step(c, p, key, lb, ub, tol)
            else:
                c = self._step(c, p, lb, ub, tol)[0]
            if every is not None:
                jax.lax.cond(
                    c.iterations % every == 0,
                    lambda: jax.debug.callback(
                        lambda i, loss: self.progress_hook(i, loss), c.iterations, c.loss
                    ),
                    lambda: None,
                )
            return c

        return jax.lax.while_loop(
            lambda c: (c.status == RUNNING) & (c.iterations < limit), body, carry
        )

    def _finish(self, carry: _Carry, p: Any) -> tuple[Any, Any]:
        """The signed loss at the last iterate (the user's point), evaluated once."""
        return self.derivs.value(self.user_point(carry.params), p)


def _program(problem: OptimizationProblem, spec: _Spec) -> _Program:
    cache = problem.f._cache
    key = ("optax", problem.sense, spec)
    if key not in cache:
        cache[key] = _Program(derivatives(problem.f, problem.sense), spec)
    return cache[key]


# --------------------------------------------------------------------------- a run


_END = object()  # the end of the stepwise driver's batches


class _Run:
    """One call of `solve` with the optax backend."""

    def __init__(self, alg: Optax, problem: OptimizationProblem, options: SolveOptions):
        self.alg, self.problem, self.options = alg, problem, options
        if options.maxiters is None and not is_data_iterator(problem.p):
            raise OptiframeError(
                "The optax backend needs an iteration budget: pass solve(..., maxiters=N)."
            )
        p = problem.p
        self.loader = p if isinstance(p, DataLoader) else None
        data = "loader" if self.loader else ("iterable" if is_data_iterator(p) else "none")
        self.fused = options.callback is None and data != "iterable"
        has_ls = alg._has_linesearch
        lookahead = _is_lookahead(alg.transform)
        bar = options.progress
        loader_shape = None
        if self.loader is not None:
            loader_shape = (
                self.loader.num_samples, self.loader.batch_size, self.loader.last_batch_size
            )
        self.spec = _Spec(
            transform=alg.transform,
            lookahead=lookahead,
            reuse_value=(
                has_ls and not lookahead and not problem.has_bounds and not problem.f.has_aux
            ),
            bounded=problem.has_bounds,
            abstol=options.abstol is not None,
            reltol=options.reltol is not None,
            data=data if self.fused else "none",
            loader_shape=loader_shape if self.fused else None,
            progress_every=(
                bar.interval(options.maxiters) if bar is not None and self.fused else None
            ),
        )
        self.shuffle_key = None
        if self.fused and self.loader is not None and self.loader.shuffle:
            self.shuffle_key = self.loader.key
        self.program = _program(problem, self.spec)
        self.sign = self.program.derivs.sign
        u = to_device(problem.u0)
        self.lb = self.ub = None
        if problem.has_bounds:
            self.lb = jax.tree.map(lambda b, x: jnp.asarray(b, x.dtype), problem.lb, u)
            self.ub = jax.tree.map(lambda b, x: jnp.asarray(b, x.dtype), problem.ub, u)
        self.tol = jnp.asarray(
            [options.abstol or 0.0, options.reltol or 0.0], jnp.result_type(float)
        )
        self.carry = self._initial_carry(u)

    def _initial_carry(self, u: Any) -> _Carry:
        warm = self.options.warm_start
        params, opt_state = self.program.init(u)
        steps = jnp.zeros((), jnp.int32)
        if warm is not None:
            state = warm.state
            if not isinstance(state, OptaxState) or (
                jax.tree.structure((state.params, state.opt_state))
                != jax.tree.structure((params, opt_state))
            ) or any(
                np.shape(a) != np.shape(b)
                for a, b in zip(
                    jax.tree.leaves((state.params, state.opt_state)),
                    jax.tree.leaves((params, opt_state)),
                )
            ):
                raise OptiframeError(
                    "`solve(warm_start=sol)`: sol.state does not come from this optimizer "
                    "on a problem of this shape. To start another algorithm from a result, "
                    "use prob.remake(u0=sol.u)."
                )
            params, opt_state, steps = state.params, state.opt_state, state.steps
        order = None
        if self.spec.data == "loader":
            order = self.loader.order(int(steps) // len(self.loader))
        zero = jnp.zeros((), jnp.int32)
        inf = jnp.asarray(jnp.inf, jnp.result_type(float))  # the widest float JAX allows
        return _Carry(
            params=params, opt_state=opt_state, steps=jnp.asarray(steps, jnp.int32),
            iterations=zero, loss=inf, best_u=self.program.eval_point(params),
            best_loss=inf, fevals=zero, gevals=zero, status=zero, order=order,
        )

    # -- drivers

    def run(self) -> OptimizationSolution:
        start = time.perf_counter()
        self.start = start
        self.bar = None
        if self.options.progress is not None:
            self.bar = self.options.progress.open(self.options.maxiters)
        retcode, message = None, ""
        self.last_batch = self.problem.p  # the stepwise driver updates it
        try:
            if self.fused:
                retcode, message = self._fused()
            else:
                retcode, message = self._stepwise()
        except KeyboardInterrupt:
            warnings.warn(
                "solve() interrupted: returning the best iterate so far (Terminated).",
                stacklevel=4,
            )
            retcode, message = ReturnCode.Terminated, "interrupted by KeyboardInterrupt"
        finally:
            if self.bar is not None:
                jax.effects_barrier()
                self.bar.close()
        if self.fused and self.loader is not None:
            self.last_batch = self._last_loader_batch()
        return self._solution(retcode, message, self.last_batch)

    def _fused(self) -> tuple[ReturnCode | None, str]:
        maxiters, maxtime = self.options.maxiters, self.options.maxtime
        p = self.loader.arrays if self.loader is not None else self.problem.p
        if self.bar is not None:
            bar = self.bar
            self.program.progress_hook = lambda it, loss: advance(bar, it, self.sign * loss)
        run = lambda c, limit: self.program.run(  # noqa: E731
            c, limit, p, self.shuffle_key, self.lb, self.ub, self.tol
        )
        if maxtime is None:
            self.carry = run(self.carry, maxiters)
            return None, ""
        chunk = 8
        while True:
            done = int(self.carry.iterations)
            limit = min(maxiters, done + chunk)
            tic = time.perf_counter()
            self.carry = run(self.carry, limit)
            now_done = int(self.carry.iterations)
            if int(self.carry.status) != RUNNING or now_done >= maxiters:
                return None, ""
            if time.perf_counter() - self.start >= maxtime:
                return ReturnCode.MaxTime, f"maxtime={maxtime} s reached"
            per_step = (time.perf_counter() - tic) / max(now_done - done, 1)
            remaining = maxtime - (time.perf_counter() - self.start)
            chunk = int(np.clip(0.1 * remaining / max(per_step, 1e-9), 1, 1_000_000))

    def _batches(self) -> Iterator[Any]:
        """The batches of the stepwise driver, one per iteration."""
        p, total = self.problem.p, self.options.maxiters
        if not is_data_iterator(p):
            for _ in range(total):
                yield p
            return
        if self.loader is not None:
            steps, per_epoch = int(self.carry.steps), len(self.loader)
            for k in range(steps, steps + total):
                epoch, index = divmod(k, per_epoch)
                if index == 0 or k == steps:
                    order = self.loader.order(epoch)
                yield self.loader.batch(epoch, index, order)
            return
        taken, epoch, epochs = 0, 0, self.options.epochs
        while epochs is None or epoch < epochs:
            empty = True
            for batch in p:
                if total is not None and taken >= total:
                    return
                empty, taken = False, taken + 1
                yield batch
            if empty:
                raise OptiframeError("`p` is a data iterator that yielded no batch.")
            epoch += 1

    def _stepwise(self) -> tuple[ReturnCode | None, str]:
        program, callback = self.program, self.options.callback
        maxtime, every = self.options.maxtime, None
        if self.bar is not None:
            every = self.options.progress.interval(self.options.maxiters)
        batches = self._batches()
        step = lambda c, b: program.step(c, b, self.lb, self.ub, self.tol)  # noqa: E731
        batch = next(batches, _END)
        if batch is _END:
            raise OptiframeError("`p` is a data iterator that yielded no batch.")
        before = self.carry
        pending = step(before, batch)
        k = 0
        while True:
            k += 1
            after, (loss, grad, aux) = pending
            next_batch = next(batches, _END)
            nxt = step(after, next_batch) if next_batch is not _END else None
            self.carry, self.last_batch = after, batch
            if callback is not None:
                objective = float(loss)
                state = OptimizationState(
                    iter=k,
                    u=program.eval_point(before.params),
                    objective=objective,
                    grad=grad,
                    p=batch,
                    aux=aux,
                    original=before.opt_state,
                )
                if callback(state, objective):
                    return ReturnCode.Terminated, f"callback returned True at iteration {k}"
            # Steps after a stop change nothing, so without a callback the status (a sync
            # with the device) is read only now and then.
            if (callback is not None or k % 64 == 0) and int(after.status) != RUNNING:
                return None, ""
            if self.bar is not None and k % every == 0:
                advance(self.bar, k, float(loss))
            if maxtime is not None and time.perf_counter() - self.start >= maxtime:
                return ReturnCode.MaxTime, f"maxtime={maxtime} s reached"
            if nxt is None:
                return None, ""
            before, batch, pending = after, next_batch, nxt

    def _last_loader_batch(self) -> Any:
        steps = int(self.carry.steps)
        epoch, index = divmod(max(steps - 1, 0), len(self.loader))
        return self.loader.batch(epoch, index)

    # -- the result

    def _solution(
        self, retcode: ReturnCode | None, message: str, last_p: Any
    ) -> OptimizationSolution:
        carry, program, sign = self.carry, self.program, self.sign
        status = int(carry.status)
        fevals, gevals = int(carry.fevals), int(carry.gevals)
        u_last = program.user_point(carry.params)
        if status == NONFINITE and int(carry.iterations) == 0 and self.options.warm_start is None:
            raise ObjectiveError(
                f"The objective is {float(carry.loss) * sign} at u0; start from a point "
                "where it is finite."
            )
        if status == RUNNING:
            last_loss = float(program.finish(carry, last_p))
            fevals += 1
        elif status == NONFINITE:
            last_loss = float("nan")
        else:
            last_loss = float(carry.loss)
        best_loss = float(carry.best_loss)
        if retcode is None:
            if status == NONFINITE or not np.isfinite(last_loss):
                retcode = ReturnCode.Failure
                message = (
                    f"the objective became non-finite after {int(carry.iterations)} "
                    "iterations; returning the best finite iterate"
                )
            elif status == CONVERGED_ABSTOL:
                retcode = ReturnCode.Success
                message = f"gradient norm <= abstol={self.options.abstol}"
            elif status == CONVERGED_RELTOL:
                retcode = ReturnCode.Success
                message = f"relative change of the objective <= reltol={self.options.reltol}"
            else:
                retcode = ReturnCode.MaxIters
                message = f"maxiters={self.options.maxiters} iterations done"
        if not np.isfinite(last_loss) or (self.options.save_best and best_loss < last_loss):
            u, loss = carry.best_u, best_loss
        else:
            u, loss = u_last, last_loss
        state = OptaxState(carry.params, carry.opt_state, carry.steps)
        return OptimizationSolution(
            u=restore_like(u, self.problem.u0),
            objective=sign * loss,
            retcode=retcode,
            stats=Stats(iterations=int(carry.iterations), fevals=fevals, gevals=gevals),
            original=carry.opt_state,
            state=state,
            message=message,
        )


def _registered(factory: Callable[..., optax.GradientTransformation], **defaults: Any):
    return lambda: Optax(factory(**defaults))


register_adapter(lambda alg: isinstance(alg, optax.GradientTransformation), Optax)
for _name, _factory, _defaults in (
    ("adam", optax.adam, dict(learning_rate=1e-3)),
    ("adamw", optax.adamw, dict(learning_rate=1e-3)),
    ("sgd", optax.sgd, dict(learning_rate=1e-2)),
    ("lion", optax.lion, dict(learning_rate=1e-4)),
    ("radam", optax.radam, dict(learning_rate=1e-3)),
    ("rmsprop", optax.rmsprop, dict(learning_rate=1e-3)),
    ("adagrad", optax.adagrad, dict(learning_rate=1e-2)),
    ("yogi", optax.yogi, dict(learning_rate=1e-2)),
    ("lbfgs", optax.lbfgs, {}),
):
    register(_name, _registered(_factory, **_defaults))
    register(f"optax:{_name}", _registered(_factory, **_defaults))
