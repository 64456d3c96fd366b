"""The members of an `EnsembleProblem`, solved together.

On the device (`EnsembleRun`), the shared run's program (`_program.Program`) is vmapped
over the members: one compiled `lax.while_loop` in which every member stops on its own test
(a stopped member's carry no longer changes), or, with a callback, one vmapped iteration at
a time, the callback seeing all members stacked. The members' results are read back once,
stacked; `esol[i]` builds member i's `OptimizationSolution` on demand. (Host algorithms
solve the members one by one: `optiframe.ensemble.solve_members`.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import raise_host_error
from ..ensemble import EnsembleProblem, EnsembleSolution, member, stacked_like
from ..errors import ObjectiveError
from ..flat import to_device
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from ._lifecycle import Clock, Progress, Stop, budget_message, cached, call_back, stopped
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
    Program,
    Spec,
)


def _select(mask: Any, new: Any, old: Any) -> Any:
    """`new` where `mask` (N,) else `old`, leaf by leaf (leading axis N). A part of `new`
    that is None in `old` is taken whole (a gradient flow's diffrax state, which its
    first integration creates)."""

    def leaf(b, a):
        if b is None:
            return a
        return jnp.where(mask.reshape(mask.shape + (1,) * (jnp.ndim(a) - 1)), a, b)

    return jax.tree.map(leaf, old, new, is_leaf=lambda x: x is None)


class EnsembleProgram:
    """The jitted functions of one `Program` vmapped over N members: carries stacked
    along axis 0, `p` stacked too (`p_axis` 0) or shared (None).

    - `init(u, p, consts, steps)`: the members' first carries;
    - `start(u, p, consts, limit, total)`: the first carries and `run` up to `limit`, in
      one program;
    - `run(carry, limit, total, p, consts) -> (carry, extra)`: every member's iterations up
      to `limit` or its stop, then, at `total`, the loss at its final point;
    - `step(carry, p, consts) -> (carry, evaluation, news)`: one iteration of every member
      still running, the others unchanged; `news` (N, 3) as `Program.step`'s, a stopped
      member's with its last objective, no iteration and its status;
    - `final(carry, p, consts, need)`: the loss at the final point of the members `need`.

    A method without stopping tests whose iterations all cost the same (`DeviceMethod.steady`:
    optax without a line search) runs its members in step: one loop over a count no member
    owns, so that nothing is tested per member each iteration, what no member's data
    changes (optax's step count) is computed once, and nothing but the step is computed
    (the loss neither): on small problems a vmapped loop that tests each member costs
    2-3x more a step, and the record of each iteration (`Program._record`) as much again.
    """

    def __init__(self, program: Program, p_axis: int | None) -> None:
        self.program, self.p_axis = program, p_axis
        self.init = jax.jit(jax.vmap(program._init, in_axes=(0, p_axis, None, None)))
        self.start = jax.jit(self._start)
        self.run = jax.jit(self._run)
        self.step = jax.jit(self._step)
        self.final = jax.jit(self._final)

    def _member(self, carry: Carry, first: Any, limit: Any, total: Any, p: Any, consts: Any):
        """One member's `run` (traced under vmap). A method whose iterations all cost the
        same and test nothing (`DeviceMethod.steady`), with no best point to keep, runs in
        step with the others from iteration `first` and records nothing per iteration: a
        non-finite objective shows at the final point, and the member is solved again
        alone (`EnsembleRun._alone`)."""
        program, method = self.program, self.program.method
        steady = method.steady(carry.state)
        if method.run is not None or steady is None or program.spec.track_best:
            return program._run(carry, limit, total, p, None, consts)

        def body(loop):
            k, state = loop
            return k + 1, method.step(state, p, consts)[0]

        _, state = jax.lax.while_loop(lambda c: c[0] < limit, body, (first, carry.state))
        added = (limit - first) * steady
        counts = carry.counts + jnp.concatenate([added[:1], added, jnp.zeros(1, jnp.int32)])
        return program._finish(carry._replace(state=state, counts=counts), p, consts, total), None

    def _start(self, u: Any, p: Any, consts: Any, limit: Any, total: Any) -> tuple:
        def member(u, p):
            carry = self.program._init(u, p, consts, 0)[0]
            return self._member(carry, jnp.zeros((), jnp.int32), limit, total, p, consts)

        return jax.vmap(member, in_axes=(0, self.p_axis))(u, p)

    def _run(self, carry: Carry, limit: Any, total: Any, p: Any, consts: Any) -> tuple:
        first = jnp.max(carry.counts[:, ITERATIONS])  # every member in step is there
        member = lambda c, p: self._member(c, first, limit, total, p, consts)
        after, extra = jax.vmap(member, in_axes=(0, self.p_axis))(carry, p)
        running = carry.counts[:, STATUS] == RUNNING  # (a method's own loop runs them all)
        return _select(running, after, carry), extra

    def _step(self, carry: Carry, p: Any, consts: Any) -> tuple[Carry, Any, jax.Array]:
        step = jax.vmap(self.program._step, in_axes=(0, self.p_axis, None))
        after, ev, news = step(carry, p, consts)
        running = carry.counts[:, STATUS] == RUNNING
        sign = self.program.sign
        idle = jnp.stack([
            sign * carry.losses[:, LAST], jnp.zeros_like(carry.losses[:, LAST]),
            carry.counts[:, STATUS].astype(news.dtype),
        ], axis=1)
        return _select(running, after, carry), ev, jnp.where(running[:, None], news, idle)

    def _final(self, carry: Carry, p: Any, consts: Any, need: Any) -> Carry:
        final = jax.vmap(self.program._final, in_axes=(0, self.p_axis, None))
        return _select(need, final(carry, p, consts), carry)


class EnsembleRun:
    """One `solve` of an `EnsembleProblem` with an on-device method: `run` is the
    `_device.DeviceRun` the algorithm built for the shared problem (its method, key and
    options; not imported here: it hands the ensemble over)."""

    def __init__(self, run: Any, ensemble: EnsembleProblem) -> None:
        self.run, self.ensemble, self.n = run, ensemble, len(ensemble)
        self.method, self.options = run.method, run.options
        self.p_axis = None if ensemble.ps is None else 0
        self.p = run.problem.p if ensemble.ps is None else to_device(ensemble.ps)
        if ensemble.u0s is None:
            self.u = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.n,) + x.shape), run.u)
        else:
            self.u = jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), to_device(
                ensemble.u0s), run.u)
        # The best point is kept for a search (it is the answer), `save_best`, or a run in
        # chunks a user may interrupt (as `DeviceRun` does).
        chunked = run.options.maxtime is not None or run.options.progress is not None
        spec = Spec(self.method.search or run.options.save_best or chunked, None)
        program = run._program(spec)
        self.program = cached(
            run.problem.f, "ensemble", (run.key, spec, self.p_axis),
            lambda: EnsembleProgram(program, self.p_axis),
        )

    def solve(self, consts: Any) -> EnsembleSolution:
        self.consts, options = consts, self.options
        self.clock = Clock(options.maxtime)
        self.progress = Progress(options.progress, options.maxiters)
        self.carry = self.extra = self.ahead = None
        stop = Stop()
        try:
            with stopped(stop, self._answer):
                (self._stepwise if options.callback is not None else self._fused)()
        finally:
            if self.progress.bar is not None:
                self.progress.close(*self._shown())
        if self.carry is None:  # interrupted before the first carry came back
            self._first()
        return self._solution(stop)

    def _first(self) -> None:
        """The members' first carries (`p` given where the method's start needs it)."""
        p0 = self.p if self.method.evaluates_start else None
        self.carry = self.program.init(self.u, p0, self.consts, 0)[0]

    def _answer(self) -> str:
        kept = self.carry is not None and self.carry.best_u is not None
        return "every member's " + ("best iterate so far" if kept else "last iterate")

    def _running(self, counts: np.ndarray) -> bool:
        raise_host_error()
        return bool(np.any(counts[:, STATUS] == RUNNING))

    def _shown(self) -> tuple[int, float]:
        """(iterations of the furthest member, the lowest objective of any member)."""
        counts, losses = jax.device_get((self.carry.counts, self.carry.losses))
        loss = losses[:, BEST] if self.method.search else losses[:, LAST]
        signed = self.run.sign * loss[np.isfinite(loss)]
        return int(counts[:, ITERATIONS].max()), float(signed.min()) if signed.size else math.nan

    def _fused(self) -> None:
        """All members in one call; with `maxtime` or a progress bar, in chunks (as
        `DeviceRun._fused`)."""
        total, options = self.options.maxiters, self.options
        run = lambda c, limit: self.program.run(c, limit, total, self.p, self.consts)
        if options.maxtime is None and self.progress.bar is None:
            self.carry, self.extra = self.program.start(self.u, self.p, self.consts, total, total)
            self._running(np.asarray(self.carry.counts))
            return
        self._first()
        size = 1
        while True:
            done, tic = self._shown()[0], self.clock.elapsed()
            self.carry, self.extra = run(self.carry, min(total, done + size))
            now_done, loss = self._shown()
            self.progress.show(now_done, loss)
            if not self._running(np.asarray(self.carry.counts)) or now_done >= total:
                return
            self.clock.check()
            size = self.progress.every or total
            if options.maxtime is not None:
                per_step = (self.clock.elapsed() - tic) / max(now_done - done, 1)
                tenth = np.clip(0.1 * self.clock.remaining() / max(per_step, 1e-9), 1, 1e6)
                size = min(size, int(tenth))

    def _stepwise(self) -> None:
        """One vmapped iteration per call, the next dispatched before the host reads this
        one; the callback sees every member, stacked (a stopped member: its last
        objective, the point it stopped at)."""
        step = lambda c: self.program.step(c, self.p, self.consts)
        total = self.options.maxiters
        self._first()
        pending = step(self.carry)
        for done in range(1, total + 1):
            after, ev, news = pending
            pending = self.ahead = step(after) if done < total else None
            before, self.carry = self.carry, after
            if ev.u is None:
                ev = ev._replace(u=self.method.evaluated(before.state, after.state))
            news = np.asarray(news)
            raise_host_error()
            objective = news[:, 0]
            self.progress.show(done, float(np.nanmin(objective)))
            state = OptimizationState(
                iter=done, u=ev.u, objective=objective, grad=ev.grad, p=self.p, aux=ev.aux,
                original=self.method.original(before.state, after.state, ev),
            )
            call_back(self.options.callback, state)
            if not np.any(news[:, 2] == RUNNING):
                return
            self.clock.check()

    # -- the result

    def _solution(self, stop: Stop) -> EnsembleSolution:
        method, options, sign = self.method, self.options, self.run.sign
        counts = np.array(jax.device_get(self.carry.counts))
        if self.ahead is not None:  # an iteration dispatched ahead: its calls were made
            ahead = np.asarray(self.ahead[0].counts)
            counts[:, FEVALS:STATUS] = ahead[:, FEVALS:STATUS]
        status = counts[:, STATUS]
        losses = np.asarray(self.carry.losses)
        need = (status != NONFINITE) & ~np.isfinite(losses[:, FINAL]) & (not method.search)
        if need.any():  # the point a member ended on was not evaluated
            before = np.asarray(self.carry.counts)[:, FEVALS:STATUS]
            self.carry = self.program.final(self.carry, self.p, self.consts, jnp.asarray(need))
            counts[:, FEVALS:STATUS] += np.asarray(self.carry.counts)[:, FEVALS:STATUS] - before
            losses = np.asarray(self.carry.losses)
        raise_host_error()
        best, final = losses[:, BEST], losses[:, FINAL]
        if method.search:  # the best candidate; u0 where none was finite
            use_best, lost = np.ones(self.n, bool), ~np.isfinite(best)
        else:
            kept = self.carry.best_u is not None and (options.save_best or stop.interrupted)
            use_best, lost = kept & (best < final), np.zeros(self.n, bool)
        loss = np.where(use_best, best, final)
        loss[lost] = np.nan
        # (a point is a part of the state: the method's `point` takes the stacked states)
        points = self.carry.best_u if method.search else method.point(self.carry.state)
        points, best_u, starts = jax.device_get((points, self.carry.best_u, self.u))
        if best_u is None:
            best_u = points
        u = jax.tree.map(
            lambda b, x, s: np.where(_column(lost, s), s, np.where(_column(use_best, x), b, x)),
            best_u, points, starts,
        )
        objective = np.asarray(sign * loss, np.float64)
        codes, messages = self._verdicts(stop, status, lost)
        # A member that met a non-finite objective is solved again alone, as `solve` would.
        alone = {}
        broken = ~method.search & ((status == NONFINITE) | ~np.isfinite(final))
        for i in np.flatnonzero(broken).tolist():
            sol = alone[i] = self._alone(i, counts[i])
            for leaf, value in zip(jax.tree.leaves(u), jax.tree.leaves(sol.u)):
                leaf[i] = np.asarray(value)
            objective[i], codes[i] = sol.objective, sol.retcode
        own = ~broken  # the members' counts added up (those solved alone: theirs)
        stats = Stats(**{
            name: int(counts[own, slot].sum()) + sum(getattr(s.stats, name) for s in alone.values())
            for name, slot in (("iterations", ITERATIONS), ("fevals", FEVALS), ("gevals", GEVALS))
        })
        u = jax.tree.map(stacked_like, u, self.run.problem.u0)
        return EnsembleSolution(
            u=u, objective=objective, retcodes=tuple(codes), stats=stats, ensemble=self.ensemble,
            solution=_Members(self, u, objective, codes, messages, counts, best, alone),
        )

    def _alone(self, i: int, spent: np.ndarray) -> OptimizationSolution:
        """Member i solved alone (it met a non-finite objective: the single run finds its
        best finite iterate), its counts added to what the ensemble spent on it."""
        problem = self.ensemble.member(i)
        options = dataclasses.replace(
            self.options, ensemble=None, callback=None, progress=None, maxtime=None
        )
        try:
            sol = self.run.again(problem, options).solve(self.consts)
        except ObjectiveError as err:  # non-finite at its start
            sol = OptimizationSolution(
                u=problem.u0, objective=math.nan, retcode=ReturnCode.Failure, stats=Stats(),
                message=str(err),
            )
        return dataclasses.replace(sol, stats=Stats(
            iterations=sol.stats.iterations, fevals=sol.stats.fevals + int(spent[FEVALS]),
            gevals=sol.stats.gevals + int(spent[GEVALS]),
        ))

    def _verdicts(
        self, stop: Stop, status: np.ndarray, lost: np.ndarray
    ) -> tuple[list[ReturnCode], list[Callable[[], str]]]:
        """Each member's return code, and its message (built on demand)."""
        method, options, stops = self.method, self.options, self.method.stops
        codes, messages = [], []
        for i, s in enumerate(status.tolist()):
            if lost[i]:
                codes.append(ReturnCode.Failure)
                messages.append(lambda: "no evaluation returned a finite objective; returning u0")
            elif s == RUNNING and stop.retcode is not None:
                codes.append(stop.retcode)
                messages.append(lambda: stop.message)
            elif s >= FIRST_STOP:
                code = stops[s][0] if s in stops else method.verdict(s, self._state(i), options)[0]
                codes.append(code)
                messages.append(lambda s=s, i=i: method.verdict(s, self._state(i), options)[1])
            else:  # the budget spent (a non-finite member is replaced: `_alone`)
                code, message = budget_message(options, self.run.unit)
                codes.append(code)
                messages.append(lambda message=message: message)
        return codes, messages

    def _state(self, i: int) -> Any:
        return member(self.carry.state, i)


def _column(mask: np.ndarray, x: Any) -> np.ndarray:
    """`mask` (N,) shaped to broadcast against `x` (N, ...)."""
    return mask.reshape(mask.shape + (1,) * (np.ndim(x) - 1))


class _Members:
    """Member i's `OptimizationSolution`, built on demand from the stacked results (or the
    solution of its run alone)."""

    def __init__(self, run, u, objective, codes, messages, counts, best, alone) -> None:
        self.run, self.u, self.objective, self.codes = run, u, objective, codes
        self.messages, self.counts, self.best, self.alone = messages, counts, best, alone

    def __call__(self, i: int) -> OptimizationSolution:
        if i in self.alone:
            return self.alone[i]
        run, method = self.run, self.run.method
        state = run._state(i)
        best_u = None if run.carry.best_u is None else member(run.carry.best_u, i)
        message = "; ".join(m for m in (self.messages[i](), method.note(state)) if m)
        extra = None if run.extra is None else member(run.extra, i)
        return OptimizationSolution(
            u=member(self.u, i),
            objective=float(self.objective[i]),
            retcode=self.codes[i],
            stats=Stats(
                iterations=int(self.counts[i, ITERATIONS]), fevals=int(self.counts[i, FEVALS]),
                gevals=int(self.counts[i, GEVALS]),
            ),
            original=method.result(state, run.consts, extra),
            state=method.export(state, self.counts[i, STEPS], (best_u, self.best[i])),
            message=message,
        )
