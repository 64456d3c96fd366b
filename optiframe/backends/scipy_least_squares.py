"""`scipy.optimize.least_squares` behind `solve`, for problems posed as residuals."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidProblemError, UnsupportedFeatureError
from ..problem import MinSense, OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._host import HostRun, flat_bounds
from ._lifecycle import check_options
from .base import Algorithm, Capabilities, SolveOptions, register

if TYPE_CHECKING:
    import scipy.optimize

_METHODS = ("trf", "dogbox", "lm")
# Arguments of `least_squares` that optiframe sets itself, and those the keywords set.
_RESERVED = frozenset(("fun", "x0", "jac", "bounds", "method", "args", "kwargs", "callback"))
_KEYWORD_OPTIONS = {"maxiters": "max_nfev", "abstol": "gtol", "reltol": "ftol"}
_STATUS = {
    -1: ReturnCode.Failure, 0: ReturnCode.MaxIters, 1: ReturnCode.Success,
    2: ReturnCode.Success, 3: ReturnCode.Success, 4: ReturnCode.Success,
}


class ScipyLeastSquares(Algorithm):
    """`scipy.optimize.least_squares` for problems posed as residuals.

    Here `fun(u, p)` returns the residual vector r (m,) (any shape, flattened), and the
    problem is min ½‖r(u)‖²; `sol.objective` is that cost (SciPy's `cost`). The Jacobian
    (m, n) comes from JAX (reverse mode when m < n, else forward; with `ad="finite"`,
    SciPy's own finite differences). Bounds are honoured by "trf" and "dogbox" ("lm" takes
    none, and calls no callback). `maxiters` sets `max_nfev` (residual evaluations; the
    Jacobian's are apart, though `stats.fevals` counts both), `abstol` sets `gtol`, `reltol`
    sets `ftol`.

    Args:
        method: "trf", "dogbox" or "lm".
        **options: passed to SciPy (`loss`, `f_scale`, `x_scale`, ...).
    """

    def __init__(self, method: str = "trf", **options: Any) -> None:
        if method not in _METHODS:
            raise InvalidProblemError(
                f"`ScipyLeastSquares(method={method!r})` must be 'trf', 'dogbox' or 'lm'."
            )
        check_options(options, _known(), "ScipyLeastSquares(...)")
        self.method, self.options = method, options

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"ScipyLeastSquares({self.method!r}{options})"

    @property
    def capabilities(self) -> Capabilities:
        keywords = {"maxiters", "abstol", "reltol", "maxtime", "save_best", "history"}
        if self.method != "lm":  # MINPACK's loop reports no iterations
            keywords |= {"callback", "progress"}
        return Capabilities(
            bounds=self.method != "lm", residuals=True, budget="residual evaluations",
            keywords=frozenset(keywords),
        )

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        if problem.sense is not MinSense:
            raise UnsupportedFeatureError(
                "ScipyLeastSquares minimises ½‖r(u)‖²; MaxSense has no meaning for it."
            )
        check_options(options.solver_options, _known(), f"solve(..., **options) with {self!r}")
        return _LeastSquaresRun(self, problem, options).solve()


def _known() -> frozenset[str]:
    import scipy.optimize

    return frozenset(inspect.signature(scipy.optimize.least_squares).parameters) - _RESERVED


class _LeastSquaresRun(HostRun):
    alg: ScipyLeastSquares

    def minimize(self) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        obj, options = self.objective, self.options
        given = {**self.alg.options, **options.solver_options}
        settings = self.settings("least_squares", given, _KEYWORD_OPTIONS)
        if self.alg.method != "lm":
            settings["callback"] = lambda intermediate_result: self.iteration(
                intermediate_result.x, intermediate_result.cost
            )
        bounds = flat_bounds(self.problem)
        return scipy.optimize.least_squares(
            obj.residuals, obj.x0, jac="2-point" if obj.finite else obj.residuals_jac,
            method=self.alg.method, bounds=bounds if bounds is not None else (-np.inf, np.inf),
            **settings,
        )

    def final(self, result: Any) -> tuple[np.ndarray, float | None]:
        return np.asarray(result.x, np.float64), float(result.cost)

    def verdict(self, result: Any) -> tuple[ReturnCode, str]:
        code = _STATUS.get(int(result.status), ReturnCode.Failure)
        return code, f"{result.message} (SciPy status {result.status})"


register("least_squares", ScipyLeastSquares)
