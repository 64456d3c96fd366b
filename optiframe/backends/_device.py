"""The run of an on-device method: the library owns the loop, a method gives its steps.

A `DeviceMethod` (the optax, evosax and gradient-flow adapters) describes its iteration as
pure functions of JAX values, the way an optimistix solver does: `init`, `step`, `point`,
`final`, and optionally its own loop (`run`: diffrax integrates in its own). `DeviceRun`
runs it: without a callback as one jitted `lax.while_loop` (in chunks with `maxtime` or a
progress bar, the clock and the bar read between them); with a callback or a data iterator
other than a `DataLoader`, one jitted iteration at a time, the next dispatched before the
host reads the current one. Either way it counts, keeps the best evaluated iterate, stops
at a non-finite objective, honours Ctrl-C, continues warm starts, and compiles each
program once per user function (`_lifecycle.cached`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import raise_host_error
from ..errors import InvalidProblemError, ObjectiveError
from ..flat import restore_like, to_device
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from ._feed import Feed, LoaderShape, fused
from ._lifecycle import Clock, Progress, Stop, budget_message, cached, call_back, stopped
from .base import Algorithm, SolveOptions

# Status codes: the loop's own; a method numbers its stopping tests from FIRST_STOP on.
RUNNING, NONFINITE, FIRST_STOP = 0, 1, 2
# Slots of `Carry.counts` (int32) and `Carry.losses` (the widest float JAX allows).
STEPS, ITERATIONS, FEVALS, GEVALS, STATUS = range(5)
LAST, BEST, FINAL = range(3)


def loss_dtype() -> Any:
    return jnp.result_type(float)


def counts(iterations: Any, fevals: Any, gevals: Any) -> jax.Array:
    """int32[3]: what an evaluation adds to the run's iterations, fevals and gevals."""
    return jnp.stack([jnp.asarray(c, jnp.int32) for c in (iterations, fevals, gevals)])


class Evaluation(NamedTuple):
    """What one iteration evaluated.

    Attributes:
        u: the point evaluated, in `u0`'s structure and device dtypes.
        loss: the signed loss there (`sign * fun`), a scalar of `loss_dtype()`.
        grad: the signed gradient there, or None.
        aux: `fun`'s auxiliary output there, or None.
        counts: int32[3], the iterations, fevals and gevals it adds (`counts(...)`).
        status: int32, RUNNING or one of the method's stop codes.
        at_state: bool, `u` is the point of the state the iteration leaves.
        extra: what the method shows its callback besides (a population, ...), or None.
    """

    u: Any
    loss: Any
    grad: Any
    aux: Any
    counts: Any
    status: Any
    at_state: Any
    extra: Any = None


class Carry(NamedTuple):
    """The loop's state.

    Attributes:
        state: the method's state.
        counts: int32[5]: iterations over a warm-start chain (they position a data loader),
            iterations, fevals and gevals of this solve, and the status.
        losses: [3]: the signed loss of the last evaluation, the best finite one (when
            tracked; else inf), and the one at the state's point (inf while unknown).
        best_u: the evaluated point of the best loss, when tracked, else None.
    """

    state: Any
    counts: jax.Array
    losses: jax.Array
    best_u: Any


class DeviceMethod:
    """An iterative method on the device, as `DeviceRun` runs it (see the module's doc).

    Attributes:
        search: a search method: `sol.u` is the best point evaluated, and a non-finite
            value is a bad candidate, not the end of the run.
        evaluates_start: `init` evaluates the objective (it is given `p`; else None).
        stops: the method's status codes -> (ReturnCode, message); the message may name
            `{options.abstol}`, `{method....}`.
    """

    search: ClassVar[bool] = False
    evaluates_start: ClassVar[bool] = False
    stops: ClassVar[dict[int, tuple[ReturnCode, str]]] = {}
    run: Callable[..., Any] | None = None

    def init(self, u: Any, p: Any, consts: Any) -> tuple[Any, Evaluation | None]:
        raise NotImplementedError

    def step(self, state: Any, p: Any, consts: Any) -> tuple[Any, Evaluation]:
        raise NotImplementedError

    def point(self, state: Any) -> Any:
        """The point `state` stands at, in `u0`'s structure."""
        raise NotImplementedError

    def final(self, state: Any, p: Any, consts: Any) -> tuple[Any, jax.Array]:
        """(signed loss at `point(state)`, `counts(...)` of computing it)."""
        raise NotImplementedError

    def evaluated(self, before: Any, after: Any) -> Any:
        """The point the iteration from state `before` to `after` evaluated, if the states
        hold it (on the device and on the host), else None. The stepwise program then does
        not return it again, which would copy every leaf at every step."""
        return None

    # -- on the host

    def export(self, state: Any, steps: Any, best: tuple[Any, Any]) -> Any:
        """`sol.state` (what `warm_start` continues) from the state, the iterations over
        the warm-start chain and (best point or None, best loss)."""
        return state

    def restore(self, public: Any) -> tuple[Any, Any, tuple[Any, Any] | None]:
        """(state, steps, (best point, best loss) or None) from `export`'s result."""
        return public, 0, None

    def accepts(self, public: Any, fresh: Callable[[], Any]) -> bool:
        """Whether `public` (a solution's state) can continue a run whose fresh state
        exports to `fresh()` (shapes): same type, tree, and leaf shapes and dtypes."""
        return _same_kind(public, fresh())

    def host_evaluations(self) -> tuple[int, int]:
        """(fevals, gevals) counted on the host (by callbacks) since the last call."""
        return 0, 0

    def original(self, before: Any, after: Any, evaluation: Evaluation) -> Any:
        """A callback's `state.original` for the iteration from `before` to `after`."""
        return after

    def result(self, state: Any, consts: Any, extra: Any) -> Any:
        """`sol.original` from the final state, the constants and `run`'s extra output."""
        return state

    def note(self, state: Any) -> str:
        """Something the solution's message should add (e.g. how many values were NaN)."""
        return ""

    def verdict(self, status: int, state: Any, options: SolveOptions) -> tuple[ReturnCode, str]:
        """The return code and message of one of the method's status codes."""
        code, message = self.stops[status]
        return code, message.format(options=options, method=self)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a program compiles for besides the method and the shapes.

    Attributes:
        track_best: keep the best evaluated point in the carry.
        feed: the shape of a `DataLoader` walked inside the fused loop, or None.
    """

    track_best: bool
    feed: LoaderShape | None


class Program:
    """The jitted functions of one (method, spec), built once per user function.

    - `init(u, p, consts, steps)`, `resume(state, steps, best)`: the first carry;
    - `step(carry, p, consts) -> (carry, evaluation, news)`: one iteration, the evaluation
      in the user's sign (`fun`, not `sign * fun`) without its loss, and `news`, all the
      host reads per step in one transfer: [objective, iterations added, status] (XLA
      copies a value returned twice, tens of µs a step);
    - `run(carry, limit, total, p, key, consts) -> (carry, extra)`: iterations until
      `limit` or a stop, then, at `total`, the loss at the final point; for a `DataLoader`,
      `p` is its arrays and `key` its key (or None);
    - `final(carry, p, consts) -> carry`: the loss at the final point, recorded.
    """

    def __init__(self, method: DeviceMethod, spec: Spec, sign: float) -> None:
        self.method, self.spec, self.sign = method, spec, sign
        self.init = jax.jit(self._init)
        self.resume = jax.jit(self._resume)
        self.step = jax.jit(self._step)
        self.run = jax.jit(self._run)
        self.final = jax.jit(self._final)

    def _resume(self, state: Any, steps: Any, best: tuple[Any, Any] | None = None) -> Carry:
        losses, best_u = jnp.full(3, jnp.inf, loss_dtype()), None
        if self.spec.track_best or self.method.search:
            best_u = jax.tree.map(jnp.zeros_like, self.method.point(state))
            if best is not None:
                best_u, losses = best[0], losses.at[BEST].set(best[1])
        return Carry(state, jnp.zeros(5, jnp.int32).at[STEPS].set(steps), losses, best_u)

    def _init(self, u: Any, p: Any, consts: Any, steps: Any) -> tuple[Carry, Evaluation | None]:
        state, evaluation = self.method.init(u, p, consts)
        carry = self._resume(state, steps)
        if evaluation is None:
            return carry, None
        return self._record(carry, evaluation), self._users(evaluation)

    def _record(self, carry: Carry, ev: Evaluation) -> Carry:
        """Count `ev`, keep it if it is the best, and set the status (whole arrays built
        at once: in-place updates of `counts` and `losses` cost time every iteration)."""
        loss = ev.loss.astype(loss_dtype())
        finite = jnp.isfinite(loss)
        status = ev.status if self.method.search else jnp.where(finite, ev.status, NONFINITE)
        step = ev.counts
        counts = carry.counts + jnp.stack([step[0], *step, jnp.zeros((), jnp.int32)])
        counts = jnp.where(jnp.arange(5) == STATUS, status, counts)
        best_u, best = carry.best_u, carry.losses[BEST]
        if best_u is not None:
            better = finite & (loss < best)
            best_u = jax.tree.map(lambda new, old: jnp.where(better, new, old), ev.u, best_u)
            best = jnp.where(better, loss, best)
        losses = jnp.stack([loss, best, jnp.where(ev.at_state, loss, jnp.inf)])
        return carry._replace(counts=counts, losses=losses, best_u=best_u)

    def _iterate(self, carry: Carry, p: Any, consts: Any) -> tuple[Carry, Evaluation]:
        state, ev = self.method.step(carry.state, p, consts)
        return self._record(carry._replace(state=state), ev), ev

    def _users(self, ev: Evaluation) -> Evaluation:
        sign = self.sign
        grad = None if ev.grad is None else jax.tree.map(lambda g: sign * g, ev.grad)
        return ev._replace(loss=sign * ev.loss, grad=grad)

    def _step(self, carry: Carry, p: Any, consts: Any) -> tuple[Carry, Evaluation, jax.Array]:
        after, ev = self._iterate(carry, p, consts)
        added = after.counts[ITERATIONS] - carry.counts[ITERATIONS]
        news = jnp.stack([self.sign * ev.loss, added, after.counts[STATUS]]).astype(loss_dtype())
        ev = self._users(ev)._replace(loss=None, counts=None, status=None, at_state=None)
        if self.method.evaluated(carry.state, after.state) is not None:  # read on the host
            ev = ev._replace(u=None)
        return after, ev, news

    def _final(self, carry: Carry, p: Any, consts: Any) -> Carry:
        loss, step = self.method.final(carry.state, p, consts)
        counts = carry.counts.at[FEVALS].add(step[1]).at[GEVALS].add(step[2])
        return carry._replace(counts=counts, losses=carry.losses.at[FINAL].set(loss))

    def _finish(self, carry: Carry, p: Any, consts: Any, total: Any) -> Carry:
        """Record the loss at the final point once `total` iterations are done."""
        if self.method.search:
            return carry
        c = carry.counts
        due = (c[STATUS] == RUNNING) & (c[ITERATIONS] >= total) & ~jnp.isfinite(carry.losses[FINAL])
        return jax.lax.cond(due, lambda c: self._final(c, p, consts), lambda c: c, carry)

    def _run(self, carry, limit, total, p, key, consts) -> tuple[Carry, Any]:
        if self.method.run is not None:  # the method's own loop
            n = limit - carry.counts[ITERATIONS]
            state, ev, extra = self.method.run(carry.state, p, consts, n)
            return self._record(carry._replace(state=state), ev), extra

        def going(c):
            return (c.counts[STATUS] == RUNNING) & (c.counts[ITERATIONS] < limit)

        carry = fused(
            self.spec.feed, carry, p, key,
            iterate=lambda c, b: self._iterate(c, b, consts)[0],
            finish=lambda c, b: self._finish(c, b, consts, total),
            going=going,
            position=lambda c: c.counts[STEPS],
        )
        return carry, None


_END = object()  # the end of the stepwise run's batches


class DeviceRun:
    """One call of `solve` with an on-device method.

    Args:
        alg: the algorithm (for messages).
        problem: the problem.
        options: the validated keywords.
        key: hashable, equal for configurations that compile to the same program.
        build: makes the `DeviceMethod` (once per user function and key).
    """

    def __init__(
        self, alg: Algorithm, problem: OptimizationProblem, options: SolveOptions, key: Any,
        build: Callable[[], DeviceMethod],
    ) -> None:
        self.alg, self.problem, self.options = alg, problem, options
        self.unit = alg.capabilities.budget
        self.key = (key, problem.sense)
        self.method = method = cached(problem.f, "method", self.key, build)
        self.sign = problem.sense.sign
        self.feed = Feed(problem.p, options.epochs)
        self.stepwise = options.callback is not None or self.feed.iterator or (
            method.run is not None and options.save_best
        )
        # The best point: kept on the device for a search (it is the answer), and in a
        # fused loop for `save_best` or when run in chunks a user may interrupt (it costs
        # time every step); by the host in a stepwise run. A fused run that ends non-finite
        # is replayed to find it (`_rescue`).
        chunked = options.maxtime is not None or options.progress is not None
        self.tracked = method.search or (
            not self.stepwise and (options.save_best or chunked)
        )
        self.program = self._program(Spec(self.tracked, None if self.stepwise else self.feed.shape))
        self.u = to_device(problem.u0)

    def _program(self, spec: Spec) -> Program:
        build = lambda: Program(self.method, spec, self.sign)
        return cached(self.problem.f, "device", (self.key, spec), build)

    def _start(self) -> tuple[Carry, Evaluation | None]:
        """The first carry, and what the method's start evaluated."""
        warm, program = self.options.warm_start, self.program
        if warm is None:
            self.start_p = self._p(0)
            return program.init(self.u, self.start_p, self.consts, 0)
        fresh = lambda: jax.eval_shape(
            lambda: self._export(program.init(self.u, self._p(0), self.consts, 0)[0])
        )
        if not self.method.accepts(warm.state, fresh):
            raise InvalidProblemError(
                f"`solve(warm_start=sol)`: sol.state does not come from {self.alg!r} on a "
                "problem of this shape. To start another algorithm from a result, use "
                "prob.remake(u0=sol.u)."
            )
        state, steps, best = self.method.restore(warm.state)
        return program.resume(state, jnp.asarray(steps, jnp.int32), best), None

    def _p(self, step: int, needed: bool = False) -> Any:
        """The `p` of the iteration at `step`, if the method's start evaluates or `needed`
        (gathering a batch costs time), else None."""
        if self.feed.iterator or not (needed or self.method.evaluates_start):
            return None
        return self.feed.batch(step)

    def _export(self, carry: Carry) -> Any:
        best = (carry.best_u, carry.losses[BEST])
        return self.method.export(carry.state, carry.counts[STEPS], best)

    # -- the drivers

    def solve(self, consts: Any) -> OptimizationSolution:
        """Run, with the run's constants (bounds, tolerances, ...: JAX arrays passed to the
        method's functions as arguments, so new values compile nothing)."""
        self.consts = consts
        self.method.host_evaluations()  # counts from before this run are not its own
        self.clock = Clock(self.options.maxtime)
        self.progress = Progress(self.options.progress, self.options.maxiters)
        # The `p` of the start point and of the point the run ends on, once known.
        self.start_p = self.last_p = None
        self.carry, first = self._start()
        self.initial, self.extra, self.ahead = self.carry, None, None
        self.best_u, self.best_loss = None, np.inf  # a stepwise run's best, on the host
        stop = Stop()
        try:
            with stopped(stop, self._answer):
                if self._status(self.carry) == RUNNING:
                    (self._stepwise if self.stepwise else self._fused)(first)
        finally:
            if self.progress.bar is not None:
                self.progress.close(*self._shown())
        return self._solution(stop)

    def _answer(self) -> str:
        """What an interrupted run returns: the best iterate, unless a fused run kept none
        and ended (the signal came after it) on a finite iterate."""
        if self.tracked or self.stepwise or (
            int(np.asarray(self.carry.counts)[STATUS]) == NONFINITE  # see `_rescue`
        ):
            return "the best iterate so far"
        return "the last iterate"

    def _status(self, carry: Carry) -> int:
        """The status of `carry`, once computed; an exception the objective's host code
        raised meanwhile is raised here."""
        status = int(np.asarray(carry.counts)[STATUS])
        raise_host_error()
        return status

    def _shown(self) -> tuple[int, float]:
        """(iterations, the loss a progress bar shows: the last, or a search's best)."""
        counts, losses = jax.device_get((self.carry.counts, self.carry.losses))
        loss = losses[BEST] if self.method.search else losses[LAST]
        return int(counts[ITERATIONS]), float(self.sign * loss)

    def _fused(self, first: Evaluation | None) -> None:
        """The whole run in one call; with `maxtime` or a progress bar, in chunks: one
        iteration first, then about a tenth of the remaining time each, and one refresh of
        the bar at most."""
        total, (p, key) = self.options.maxiters, self.feed.fused_args()
        run = lambda c, limit: self.program.run(c, limit, total, p, key, self.consts)
        if self.options.maxtime is None and self.progress.bar is None:
            self.carry, self.extra = run(self.carry, total)
            self._status(self.carry)
            return
        size = 1
        while True:
            done, tic = int(self.carry.counts[ITERATIONS]), self.clock.elapsed()
            self.carry, self.extra = run(self.carry, min(total, done + size))
            status = self._status(self.carry)
            now_done, loss = self._shown()
            self.progress.show(now_done, loss)
            if status != RUNNING or now_done >= total:
                return
            self.clock.check()
            size = self.progress.every or total
            if self.options.maxtime is not None:
                per_step = (self.clock.elapsed() - tic) / max(now_done - done, 1)
                tenth = np.clip(0.1 * self.clock.remaining() / max(per_step, 1e-9), 1, 1e6)
                size = min(size, int(tenth))

    def _stepwise(self, first: Evaluation | None) -> None:
        """One compiled iteration per call; the next one is dispatched before the host
        reads this one, so the callback and the bar overlap the device's work. If the run
        stops there, that iteration (`self.ahead`) is discarded, and its evaluations counted."""
        total, done = self.options.maxiters, int(self.carry.counts[ITERATIONS])
        if first is not None and done:  # the method's start was an iteration
            self._show(done, self.carry, self.carry, first, self.start_p)
        batches = self.feed.batches(
            int(self.carry.counts[STEPS]), None if total is None else total - done
        )
        step = lambda c, b: self.program.step(c, b, self.consts)
        batch = next(batches, _END)
        if self.feed.iterator and batch is not _END:
            self.start_p = batch
        pending = None if batch is _END else step(self.carry, batch)
        while pending is not None:
            after, ev, news = pending
            next_batch = next(batches, _END)
            pending = self.ahead = None if next_batch is _END else step(after, next_batch)
            before, self.carry, self.last_p, self.extra = self.carry, after, batch, ev.extra
            if ev.u is None:
                ev = ev._replace(u=self.method.evaluated(before.state, after.state))
            objective, added, status = np.asarray(news).tolist()
            raise_host_error()
            if status == NONFINITE:
                return
            if self.sign * objective < self.best_loss and not self.method.search:
                self.best_u, self.best_loss = ev.u, self.sign * objective
            done += int(added)
            self._show(done, before, after, ev, batch, objective)
            if status != RUNNING:
                return
            self.clock.check()
            batch = next_batch

    def _show(
        self, done: int, before: Carry, after: Carry, ev: Evaluation, p: Any,
        objective: float | None = None,
    ) -> None:
        """The bar and the callback, after iteration `done` (with `ev.loss`, `objective`)."""
        objective = float(ev.loss) if objective is None else objective
        self.progress.show(done, objective)
        if self.options.callback is not None:
            state = OptimizationState(
                iter=done, u=ev.u, objective=objective, grad=ev.grad, p=p, aux=ev.aux,
                original=self.method.original(before.state, after.state, ev),
            )
            call_back(self.options.callback, state)

    # -- the result

    def _rescue(self) -> tuple[Any, float, int, float]:
        """The run ended at a non-finite objective: (the best finite point evaluated, its
        signed loss (inf if none), the iterations done before the objective turned
        non-finite, the signed loss at the start). The start point competes, evaluated
        once more; a run that kept no best point (a method's own loop cannot) is run again
        from its start, one tracked iteration at a time, up to where it stopped. The counts
        stay the run's, plus these evaluations."""
        initial, ran = self.initial, np.asarray(self.carry.counts)
        if self.start_p is None:
            self.start_p = self._p(int(initial.counts[STEPS]), needed=True)
        start = self.program.final(initial, self.start_p, self.consts)
        spent = np.asarray(start.counts) - np.asarray(initial.counts)
        (best_u, best), at = self._best(), int(ran[ITERATIONS])
        if best_u is None and not self.stepwise:
            program = self._program(Spec(True, None))
            carry = program.resume(initial.state, initial.counts[STEPS])
            n = at - int(initial.counts[ITERATIONS])
            for batch in self.feed.batches(int(initial.counts[STEPS]), n):
                carry = program.step(carry, batch, self.consts)[0]
                if int(carry.counts[STATUS]) != RUNNING:
                    break
            spent = spent + np.asarray(carry.counts)
            at = int(initial.counts[ITERATIONS] + carry.counts[ITERATIONS])
            best_u, best = carry.best_u, carry.losses[BEST]
        self.carry = self.carry._replace(counts=_with_calls(ran, spent))
        start_loss, best = float(start.losses[FINAL]), float(best)
        if start_loss < best:
            best_u, best = self.method.point(initial.state), start_loss
        return best_u, best, at, start_loss

    def _best(self) -> tuple[Any, float]:
        """(the best evaluated point, its signed loss) kept on the device or, in a stepwise
        run, by the host; (None, inf) when none was kept."""
        if self.carry.best_u is not None:
            return self.carry.best_u, float(self.carry.losses[BEST])
        return self.best_u, self.best_loss

    def _solution(self, stop: Stop) -> OptimizationSolution:
        method, options = self.method, self.options
        counts, losses = jax.device_get((self.carry.counts, self.carry.losses))
        if self.ahead is not None:  # an iteration dispatched ahead: its calls were made
            counts = _with_calls(counts, np.asarray(self.ahead[0].counts) - counts)
            self.carry = self.carry._replace(counts=counts)
        status = int(counts[STATUS])
        if not method.search and status != NONFINITE and not np.isfinite(losses[FINAL]):
            # the point the run ended on was not evaluated
            p = self.last_p
            if p is None:
                p = self._p(int(counts[STEPS]), needed=True)
            self.carry = self.program.final(self.carry, p, self.consts)
            losses = np.asarray(self.carry.losses)
        raise_host_error()
        retcode, message = stop.retcode, stop.message
        if method.search:
            u, loss = self.carry.best_u, float(losses[BEST])
            if not np.isfinite(loss):
                u, loss = self.u, math.nan
                retcode, message = ReturnCode.Failure, (
                    "no evaluation returned a finite objective; returning u0"
                )
        elif status == NONFINITE or not np.isfinite(losses[FINAL]):
            u, loss, at, start_loss = self._rescue()
            if not np.isfinite(loss):
                if options.warm_start is None:
                    raise ObjectiveError(
                        f"The objective is {self.sign * start_loss} at u0; start from a point "
                        "where it is finite."
                    )
                u, loss = self.method.point(self.initial.state), math.nan
            retcode = retcode or ReturnCode.Failure
            message = message or (
                f"the objective became non-finite after {at} {self.unit}; returning the "
                "best finite iterate"
            )
        else:
            u, loss = method.point(self.carry.state), float(losses[FINAL])
            best_u, best = self._best()
            if (options.save_best or stop.interrupted) and best < loss:
                u, loss = best_u, best
        if retcode is None:
            retcode, message = (
                method.verdict(status, self.carry.state, options) if status >= FIRST_STOP
                else budget_message(options, self.unit)
            )
        carry = self.carry
        counts = np.asarray(carry.counts)  # with what `final` and `_rescue` added
        message = "; ".join(m for m in (message, method.note(carry.state)) if m)
        host_fevals, host_gevals = method.host_evaluations()
        return OptimizationSolution(
            u=restore_like(u, self.problem.u0),
            objective=float(self.sign * loss),
            retcode=retcode,
            stats=Stats(
                iterations=int(counts[ITERATIONS]),
                fevals=int(counts[FEVALS]) + host_fevals,
                gevals=int(counts[GEVALS]) + host_gevals,
            ),
            original=method.result(carry.state, self.consts, self.extra),
            state=self._export(carry),
            message=message,
        )


def _with_calls(counts: np.ndarray, spent: np.ndarray) -> np.ndarray:
    """`counts` (int32[5]) plus the fevals and gevals of `spent`."""
    counts = counts.copy()
    counts[FEVALS:STATUS] += spent[FEVALS:STATUS]
    return counts


def _same_kind(given: Any, fresh: Any) -> bool:
    """`given` has `fresh`'s type, tree structure, and leaf shapes and dtypes (arrays) or
    values (anything else)."""
    if type(given) is not type(fresh):
        return False
    a, tree_a = jax.tree.flatten(given)
    b, tree_b = jax.tree.flatten(fresh)
    if tree_a != tree_b:
        return False
    for x, y in zip(a, b):
        if hasattr(y, "shape") and hasattr(y, "dtype"):
            if np.shape(x) != tuple(y.shape) or jnp.result_type(x) != y.dtype:
                return False
        elif x != y:
            return False
    return True
