"""SciPy's global optimisers behind `solve`.

Global methods (`DifferentialEvolution`, `DualAnnealing`, `SHGO`, `Direct`) search the box
`[lb, ub]`, so they need finite bounds; `BasinHopping` runs JAX-gradient L-BFGS-B from
random hops (with bounds if the problem has them). For these search methods `sol.u` is the
best point evaluated; SciPy's own answer stays in `sol.original`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._checks import seed as check_seed
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._host import HostRun, flat_bounds
from ._lifecycle import check_options
from .base import Algorithm, Capabilities, SolveOptions, register

if TYPE_CHECKING:
    import scipy.optimize

_KEYWORDS = frozenset(("maxiters", "maxtime", "callback", "progress", "save_best", "history"))
# Arguments of SciPy's functions that optiframe sets itself.
_RESERVED = frozenset((
    "func", "bounds", "args", "callback", "x0", "rng", "seed", "minimizer_kwargs",
    "constraints", "integrality", "vectorized", "workers", "take_step",
))


class _GlobalRun(HostRun):
    """A run of a search method: the answer is the best point evaluated."""

    search = True

    def verdict(self, result: Any) -> tuple[ReturnCode, str]:
        message = result.message
        message = "; ".join(message) if isinstance(message, list) else str(message)
        for phrase, code in self.alg.messages:
            if phrase.lower() in message.lower():
                return code, message
        return (ReturnCode.Success if result.success else ReturnCode.Failure), message

    def minimize(self) -> scipy.optimize.OptimizeResult:
        return self.alg.call(self)


class _Global(Algorithm):
    """Shared by the global methods: bounds required, u = best point evaluated.

    Attributes:
        function: the name of the SciPy function (in `scipy.optimize`, imported when a
            method is built).
        maxiter: its argument that `maxiters` sets.
        budget: what that argument counts.
        messages: (phrase in SciPy's message, ReturnCode), checked in order.
    """

    function: ClassVar[str]
    maxiter: ClassVar[str] = "maxiter"
    budget: ClassVar[str] = "iterations"
    messages: ClassVar[tuple[tuple[str, ReturnCode], ...]] = ()

    def __init__(self, **options: Any) -> None:
        check_options(options, self.known(), f"{type(self).__name__}(...)")
        self.options = options

    def __repr__(self) -> str:
        given = {k: v for k, v in vars(self).items() if k != "options" and v is not None}
        args = {**given, **self.options}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"

    @classmethod
    def known(cls) -> frozenset[str]:
        """The options SciPy's function takes that optiframe does not set itself."""
        return frozenset(inspect.signature(cls.scipy_function()).parameters) - _RESERVED

    @classmethod
    def scipy_function(cls) -> Callable[..., Any]:
        import scipy.optimize

        return getattr(scipy.optimize, cls.function)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True, needs_bounds=True, budget=self.budget, keywords=_KEYWORDS
        )

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        check_options(
            options.solver_options, self.known(), f"solve(..., **options) with {self!r}"
        )
        return _GlobalRun(self, problem, options).solve()

    def settings(self, run: HostRun) -> dict[str, Any]:
        """SciPy's keyword arguments: the algorithm's options, `solve`'s, and `maxiters`."""
        given = {**self.options, **run.options.solver_options}
        return run.settings(type(self).__name__, given, {"maxiters": self.maxiter})


class _SeededGlobal(_Global):
    """A global method with a random seed (SciPy's `rng`)."""

    def __init__(self, seed: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.seed = check_seed(type(self).__name__, seed, optional=True)


class DifferentialEvolution(_SeededGlobal):
    """`scipy.optimize.differential_evolution`. `maxiters` = generations.

    Args:
        seed: the random seed (SciPy's `rng`).
        **options: passed to SciPy (`popsize`, `strategy`, `tol`, `polish`, ...).
    """

    function = "differential_evolution"
    budget = "generations"
    messages = (
        ("maximum number of iterations", ReturnCode.MaxIters),
        ("maximum number of function evaluations", ReturnCode.MaxIters),
    )

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        def callback(intermediate_result):
            run.iteration(intermediate_result.x, intermediate_result.fun)

        return scipy.optimize.differential_evolution(
            run.objective.value, scipy.optimize.Bounds(*flat_bounds(run.problem)),
            rng=self.seed, callback=callback, x0=run.objective.x0, **self.settings(run),
        )


class DualAnnealing(_SeededGlobal):
    """`scipy.optimize.dual_annealing`; its local searches use JAX gradients.
    `maxiters` = annealing iterations.

    Args:
        seed: the random seed (SciPy's `rng`).
        **options: passed to SciPy.
    """

    function = "dual_annealing"
    messages = (
        ("maximum number of iteration", ReturnCode.MaxIters),
        ("maximum number of function call", ReturnCode.MaxIters),
    )

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        obj = run.objective

        def callback(x, f, context):
            run.iteration(x, f)

        local = {"method": "L-BFGS-B", "jac": lambda x: obj.value_and_grad(x)[1]}
        return scipy.optimize.dual_annealing(
            obj.value, scipy.optimize.Bounds(*flat_bounds(run.problem)), rng=self.seed,
            callback=callback, x0=obj.x0, minimizer_kwargs=local, **self.settings(run),
        )


class SHGO(_Global):
    """`scipy.optimize.shgo`, simplicial homology global optimisation; its local searches
    use JAX gradients. `maxiters` = SHGO's `options["maxiter"]`.

    Args:
        **options: passed to SciPy (`n`, `iters`, `sampling_method`, `options`, ...).
    """

    function = "shgo"

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        obj = run.objective
        settings = {**self.options, **run.options.solver_options}
        inner = dict(settings.pop("options", {}))
        if run.options.maxiters is not None:
            inner["maxiter"] = run.options.maxiters
        local = {"method": "SLSQP", "jac": lambda x: obj.value_and_grad(x)[1]}
        return scipy.optimize.shgo(
            obj.value, list(zip(*flat_bounds(run.problem))), callback=run.iteration,
            minimizer_kwargs=local, options=inner, **settings,
        )


class Direct(_Global):
    """`scipy.optimize.direct`, deterministic DIviding RECTangles. `maxiters` = its
    iterations.

    Args:
        **options: passed to SciPy (`eps`, `maxfun`, `locally_biased`, `vol_tol`, ...).
    """

    function = "direct"
    messages = (
        ("larger than maxfun", ReturnCode.MaxIters),
        ("larger than maxiter", ReturnCode.MaxIters),
    )

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        return scipy.optimize.direct(
            run.objective.value, scipy.optimize.Bounds(*flat_bounds(run.problem)),
            callback=run.iteration, **self.settings(run),
        )


class BasinHopping(_SeededGlobal):
    """`scipy.optimize.basinhopping`: random hops, each followed by a JAX-gradient L-BFGS-B
    local search (bounded when the problem has bounds, and hops clipped into the box).
    `maxiters` = hops (SciPy's `niter`).

    Args:
        seed: the random seed (SciPy's `rng`).
        **options: passed to SciPy (`T`, `stepsize`, `niter_success`, ...).
    """

    function = "basinhopping"
    maxiter, budget = "niter", "hops"
    messages = (("requested number of basinhopping iterations", ReturnCode.MaxIters),)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True, needs=frozenset({"grad"}), budget=self.budget, keywords=_KEYWORDS
        )

    def call(self, run: HostRun) -> scipy.optimize.OptimizeResult:
        import scipy.optimize

        obj, bounds = run.objective, flat_bounds(run.problem)
        local: dict[str, Any] = {"method": "L-BFGS-B", "jac": True}
        settings = self.settings(run)
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


for _cls in (DifferentialEvolution, DualAnnealing, SHGO, Direct, BasinHopping):
    register(_cls.__name__, _cls)
