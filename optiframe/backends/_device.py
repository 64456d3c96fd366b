"""The run of an on-device method on one problem: the library owns the loop, a method
gives its steps (`_program.py`).

`DeviceRun` runs a method's `Program`: without a callback as one jitted `lax.while_loop`
(in chunks with `maxtime` or a progress bar, the clock and the bar read between them);
with a callback or a data iterator other than a `DataLoader`, one jitted iteration at a
time, the next dispatched before the host reads the current one. Either way it counts,
keeps the best evaluated iterate, stops at a non-finite objective, honours Ctrl-C,
continues warm starts, and compiles each program once per user function
(`_lifecycle.cached`). The members of an `EnsembleProblem` go to `_ensemble.EnsembleRun`.

Under `jax.distributed` every process runs the same programs; process 0 alone shows the
bar, calls the callback and records the history, and decides for all (`_mesh.agree`) how
long each chunk runs and whether the run goes on.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._mesh import agree, distributed, lead, local
from ..derivatives import raise_host_error
from ..ensemble import EnsembleSolution
from ..errors import InvalidProblemError, ObjectiveError
from ..flat import restore_like, to_device
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from ._ensemble import EnsembleRun
from ._feed import Feed
from ._lifecycle import (
    Clock,
    Halt,
    Progress,
    Stop,
    budget_message,
    cached,
    call_back,
    stopped,
)
from ._program import (
    BEST,
    FEVALS,
    FINAL,
    FIRST_STOP,
    GEVALS,
    ITERATIONS,
    LAST,
    NONFINITE,
    RUNNING,
    STATUS,
    STEPS,
    Carry,
    DeviceMethod,
    Evaluation,
    Program,
    Spec,
)
from ._record import LOG_ROWS, Recorder, params_every
from .base import Algorithm, SolveOptions

_END = object()  # the end of the stepwise run's batches
# A stepwise run on full data computes up to MAX_CHUNK iterations ahead per call, as many as
# take about CHUNK_SECONDS and whose stacked carries and evaluations fit in CHUNK_BYTES.
MAX_CHUNK, CHUNK_SECONDS, CHUNK_BYTES = 64, 0.02, 4 << 20
HISTORY_SECONDS = 0.5  # a fused run with a history writes its rows about this often


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
        # The same run on another problem (an ensemble's member alone).
        self.again = lambda problem, options: DeviceRun(alg, problem, options, key, build)
        self.unit = alg.capabilities.budget
        self.key = (key, problem.sense)
        self.method = method = cached(problem.f, "method", self.key, build)
        self.sign = problem.sense.sign
        self.feed = Feed(problem.p, options.epochs)
        if self.feed.iterator and distributed():
            raise InvalidProblemError(
                "Under jax.distributed, a data iterator must be an opf.DataLoader over each "
                "process's arrays (its batches are split over every process's devices)."
            )
        self.stepwise = options.callback is not None or self.feed.iterator or (
            method.run is not None and (options.save_best or options.history is not None)
        )
        # The best point: kept on the device for a search (it is the answer), and in a
        # fused loop for `save_best` or when run in chunks a user may interrupt (it costs
        # time every step); by the host in a stepwise run. A fused run that ends non-finite
        # is replayed to find it (`_rescue`).
        chunked = options.maxtime is not None or options.progress is not None
        self.tracked = method.search or (
            not self.stepwise and (options.save_best or chunked)
        )
        log = None  # a fused run with a history logs its iterations on the device
        if options.history is not None and not self.stepwise:
            n = sum(int(np.size(x)) for x in jax.tree.leaves(problem.u0))
            every = options.history.params_every or params_every(n)
            log = (max(LOG_ROWS, every), every)
        feed = None if self.stepwise else self.feed.shape
        self.program = self._program(Spec(self.tracked, feed, log))
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
        def exported() -> Any:  # what a fresh run's state looks like (traced)
            carry = program.init(self.u, self._p(0), self.consts, 0)[0]
            return self._export(carry, carry.counts, carry.losses)

        fresh = lambda: jax.eval_shape(exported)
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

    def _export(self, carry: Carry, counts: Any, losses: Any) -> Any:
        """`sol.state` of `carry`, whose counts and losses are given (as NumPy on the host:
        indexing them on the device compiles a program)."""
        return self.method.export(carry.state, counts[STEPS], (carry.best_u, losses[BEST]))

    # -- the drivers

    def solve(self, consts: Any) -> OptimizationSolution | EnsembleSolution:
        """Run, with the run's constants (bounds, tolerances, ...: JAX arrays passed to the
        method's functions as arguments, so new values compile nothing)."""
        if self.options.ensemble is not None:
            return EnsembleRun(self, self.options.ensemble).solve(consts)
        self.consts = consts
        self.method.host_evaluations()  # counts from before this run are not its own
        self.clock = Clock(self.options.maxtime)
        self.progress = Progress(self.options.progress if lead() else None, self.options.maxiters)
        # The `p` of the start point and of the point the run ends on, once known.
        self.start_p = self.last_p = None
        self.carry = self.initial = self.extra = self.ahead = None
        self.best_u, self.best_loss = None, np.inf  # a stepwise run's best, on the host
        options = self.options
        self.recorder = None if options.history is None or not lead() else Recorder(
            options.history, self.problem, self.alg, options
        )
        whole = not (
            self.stepwise or options.warm_start or options.maxtime or options.progress
            or options.history
        )
        stop = Stop()
        try:
            with stopped(stop, self._answer):
                if whole:  # the start and the run, one program
                    self._whole()
                else:
                    self.carry, first = self._start()
                    self.initial = self.carry
                    if first is not None and self.recorder is not None:
                        counts = np.asarray(self.carry.counts)
                        if counts[ITERATIONS]:  # the method's start was an iteration
                            self.recorder.row(counts[ITERATIONS], float(first.loss),
                                              counts[FEVALS], first.u)
                    if self._status(self.carry) == RUNNING:
                        (self._stepwise if self.stepwise else self._fused)(first)
        finally:
            if self.progress.bar is not None:
                self.progress.close(*self._shown())
        if self.carry is None:  # interrupted before the first carry came back
            self.carry = self._initial()
        return self._solution(stop)

    def _initial(self) -> Carry:
        """The run's first carry (a run in one program computes it only if needed)."""
        if self.initial is None:
            self.start_p = self._p(0)
            self.initial = self.program.init(self.u, self.start_p, self.consts, 0)[0]
        return self.initial

    def _whole(self) -> None:
        """A fresh fused run without chunks: the start and every iteration in one call."""
        total, (p, key) = self.options.maxiters, self.feed.fused_args()
        self.start_p = self._p(0)
        self.carry, self.extra = self.program.start(
            self.u, self.start_p, total, total, p, key, self.consts
        )
        self._status(self.carry)

    def _answer(self) -> str:
        """What an interrupted run returns: the best iterate, unless a fused run kept none
        and ended (the signal came after it) on a finite iterate."""
        if self.tracked or self.stepwise or self.carry is not None and (
            int(np.asarray(self.carry.counts)[STATUS]) == NONFINITE  # see `_rescue`
        ):
            return "the best iterate so far"
        return "the last iterate"

    def _status(self, carry: Carry) -> int:
        """The status of `carry`, once computed; an exception the objective's host code
        raised meanwhile is raised here. The losses are read with the counts (each array
        keeps its host copy): a later read of its own would cost a transfer, ~0.1 ms."""
        counts, _ = jax.device_get((carry.counts, carry.losses))
        status = int(counts[STATUS])
        raise_host_error()
        return status

    def _shown(self) -> tuple[int, float]:
        """(iterations, the loss a progress bar shows: the last, or a search's best)."""
        counts, losses = jax.device_get((self.carry.counts, self.carry.losses))
        loss = losses[BEST] if self.method.search else losses[LAST]
        return int(counts[ITERATIONS]), float(self.sign * loss)

    def _fused(self, first: Evaluation | None) -> None:
        """The whole run in one call; with `maxtime`, a progress bar or a history, in
        chunks: one iteration first, then about a tenth of the remaining time, one refresh
        of the bar and `HISTORY_SECONDS` at most each. The next chunk is dispatched before
        the host shows and records this one (if the run stops meanwhile, that chunk,
        `self.ahead`, is discarded, and its evaluations counted)."""
        total, (p, key) = self.options.maxiters, self.feed.fused_args()
        run = lambda c, limit: self.program.run(c, limit, total, p, key, self.consts)
        recorder, options = self.recorder, self.options
        if options.maxtime is None and options.progress is None and options.history is None:
            self.carry, self.extra = run(self.carry, total)  # a warm start
            self._status(self.carry)
            return
        done, tic = int(np.asarray(self.carry.counts)[ITERATIONS]), self.clock.elapsed()
        since = None if recorder is None else recorder.elapsed()
        # one iteration first, to time it, unless an earlier run of the program did
        first_size = 1 if self.program.per_step is None else self._chunk(self.program.per_step)
        pending = run(self.carry, min(total, done + int(agree(first_size))))
        while True:
            self.carry, self.extra = pending
            status = self._status(self.carry)
            now_done, loss = self._shown()
            now = self.clock.elapsed()
            per_step = self.program.per_step = max((now - tic) / max(now_done - done, 1), 1e-9)
            going = status == RUNNING and now_done < total
            pending = None
            timely, size = agree(
                (self.clock.remaining() > 0, self._chunk(per_step) if going else 0)
            ).tolist()
            if going and timely:
                pending = run(self.carry, min(total, now_done + size))
                self.ahead = pending[0]
            if recorder is not None:  # while the device computes the next chunk
                self._write_log(done, now_done, since)
                if pending is not None:
                    recorder.writer.commit()
                self._checkpoint(now_done)
            self.progress.show(now_done, loss)
            if pending is None:
                if going:  # maxtime is spent
                    raise Halt(ReturnCode.MaxTime, f"maxtime={options.maxtime} s reached")
                return
            self.ahead, done, tic = None, now_done, now
            since = None if recorder is None else recorder.elapsed()

    def _chunk(self, per_step: float) -> int:
        """Iterations in the next chunk of a fused run, taking `per_step` seconds each."""
        size = self.progress.every or self.options.maxiters
        if self.options.maxtime is not None:
            size = min(size, int(np.clip(0.1 * self.clock.remaining() / per_step, 1, 1e6)))
        if self.program.spec.log is not None:  # rows reach the file every HISTORY_SECONDS
            log_size = self.program.spec.log[0]
            size = min(size, int(np.clip(HISTORY_SECONDS / per_step, 1, log_size)))
        return size

    def _write_log(self, done: int, now_done: int, since: float) -> None:
        """Record iterations `done + 1 ... now_done` from the carry's log (computed since
        `since`, the recorder's clock)."""
        losses, fevals, points = jax.device_get(self.carry.log)
        size, every = self.program.spec.log
        its = range(done + 1, now_done + 1)
        rows = [(i - 1) % size for i in its]
        params = {
            i: jax.tree.map(operator.itemgetter((i - 1) % size // every), points)
            for i in its if i % every == 0
        }
        self.recorder.rows(its, self.sign * losses[rows], fevals[rows], params, since)

    def _checkpoint(self, done: int) -> None:
        """Write a checkpoint of the carry (after iteration `done`) if one is due."""
        if self.recorder is None or not self.recorder.due(done):
            return
        counts, losses = jax.device_get((self.carry.counts, self.carry.losses))
        state = self._export(self.carry, counts, losses)
        self.recorder.checkpoint(done, counts[FEVALS], "state", state)

    def _stepwise(self, first: Evaluation | None) -> None:
        """One compiled iteration per call (on full data, a chunk of them: `_chunks`); the
        next one is dispatched before the host reads this one, so the callback and the bar
        overlap the device's work. If the run stops there, that iteration (`self.ahead`)
        is discarded, and its evaluations counted."""
        counts = np.asarray(self.carry.counts)  # (indexing it on the device compiles)
        total, done = self.options.maxiters, int(counts[ITERATIONS])
        if first is not None and done:  # the method's start was an iteration
            state = self.carry.state
            self._decide(done, lambda: self._show(done, state, state, first, self.start_p))
        calls = None if total is None else total - done
        if calls is not None and calls < 1:  # the method's start spent the budget
            return
        size = self._chunk_size()
        if size > 1:
            return self._chunks(size, math.inf if calls is None else calls, done)
        batches = self.feed.batches(int(counts[STEPS]), calls)
        step = lambda c, b: self.program.step(c, b, self.consts)
        batch = next(batches, _END)
        if self.feed.iterator and batch is not _END:
            self.start_p = batch
        pending = None if batch is _END else step(self.carry, batch)
        while pending is not None:
            after, ev, news = pending
            next_batch = next(batches, _END)
            pending = None if next_batch is _END else step(after, next_batch)
            self.ahead = None if pending is None else pending[0]
            before, self.carry = self.carry, after
            fevals = lambda: np.asarray(after.counts)[FEVALS]  # noqa: B023 (called at once)
            done, going = self._iteration(
                done, before.state, after.state, ev, batch, news, fevals
            )
            if not going:
                return
            self._checkpoint(done)
            batch = next_batch

    def _chunk_size(self) -> int:
        """How many iterations a stepwise run may compute ahead in one call: 1 on batches
        (taken on the host) and under `jax.distributed`, else as many as `CHUNK_BYTES` of
        stacked carries and evaluations hold, at most `MAX_CHUNK`."""
        if self.feed.loader is not None or self.feed.iterator or distributed():
            return 1
        nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
        per_step = nbytes(self.carry.state) + 3 * nbytes(self.u)  # the state, u, grad, aux
        return int(np.clip(CHUNK_BYTES // max(per_step, 1), 1, MAX_CHUNK))

    def _chunks(self, size: int, calls: float, done: int) -> None:
        """`_stepwise` on full data: up to `size` iterations per call, as many as take
        about `CHUNK_SECONDS` (one at first). The host reads a chunk's stacked iterations
        while the device computes the next chunk, and shows them one by one; a run stopped
        by its callback, the clock or Ctrl-C ends on the iteration shown last, the rest
        computed ahead (`self.ahead`) discarded and its evaluations counted."""
        p = self.feed.p
        chunk = lambda c, n: (*self.program.chunk(c, n, p, self.consts, size=size), n)
        n, mark = 1, time.perf_counter()
        pending, calls = chunk(self.carry, n), calls - n
        before = jax.device_get(self.carry.state)
        while pending is not None:
            rows, last, ran = pending
            n = int(min(n, calls))
            pending = chunk(last, n) if n > 0 else None
            calls -= n
            self.ahead = last if pending is None else pending[1]
            carries, evs, news = jax.device_get(rows)
            shown = -1
            try:
                for shown in range(ran):
                    row = operator.itemgetter(shown)
                    after, ev = jax.tree.map(row, carries.state), jax.tree.map(row, evs)
                    fevals = lambda: carries.counts[shown][FEVALS]  # noqa: B023 (called at once)
                    done, going = self._iteration(
                        done, before, after, ev, p, news[shown], fevals
                    )
                    if not going:  # the chunk stopped here too: `last` is this iteration
                        self.carry = last
                        return
                    before = after
            except BaseException:
                if 0 <= shown < ran - 1:
                    self.carry = self.program.row(rows[0], shown)
                elif shown == ran - 1:
                    self.carry = last
                raise
            self.carry, self.ahead = last, None if pending is None else pending[1]
            self._checkpoint(done)
            now = time.perf_counter()
            per_step, mark = (now - mark) / ran, now
            ahead = CHUNK_SECONDS
            if self.options.maxtime is not None:
                ahead = min(ahead, 0.1 * self.clock.remaining())
            n = int(np.clip(ahead / max(per_step, 1e-9), 1, size))

    def _iteration(
        self, done: int, before: Any, after: Any, ev: Evaluation, p: Any, news: Any,
        fevals: Callable[[], int],
    ) -> tuple[int, bool]:
        """The host's part of the iteration from state `before` to `after` (on the device
        or on the host): its `news`, the best point, the history (`fevals()` reads the
        count), the bar, the callback, the clock. Returns (iterations done, whether the run
        goes on)."""
        self.last_p, self.extra = p, ev.extra
        if ev.u is None:
            ev = ev._replace(u=self.method.evaluated(before, after))
        objective, added, status = np.asarray(news).tolist()
        raise_host_error()
        if status == NONFINITE:
            return done, False
        if self.sign * objective < self.best_loss and not self.method.search:
            self.best_u, self.best_loss = ev.u, self.sign * objective
        done += int(added)
        if self.recorder is not None:
            self.recorder.row(done, objective, fevals(), ev.u)
        going = status == RUNNING
        self._decide(done, lambda: self._show(done, before, after, ev, p, objective), going)
        return done, going

    def _decide(self, done: int, show: Callable[[], None], timed: bool = False) -> None:
        """`show()` (the bar and the callback), then, if `timed`, the clock: either may
        end the run (`Halt`). Under `jax.distributed` process 0 alone does both and tells
        the others how it went."""
        if not distributed():
            show()
            if timed:
                self.clock.check()
            return
        verdict, error = 0, None
        if lead():
            try:
                show()
                if timed:
                    self.clock.check()
            except Halt as halt:
                verdict, error = 1 + (halt.retcode == ReturnCode.MaxTime), halt
            except KeyboardInterrupt as interrupt:
                verdict, error = 3, interrupt
        verdict = int(agree(verdict))
        if error is not None:
            raise error
        if verdict:
            raise Halt(*{
                1: (ReturnCode.Terminated, f"callback returned True at iteration {done}"),
                2: (ReturnCode.MaxTime, f"maxtime={self.options.maxtime} s reached"),
                3: (ReturnCode.Terminated, "process 0 was interrupted by KeyboardInterrupt"),
            }[verdict])

    def _show(
        self, done: int, before: Any, after: Any, ev: Evaluation, p: Any,
        objective: float | None = None,
    ) -> None:
        """The bar and the callback, after iteration `done` from state `before` to `after`
        (with `ev.loss`, `objective`)."""
        objective = float(ev.loss) if objective is None else objective
        self.progress.show(done, objective)
        if self.options.callback is not None:
            state = OptimizationState(
                iter=done, u=ev.u, objective=objective, grad=ev.grad, p=p, aux=ev.aux,
                original=self.method.original(before, after, ev),
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
        initial, ran = self._initial(), np.asarray(self.carry.counts)
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
            return self.carry.best_u, float(np.asarray(self.carry.losses)[BEST])
        return self.best_u, self.best_loss

    def _solution(self, stop: Stop) -> OptimizationSolution:
        method, options = self.method, self.options
        counts, losses = jax.device_get((self.carry.counts, self.carry.losses))
        if self.ahead is not None:  # an iteration dispatched ahead: its calls were made
            counts = _with_calls(counts, np.asarray(self.ahead.counts) - counts)
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
                u, loss = self.method.point(self._initial().state), math.nan
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
        if distributed():  # replicated over every process: each returns its own copy
            carry, u, self.extra = local((carry, u, self.extra))
        sol = OptimizationSolution(
            u=restore_like(u, self.problem.u0),
            objective=float(self.sign * loss),
            retcode=retcode,
            stats=Stats(
                iterations=int(counts[ITERATIONS]),
                fevals=int(counts[FEVALS]) + host_fevals,
                gevals=int(counts[GEVALS]) + host_gevals,
            ),
            original=method.result(carry.state, self.consts, self.extra),
            state=self._export(carry, counts, np.asarray(carry.losses)),
            message=message,
        )
        if self.recorder is not None:
            sol = self.recorder.finish(sol, "state", sol.state)
        return sol


def _with_calls(counts: np.ndarray, spent: np.ndarray) -> np.ndarray:
    """`counts` (int32[5]) plus the fevals and gevals of `spent`."""
    counts = counts.copy()
    counts[FEVALS:STATUS] += spent[FEVALS:STATUS]
    return counts
