"""SciPy's global optimisers and `least_squares` behind `solve`.

Global methods (`DifferentialEvolution`, `DualAnnealing`, `SHGO`, `Direct`) search the box
`[lb, ub]`, so they need finite bounds; `BasinHopping` runs JAX-gradient L-BFGS-B from
random hops (with bounds if the problem has them). For these search methods `sol.u` is the
best point evaluated; SciPy's own answer stays in `sol.original`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ..errors import OptiframeError, UnsupportedFeatureError
from ..flat import ravel, restore_like, to_device
from ..problem import MinSense, OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode, Stats
from .base import Algorithm, Capabilities, SolveOptions, register
from .host import Halt
from .scipy import HostRun, flat_bounds

_KEYWORDS = frozenset(("maxiters", "maxtime", "callback", "progress"))


class _GlobalRun(HostRun):
    """A run of a search method: the answer is the best point evaluated."""

    def final_point(self, result: Any) -> np.ndarray:
        obj = self.objective
        return obj.best_x if obj.best_x is not None else super().final_point(result)

    def verdict(self, result: Any) -> tuple[ReturnCode, str]:
        message = result.message
        message = "; ".join(message) if isinstance(message, list) else str(message)
        for phrase, code in self.alg.messages:
            if phrase.lower() in message.lower():
                return code, message
        return (ReturnCode.Success if result.success else ReturnCode.Failure), message

    def minimize(self) -> scipy.optimize.OptimizeResult:
        return self.alg.call(self)


@dataclasses.dataclass(frozen=True)
class _Global(Algorithm):
    """Shared by the global methods: bounds required, u = best point evaluated."""

    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages = ()  # (phrase in SciPy's message, ReturnCode), checked in order

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(bounds=True, needs_bounds=True, keywords=_KEYWORDS)

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        return _GlobalRun(self, problem, options).run()

    def _settings(self, run: HostRun, maxiter_key: str | None = "maxiter") -> dict[str, Any]:
        settings = dict(self.options)
        if maxiter_key and run.options.maxiters is not None:
            settings[maxiter_key] = run.options.maxiters
        return settings


@dataclasses.dataclass(frozen=True, init=False)
class DifferentialEvolution(_Global):
    """`scipy.optimize.differential_evolution`. `maxiters` = generations.

    Args:
        seed: the random seed (SciPy's `rng`).
        **options: passed to SciPy (`popsize`, `strategy`, `tol`, `polish`, ...).
    """

    seed: int | None = None
    messages = (
        ("maximum number of iterations", ReturnCode.MaxIters),
        ("maximum number of function evaluations", ReturnCode.MaxIters),
    )

    def __init__(self, seed: int | None = None, **options: Any) -> None:
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "options", options)

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        def callback(intermediate_result):
            run.iteration(intermediate_result.x, intermediate_result.fun)

        return scipy.optimize.differential_evolution(
            run.objective.value, scipy.optimize.Bounds(*flat_bounds(run.problem)),
            rng=self.seed, callback=callback, x0=run.objective.x0, **self._settings(run),
        )


@dataclasses.dataclass(frozen=True, init=False)
class DualAnnealing(_Global):
    """`scipy.optimize.dual_annealing`; its local searches use JAX gradients.
    `maxiters` = annealing iterations.

    Args:
        seed: the random seed (SciPy's `rng`).
        **options: passed to SciPy.
    """

    seed: int | None = None
    messages = (
        ("maximum number of iteration", ReturnCode.MaxIters),
        ("maximum number of function call", ReturnCode.MaxIters),
    )

    def __init__(self, seed: int | None = None, **options: Any) -> None:
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "options", options)

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        obj = run.objective

        def callback(x, f, context):
            run.iteration(x, f)

        local = {"method": "L-BFGS-B", "jac": lambda x: obj.value_and_grad(x)[1]}
        return scipy.optimize.dual_annealing(
            obj.value, scipy.optimize.Bounds(*flat_bounds(run.problem)), rng=self.seed,
            callback=callback, x0=obj.x0, minimizer_kwargs=local, **self._settings(run),
        )


@dataclasses.dataclass(frozen=True, init=False)
class SHGO(_Global):
    """`scipy.optimize.shgo`, simplicial homology global optimisation; its local searches
    use JAX gradients. `maxiters` = SHGO's `options["maxiter"]`.

    Args:
        **options: passed to SciPy (`n`, `iters`, `sampling_method`, `options`, ...).
    """

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "options", options)

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        obj = run.objective
        settings = dict(self.options)
        inner = dict(settings.pop("options", {}))
        if run.options.maxiters is not None:
            inner["maxiter"] = run.options.maxiters
        local = {"method": "SLSQP", "jac": lambda x: obj.value_and_grad(x)[1]}
        return scipy.optimize.shgo(
            obj.value, list(zip(*flat_bounds(run.problem))), callback=run.iteration,
            minimizer_kwargs=local, options=inner, **settings,
        )


@dataclasses.dataclass(frozen=True, init=False)
class Direct(_Global):
    """`scipy.optimize.direct`, deterministic DIviding RECTangles. `maxiters` = its
    iterations.

    Args:
        **options: passed to SciPy (`eps`, `maxfun`, `locally_biased`, `vol_tol`, ...).
    """

    messages = (
        ("larger than maxfun", ReturnCode.MaxIters),
        ("larger than maxiter", ReturnCode.MaxIters),
    )

    def __init__(self, **options: Any) -> None:
        object.__setattr__(self, "options", options)

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        return scipy.optimize.direct(
            run.objective.value, scipy.optimize.Bounds(*flat_bounds(run.problem)),
            callback=run.iteration, **self._settings(run),
        )


@dataclasses.dataclass(frozen=True, init=False)
class BasinHopping(_Global):
    """`scipy.optimize.basinhopping`: random hops, each followed by a JAX-gradient L-BFGS-B
    local search (bounded when the problem has bounds, and hops clipped into the box).
    `maxiters` = hops (SciPy's `niter`).

    Args:
        seed: the random seed (SciPy's `rng`).
        **options: passed to SciPy (`T`, `stepsize`, `niter_success`, ...).
    """

    seed: int | None = None
    messages = (("requested number of basinhopping iterations", ReturnCode.MaxIters),)

    def __init__(self, seed: int | None = None, **options: Any) -> None:
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "options", options)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(bounds=True, needs=frozenset({"grad"}), keywords=_KEYWORDS)

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        obj, bounds = run.objective, flat_bounds(run.problem)
        local: dict[str, Any] = {"method": "L-BFGS-B", "jac": True}
        settings = self._settings(run, "niter")
        if bounds is not None:
            local["bounds"] = scipy.optimize.Bounds(*bounds)
            step = settings.pop("stepsize", 0.5)
            rng = np.random.default_rng(self.seed)
            settings["take_step"] = lambda x: np.clip(
                x + rng.uniform(-step, step, np.shape(x)), *bounds
            )

        def callback(x, f, accept):
            run.iteration(x, f)

        return scipy.optimize.basinhopping(
            obj.value_and_grad, obj.x0, minimizer_kwargs=local, callback=callback,
            rng=self.seed, **settings,
        )


@dataclasses.dataclass(frozen=True, init=False)
class ScipyLeastSquares(Algorithm):
    """`scipy.optimize.least_squares` for problems posed as residuals.

    Here `fun(u, p)` returns the residual vector r (m,) (any shape, flattened), and the
    problem is min ½‖r(u)‖²; `sol.objective` is that cost (SciPy's `cost`). The Jacobian
    (m, n) comes from JAX (reverse mode when m < n, else forward). Bounds are honoured by
    "trf" and "dogbox" ("lm" takes none). `maxiters` sets `max_nfev` (residual
    evaluations), `abstol` sets `gtol`, `reltol` sets `ftol`.

    Args:
        method: "trf", "dogbox" or "lm".
        **options: passed to SciPy (`loss`, `f_scale`, `x_scale`, ...).
    """

    method: str = "trf"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __init__(self, method: str = "trf", **options: Any) -> None:
        if method not in ("trf", "dogbox", "lm"):
            raise OptiframeError(
                f"`ScipyLeastSquares(method={method!r})` must be 'trf', 'dogbox' or 'lm'."
            )
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "options", options)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=self.method != "lm",
            residuals=True,
            keywords=frozenset(("maxiters", "abstol", "reltol", "maxtime")),
        )

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        if problem.sense is not MinSense:
            raise UnsupportedFeatureError(
                "ScipyLeastSquares minimises ½‖r(u)‖²; MaxSense has no meaning for it."
            )
        return self._solve(problem, options)

    def _solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        x0, unravel = ravel(to_device(problem.u0))
        p, fun, counts = problem.p, problem.f.fun, {"f": 0, "j": 0}
        residual = jax.jit(lambda x, p: jnp.ravel(fun(unravel(x), p)))
        m = jax.eval_shape(residual, x0, p).shape[0]
        jacobian = jax.jit(jax.jacrev(residual) if m < x0.size else jax.jacfwd(residual))
        start = time.perf_counter()

        def check_time():
            if options.maxtime is not None and time.perf_counter() - start >= options.maxtime:
                raise Halt(ReturnCode.MaxTime, f"maxtime={options.maxtime} s reached")

        last = {"x": np.asarray(x0, np.float64)}

        def fun_host(x):
            check_time()
            counts["f"] += 1
            last["x"] = np.array(x)
            return np.asarray(residual(jnp.asarray(x), p), np.float64)

        def jac_host(x):
            counts["j"] += 1
            return np.asarray(jacobian(jnp.asarray(x), p), np.float64)

        settings = dict(self.options)
        for key, value in (
            ("max_nfev", options.maxiters), ("gtol", options.abstol), ("ftol", options.reltol)
        ):
            if value is not None:
                settings[key] = value
        bounds = flat_bounds(problem)
        try:
            result = scipy.optimize.least_squares(
                fun_host, np.asarray(x0, np.float64), jac=jac_host, method=self.method,
                bounds=bounds if bounds is not None else (-np.inf, np.inf), **settings,
            )
            x, cost, nit = result.x, float(result.cost), int(result.nfev)
            retcode = _LSQ_STATUS.get(int(result.status), ReturnCode.Failure)
            message = f"{result.message} (SciPy status {result.status})"
        except Halt as halt:
            x, result = last["x"], None
            cost = 0.5 * float(np.sum(np.asarray(residual(jnp.asarray(x), p)) ** 2))
            nit, retcode, message = counts["f"], halt.retcode, halt.message
        return OptimizationSolution(
            u=restore_like(unravel(jnp.asarray(x)), problem.u0),
            objective=cost,
            retcode=retcode,
            stats=Stats(iterations=nit, fevals=counts["f"], gevals=counts["j"]),
            original=result,
            message=message,
        )


_LSQ_STATUS = {
    -1: ReturnCode.Failure, 0: ReturnCode.MaxIters, 1: ReturnCode.Success,
    2: ReturnCode.Success, 3: ReturnCode.Success, 4: ReturnCode.Success,
}


register("DifferentialEvolution", DifferentialEvolution)
register("DualAnnealing", DualAnnealing)
register("SHGO", SHGO)
register("Direct", Direct)
register("BasinHopping", BasinHopping)
register("least_squares", ScipyLeastSquares)
