"""Algorithms made of other algorithms: `MultiStart` and `PolyOpt`."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import warnings
from typing import Any

import jax
import numpy as np

from .._checks import count
from ..data import is_data_iterator
from ..ensemble import EnsembleProblem, EnsembleSolution
from ..errors import OptiframeError
from ..flat import ravel, restore_like, to_device
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode, Stats
from ._host import flat_bounds
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, resolve
from .scipy import LBFGSB

_SAMPLERS = ("sobol", "random")


def _total(stats: list[Stats]) -> Stats:
    """The runs' counts added up (not their times)."""
    fields = ("iterations", "fevals", "gevals", "hevals")
    return Stats(**{f: sum(getattr(s, f) for s in stats) for f in fields})


def _forward(options: SolveOptions, **changes: Any) -> dict[str, Any]:
    """`options` as `solve` keywords (the common ones that are set, and solver options)."""
    keywords = dict(
        maxiters=options.maxiters, maxtime=options.maxtime, abstol=options.abstol,
        reltol=options.reltol, callback=options.callback, progress=options.progress or False,
        save_best=options.save_best, **options.solver_options,
    )
    if options.epochs is not None:
        keywords.update(epochs=options.epochs, maxiters=None)
    keywords.update(changes)
    return {k: v for k, v in keywords.items() if v is not None and v is not False}


@dataclasses.dataclass(frozen=True)
class MultiStart(Algorithm):
    """Run `alg` from `n_starts` points drawn inside the bounds; return the best run.

    The best run is the one with the lowest objective among those that did not fail or end
    infeasible (among all runs if every one did). `sol.original` holds every run's
    solution, in the order of the starting points; `stats` add up all runs. `maxtime` is
    the budget of the whole multistart: no run starts after it is spent.

    With an on-device local algorithm (optax, optimistix, evosax, a gradient flow) and no
    executor, the starts are one `EnsembleProblem` over `u0s`: one compiled program, all
    starts running together, and `sol.original` is its `EnsembleSolution`.

    Args:
        alg: the local algorithm (an object or a registered name).
        n_starts: how many starting points.
        sampler: "sobol" (scrambled Sobol' points) or "random" (uniform).
        seed: seeds the sampler.
        executor: a `concurrent.futures.Executor` to run the starts in parallel (with a
            process pool, the problem and the algorithm must pickle).

    Example:
        >>> sol = opf.solve(prob, opf.MultiStart(opf.LBFGSB(), 16, seed=1))
    """

    alg: Any
    n_starts: int = 10
    sampler: str = "sobol"
    seed: int = 0
    executor: concurrent.futures.Executor | None = None

    def __post_init__(self) -> None:
        if self.sampler not in _SAMPLERS:
            raise OptiframeError(
                f"`MultiStart(sampler={self.sampler!r})` must be one of {_SAMPLERS}."
            )
        count("MultiStart", "n_starts", self.n_starts)

    @property
    def local(self) -> Algorithm:
        return resolve(self.alg)

    @property
    def capabilities(self) -> Capabilities:
        inner = self.local.capabilities
        return dataclasses.replace(
            inner, needs_bounds=True, data=False,
            keywords=inner.keywords - {"warm_start", "epochs", "history"},
        )

    def starts(self, problem: OptimizationProblem) -> list[Any]:
        """The starting points, as pytrees shaped like `u0`."""
        x0, unravel = ravel(to_device(problem.u0))
        if self.sampler == "sobol":
            import scipy.stats

            with warnings.catch_warnings():  # Sobol' balance wants powers of 2; any n works
                warnings.simplefilter("ignore")
                unit = scipy.stats.qmc.Sobol(x0.size, seed=self.seed).random(self.n_starts)
        else:
            unit = np.random.default_rng(self.seed).uniform(size=(self.n_starts, x0.size))
        lb, ub = flat_bounds(problem)
        points = lb + unit * (ub - lb)
        return [restore_like(unravel(np.asarray(x, x0.dtype)), problem.u0) for x in points]

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        from ..solve import solve

        local, start = self.local, time.perf_counter()
        if local.capabilities.ensemble and self.executor is None:  # one vmapped program
            starts = self.starts(problem)
            u0s = jax.tree.map(lambda *leaves: np.stack(leaves), *starts)
            runs = solve(EnsembleProblem(problem, u0s=u0s), local, **_forward(options))
            return self._best(runs, len(runs))
        problems = [problem.remake(u0=u0) for u0 in self.starts(problem)]

        def run(prob: OptimizationProblem) -> OptimizationSolution | None:
            keywords = _forward(options)
            if options.maxtime is not None:
                left = options.maxtime - (time.perf_counter() - start)
                if left <= 0:
                    return None
                keywords["maxtime"] = left
            return solve(prob, local, **keywords)

        runs = list((map if self.executor is None else self.executor.map)(run, problems))
        return self._best(runs, sum(sol is not None for sol in runs))

    @staticmethod
    def _best(runs: Any, done: int) -> OptimizationSolution:
        """The best of `runs` (solutions, None for a start not run; or an
        `EnsembleSolution`), with every run in `original` and the counts added up."""
        if isinstance(runs, EnsembleSolution):
            ran, codes, objectives = range(len(runs)), runs.retcodes, runs.objective
            stats = runs.stats
        else:
            ran = [i for i, sol in enumerate(runs) if sol is not None]
            codes = [None if sol is None else sol.retcode for sol in runs]
            objectives = [np.nan if sol is None else sol.objective for sol in runs]
            stats = _total([runs[i].stats for i in ran])
        good = [
            i for i in ran
            if codes[i] not in (ReturnCode.Failure, ReturnCode.Infeasible)
            and np.isfinite(objectives[i])
        ]
        best = runs[min(good or ran, key=lambda i: objectives[i])]
        retcode, message = best.retcode, f"best of {done} starts: {best.message}"
        if done < len(runs):
            retcode = ReturnCode.MaxTime
            message = f"maxtime reached after {done} of {len(runs)} starts; " + message
        return dataclasses.replace(
            best, retcode=retcode, message=message, original=runs, stats=stats,
        )


@dataclasses.dataclass(frozen=True)
class PolyOpt(Algorithm):
    """Optimization.jl's polyalgorithm: Adam(0.01), then L-BFGS-B from Adam's result. A
    `maxiters` budget is shared: Adam takes half (rounded up), L-BFGS-B the rest; without
    one, each phase runs 300 iterations (Optimization.jl's default). With bounds, L-BFGS-B
    alone; with a data iterator, Adam alone (and a budget is required).

    `sol.original` holds the phases' solutions; `stats` add them up.

    Example:
        >>> sol = opf.solve(prob, opf.PolyOpt())
    """

    learning_rate: float = 0.01
    default_maxiters: int = 300

    @property
    def capabilities(self) -> Capabilities:
        keywords = frozenset(COMMON_KEYWORDS) - {"warm_start", "history"}
        return Capabilities(bounds=True, data=True, needs=frozenset({"grad"}), keywords=keywords)

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        import optax

        from ..solve import solve  # solve imports the backends: resolved at call time

        if is_data_iterator(problem.p) or problem.has_bounds:  # one phase
            alg = optax.adam(self.learning_rate) if is_data_iterator(problem.p) else LBFGSB()
            sol = solve(problem, alg, **_forward(options))
            return dataclasses.replace(sol, original=(sol,))
        total = options.maxiters
        adam_iters = self.default_maxiters if total is None else (total + 1) // 2
        first = solve(problem, optax.adam(self.learning_rate),
                      **_forward(options, maxiters=adam_iters))
        lbfgs_iters = self.default_maxiters if total is None else total - adam_iters
        if first.retcode in (ReturnCode.Terminated, ReturnCode.MaxTime) or lbfgs_iters == 0:
            return dataclasses.replace(first, original=(first,))
        keywords = _forward(options, maxiters=lbfgs_iters)
        if options.maxtime is not None:
            keywords["maxtime"] = max(options.maxtime - first.stats.time, 1e-3)
        second = solve(problem.remake(u0=first.u), LBFGSB(), **keywords)
        best = second if second.objective <= first.objective else first
        return dataclasses.replace(
            second, u=best.u, objective=best.objective, original=(first, second),
            stats=_total([first.stats, second.stats]),
        )


register("PolyOpt", PolyOpt)
