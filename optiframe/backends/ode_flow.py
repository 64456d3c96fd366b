"""The compiled side and the drivers of the gradient-flow backend (imports diffrax).

The flow `du/dt = −∇f(u)` is integrated by `diffrax.diffeqsolve` from `t = 0` towards
`t = ∞`; what ends it:

- the step budget: `StepBudget` wraps the algorithm's step size controller, counts the
  accepted steps in its state and ends the solve (diffrax's `event_occurred` result)
  once `budget` of them are done. The budget is a runtime value, so one compiled program
  serves every `maxiters` and every chunk of a split run;
- `abstol`/`reltol`: a `diffrax.Event` whose condition is diffrax's steady-state test
  (`‖∇f‖ ≤ abstol`, `‖∇f‖ ≤ reltol ‖u‖`, see docs/ode.md), also true when the objective is
  not finite.

`FlowProgram` holds the jitted functions of one (objective, sense, algorithm, spec):
`start` and `resume` (a whole integration, or one chunk of it, resumed from a
`GradientFlowState`) and `point` (the objective and gradient at one iterate). `FlowRun`
drives them: one call without a callback (a few chunks with `maxtime`), one chunk per
accepted step with a callback.

Gradient evaluations are counted where they happen: by a `jax.new_ref` counter inside
the compiled integration (explicit solvers), or by a host callback per evaluation
(implicit solvers, whose Newton iterations the reference counter cannot pass through).
"""

from __future__ import annotations

import collections
import dataclasses
import time
import warnings
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import Derivatives, derivatives
from ..errors import ObjectiveError, OptiframeError
from ..flat import restore_like, to_device
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .base import SolveOptions
from .ode import GradientFlowAlgorithm, GradientFlowState

_CACHE_SIZE = 8  # compiled programs kept per objective
_SAVE = diffrax.SaveAt(t1=True, solver_state=True, controller_state=True, made_jump=True)


def _norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


# -- the step budget


class BudgetState(NamedTuple):
    """The wrapped controller's state, the accepted steps so far (over a warm-start
    chain) and the end of the next step the controller proposed."""

    inner: Any
    accepted: jax.Array
    tnext: jax.Array


class StepBudget(diffrax.AbstractStepSizeController):
    """Wraps a step size controller; ends the solve after `budget` accepted steps.

    diffrax's `max_steps` counts rejected steps too and is a compile-time constant; this
    counts only accepted steps, and `budget` is an array, so changing it compiles
    nothing.
    """

    controller: diffrax.AbstractStepSizeController
    budget: Any

    def wrap(self, direction):
        return type(self)(self.controller.wrap(direction), self.budget)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, inner = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        dtype = jnp.result_type(t0)
        return tnext, BudgetState(inner, jnp.zeros((), jnp.int32), jnp.asarray(tnext, dtype))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        if y_error is not None:
            # A candidate that overflowed to inf (a step far beyond stability on a steep
            # objective) makes diffrax's PID scale inf/inf = NaN and the time NaN; show
            # the controller an infinite error at the old point instead, so it rejects
            # the step and shrinks it.
            finite = jnp.all(jnp.stack(
                [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(y1_candidate)]
            ))
            y1_candidate = jax.tree.map(
                lambda a, b: jnp.where(finite, a, b), y1_candidate, y0
            )
            y_error = jax.tree.map(lambda e: jnp.where(finite, e, jnp.inf), y_error)
        keep, tprev, tnext, jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state.inner
        )
        accepted = state.accepted + jnp.where(keep, 1, 0).astype(jnp.int32)
        done = jnp.asarray(keep) & (accepted >= self.budget)
        results = diffrax.RESULTS
        ok = result == results.successful
        result = results.where(done & ok, results.event_occurred, result)
        # The loop runs without diffrax's max_steps, so a step size that collapsed to zero,
        # overflowed or turned NaN (each can be rejected forever) must end it.
        step = tnext - tprev
        collapsed = ~((step > 0) & jnp.isfinite(step))
        result = results.where(collapsed & ok & ~done, results.dt_min_reached, result)
        tnext_ = jnp.asarray(tnext, state.tnext.dtype)
        return keep, tprev, tnext, jump, BudgetState(inner, accepted, tnext_), result


class AdaptiveStepBudget(StepBudget, diffrax.AbstractAdaptiveStepSizeController):
    """`StepBudget` around an adaptive controller; its tolerances stay visible to diffrax
    (implicit solvers take their Newton tolerances from them)."""

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm


# -- counting gradient evaluations


class _RefCount:
    """A counter inside one compiled call (`jax.new_ref`)."""

    def __init__(self) -> None:
        self.ref = jax.new_ref(jnp.zeros((), jnp.int32))

    def add(self) -> None:
        self.ref[...] += 1

    def read(self) -> jax.Array:
        return self.ref[...]


class _HostCount:
    """A counter on the host, incremented by a callback per evaluation (slower)."""

    def __init__(self) -> None:
        self.value = 0

    def _increment(self) -> None:
        self.value += 1

    def add(self) -> None:
        jax.debug.callback(self._increment)

    def read(self) -> jax.Array:
        return jnp.zeros((), jnp.int32)


# -- the compiled program


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """Static settings of a program: whether the integration carries the stopping event,
    and which tolerances it tests."""

    event: bool
    abstol: bool
    reltol: bool


class ChunkInfo(NamedTuple):
    steps: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    evals: jax.Array  # gradient evaluations counted on the device
    fired: jax.Array  # the stopping event ended the integration
    result: Any  # diffrax's RESULTS


class Point(NamedTuple):
    """At the iterate `u`: the objective and gradient (in the user's sign), the auxiliary
    output, ‖∇f‖₂ and ‖u‖₂."""

    u: Any
    loss: jax.Array
    grad: Any
    aux: Any
    gnorm: jax.Array
    unorm: jax.Array


class FlowProgram:
    """The jitted functions of one (objective, sense, algorithm, spec), compiled once.

    - `start(y0, p, budget, tol) -> (GradientFlowState, diffrax.Solution, ChunkInfo)`;
    - `resume(state, p, budget, tol) -> same`, continuing `state`;
    - `point(y, p) -> Point`.

    `budget` is the total of accepted steps (of the warm-start chain) at which the
    integration ends; `tol` is `[abstol, reltol]`.
    """

    def __init__(self, alg: GradientFlowAlgorithm, derivs: Derivatives, spec: FlowSpec):
        self.solver, self.controller, self.dt0 = alg.components()
        if getattr(self.solver, "scan_kind", "") is None:
            # diffrax's Runge-Kutta stages run in a checkpointed loop by default (for
            # reverse-mode autodiff, which a forward solve does not need); a plain loop
            # is what `diffrax.ForwardMode` uses, and what the counter can pass through.
            self.solver = eqx.tree_at(
                lambda s: s.scan_kind, self.solver, "lax", is_leaf=lambda x: x is None
            )
        self.derivs, self.spec = derivs, spec
        self.adaptive = isinstance(self.controller, diffrax.AbstractAdaptiveStepSizeController)
        implicit = isinstance(self.solver, diffrax.AbstractImplicitSolver)
        self.device_count = hasattr(jax, "new_ref") and not implicit
        self.host_count = _HostCount()
        self.start = jax.jit(self._start)
        self.resume = jax.jit(self._resume)
        self.point = jax.jit(self._point)

    def stop(self, loss: Any, gnorm: Any, unorm: Any, tol: Any) -> Any:
        """The event's condition: converged, or the objective is not finite."""
        stop = ~(jnp.isfinite(loss) & jnp.isfinite(gnorm))
        if self.spec.abstol:
            stop = stop | (gnorm <= tol[0])
        if self.spec.reltol:
            stop = stop | (gnorm <= tol[1] * unorm)
        return stop

    def _integrate(self, y0, t0, dt0, state, p, budget, tol):
        counter = _RefCount() if self.device_count else self.host_count
        value_and_grad = self.derivs.value_and_grad

        def gradient(y, p):
            counter.add()
            (loss, _), g = value_and_grad(y, p)
            return loss, jax.tree.map(lambda gi, yi: gi.astype(yi.dtype), g, y)

        term = diffrax.ODETerm(
            lambda t, y, args: jax.tree.map(jnp.negative, gradient(y, args[0])[1])
        )
        event = None
        if self.spec.event:

            def steady_state(t, y, args, **kwargs):
                loss, g = gradient(y, args[0])
                return self.stop(loss, _norm(g), _norm(y), args[1])

            event = diffrax.Event(steady_state)
        wrapper = AdaptiveStepBudget if self.adaptive else StepBudget
        resumed = {} if state is None else dict(
            solver_state=state.solver_state,
            controller_state=state.controller_state,
            made_jump=state.made_jump,
        )
        sol = diffrax.diffeqsolve(
            term, self.solver, t0, jnp.asarray(jnp.inf, t0.dtype), dt0, y0, args=(p, tol),
            saveat=_SAVE, stepsize_controller=wrapper(self.controller, budget), event=event,
            max_steps=None, adjoint=diffrax.ForwardMode(), throw=False, **resumed,
        )
        t = sol.ts[-1]
        y = jax.tree.map(lambda ys: ys[-1], sol.ys)
        controller_state = sol.controller_state
        made_jump = jnp.asarray(sol.made_jump)
        new = GradientFlowState(
            t, y, sol.solver_state, controller_state, made_jump, controller_state.tnext - t
        )
        stats = sol.stats
        info = ChunkInfo(
            stats["num_steps"], stats["num_accepted_steps"], stats["num_rejected_steps"],
            counter.read(),
            jnp.asarray(sol.event_mask) if event is not None else jnp.asarray(False),
            sol.result,
        )
        return new, sol, info

    def _start(self, y0, p, budget, tol):
        t0 = jnp.zeros((), jnp.result_type(*jax.tree.leaves(y0)))
        return self._integrate(y0, t0, self.dt0, None, p, budget, tol)

    def _resume(self, state, p, budget, tol):
        return self._integrate(state.y, state.t, state.dt, state, p, budget, tol)

    def _point(self, y, p) -> Point:
        (loss, aux), g = self.derivs.value_and_grad(y, p)
        sign = self.derivs.sign
        grad = jax.tree.map(lambda x: sign * x, g)
        return Point(y, sign * loss, grad, aux, _norm(g), _norm(y))


def _program(
    alg: GradientFlowAlgorithm, problem: OptimizationProblem, spec: FlowSpec
) -> FlowProgram:
    """The program for this objective, algorithm and spec, cached on the objective (least
    recently used dropped past `_CACHE_SIZE`)."""
    cache = problem.f._cache.setdefault("ode", collections.OrderedDict())
    key = (problem.sense, alg.cache_key, spec)
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = FlowProgram(alg, derivatives(problem.f, problem.sense), spec)
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return cache[key]


# -- the drivers


class FlowRun:
    """One call of `solve` with a gradient-flow algorithm."""

    def __init__(self, alg: GradientFlowAlgorithm, problem: OptimizationProblem,
                 options: SolveOptions):
        if options.maxiters is None:
            raise OptiframeError(
                "The gradient-flow backend needs a step budget: pass solve(..., maxiters=N) "
                "(N accepted ODE steps)."
            )
        self.alg, self.problem, self.options = alg, problem, options
        self.u_device = to_device(problem.u0)
        dtype = jnp.result_type(*jax.tree.leaves(self.u_device))
        self.y0 = jax.tree.map(lambda x: x.astype(dtype), self.u_device)
        self.tol = jnp.asarray([options.abstol or 0.0, options.reltol or 0.0], dtype)
        self.abstol, self.reltol = options.abstol is not None, options.reltol is not None
        self.key = (
            alg.cache_key, problem.sense, jax.tree.structure(self.y0),
            tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(self.y0)),
        )
        self.initial = self._warm_state()
        self.state = self.initial
        self.base = 0 if self.state is None else int(self.state.controller_state.accepted)
        self.accepted = self.base
        self.steps = self.rejected = self.gevals = 0
        self.last_sol = None

    def _warm_state(self) -> GradientFlowState | None:
        warm = self.options.warm_start
        if warm is None:
            return None
        state = warm.state
        if not isinstance(state, GradientFlowState) or state.key != self.key:
            raise OptiframeError(
                "`solve(warm_start=sol)`: sol.state does not come from this gradient-flow "
                "algorithm on a problem of this shape. To start another algorithm from a "
                "result, use prob.remake(u0=sol.u)."
            )
        return state._replace(key=None)

    def _program(self, event: bool) -> FlowProgram:
        spec = FlowSpec(event=event and (self.abstol or self.reltol), abstol=self.abstol,
                        reltol=self.reltol)
        return _program(self.alg, self.problem, spec)

    # -- calls of the compiled program

    def _chunk(self, program: FlowProgram, budget: int) -> ChunkInfo:
        """Integrate from the current state until `budget` accepted steps in total."""
        before = program.host_count.value
        budget = jnp.asarray(min(budget, np.iinfo(np.int32).max), jnp.int32)
        if self.state is None:
            state, sol, info = program.start(self.y0, self.problem.p, budget, self.tol)
        else:
            state, sol, info = program.resume(self.state, self.problem.p, budget, self.tol)
        info = jax.device_get(info)
        if not program.device_count:
            jax.effects_barrier()
        self.gevals += int(info.evals) + program.host_count.value - before
        self.steps += int(info.steps)
        self.rejected += int(info.rejected)
        self.state, self.last_sol = state, sol
        self.accepted = int(state.controller_state.accepted)
        return info

    def _point(self, program: FlowProgram, y: Any) -> Point:
        self.gevals += 1
        point = program.point(y, self.problem.p)
        loss, gnorm, unorm = jax.device_get((point.loss, point.gnorm, point.unorm))
        return point._replace(loss=float(loss), gnorm=float(gnorm), unorm=float(unorm))

    def _converged(self, point: Point) -> str | None:
        """The message of the convergence test `point` passes, or None."""
        gnorm, unorm = point.gnorm, point.unorm
        if self.abstol and gnorm <= self.options.abstol:
            return f"‖∇f‖ = {gnorm:.3g} <= abstol={self.options.abstol}"
        if self.reltol and gnorm <= self.options.reltol * unorm:
            return f"‖∇f‖ = {gnorm:.3g} <= reltol={self.options.reltol} × ‖u‖ = {unorm:.3g}"
        return None

    # -- drivers

    def run(self) -> OptimizationSolution:
        self.start_time = time.perf_counter()
        # (signed loss, point, state) of the best iterate, kept by the stepwise driver
        self.best: tuple[float, Point, GradientFlowState | None] | None = None
        try:
            if self.options.callback is not None:
                retcode, message, point = self._stepwise(self.options.callback)
            else:
                retcode, message, point = self._fused()
        except KeyboardInterrupt:
            warnings.warn(
                "solve() interrupted: returning the last iterate reached (Terminated).",
                stacklevel=4,
            )
            y = self.y0 if self.state is None else self.state.y
            point = self._point(self._program(False), y)
            retcode, message = ReturnCode.Terminated, "interrupted by KeyboardInterrupt"
            if not np.isfinite(point.loss) and self.best is not None:
                _, point, self.state = self.best
        return self._solution(retcode, message, point)

    def _time_up(self) -> bool:
        maxtime = self.options.maxtime
        return maxtime is not None and time.perf_counter() - self.start_time >= maxtime

    def _fused(self) -> tuple[ReturnCode, str, Point]:
        """The whole integration in one compiled call; with `maxtime`, in chunks (each
        about a tenth of the remaining time), the clock read between them."""
        program, maxtime = self._program(True), self.options.maxtime
        target = self.base + self.options.maxiters
        if maxtime is None:
            info = self._chunk(program, target)
        else:
            chunk = 8
            while True:
                done, tic = self.accepted, time.perf_counter()
                goal = min(target, done + chunk)
                info = self._chunk(program, goal)
                if bool(info.fired) or self.accepted < goal or self.accepted >= target:
                    break
                if self._time_up():
                    point = self._point(program, self.state.y)
                    if not np.isfinite(point.loss):
                        return self._failure()
                    return ReturnCode.MaxTime, f"maxtime={maxtime} s reached", point
                per_step = (time.perf_counter() - tic) / max(self.accepted - done, 1)
                remaining = maxtime - (time.perf_counter() - self.start_time)
                chunk = int(np.clip(0.1 * remaining / max(per_step, 1e-9), 1, 1_000_000))
        point = self._point(program, self.state.y)
        if not (np.isfinite(point.loss) and np.isfinite(point.gnorm)):
            return self._failure()
        if bool(info.fired):
            message = self._converged(point) or "diffrax's steady-state event fired"
            return ReturnCode.Success, message, point
        if self.accepted >= target:
            return ReturnCode.MaxIters, f"maxiters={self.options.maxiters} steps done", point
        return ReturnCode.Failure, self._stopped_message(info), point

    def _failure(self) -> tuple[ReturnCode, str, Point]:
        """The objective turned non-finite in a fused run: replay the deterministic run
        from its start, one step at a time, to find the best finite iterate. The counts
        are the run's (its accepted steps), plus the replay's evaluations."""
        accepted, steps, rejected = self.accepted, self.steps, self.rejected
        last_sol = self.last_sol
        self.state, self.accepted = self.initial, self.base
        retcode, message, _ = self._stepwise(None, limit=accepted - self.base)
        if retcode is not ReturnCode.Failure:  # the replay met no non-finite value
            message = self._nonfinite_message(accepted - self.base)
        self.accepted, self.steps, self.rejected, self.last_sol = (
            accepted, steps, rejected, last_sol
        )
        _, point, self.state = self.best
        return ReturnCode.Failure, message, point

    def _nonfinite_message(self, step: int) -> str:
        return (
            f"the objective or its gradient became non-finite at accepted step {step}; "
            "returning the best finite iterate"
        )

    def _stepwise(self, callback: Any, limit: int | None = None) -> tuple[ReturnCode, str, Point]:
        """One compiled integration per accepted step; the objective, the gradient and
        the tests are evaluated at each new iterate, and the best finite one is kept
        (with its state). Without a callback (a replay) it stops only at a non-finite
        value or after `limit` steps."""
        program = self._program(False)
        limit = self.options.maxiters if limit is None else limit
        point = self._point(program, self.y0 if self.state is None else self.state.y)
        if not np.isfinite(point.loss):
            where = "u0" if self.state is None else "the warm-start point"
            raise ObjectiveError(
                f"The objective is {point.loss} at {where}; start from a point where it is "
                "finite."
            )
        self.best = (self.sign * point.loss, point, self.state)
        message = self._converged(point) if callback is not None else None
        if message is not None:
            return ReturnCode.Success, message, point
        for k in range(1, limit + 1):
            before = self.accepted
            info = self._chunk(program, before + 1)
            if self.accepted == before:
                return ReturnCode.Failure, self._stopped_message(info), point
            point = self._point(program, self.state.y)
            if not (np.isfinite(point.loss) and np.isfinite(point.gnorm)):
                _, best, self.state = self.best
                return ReturnCode.Failure, self._nonfinite_message(k), best
            if self.sign * point.loss < self.best[0]:
                self.best = (self.sign * point.loss, point, self.state)
            if callback is None:
                continue
            state = OptimizationState(
                iter=k, u=self._user_device(point.u), objective=point.loss,
                grad=self._user_device(point.grad), p=self.problem.p, aux=point.aux,
                original=self.state,
            )
            if callback(state, point.loss):
                return ReturnCode.Terminated, f"callback returned True at step {k}", point
            message = self._converged(point)
            if message is not None:
                return ReturnCode.Success, message, point
            if self._time_up():
                return ReturnCode.MaxTime, f"maxtime={self.options.maxtime} s reached", point
        return ReturnCode.MaxIters, f"maxiters={limit} steps done", point

    def _stopped_message(self, info: ChunkInfo) -> str:
        """Why an integration ended before its budget without an event."""
        if info.result == diffrax.RESULTS.dt_min_reached and self.state is not None:
            dt = float(self.state.dt)
            what = "overflowed" if not np.isfinite(dt) or dt > 0 else "collapsed to zero"
            return (
                f"the step size {what}, so the flow cannot be integrated further (the "
                "gradient vanished exactly, or the steps are rejected without end)"
            )
        return f"diffrax stopped: {diffrax.RESULTS[info.result]}"

    @property
    def sign(self) -> float:
        return self.problem.sense.sign

    def _user_device(self, y: Any) -> Any:
        """`y` in the dtypes `u0` has on the device."""
        return jax.tree.map(lambda a, ref: jnp.asarray(a, ref.dtype), y, self.u_device)

    # -- the result

    def _solution(self, retcode: ReturnCode, message: str, point: Point) -> OptimizationSolution:
        iterations = self.accepted - self.base
        t = 0.0 if self.state is None else float(self.state.t)
        summary = f" ({iterations} accepted, {self.rejected} rejected steps, t = {t:.4g})"
        n = sum(int(np.size(x)) for x in jax.tree.leaves(self.y0))
        per_grad = derivatives(self.problem.f, self.problem.sense).fevals_per_grad(n)
        state = None if self.state is None else self.state._replace(key=self.key)
        return OptimizationSolution(
            u=restore_like(self._user_device(point.u), self.problem.u0),
            objective=float(point.loss),
            retcode=retcode,
            stats=Stats(iterations=iterations, fevals=self.gevals * per_grad, gevals=self.gevals),
            original=self.last_sol,
            state=state,
            message=message + summary,
        )
