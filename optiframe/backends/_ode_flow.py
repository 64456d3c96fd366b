"""The gradient flow on diffrax (imports diffrax): `FlowMethod`, run by the shared on-device
lifecycle (`_device.py`, `_program.py`) with diffrax's own integration loop.

The flow `du/dt = −∇f(u)` is integrated by `diffrax.diffeqsolve` from `t = 0` towards
`t = ∞`; what ends an integration:

- the step budget: `StepBudget` wraps the algorithm's step size controller and ends the
  solve after `budget` accepted steps (a runtime value: one program serves every budget);
- `abstol`/`reltol`: a `diffrax.Event` whose condition is diffrax's steady-state test
  (`‖∇f‖ ≤ abstol`, `‖∇f‖ ≤ reltol ‖u‖`, see docs/ode.md), also true when the objective is
  not finite.

One iteration is one accepted step. Gradient evaluations are counted where they happen:
by a `jax.new_ref` counter inside the compiled integration (explicit solvers), or by a
host callback per evaluation (implicit solvers, whose Newton iterations the reference
counter cannot pass through).

`ode.py`, the public side, imports this module (never the reverse): its types come in as
arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from optax.tree import norm

from ..derivatives import Derivatives, derivatives
from ..errors import UnsupportedFeatureError
from ..flat import device_shapes
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._device import DeviceRun
from ._program import FIRST_STOP, RUNNING, DeviceMethod, Evaluation, counts, loss_dtype
from .base import Algorithm, SolveOptions

ABSTOL, RELTOL, STOPPED = FIRST_STOP, FIRST_STOP + 1, FIRST_STOP + 2
_SAVE = diffrax.SaveAt(t1=True, solver_state=True, controller_state=True, made_jump=True)


def solve_flow(
    alg: Algorithm, problem: OptimizationProblem, options: SolveOptions, state_type: type
) -> OptimizationSolution:
    """Run the gradient flow of `alg` (a `GradientFlowAlgorithm`) on `problem`; the run's
    state is a `state_type` (`GradientFlowState`)."""
    leaves, treedef = jax.tree.flatten(device_shapes(problem.u0))
    tests = (options.abstol is not None, options.reltol is not None)
    identity = (alg.cache_key, treedef, tuple((x.shape, str(x.dtype)) for x in leaves))

    def build() -> FlowMethod:
        derivs = derivatives(problem.f, problem.sense)
        n = sum(leaf.size for leaf in leaves)
        return FlowMethod(alg.components(), derivs, tests, n, identity, state_type)

    run = DeviceRun(alg, problem, options, ("flow", identity, tests), build)
    if options.ensemble is not None and not run.method.device_count:
        raise UnsupportedFeatureError(
            f"{alg!r} counts the gradients of its implicit solver on the host, which cannot "
            "tell an ensemble's members apart: solve the members one by one, or use an "
            "explicit solver (e.g. opf.RKAccelerated())."
        )
    dtype = jnp.result_type(*(x.dtype for x in leaves))
    return run.solve(np.asarray([options.abstol or 0.0, options.reltol or 0.0], dtype))


# -- the step budget


class BudgetState(NamedTuple):
    """The wrapped controller's state, the accepted steps so far (over a warm-start
    chain), the end of the next step the controller proposed, and the gradients this
    solve evaluated up to the last step attempted (`evals`; the counter read then: `seen`)."""

    inner: Any
    accepted: jax.Array
    tnext: jax.Array
    seen: jax.Array
    evals: jax.Array


class StepBudget(diffrax.AbstractStepSizeController):
    """Wraps a step size controller; ends the solve after `budget` accepted steps.

    diffrax's `max_steps` counts rejected steps too and is a compile-time constant; this
    counts only accepted steps, and `budget` is an array, so changing it compiles
    nothing.
    """

    controller: diffrax.AbstractStepSizeController
    budget: Any
    counter: Callable[[], Any] | None = eqx.field(static=True, default=None)

    def wrap(self, direction):
        return type(self)(self.controller.wrap(direction), self.budget, self.counter)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, inner = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        tnext_ = jnp.asarray(tnext, jnp.result_type(t0))
        zero = jnp.zeros((), jnp.int32)
        return tnext, BudgetState(inner, zero, tnext_, zero, zero)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        if y_error is not None:
            # A candidate that overflowed to inf (a step far beyond stability on a steep
            # objective) makes diffrax's PID scale inf/inf = NaN and the time NaN; show
            # the controller an infinite error at the old point instead, so it rejects
            # the step and shrinks it.
            leaves = jax.tree.leaves(y1_candidate)
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
            y1_candidate = jax.tree.map(lambda a, b: jnp.where(finite, a, b), y1_candidate, y0)
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
        seen, evals = state.seen, state.evals
        if self.counter is not None:  # what this attempt (and the tests after the last) cost
            seen = self.counter()
            evals = evals + seen - state.seen
        state = BudgetState(inner, accepted, tnext_, seen, evals)
        return keep, tprev, tnext, jump, state, result


class AdaptiveStepBudget(StepBudget, diffrax.AbstractAdaptiveStepSizeController):
    """`StepBudget` around an adaptive controller; its tolerances stay visible to diffrax
    (implicit solvers take their Newton tolerances from them)."""

    rtol = property(lambda self: self.controller.rtol)
    atol = property(lambda self: self.controller.atol)
    norm = property(lambda self: self.controller.norm)


# -- the method


class FlowMethod(DeviceMethod):
    """An accepted step of the gradient flow, or many in one `diffeqsolve` (`run`), with
    the algorithm's `components` (solver, controller, first step or None); `tests` say
    whether abstol and reltol are set, `n` counts the variables, `key` is what a warm start
    must match. The state is a `state_type` (`GradientFlowState`; its diffrax fields None
    before the first step)."""

    stops = {
        ABSTOL: (ReturnCode.Success, "‖∇f‖ <= abstol={options.abstol}"),
        RELTOL: (ReturnCode.Success, "‖∇f‖ <= reltol={options.reltol} × ‖u‖"),
    }  # and STOPPED: diffrax ended the integration early (`verdict`)

    def __init__(
        self, components: tuple[Any, Any, float | None], derivs: Derivatives,
        tests: tuple[bool, bool], n: int, key: Any, state_type: type,
    ) -> None:
        self.solver, self.controller, self.dt0 = components
        if getattr(self.solver, "scan_kind", "") is None:
            # diffrax's Runge-Kutta stages run in a checkpointed loop by default (for
            # reverse-mode autodiff, which a forward solve does not need); a plain loop
            # is what `diffrax.ForwardMode` uses, and what the counter can pass through.
            self.solver = eqx.tree_at(
                lambda s: s.scan_kind, self.solver, "lax", is_leaf=lambda x: x is None
            )
        self.derivs, (self.abstol, self.reltol), self.key = derivs, tests, key
        self.evaluates_start = self.abstol or self.reltol  # `init` tests the start
        self.state_type = state_type
        self.cost = derivs.fevals_per("value_and_grad", n)  # calls of fun per gradient
        self.adaptive = isinstance(self.controller, diffrax.AbstractAdaptiveStepSizeController)
        implicit = isinstance(self.solver, diffrax.AbstractImplicitSolver)
        self.device_count = hasattr(jax, "new_ref") and not implicit
        self.host_count = 0  # else: gradients counted by a host callback

    def point(self, state: Any) -> Any:
        return state.y

    def evaluated(self, before: Any, after: Any) -> Any:
        return after.y

    def _status(self, gnorm: Any, y: Any, tol: Any) -> jax.Array:
        """ABSTOL or RELTOL if that steady-state test passes (abstol first), else RUNNING."""
        status = jnp.asarray(RUNNING, jnp.int32)
        if self.reltol:
            status = jnp.where(gnorm <= tol[1] * norm(y), RELTOL, status)
        if self.abstol:
            status = jnp.where(gnorm <= tol[0], ABSTOL, status)
        return status

    def _evaluate(self, y: Any, p: Any, tol: Any, accepted: Any, evals: Any) -> Evaluation:
        """The objective and gradient at `y`, the tests, and what the steps to it cost."""
        (loss, aux), g = self.derivs.value_and_grad(y, p)
        gnorm = norm(g)
        loss = jnp.where(jnp.isfinite(gnorm), jnp.asarray(loss, loss_dtype()), jnp.nan)
        evals = evals + 1
        return Evaluation(
            y, loss, g, aux, counts(accepted, self.cost * evals, evals),
            self._status(gnorm, y, tol), True,
        )

    def init(self, u: Any, p: Any, tol: Any) -> tuple[Any, Evaluation | None]:
        """The flow at `t = 0`; with `abstol` or `reltol`, the start tested (a converged
        start takes no step: a run's integration then always attempts one)."""
        dtype = jnp.result_type(*jax.tree.leaves(u))
        y0 = jax.tree.map(lambda x: x.astype(dtype), u)
        dt0 = None if self.dt0 is None else jnp.asarray(self.dt0, dtype)
        state = self.state_type(jnp.zeros((), dtype), y0, None, None, None, dt0)
        tested = self.abstol or self.reltol
        return state, self._evaluate(y0, p, tol, 0, 0) if tested else None

    def run(self, state: Any, p: Any, tol: Any, n: Any):
        """Up to `n` accepted steps in one `diffeqsolve`, then the objective and gradient
        at the end: (state, evaluation, the diffrax solution)."""
        # The gradients are counted per step attempt (`StepBudget` reads the counter): under
        # vmap, diffrax's loop runs every member's attempt, a finished member's too, and
        # keeps only the live members' states. One counter per member (made from a
        # per-member value), since a step's own loops (RKC's stages) differ by member.
        ref = jax.new_ref(jnp.zeros_like(state.t, jnp.int32)) if self.device_count else None

        def gradient(y, p):
            if ref is None:
                jax.debug.callback(self._count_on_host)
            else:
                ref[...] += 1
            (loss, _), g = self.derivs.value_and_grad(y, p)
            return loss, jax.tree.map(lambda gi, yi: gi.astype(yi.dtype), g, y)

        def steady_state(t, y, args, **kwargs):
            """The event: converged, or the objective is not finite."""
            loss, g = gradient(y, args[0])
            gnorm = norm(g)
            finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
            return ~finite | (self._status(gnorm, y, args[1]) != RUNNING)

        term = diffrax.ODETerm(
            lambda t, y, args: jax.tree.map(jnp.negative, gradient(y, args[0])[1])
        )
        event = diffrax.Event(steady_state) if self.abstol or self.reltol else None
        fresh = state.solver_state is None
        before = 0 if fresh else state.controller_state.accepted
        resumed = {} if fresh else dict(
            solver_state=state.solver_state,
            controller_state=state.controller_state._replace(
                seen=jnp.zeros_like(state.controller_state.seen),
                evals=jnp.zeros_like(state.controller_state.evals),
            ),
            made_jump=state.made_jump,
        )
        budget = jnp.asarray(jnp.minimum(before + n, np.iinfo(np.int32).max), jnp.int32)
        counter = None if ref is None else (lambda: ref[...])
        wrapper = AdaptiveStepBudget if self.adaptive else StepBudget
        # A flow that has not moved starts at the constant t = 0, which XLA folds: the
        # program compiles in half the time. (Euler's solver state is None throughout.)
        start = state.controller_state is None
        t0, dt0 = (jnp.zeros_like(state.t), self.dt0) if start else (state.t, state.dt)
        sol = diffrax.diffeqsolve(
            term, self.solver, t0, jnp.asarray(jnp.inf, state.t.dtype), dt0, state.y,
            args=(p, tol), saveat=_SAVE,
            stepsize_controller=wrapper(self.controller, budget, counter), event=event,
            max_steps=None, adjoint=diffrax.ForwardMode(), throw=False, **resumed,
        )
        t, y = sol.ts[-1], jax.tree.map(lambda ys: ys[-1], sol.ys)
        controller = sol.controller_state
        new = self.state_type(
            t, y, sol.solver_state, controller, jnp.asarray(sol.made_jump), controller.tnext - t
        )
        accepted = controller.accepted - before
        # the attempts' gradients, and after the last one the event's test of its point
        evals = jnp.zeros((), jnp.int32) if ref is None else controller.evals + (event is not None)
        ev = self._evaluate(y, p, tol, accepted, evals)
        fired = jnp.asarray(sol.event_mask) if event is not None else False
        stopped = (accepted < n) & ~fired & (ev.status == RUNNING)
        return new, ev._replace(status=jnp.where(stopped, STOPPED, ev.status)), sol

    def step(self, state: Any, p: Any, tol: Any):
        new, ev, sol = self.run(state, p, tol, 1)
        return new, ev._replace(extra=sol)

    def final(self, state: Any, p: Any, tol: Any):
        ev = self._evaluate(state.y, p, tol, 0, 0)
        return ev.loss, ev.counts

    # -- on the host

    def _count_on_host(self) -> None:
        self.host_count += 1

    def host_evaluations(self) -> tuple[int, int]:
        if self.device_count:
            return 0, 0
        jax.effects_barrier()
        g, self.host_count = self.host_count, 0
        return self.cost * g, g

    def export(self, state: Any, steps: Any, best: Any) -> Any:
        return state._replace(key=self.key)

    def restore(self, public: Any):
        return public._replace(key=None), 0, None

    def accepts(self, public: Any, fresh: Any) -> bool:  # the key says it all
        return isinstance(public, self.state_type) and public.key == self.key

    def result(self, state: Any, consts: Any, extra: Any) -> Any:
        return extra

    def note(self, state: Any) -> str:
        return f"t = {float(state.t):.4g}"

    def verdict(self, status: int, state: Any, options: SolveOptions):
        if status != STOPPED:
            return super().verdict(status, state, options)
        dt = float(state.dt)
        what = "overflowed" if not np.isfinite(dt) or dt > 0 else "collapsed to zero"
        return ReturnCode.Failure, (
            f"the step size {what}, so the flow cannot be integrated further (the gradient "
            "vanished exactly, or the steps are rejected without end)"
        )
