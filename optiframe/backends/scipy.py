"""The SciPy backend: every method of `scipy.optimize.minimize`, fed with JAX derivatives.

The objective's value and gradient come from one fused, jitted call (`jac=True`);
Hessians, Hessian-vector products, constraint Jacobians and the constraints' Lagrangian
Hessians come from JAX where the method uses them. SciPy sees flat float64 vectors; JAX
computes in its own precision (float32 unless JAX_ENABLE_X64=1, which SciPy's default
tolerances assume).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import scipy.optimize

from ..errors import OptiframeError
from ..flat import restore_like
from ..problem import OptimizationProblem
from ..progress import advance
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .base import Algorithm, Capabilities, SolveOptions, register, register_prefix
from .host import Halt, HostObjective

OK, MAX, STALL, FAIL, INFEAS, TERM = (
    ReturnCode.Success,
    ReturnCode.MaxIters,
    ReturnCode.Stalled,
    ReturnCode.Failure,
    ReturnCode.Infeasible,
    ReturnCode.Terminated,
)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """How optiframe drives one `scipy.optimize.minimize` method.

    Attributes:
        name: SciPy's spelling.
        grad: the method uses the gradient (passed as `jac=True`).
        hess: "hess" (needs the Hessian), "hessp" (uses Hessian-vector products), or None.
        bounds: accepts box bounds.
        constraints: accepts general constraints (`NonlinearConstraint`).
        maxiter: the option `maxiters` sets.
        abstol, reltol: the options `abstol` / `reltol` set (None: not available).
        status: SciPy's `status` -> `ReturnCode` (anything else is `Failure`).
    """

    name: str
    grad: bool
    hess: str | None
    bounds: bool
    constraints: bool
    maxiter: str
    abstol: str | None
    reltol: str | None
    status: dict[int, ReturnCode]


_TRUST = {0: OK, 1: MAX, 2: STALL, 3: FAIL}
# fmt: off
METHODS = {spec.name.lower(): spec for spec in (
    #          name            grad   hess     bounds constr maxiter    abstol   reltol
    MethodSpec("Nelder-Mead",  False, None,    True,  False, "maxiter", "fatol", None,
               {0: OK, 1: MAX, 2: MAX, 3: FAIL}),
    MethodSpec("Powell",       False, None,    True,  False, "maxiter", None,    "ftol",
               {0: OK, 1: MAX, 2: MAX, 3: FAIL, 4: FAIL}),
    MethodSpec("CG",           True,  None,    False, False, "maxiter", "gtol",  None,
               {0: OK, 1: MAX, 2: STALL, 3: FAIL}),
    MethodSpec("BFGS",         True,  None,    False, False, "maxiter", "gtol",  "xrtol",
               {0: OK, 1: MAX, 2: STALL, 3: FAIL}),
    MethodSpec("Newton-CG",    True,  "hessp", False, False, "maxiter", None,    "xtol",
               {0: OK, 1: MAX, 2: STALL, 3: FAIL}),
    MethodSpec("L-BFGS-B",     True,  None,    True,  False, "maxiter", "gtol",  "ftol",
               {0: OK, 1: MAX, 2: STALL}),
    MethodSpec("TNC",          True,  None,    True,  False, "maxfun",  "gtol",  "ftol",
               {-1: INFEAS, 0: OK, 1: OK, 2: OK, 3: MAX, 4: STALL, 5: OK, 6: STALL, 7: TERM}),
    MethodSpec("COBYLA",       False, None,    True,  True,  "maxiter", "tol",   None,
               {0: OK, 1: OK, 2: FAIL, 3: MAX, 20: MAX, -1: FAIL, -2: FAIL, -3: FAIL,
                6: INFEAS, 7: STALL, 30: TERM}),
    MethodSpec("COBYQA",       False, None,    True,  True,  "maxiter", "final_tr_radius", None,
               {0: OK, 1: OK, 2: OK, 3: TERM, 4: OK, 5: MAX, 6: MAX, -1: INFEAS, -2: FAIL}),
    MethodSpec("SLSQP",        True,  None,    True,  True,  "maxiter", "ftol",  None,
               {0: OK, 1: FAIL, 2: INFEAS, 3: STALL, 4: INFEAS, 5: FAIL, 6: FAIL, 7: FAIL,
                8: STALL, 9: MAX}),
    MethodSpec("trust-constr", True,  "hessp", True,  True,  "maxiter", "gtol",  "xtol",
               {0: MAX, 1: OK, 2: OK, 3: TERM, 4: INFEAS}),
    MethodSpec("dogleg",       True,  "hess",  False, False, "maxiter", "gtol",  None, _TRUST),
    MethodSpec("trust-ncg",    True,  "hessp", False, False, "maxiter", "gtol",  None, _TRUST),
    MethodSpec("trust-exact",  True,  "hess",  False, False, "maxiter", "gtol",  None, _TRUST),
    MethodSpec("trust-krylov", True,  "hessp", False, False, "maxiter", "gtol",  None, _TRUST),
)}
# fmt: on

_KEYWORDS = ("maxiters", "maxtime", "callback", "progress")


def _method(name: str) -> MethodSpec:
    spec = METHODS.get(str(name).lower())
    if spec is None:
        import difflib

        names = [s.name for s in METHODS.values()]
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise OptiframeError(
            f"`ScipyMinimize(method={name!r})` is not a scipy.optimize.minimize method.{hint} "
            f"Methods: {', '.join(names)}."
        )
    return spec


class ScipyMinimize(Algorithm):
    """A `scipy.optimize.minimize` method.

    `maxiters`, `abstol` and `reltol` set the method's own options (see `METHODS` and the
    docs' table); a tolerance the method has no option for is refused. `**options` go to
    SciPy's `options=` untouched.

    Args:
        method: a method name, as SciPy spells it (case-insensitive).
        **options: SciPy's options for the method (e.g. `maxcor=20` for L-BFGS-B).

    Example:
        >>> sol = opf.solve(prob, opf.ScipyMinimize("trust-constr", verbose=0), maxiters=200)
    """

    def __init__(self, method: str = "L-BFGS-B", **options: Any) -> None:
        self.spec = _method(method)
        self.options = dict(options)

    @property
    def method(self) -> str:
        return self.spec.name

    @property
    def capabilities(self) -> Capabilities:
        spec = self.spec
        needs = {"grad"} if spec.grad else set()
        if spec.hess == "hess":
            needs.add("hess")
        keywords = set(_KEYWORDS)
        keywords |= {k for k, v in (("abstol", spec.abstol), ("reltol", spec.reltol)) if v}
        return Capabilities(
            bounds=spec.bounds,
            constraints=spec.constraints,
            needs=frozenset(needs),
            keywords=frozenset(keywords),
        )

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"ScipyMinimize({self.spec.name!r}{options})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ScipyMinimize)
            and other.spec == self.spec
            and other.options == self.options
        )

    def __hash__(self) -> int:
        return hash((self.spec.name, tuple(sorted(self.options))))

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        return _MinimizeRun(self, problem, options).run()


def _shortcut(name: str, method: str, doc: str) -> Callable[..., ScipyMinimize]:
    def make(**options: Any) -> ScipyMinimize:
        return ScipyMinimize(method, **options)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"`ScipyMinimize({method!r}, **options)`: {doc}"
    return make


LBFGSB = _shortcut("LBFGSB", "L-BFGS-B", "limited-memory BFGS with box bounds.")
BFGS = _shortcut("BFGS", "BFGS", "quasi-Newton BFGS, unconstrained.")
CG = _shortcut("CG", "CG", "nonlinear conjugate gradient, unconstrained.")
NewtonCG = _shortcut("NewtonCG", "Newton-CG", "truncated Newton, JAX Hessian-vector products.")
NelderMead = _shortcut("NelderMead", "Nelder-Mead", "downhill simplex, derivative-free, bounds.")
Powell = _shortcut("Powell", "Powell", "conjugate directions, derivative-free, bounds.")
TNC = _shortcut("TNC", "TNC", "truncated Newton with box bounds.")
COBYLA = _shortcut("COBYLA", "COBYLA", "derivative-free, linear models, constraints.")
COBYQA = _shortcut("COBYQA", "COBYQA", "derivative-free, quadratic models, constraints.")
SLSQP = _shortcut("SLSQP", "SLSQP", "sequential least squares programming, constraints.")
TrustConstr = _shortcut("TrustConstr", "trust-constr", "trust-region interior point, constraints.")
Dogleg = _shortcut("Dogleg", "dogleg", "dogleg trust region with the JAX Hessian.")
TrustNCG = _shortcut("TrustNCG", "trust-ncg", "Newton conjugate-gradient trust region.")
TrustExact = _shortcut("TrustExact", "trust-exact", "nearly exact trust region, JAX Hessian.")
TrustKrylov = _shortcut("TrustKrylov", "trust-krylov", "Krylov trust region.")


def flat_bounds(problem: OptimizationProblem) -> tuple[np.ndarray, np.ndarray] | None:
    """The box bounds as flat float64 vectors, in the order of `ravel(u0)`."""
    if not problem.has_bounds:
        return None
    lb = np.concatenate([np.ravel(b) for b in jax.tree.leaves(problem.lb)]).astype(np.float64)
    ub = np.concatenate([np.ravel(b) for b in jax.tree.leaves(problem.ub)]).astype(np.float64)
    return lb, ub


def violation(problem: OptimizationProblem, objective: HostObjective, x: np.ndarray) -> float:
    """The largest violation of the bounds and constraints at `x`, each relative to
    1 + |bound| (0 when feasible)."""

    def worst(low, high, value):
        low, high = np.broadcast_to(low, value.shape), np.broadcast_to(high, value.shape)
        below = (low - value) / (1 + np.abs(np.where(np.isfinite(low), low, 0)))
        above = (value - high) / (1 + np.abs(np.where(np.isfinite(high), high, 0)))
        return float(np.max(np.maximum(below, above), initial=0.0))

    out = 0.0
    bounds = flat_bounds(problem)
    if bounds is not None:
        out = worst(*bounds, x)
    if problem.has_constraints:
        out = max(out, worst(problem.lcons, problem.ucons, objective.cons(x)))
    return out


def feasibility_tolerance(objective: HostObjective) -> float:
    """How much relative violation counts as rounding: 1e-6, or 32 ulps of JAX's float (a
    float32 constraint of a few operations, HS71's product of four, is off by ~15)."""
    return max(1e-6, 32 * float(np.finfo(objective.dtype).eps))


class HostRun:
    """What every SciPy run shares: the host objective, the callback, the stop rules and
    the solution. Subclasses call SciPy in `minimize()` and return its result."""

    def __init__(self, alg: Algorithm, problem: OptimizationProblem, options: SolveOptions):
        self.alg, self.problem, self.options = alg, problem, options
        self.objective = HostObjective(problem, options.maxtime)
        self.objective.remember = options.callback is not None
        self.iterations = 0
        self.last_x = self.objective.x0
        self.bar = options.progress.open(options.maxiters) if options.progress else None
        self.every = options.progress.interval(options.maxiters) if options.progress else 0

    def minimize(self) -> scipy.optimize.OptimizeResult:
        raise NotImplementedError

    def iteration(self, x: np.ndarray, fun: float | None = None) -> None:
        """Called by SciPy once per iteration with the current iterate."""
        obj = self.objective
        self.iterations += 1
        self.last_x = np.array(x, np.float64)
        callback = self.options.callback
        if callback is not None or self.bar is not None:
            f, g = obj.lookup(x)
            if f is None:
                f = fun if fun is not None else obj.value(x)
            objective = obj.sign * float(f)
            if self.bar is not None and self.iterations % self.every == 0:
                advance(self.bar, self.iterations, objective)
            if callback is not None:
                state = OptimizationState(
                    iter=self.iterations,
                    u=obj.u(x),
                    objective=objective,
                    grad=None if g is None else obj.u(obj.sign * g),
                    p=self.problem.p,
                    original=x,
                )
                if callback(state, objective):
                    raise Halt(
                        ReturnCode.Terminated,
                        f"callback returned True at iteration {self.iterations}",
                    )
        obj.check_time()

    def run(self) -> OptimizationSolution:
        retcode, message, result = None, "", None
        try:
            result = self.minimize()
        except Halt as halt:
            retcode, message = halt.retcode, halt.message
        except KeyboardInterrupt:
            warnings.warn(
                "solve() interrupted: returning the best iterate so far (Terminated).",
                stacklevel=5,
            )
            retcode, message = ReturnCode.Terminated, "interrupted by KeyboardInterrupt"
        finally:
            if self.bar is not None:
                self.bar.close()
        return self.solution(result, retcode, message)

    def final_point(self, result: Any) -> np.ndarray:
        """Where the run ended: SciPy's `x`, or the last iterate when it was stopped."""
        return self.last_x if result is None else np.asarray(result.x, np.float64)

    def verdict(self, result: Any) -> tuple[ReturnCode, str]:
        raise NotImplementedError

    def solution(
        self, result: Any, retcode: ReturnCode | None, message: str
    ) -> OptimizationSolution:
        obj = self.objective
        obj.maxtime = None  # the run is over; evaluations from here on are bookkeeping
        x = self.final_point(result)
        f, _ = obj.lookup(x)
        if (
            result is not None
            and getattr(result, "fun", None) is not None
            and np.ndim(result.fun) == 0
        ):
            f = float(result.fun)
        if f is None:
            f = obj.value(x)
        if result is None:
            result = scipy.optimize.OptimizeResult(
                x=x,
                fun=f,
                nit=self.iterations,
                nfev=obj.fevals,
                success=False,
                status=None,
                message=message,
            )
        if retcode is None:
            retcode, message = self.verdict(result)
        if not np.isfinite(f) or not np.all(np.isfinite(x)):
            if obj.best_x is None:
                raise OptiframeError(f"{self.alg!r} evaluated no finite point.")
            x, f = obj.best_x, obj.best_f
            retcode = ReturnCode.Failure
            message = f"non-finite result ({message}); the best finite point is returned"
        worst = violation(self.problem, obj, x)
        if worst > feasibility_tolerance(obj) and retcode in (
            ReturnCode.Success,
            ReturnCode.MaxIters,
            ReturnCode.Stalled,
            ReturnCode.Failure,
        ):
            retcode = ReturnCode.Infeasible
            message += f" (the bounds or constraints are violated by {worst:.2e})"
        return OptimizationSolution(
            u=restore_like(obj.u(x), self.problem.u0),
            objective=float(obj.sign * f),
            retcode=retcode,
            stats=Stats(
                iterations=int(getattr(result, "nit", None) or self.iterations),
                fevals=obj.fevals,
                gevals=obj.gevals,
                hevals=obj.hevals,
            ),
            original=result,
            message=message,
        )


class _MinimizeRun(HostRun):
    alg: ScipyMinimize

    def minimize(self) -> scipy.optimize.OptimizeResult:
        spec, options, obj, problem = self.alg.spec, self.options, self.objective, self.problem
        settings = dict(self.alg.options)
        if spec.name == "COBYQA" and problem.has_constraints:
            # Constraints computed in float32 cannot meet COBYQA's default (absolute) sqrt(eps64).
            bounds = np.concatenate([problem.lcons, problem.ucons])
            scale = 1 + np.max(np.abs(bounds[np.isfinite(bounds)]), initial=0.0)
            settings.setdefault("feasibility_tol", feasibility_tolerance(obj) * scale)
        if options.maxiters is not None:
            settings[spec.maxiter] = options.maxiters
        if options.abstol is not None:
            settings[spec.abstol] = options.abstol
        if options.reltol is not None:
            settings[spec.reltol] = options.reltol
        kwargs: dict[str, Any] = {}
        if spec.grad:
            kwargs["jac"] = True
        if spec.hess == "hess":
            kwargs["hess"] = obj.hess
        elif spec.hess == "hessp" and obj.fns.get("hvp") is not None:
            kwargs["hessp"] = obj.hvp
        bounds = flat_bounds(problem)
        if bounds is not None:
            kwargs["bounds"] = scipy.optimize.Bounds(*bounds)
        if problem.has_constraints:
            kwargs["constraints"] = self._constraints()
        if spec.name == "TNC":
            callback = lambda xk: self.iteration(xk)  # noqa: E731
        else:

            def callback(intermediate_result):
                self.iteration(intermediate_result.x, getattr(intermediate_result, "fun", None))

        fun = obj.value_and_grad if spec.grad else obj.value
        try:
            return scipy.optimize.minimize(
                fun, obj.x0, method=spec.name, callback=callback, options=settings, **kwargs
            )
        except (TypeError, ValueError) as err:
            if "unexpected keyword" in str(err) or "Unknown solver" in str(err):
                raise OptiframeError(f"{self.alg!r}: SciPy rejected the options: {err}") from err
            raise

    def _constraints(self) -> list[scipy.optimize.NonlinearConstraint]:
        """`lcons <= cons(x) <= ucons` in the method's form: one constraint with the
        Lagrangian Hessian for trust-constr, equalities and inequalities apart for SLSQP
        and COBYLA (which treat them separately)."""
        obj, problem, name = self.objective, self.problem, self.alg.spec.name
        lower, upper = problem.lcons, problem.ucons
        if name not in ("SLSQP", "COBYLA"):
            extra = {}
            if name == "trust-constr":
                extra["hess"] = obj.cons_hess if "cons_hess" in obj.fns else scipy.optimize.BFGS()
            return [
                scipy.optimize.NonlinearConstraint(
                    obj.cons, lower, upper, jac=obj.cons_jac, **extra
                )
            ]
        equal = lower == upper
        return [
            scipy.optimize.NonlinearConstraint(
                lambda x, rows=rows: obj.cons(x)[rows],
                lower[rows],
                upper[rows],
                jac=lambda x, rows=rows: obj.cons_jac(x)[rows],
            )
            for rows in (np.flatnonzero(equal), np.flatnonzero(~equal))
            if rows.size
        ]

    def verdict(self, result: Any) -> tuple[ReturnCode, str]:
        code = self.alg.spec.status.get(int(result.status), ReturnCode.Failure)
        if code is ReturnCode.Success and not result.success:
            code = ReturnCode.Infeasible if self.problem.has_constraints else ReturnCode.Failure
        return code, f"{result.message} (SciPy status {result.status})"


def _register() -> None:
    for spec in METHODS.values():
        register(spec.name, lambda name=spec.name: ScipyMinimize(name))
    register_prefix("scipy", ScipyMinimize)


_register()
