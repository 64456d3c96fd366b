"""Gradient-flow solvers on diffrax: Optimization.jl's OptimizationODE family.

Minimise `f` by integrating the gradient flow `du/dt = −∇f(u)` from `u0` towards a
steady state with an ODE solver (docs/ode.md has the table of algorithms). The algorithms
here are cheap, immutable descriptions; the integration itself (`_ode_flow.py`) and the
Runge–Kutta–Chebyshev solver (`_rkc.py`) import diffrax and equinox only when a
gradient-flow solve runs.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar, NamedTuple

from .._checks import number
from ..errors import InvalidProblemError, UnsupportedFeatureError
from ._lifecycle import check_options
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register


class GradientFlowState(NamedTuple):
    """Where a gradient flow stopped: what `solve(..., warm_start=sol)` continues from.

    Attributes:
        t: the flow's time.
        y: the iterate as diffrax holds it (the leaves in one common float dtype).
        solver_state: the diffrax solver's state (e.g. the FSAL derivative).
        controller_state: the step size controller's state, with the accepted steps of
            the whole warm-start chain and the end of the next proposed step.
        made_jump: diffrax's discontinuity flag.
        dt: the size of the next step.
        key: identifies the algorithm and problem shapes the state belongs to.
    """

    t: Any
    y: Any
    solver_state: Any
    controller_state: Any
    made_jump: Any
    dt: Any
    key: Any = None


class GradientFlowAlgorithm(Algorithm):
    """Base of the gradient-flow algorithms: integrate `du/dt = −∇f(u)` with diffrax.

    Subclasses say which diffrax solver, step size controller and first step to use
    (`components`, called only when a solve runs, so construction imports nothing).

    Stopping (see docs/ode.md): `abstol` stops when `‖∇f(u)‖₂ ≤ abstol`, `reltol` when
    `‖∇f(u)‖₂ ≤ reltol · ‖u‖₂` (the flow's relative rate of change); both are diffrax's
    steady-state condition, tested after every step by a `diffrax.Event`, and return
    `Success`. `maxiters` caps the accepted steps (`MaxIters`), `maxtime` the wall time
    (`MaxTime`). With `save_best` or a callback the flow is integrated one accepted step
    per compiled call, so that every iterate is seen.
    """

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            needs=frozenset({"grad"}), budget="accepted steps", needs_budget=True,
            keywords=frozenset(COMMON_KEYWORDS) - {"epochs"}, ensemble=True,
        )

    def components(self) -> tuple[Any, Any, float | None]:
        """(diffrax solver, diffrax step size controller, first step or None)."""
        raise NotImplementedError

    @property
    def cache_key(self) -> Any:
        """Equal for algorithms that compile to the same program."""
        return self

    def solve(self, problem: Any, options: SolveOptions) -> Any:
        check_options(
            options.solver_options, (), f"solve(..., **options) with {self!r}",
            "Configure the algorithm itself, e.g. opf.RKAccelerated(rtol=1e-4) or "
            "opf.GradientFlow(solver, stepsize_controller=...).",
        )
        try:
            from ._ode_flow import solve_flow
        except ImportError as err:
            raise UnsupportedFeatureError(
                f"{self!r} needs diffrax and equinox: pip install 'optiframe[ode]'."
            ) from err
        return solve_flow(self, problem, options, GradientFlowState)


def _float(x: float | None) -> float | None:
    return None if x is None else float(x)


@dataclasses.dataclass(frozen=True)
class ODEGradientDescent(GradientFlowAlgorithm):
    """Explicit Euler on the gradient flow with a fixed step: gradient descent with
    learning rate `dt`, one gradient per step (Optimization.jl's `ODEGradientDescent`).

    Stable only while `dt < 2 / λ_max(∇²f)`; a larger step diverges and returns
    `Failure` with the best finite iterate.

    Args:
        dt: the step (0.01, the value in Optimization.jl's documentation).

    Example:
        >>> sol = opf.solve(prob, opf.ODEGradientDescent(dt=0.01), maxiters=10_000,
        ...                 abstol=1e-6)
    """

    dt: float = 0.01

    def __post_init__(self) -> None:
        number("ODEGradientDescent", "dt", self.dt, positive=True)

    def components(self) -> tuple[Any, Any, float | None]:
        import diffrax

        return diffrax.Euler(), diffrax.ConstantStepSize(), float(self.dt)


@dataclasses.dataclass(frozen=True)
class _Adaptive(GradientFlowAlgorithm):
    """`diffrax.<_solver_name>()` under a `diffrax.PIDController(rtol, atol)`."""

    rtol: float = 1e-6
    atol: float = 1e-8
    dt0: float | None = None
    _solver_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        number(owner, "rtol", self.rtol, positive=True)
        number(owner, "atol", self.atol, positive=True)
        number(owner, "dt0", self.dt0, positive=True, optional=True)

    def _solver(self) -> Any:
        import diffrax

        return getattr(diffrax, self._solver_name)()

    def components(self) -> tuple[Any, Any, float | None]:
        import diffrax

        pid = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
        return self._solver(), pid, _float(self.dt0)


@dataclasses.dataclass(frozen=True)
class RKAccelerated(_Adaptive):
    """Tsit5, an adaptive explicit Runge–Kutta 5(4) pair, on the gradient flow
    (Optimization.jl's `RKAccelerated`). About six gradients per step.

    Args:
        rtol: the integrator's relative local error tolerance (`diffrax.PIDController`);
            with `atol` it sets how closely the flow is followed, not when the solve stops (that is
            `solve(abstol=..., reltol=...)`). Tighter than an ODE solver's usual 1e-3/1e-6:
            with those, the stiff components of the flow ring at the tolerance near the
            minimum and the gradient never gets small (docs/ode.md, "Tolerances").
        atol: the integrator's absolute local error tolerance.
        dt0: the first step; None lets diffrax choose it (two gradient evaluations).

    Example:
        >>> sol = opf.solve(prob, opf.RKAccelerated(), maxiters=5_000, abstol=1e-6)
    """

    _solver_name: ClassVar[str] = "Tsit5"


@dataclasses.dataclass(frozen=True)
class HighOrderDescent(_Adaptive):
    """Dopri8, an adaptive explicit Runge–Kutta 8(7) pair, on the gradient flow.

    Optimization.jl's `HighOrderDescent` uses Vern7, which diffrax does not have; Dopri8 is
    diffrax's high-order explicit method (14 stages, FSAL: 13 gradients per step).

    Args:
        rtol: the integrator's relative local error tolerance (`diffrax.PIDController`),
            tight for the reason given at `RKAccelerated`.
        atol: the integrator's absolute local error tolerance.
        dt0: the first step; None lets diffrax choose it.

    Example:
        >>> sol = opf.solve(prob, opf.HighOrderDescent(), maxiters=5_000, abstol=1e-6)
    """

    _solver_name: ClassVar[str] = "Dopri8"


@dataclasses.dataclass(frozen=True)
class RKChebyshevDescent(_Adaptive):
    """A stabilised explicit method on the gradient flow: damped second-order
    Runge–Kutta–Chebyshev (RKC, Sommeijer–Shampine–Verwer 1997; see
    `optiframe.backends._rkc.RKC`), adaptive.

    Each step uses `s` stages with `s ≈ √(1.54 h ρ)`, where `ρ` is the largest
    curvature, estimated by the nonlinear power method. Its stability interval grows like
    `0.65 s²`, so on a stiff (ill-conditioned) problem it takes steps far beyond explicit
    Euler's `2/ρ` at a cost that grows only like the square root of the step.

    Args:
        rtol: the integrator's relative local error tolerance (`diffrax.PIDController`).
            Looser than `RKAccelerated`'s: a stabilised method does not ring, since it
            adds stages rather than overstep its stability interval.
        atol: the integrator's absolute local error tolerance.
        dt0: the first step; None lets diffrax choose it.
        max_stages: the most stages per step (stability up to `h ρ ≈ 0.65 max_stages²`).
        spectral_radius: a known bound of `λ_max(∇²f)`, to skip the estimation.

    Example:
        >>> sol = opf.solve(prob, opf.RKChebyshevDescent(), maxiters=1_000, abstol=1e-6)
    """

    rtol: float = 1e-3
    atol: float = 1e-6
    max_stages: int = 500
    spectral_radius: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        stages = self.max_stages
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 2:
            raise InvalidProblemError(
                f"`RKChebyshevDescent(max_stages={stages!r})` must be an integer >= 2."
            )
        number("RKChebyshevDescent", "spectral_radius", self.spectral_radius, positive=True,
               optional=True)

    def _solver(self) -> Any:
        from ._rkc import RKC

        return RKC(max_stages=self.max_stages, spectral_radius=_float(self.spectral_radius))


@dataclasses.dataclass(frozen=True, eq=False)
class GradientFlow(GradientFlowAlgorithm):
    """The gradient flow integrated by any diffrax ODE solver.

    Args:
        solver: a diffrax solver, e.g. `diffrax.Bosh3()`, `diffrax.Heun()`,
            `diffrax.Kvaerno5()` (implicit solvers work, but see docs/ode.md on counts).
        stepsize_controller: a diffrax step size controller. Default: a
            `diffrax.PIDController(rtol=1e-6, atol=1e-8)` for a solver with an error
            estimate, `diffrax.ConstantStepSize()` (which needs `dt0`) otherwise.
        dt0: the first (or, with a constant step size, every) step; None lets an
            adaptive controller choose it.

    Raises:
        InvalidProblemError: the solver is not a diffrax ODE solver, or the controller
            does not fit it.

    Example:
        >>> import diffrax
        >>> alg = opf.GradientFlow(diffrax.Bosh3(), diffrax.PIDController(rtol=1e-4, atol=1e-8))
        >>> sol = opf.solve(prob, alg, maxiters=5_000, abstol=1e-6)
    """

    solver: Any
    stepsize_controller: Any = None
    dt0: float | None = None

    def __post_init__(self) -> None:
        dfx = sys.modules.get("diffrax")
        if dfx is None or not isinstance(self.solver, dfx.AbstractSolver):
            raise InvalidProblemError(
                f"`GradientFlow(solver=...)` must be a diffrax solver (e.g. "
                f"diffrax.Tsit5()), got {type(self.solver).__name__}."
            )
        number("GradientFlow", "dt0", self.dt0, positive=True, optional=True)
        name, controller = type(self.solver).__name__, self.stepsize_controller
        structure = self.solver.term_structure
        structure = getattr(structure, "__origin__", structure)
        adaptive = isinstance(self.solver, dfx.AbstractAdaptiveSolver)
        refusals = (
            (not (isinstance(structure, type) and issubclass(dfx.ODETerm, structure)),
             f"`GradientFlow(solver={name}())` expects terms shaped like {structure}, but a "
             "gradient flow is one ODE term; use an ODE solver (e.g. diffrax.Tsit5(), "
             "diffrax.Heun(), diffrax.Kvaerno5())."),
            (controller is None and not adaptive and self.dt0 is None,
             f"`GradientFlow(solver={name}())` has no error estimate, so it takes fixed "
             "steps: pass dt0=..., or use an adaptive solver, or wrap it in "
             "diffrax.HalfSolver to get an error estimate."),
            (controller is not None
             and not isinstance(controller, dfx.AbstractStepSizeController),
             "`GradientFlow(stepsize_controller=...)` must be a diffrax step size controller "
             "(e.g. diffrax.PIDController(rtol=1e-3, atol=1e-6)), got "
             f"{type(controller).__name__}."),
            (isinstance(controller, dfx.AbstractAdaptiveStepSizeController) and not adaptive,
             f"`GradientFlow(solver={name}(), stepsize_controller="
             f"{type(controller).__name__}(...))`: {name} has no error estimate to adapt the "
             "step to; use diffrax.ConstantStepSize() with dt0=..., or wrap the solver in "
             "diffrax.HalfSolver."),
            (isinstance(controller, dfx.ConstantStepSize) and self.dt0 is None,
             "`GradientFlow(stepsize_controller=ConstantStepSize())` needs the step: pass "
             "dt0=..."),
        )
        for refused, message in refusals:
            if refused:
                raise InvalidProblemError(message)

    def components(self) -> tuple[Any, Any, float | None]:
        import diffrax

        controller = self.stepsize_controller
        if controller is None:
            adaptive = isinstance(self.solver, diffrax.AbstractAdaptiveSolver)
            controller = (
                diffrax.PIDController(rtol=1e-6, atol=1e-8) if adaptive
                else diffrax.ConstantStepSize()
            )
        return self.solver, controller, _float(self.dt0)

    @property
    def cache_key(self) -> Any:
        parts = (type(self), self.solver, self.stepsize_controller, self.dt0)
        try:
            hash(parts)
        except TypeError:  # array fields: compare by identity (the cache keeps them alive)
            return (type(self), id(self.solver), id(self.stepsize_controller), self.dt0)
        return parts

    def __repr__(self) -> str:
        controller = self.stepsize_controller
        shown = "" if controller is None else f", {type(controller).__name__}(...)"
        return f"GradientFlow({type(self.solver).__name__}(){shown})"


for _cls in (ODEGradientDescent, RKAccelerated, HighOrderDescent, RKChebyshevDescent):
    register(_cls.__name__, _cls)
    register(f"ode:{_cls.__name__}", _cls)
