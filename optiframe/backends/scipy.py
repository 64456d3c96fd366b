"""The SciPy backend: every method of `scipy.optimize.minimize`, fed with JAX derivatives.

The objective's value and gradient come from one fused, jitted call (`jac=True`);
Hessians, Hessian-vector products, constraint Jacobians and the constraints' Lagrangian
Hessians come from JAX where the method uses them. SciPy sees flat float64 vectors, computed
in float64 whatever JAX's default precision (`_host.HostObjective`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .._checks import lookup
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._host import HostRun, flat_bounds
from ._lifecycle import check_options
from .base import Algorithm, Capabilities, SolveOptions, register, register_prefix

if TYPE_CHECKING:
    import scipy.optimize

OK, MAX, STALL = ReturnCode.Success, ReturnCode.MaxIters, ReturnCode.Stalled
FAIL, INFEAS, TERM = ReturnCode.Failure, ReturnCode.Infeasible, ReturnCode.Terminated


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
        function: SciPy's implementation ("module:function"), whose keyword arguments are
            the method's options.
        defaults: options optiframe sets unless given (see docs/scipy.md).
        budget: what `maxiter` counts.
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
    function: str
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget: str = "iterations"

    @functools.cached_property
    def options(self) -> frozenset[str]:
        """The option names the method takes (the trust-region methods pass
        `**trust_region_options` on to SciPy's common trust-region loop)."""
        names = set()
        for function in (self.function, _TRUST_FN):
            module, name = function.split(":")
            fn = getattr(importlib.import_module(f"scipy.optimize.{module}"), name)
            names |= set(inspect.signature(fn).parameters)
            if "trust_region_options" not in names:
                break
        return frozenset(names - _NOT_OPTIONS)


# Arguments of SciPy's method implementations that are not options.
_NOT_OPTIONS = frozenset((
    "fun", "func", "x0", "args", "jac", "grad", "hess", "hessp", "bounds", "constraints",
    "callback", "subproblem", "unknown_options", "trust_region_options",
))
_TRUST = {0: OK, 1: MAX, 2: STALL, 3: FAIL}
_TRUST_FN = "_trustregion:_minimize_trust_region"
# Optim.jl's and optimagic's Nelder-Mead: no practical evaluation limit, tolerances 1e-8
# (SciPy's 200 n evaluations and 1e-4 stop far from the optimum).
_NELDER_MEAD = {"maxiter": 10**6, "maxfev": 10**6, "xatol": 1e-8, "fatol": 1e-8}
# fmt: off
METHODS = {spec.name.lower(): spec for spec in (
    #          name            grad   hess     bounds constr maxiter    abstol   reltol
    MethodSpec("Nelder-Mead",  False, None,    True,  False, "maxiter", "fatol", None,
               {0: OK, 1: MAX, 2: MAX, 3: FAIL}, "_optimize:_minimize_neldermead", _NELDER_MEAD),
    MethodSpec("Powell",       False, None,    True,  False, "maxiter", None,    "ftol",
               {0: OK, 1: MAX, 2: MAX, 3: FAIL, 4: FAIL}, "_optimize:_minimize_powell"),
    MethodSpec("CG",           True,  None,    False, False, "maxiter", "gtol",  None,
               {0: OK, 1: MAX, 2: STALL, 3: FAIL}, "_optimize:_minimize_cg"),
    MethodSpec("BFGS",         True,  None,    False, False, "maxiter", "gtol",  "xrtol",
               {0: OK, 1: MAX, 2: STALL, 3: FAIL}, "_optimize:_minimize_bfgs"),
    MethodSpec("Newton-CG",    True,  "hessp", False, False, "maxiter", None,    "xtol",
               {0: OK, 1: MAX, 2: STALL, 3: FAIL}, "_optimize:_minimize_newtoncg"),
    MethodSpec("L-BFGS-B",     True,  None,    True,  False, "maxiter", "gtol",  "ftol",
               {0: OK, 1: MAX, 2: STALL}, "_lbfgsb_py:_minimize_lbfgsb"),
    MethodSpec("TNC",          True,  None,    True,  False, "maxfun",  "gtol",  "ftol",
               {-1: INFEAS, 0: OK, 1: OK, 2: OK, 3: MAX, 4: STALL, 5: OK, 6: STALL, 7: TERM},
               "_tnc:_minimize_tnc", budget="evaluations"),
    MethodSpec("COBYLA",       False, None,    True,  True,  "maxiter", "tol",   None,
               {0: OK, 1: OK, 2: FAIL, 3: MAX, 20: MAX, -1: FAIL, -2: FAIL, -3: FAIL,
                6: INFEAS, 7: STALL, 30: TERM}, "_cobyla_py:_minimize_cobyla",
               budget="evaluations"),
    MethodSpec("COBYQA",       False, None,    True,  True,  "maxiter", "final_tr_radius", None,
               {0: OK, 1: OK, 2: OK, 3: TERM, 4: OK, 5: MAX, 6: MAX, -1: INFEAS, -2: FAIL},
               "_cobyqa_py:_minimize_cobyqa"),
    MethodSpec("SLSQP",        True,  None,    True,  True,  "maxiter", "ftol",  None,
               {0: OK, 1: FAIL, 2: INFEAS, 3: STALL, 4: INFEAS, 5: FAIL, 6: FAIL, 7: FAIL,
                8: STALL, 9: MAX}, "_slsqp_py:_minimize_slsqp"),
    MethodSpec("trust-constr", True,  "hessp", True,  True,  "maxiter", "gtol",  "xtol",
               {0: MAX, 1: OK, 2: OK, 3: TERM, 4: INFEAS},
               "_trustregion_constr:_minimize_trustregion_constr"),
    MethodSpec("dogleg",       True,  "hess",  False, False, "maxiter", "gtol",  None, _TRUST,
               "_trustregion_dogleg:_minimize_dogleg"),
    MethodSpec("trust-ncg",    True,  "hessp", False, False, "maxiter", "gtol",  None, _TRUST,
               "_trustregion_ncg:_minimize_trust_ncg"),
    MethodSpec("trust-exact",  True,  "hess",  False, False, "maxiter", "gtol",  None, _TRUST,
               "_trustregion_exact:_minimize_trustregion_exact"),
    MethodSpec("trust-krylov", True,  "hessp", False, False, "maxiter", "gtol",  None, _TRUST,
               "_trustregion_krylov:_minimize_trust_krylov"),
)}
# fmt: on

_KEYWORDS = ("maxiters", "maxtime", "callback", "progress", "save_best", "history")


def _method(name: str) -> MethodSpec:
    names = {spec.name: spec for spec in METHODS.values()}
    listing = f"scipy.optimize.minimize's methods ({', '.join(names)})"
    return lookup(f"ScipyMinimize(method={name!r})", str(name), names, listing)[0]


class ScipyMinimize(Algorithm):
    """A `scipy.optimize.minimize` method.

    `maxiters`, `abstol` and `reltol` set the method's own options (see `METHODS` and the
    docs' table); a tolerance the method has no option for is refused. `**options` (here,
    or given to `solve`) go to SciPy's `options=`; an option the method does not take is
    an error naming the close matches.

    Args:
        method: a method name, as SciPy spells it (case-insensitive).
        **options: SciPy's options for the method (e.g. `maxcor=20` for L-BFGS-B).

    Example:
        >>> sol = opf.solve(prob, opf.ScipyMinimize("trust-constr", verbose=0), maxiters=200)
    """

    def __init__(self, method: str = "L-BFGS-B", **options: Any) -> None:
        self.spec = _method(method)
        check_options(options, self.spec.options, f"ScipyMinimize({self.spec.name!r}, ...)")
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
            budget=spec.budget,
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
        return _MinimizeRun(self, problem, options).solve()


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


class _MinimizeRun(HostRun):
    alg: ScipyMinimize

    def minimize(self) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        spec, obj, problem = self.alg.spec, self.objective, self.problem
        solver_options = self.options.solver_options
        check_options(solver_options, spec.options, f"solve(..., **options) with {self.alg!r}")
        given = {**self.alg.options, **solver_options}
        sets = {"maxiters": spec.maxiter, "abstol": spec.abstol, "reltol": spec.reltol}
        settings = {**spec.defaults, **self.settings(spec.name, given, sets)}
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
        if not self.watched and spec.name != "COBYLA":  # SciPy counts the iterations (nit)
            callback = None
        elif spec.name == "TNC":
            callback = lambda xk: self.iteration(xk)
        else:

            def callback(intermediate_result):  # an OptimizeResult: a dict
                self.iteration(intermediate_result["x"], intermediate_result.get("fun"))

        fun = obj.value_and_grad if spec.grad else obj.value
        return scipy.optimize.minimize(
            fun, obj.x0, method=spec.name, callback=callback, options=settings, **kwargs
        )

    def _constraints(self) -> list[scipy.optimize.NonlinearConstraint]:
        """`lcons <= cons(x) <= ucons` in the method's form: one constraint with the
        Lagrangian Hessian for trust-constr, equalities and inequalities apart for SLSQP
        and COBYLA (which treat them separately)."""
        import scipy.optimize

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


    def original(self, result: Any, x: np.ndarray, loss: float, message: str) -> Any:
        import scipy.optimize

        if result is not None:
            return result
        return scipy.optimize.OptimizeResult(
            x=x, fun=self.objective.sign * loss, nit=self.iterations,
            nfev=self.objective.fevals, success=False, status=None, message=message,
        )


def _register() -> None:
    for spec in METHODS.values():
        register(spec.name, lambda name=spec.name: ScipyMinimize(name))
    register_prefix("scipy", ScipyMinimize)


_register()
