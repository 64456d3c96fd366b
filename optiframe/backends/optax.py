"""The optax backend: any `optax.GradientTransformation` behind `solve`.

Two drivers run the compiled iteration of `optax_loop.py`:

- fused: no callback, and `p` fixed or an `opf.DataLoader` — the whole run is one jitted
  `lax.while_loop` (with `maxtime`, a few chunks of it, the clock read between them);
- stepwise: a callback or any other data iterator — one jitted step per iteration, the next
  step dispatched before the host looks at the current one, so the callback overlaps the
  device's work.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data import DataLoader, is_data_iterator
from ..derivatives import derivatives
from ..errors import ObjectiveError, OptiframeError
from ..flat import restore_like, to_device
from ..problem import OptimizationProblem
from ..progress import advance
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, register_adapter
from .optax_loop import (
    BEST,
    CONVERGED_ABSTOL,
    CONVERGED_RELTOL,
    FEVALS,
    FINAL,
    GEVALS,
    ITERATIONS,
    LAST,
    NONFINITE,
    RUNNING,
    STATUS,
    STEPS,
    Carry,
    LoopProgram,
    LoopSpec,
    linesearch_states,
    loss_dtype,
)

_CACHE_SIZE = 8  # compiled programs kept per objective


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
    """A hashable summary of how an optax transform was built: code objects and the
    values they close over. Two `optax.adam(1e-3)` built apart have equal fingerprints, so
    they share compiled code; anything not summarised by value is compared by identity
    (the cached program keeps the transform, and so those objects, alive)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = ("cycle", id(obj))
    fp = lambda x: _fingerprint(x, memo)  # noqa: E731
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        out = (type(obj), obj)
    elif isinstance(obj, (tuple, list)):
        out = (type(obj), tuple(fp(x) for x in obj))
    elif isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        out = (dict, tuple((k, fp(v)) for k, v in sorted(obj.items())))
    elif isinstance(obj, functools.partial):
        out = (functools.partial, fp(obj.func), fp(obj.args), fp(obj.keywords))
    elif isinstance(obj, types.FunctionType):
        cells = tuple(_cell(cell) for cell in obj.__closure__ or ())
        out = (obj.__code__, fp(obj.__defaults__), fp(obj.__kwdefaults__), fp(cells))
    else:
        out = ("id", id(obj))
    memo[id(obj)] = out
    return out


def _cell(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return ("empty cell", id(cell))


_STRUCTURES: dict[Any, tuple[bool, bool]] = {}


def _structure(alg: Optax) -> tuple[bool, bool]:
    """(lookahead, line search) of `alg.transform`, inspected once per fingerprint."""
    if alg.fingerprint not in _STRUCTURES:
        init = alg.transform.init
        lookahead = getattr(init, "__qualname__", "").startswith("lookahead.")
        params = optax.LookaheadParams.init_synced(jnp.zeros(1)) if lookahead else jnp.zeros(1)
        linesearch = bool(linesearch_states(jax.eval_shape(init, params)))
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
    `abstol`; `reltol` stops when the loss changes by at most `reltol * |previous loss|`.
    Either stop returns `Success`.

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
            bounds=True,
            data=not self.linesearch,
            needs=frozenset({"grad"}),
            keywords=frozenset(COMMON_KEYWORDS),
        )

    def __repr__(self) -> str:
        name = self.name or getattr(self.transform.init, "__qualname__", "").split(".")[0]
        return f"Optax({name})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        if options.solver_options:
            raise OptiframeError(
                f"Unknown options for the optax backend: {sorted(options.solver_options)}; "
                "configure the optimizer itself (e.g. optax.adam(learning_rate, b1=...))."
            )
        return _Run(self, problem, options).run()


def _program(alg: Optax, problem: OptimizationProblem, spec: LoopSpec) -> LoopProgram:
    """The compiled loop for this objective, optimizer and spec: cached on the objective
    (least recently used dropped past `_CACHE_SIZE`), keyed by the transform's fingerprint."""
    cache = problem.f._cache.setdefault("optax", collections.OrderedDict())
    key = (problem.sense, alg.fingerprint, spec)
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = LoopProgram(alg.transform, derivatives(problem.f, problem.sense), spec)
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return cache[key]


_END = object()  # the end of the stepwise driver's batches


class _Run:
    """One call of `solve` with the optax backend."""

    def __init__(self, alg: Optax, problem: OptimizationProblem, options: SolveOptions):
        if options.maxiters is None and not is_data_iterator(problem.p):
            raise OptiframeError(
                "The optax backend needs an iteration budget: pass solve(..., maxiters=N)."
            )
        self.alg, self.problem, self.options = alg, problem, options
        p = problem.p
        self.loader = p if isinstance(p, DataLoader) else None
        self.fused = options.callback is None and (self.loader or not is_data_iterator(p))
        loader_shape = None
        if self.fused and self.loader is not None:
            loader = self.loader
            loader_shape = (loader.num_samples, loader.batch_size, loader.last_batch_size)
        spec = LoopSpec(
            lookahead=alg.lookahead,
            linesearch=alg.linesearch,
            reuse_value=(
                alg.linesearch and not alg.lookahead and not problem.has_bounds
                and not problem.f.has_aux
            ),
            bounded=problem.has_bounds,
            abstol=options.abstol is not None,
            reltol=options.reltol is not None,
            track_best=self.fused and options.save_best,
            loader=loader_shape,
            progress=self.fused and options.progress is not None,
        )
        self.program = _program(alg, problem, spec)
        u = to_device(problem.u0)
        self.lb = self.ub = None
        if problem.has_bounds:
            self.lb = jax.tree.map(lambda b, x: jnp.asarray(b, x.dtype), problem.lb, u)
            self.ub = jax.tree.map(lambda b, x: jnp.asarray(b, x.dtype), problem.ub, u)
        self.tol = jnp.asarray([options.abstol or 0.0, options.reltol or 0.0], loss_dtype())
        self.initial = self._initial_carry(u)
        self.carry = self.initial
        # The best evaluated iterate when the host tracks it (stepwise driver).
        self.best_u, self.best_loss = None, np.inf

    def _initial_carry(self, u: Any) -> Carry:
        warm = self.options.warm_start
        if warm is None:
            return self.program.init(u)
        state = warm.state
        ours = jax.eval_shape(self.program.init, u)
        ours = jax.tree.map(np.shape, (ours.params, ours.opt_state))
        if not isinstance(state, OptaxState) or (
            jax.tree.map(np.shape, (state.params, state.opt_state)) != ours
        ):
            raise OptiframeError(
                "`solve(warm_start=sol)`: sol.state does not come from this optimizer on a "
                "problem of this shape. To start another algorithm from a result, use "
                "prob.remake(u0=sol.u)."
            )
        return self.program.resume(state.params, state.opt_state, state.steps)

    # -- drivers

    def run(self) -> OptimizationSolution:
        self.start = time.perf_counter()
        self.bar = None
        if self.options.progress is not None:
            self.bar = self.options.progress.open(self.options.maxiters)
        retcode, message = None, ""
        self.last_batch = self.problem.p  # the stepwise driver updates it
        try:
            retcode, message = self._fused() if self.fused else self._stepwise()
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
        return self._solution(retcode, message)

    def _fused(self) -> tuple[ReturnCode | None, str]:
        maxiters, maxtime = self.options.maxiters, self.options.maxtime
        every = 1
        if self.bar is not None:
            bar, every = self.bar, self.options.progress.interval(maxiters)
            sign = self.program.derivs.sign
            self.program.progress_hook = lambda i, loss: advance(bar, i, sign * loss)
        run = lambda c, limit: self._run_fused(self.program, c, limit, every)  # noqa: E731
        if maxtime is None:
            self.carry = run(self.carry, maxiters)
            return None, ""
        chunk = 8
        while True:
            done = int(self.carry.counts[ITERATIONS])
            tic = time.perf_counter()
            self.carry = run(self.carry, min(maxiters, done + chunk))
            counts = np.asarray(self.carry.counts)
            status, now_done = int(counts[STATUS]), int(counts[ITERATIONS])
            if status != RUNNING or now_done >= maxiters:
                return None, ""
            if time.perf_counter() - self.start >= maxtime:
                return ReturnCode.MaxTime, f"maxtime={maxtime} s reached"
            per_step = (time.perf_counter() - tic) / max(now_done - done, 1)
            remaining = maxtime - (time.perf_counter() - self.start)
            chunk = int(np.clip(0.1 * remaining / max(per_step, 1e-9), 1, 1_000_000))

    def _run_fused(self, program: LoopProgram, carry: Carry, limit: int, every: int) -> Carry:
        if self.loader is not None:
            p, key = self.loader.arrays, self.loader.key if self.loader.shuffle else None
        else:
            p, key = self.problem.p, None
        return program.run(carry, limit, p, key, self.lb, self.ub, self.tol, every)

    def _batches(self) -> Iterator[Any]:
        """The batches of the stepwise driver, one per iteration."""
        p, total = self.problem.p, self.options.maxiters
        if not is_data_iterator(p):
            for _ in range(total):
                yield p
            return
        if self.loader is not None:
            steps, per_epoch = int(self.carry.counts[STEPS]), len(self.loader)
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
        program, callback, options = self.program, self.options.callback, self.options
        every = options.progress.interval(options.maxiters) if self.bar is not None else 0
        batches = self._batches()
        step = lambda c, b: program.step(c, b, self.lb, self.ub, self.tol)  # noqa: E731
        batch = next(batches, _END)
        if batch is _END:
            raise OptiframeError("`p` is a data iterator that yielded no batch.")
        before, pending, k = self.carry, step(self.carry, batch), 0
        while True:
            k += 1
            after, (loss, grad, aux) = pending
            next_batch = next(batches, _END)
            # Dispatched before reading this step's loss, so the device works meanwhile.
            nxt = step(after, next_batch) if next_batch is not _END else None
            objective = float(loss)
            self.carry, self.last_batch = after, batch
            if not np.isfinite(objective):
                return None, ""
            u = program.eval_point(before.params)
            if self.program.derivs.sign * objective < self.best_loss:
                self.best_u, self.best_loss = u, self.program.derivs.sign * objective
            if callback is not None:
                state = OptimizationState(
                    iter=k, u=u, objective=objective, grad=grad, p=batch, aux=aux,
                    original=before.opt_state,
                )
                if callback(state, objective):
                    return ReturnCode.Terminated, f"callback returned True at iteration {k}"
            if program.spec.stops_early and int(after.counts[STATUS]) != RUNNING:
                return None, ""
            if every and k % every == 0:
                advance(self.bar, k, objective)
            if options.maxtime is not None and time.perf_counter() - self.start >= options.maxtime:
                return ReturnCode.MaxTime, f"maxtime={options.maxtime} s reached"
            if nxt is None:
                return None, ""
            before, batch, pending = after, next_batch, nxt

    # -- the result

    def _best(self, carry: Carry) -> tuple[Any, float]:
        """The best finite evaluated iterate and its signed loss."""
        if self.program.spec.track_best:
            return carry.best_u, float(carry.losses[BEST])
        if not self.fused:
            return self.best_u, self.best_loss
        # The fused loop kept no best iterate (that costs time every step): replay the
        # deterministic run from its start, tracking it, up to where it stopped.
        spec = dataclasses.replace(self.program.spec, track_best=True, progress=False)
        program = _program(self.alg, self.problem, spec)
        start = self.initial
        replay = program.resume(start.params, start.opt_state, start.counts[STEPS])
        replay = self._run_fused(program, replay, int(carry.counts[ITERATIONS]) + 1, 1)
        return replay.best_u, float(replay.losses[BEST])

    def _solution(self, retcode: ReturnCode | None, message: str) -> OptimizationSolution:
        carry, program, sign = self.carry, self.program, self.program.derivs.sign
        counts, losses = (np.array(x) for x in jax.device_get((carry.counts, carry.losses)))
        status, iterations = int(counts[STATUS]), int(counts[ITERATIONS])
        fevals, gevals = int(counts[FEVALS]), int(counts[GEVALS])
        if status == NONFINITE and iterations == 0 and self.options.warm_start is None:
            raise ObjectiveError(
                f"The objective is {sign * losses[LAST]} at u0; start from a point where it "
                "is finite."
            )
        if status == RUNNING and not np.isfinite(losses[FINAL]):
            # The loop did not evaluate its final iterate (stepwise driver, or a stop from
            # the host before the first fused chunk ended): evaluate it once.
            batch = self.last_batch
            if self.fused and self.loader is not None:
                epoch, index = divmod(max(int(counts[STEPS]) - 1, 0), len(self.loader))
                batch = self.loader.batch(epoch, index)
            losses[FINAL] = float(program.final(carry, batch))
            fevals += 1
        last_loss = losses[FINAL] if status == RUNNING else losses[LAST]
        if retcode is None:
            retcode, message = self._verdict(status, last_loss)
        u, loss = program.user_point(carry.params), last_loss
        if retcode is ReturnCode.Failure or self.options.save_best:
            best_u, best_loss = self._best(carry)
            if best_u is not None and (best_loss < loss or not np.isfinite(loss)):
                u, loss = best_u, best_loss
        return OptimizationSolution(
            u=restore_like(u, self.problem.u0),
            objective=float(sign * loss),
            retcode=retcode,
            stats=Stats(iterations=iterations, fevals=fevals, gevals=gevals),
            original=carry.opt_state,
            state=OptaxState(carry.params, carry.opt_state, carry.counts[STEPS]),
            message=message,
        )

    def _verdict(self, status: int, last_loss: float) -> tuple[ReturnCode, str]:
        if status == NONFINITE or not np.isfinite(last_loss):
            iterations = int(self.carry.counts[ITERATIONS])
            return ReturnCode.Failure, (
                f"the objective became non-finite after {iterations} iterations; returning "
                "the best finite iterate"
            )
        if status == CONVERGED_ABSTOL:
            return ReturnCode.Success, f"gradient norm <= abstol={self.options.abstol}"
        if status == CONVERGED_RELTOL:
            return ReturnCode.Success, (
                f"relative change of the objective <= reltol={self.options.reltol}"
            )
        return ReturnCode.MaxIters, f"maxiters={self.options.maxiters} iterations done"


@functools.cache
def _named(factory: Callable[..., optax.GradientTransformation], name: str, **defaults: Any):
    """One instance per registered name, so repeated solves reuse compiled code."""
    return Optax(factory(**defaults), name=name)


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
    _make = functools.partial(_named, _factory, _name, **_defaults)
    register(_name, _make)
    register(f"optax:{_name}", _make)
