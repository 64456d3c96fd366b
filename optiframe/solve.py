"""`solve`: resolve the algorithm, validate the common keywords, check capabilities once,
dispatch to the backend."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._checks import count, number
from ._mesh import spans_processes
from .backends.base import (
    COMMON_KEYWORDS,
    Algorithm,
    SolveOptions,
    registered_algorithms,
    resolve,
)
from .data import DataLoader, batches_per_epoch, is_data_iterator, is_one_shot
from .derivatives import check_objective, derivatives
from .ensemble import EnsembleProblem, EnsembleSolution, solve_members
from .errors import InvalidProblemError, OptiframeError, UnsupportedFeatureError
from .flat import device_shapes
from .history import as_history
from .problem import OptimizationProblem
from .progress import as_progress
from .solution import OptimizationSolution

_DEFAULTS = dict(
    maxiters=None, maxtime=None, abstol=None, reltol=None, callback=None, progress=False,
    epochs=None, warm_start=None, save_best=False, history=None,
)


def solve(
    prob: OptimizationProblem,
    alg: Any,
    *,
    maxiters: int | None = None,
    maxtime: float | None = None,
    abstol: float | None = None,
    reltol: float | None = None,
    callback: Callable[..., Any] | None = None,
    progress: Any = False,
    epochs: int | None = None,
    warm_start: OptimizationSolution | None = None,
    save_best: bool = False,
    history: Any = None,
    executor: concurrent.futures.Executor | None = None,
    **solver_options: Any,
) -> OptimizationSolution | EnsembleSolution:
    """Solve `prob` with `alg`.

    Args:
        prob: the problem, or an `EnsembleProblem` of many (then an `EnsembleSolution` is
            returned).
        alg: an `optax.GradientTransformation`, an optiframe algorithm object, or a
            registered name such as "adam" (unknown names list the close matches).
        maxiters: iteration budget (for a data iterator: total steps over all epochs).
        maxtime: wall-time budget in seconds; exceeding it returns `MaxTime`.
        abstol: absolute tolerance of the backend's convergence test (see the docs' table).
        reltol: relative tolerance of the backend's convergence test.
        callback: `callback(state, loss) -> bool | None`, called once per iteration with
            an `OptimizationState`; returning True stops with `Terminated`.
        progress: True or an `opf.ProgressBar` shows a tqdm bar.
        epochs: passes over a data iterator `p`.
        warm_start: a solution of the same algorithm to continue from (its `state`).
        save_best: return the iterate with the lowest objective seen instead of the last.
        history: a file path or an `opf.History`: record the run there in SQLite (every
            iteration, checkpoints of the solver's state); `opf.read_history` reads it,
            `opf.resume` continues it.
        executor: for an `EnsembleProblem` and a host algorithm (SciPy, Nevergrad), the
            `concurrent.futures.Executor` that runs the members (a process pool needs the
            problem and the algorithm to pickle); serial when None.
        **solver_options: passed to the backend untouched.

    Returns:
        An `OptimizationSolution`.

    Raises:
        UnsupportedFeatureError: `alg` cannot handle the problem or a keyword.
        InvalidProblemError: a keyword has a bad value.
        ObjectiveError: the objective is not scalar or not traceable.

    Example:
        >>> sol = opf.solve(prob, optax.adam(1e-2), maxiters=1000)
        >>> sol.u, sol.objective, sol.retcode
    """
    ensemble = prob if isinstance(prob, EnsembleProblem) else None
    if ensemble is not None:
        prob = ensemble.prob
    if not isinstance(prob, OptimizationProblem):
        raise OptiframeError(
            f"`solve(prob, ...)`: prob must be an opf.OptimizationProblem or an "
            f"opf.EnsembleProblem, got {type(prob).__name__}."
        )
    given = dict(
        maxiters=maxiters, maxtime=maxtime, abstol=abstol, reltol=reltol, callback=callback,
        progress=progress, epochs=epochs, warm_start=warm_start, save_best=save_best,
        history=history,
    )
    keywords = {
        name: value if value is not _DEFAULTS[name] else prob.kwargs.get(name, value)
        for name, value in given.items()
    }
    extra = {k: v for k, v in prob.kwargs.items() if k not in COMMON_KEYWORDS}
    algorithm = resolve(alg)
    check_capabilities(algorithm, prob, keywords)
    options = _validated_options(prob, keywords, {**extra, **solver_options})
    _check_budget(algorithm, options)
    traceable = isinstance(prob.p, DataLoader) or not is_data_iterator(prob.p)
    if prob.f.ad == "jax" and traceable:
        residuals = algorithm.capabilities.residuals
        check_objective(prob.f, device_shapes(prob.u0), _sample(prob.p), residuals=residuals)
    start = time.perf_counter()
    if ensemble is not None:
        sol = _solve_ensemble(ensemble, algorithm, options, executor, given, solver_options)
    elif executor is not None:
        raise InvalidProblemError(
            "`solve(executor=...)` runs the members of an opf.EnsembleProblem; prob is one "
            "problem: remove executor, or pass EnsembleProblem(prob, ps=..., u0s=...)."
        )
    else:
        sol = algorithm.solve(prob, options)
    stats = dataclasses.replace(sol.stats, time=time.perf_counter() - start)
    if ensemble is not None:
        return dataclasses.replace(sol, stats=stats, alg=algorithm)
    return dataclasses.replace(sol, stats=stats, problem=prob, alg=algorithm)


def _solve_ensemble(
    ensemble: EnsembleProblem, algorithm: Algorithm, options: SolveOptions,
    executor: concurrent.futures.Executor | None, given: dict[str, Any],
    solver_options: dict[str, Any],
) -> EnsembleSolution:
    """The members of `ensemble` together (an algorithm with `Capabilities.ensemble`) or one
    by one (on `executor`)."""
    if options.warm_start is not None:
        raise UnsupportedFeatureError(
            "`solve(EnsembleProblem, warm_start=...)` is not supported: start the members "
            "from where an ensemble ended with EnsembleProblem(prob, ps=..., u0s=esol.u)."
        )
    if options.history is not None:
        raise UnsupportedFeatureError(
            "`solve(EnsembleProblem, history=...)` is not supported: record members one by "
            "one, solve(ensemble.member(i), alg, history=...)."
        )
    if algorithm.capabilities.ensemble:
        if executor is not None:
            raise InvalidProblemError(
                f"`solve(EnsembleProblem, {algorithm!r}, executor=...)`: {algorithm!r} runs "
                "every member in one compiled program; executor= is for host algorithms "
                "(SciPy, Nevergrad). Remove it."
            )
        return algorithm.solve(ensemble.prob, dataclasses.replace(options, ensemble=ensemble))
    if options.callback is not None:
        raise UnsupportedFeatureError(
            f"{algorithm!r} solves an ensemble's members one by one, so no callback can see "
            "them stacked: remove callback=, or use an on-device algorithm (optax, "
            "optimistix, evosax, a gradient flow)."
        )
    keywords = {k: v for k, v in given.items() if v is not _DEFAULTS[k]}
    return solve_members(ensemble, solve, algorithm, {**keywords, **solver_options}, executor)


def _sample(p: Any) -> Any:
    """What `fun` receives as `p` in one iteration, as shapes, for tracing the objective."""
    if isinstance(p, DataLoader):
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((p.batch_size,) + a.shape[1:], a.dtype), p.arrays
        )
    return p


def _check_callback(callback: Any) -> None:
    """`callback` must be callable as callback(state, loss)."""
    if callback is None:
        return
    fix = "it must be callable as callback(state, loss) -> bool | None"
    if not callable(callback):
        raise InvalidProblemError(f"`solve(callback={callback!r})`: {fix}.")
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(callback, "__name__", type(callback).__name__)
        raise InvalidProblemError(
            f"`solve(callback={name})` takes {signature} but is called with two arguments: "
            f"{fix}; e.g. `def {name}(state, loss): ...`."
        ) from None


def _validated_options(
    prob: OptimizationProblem, kw: dict[str, Any], solver_options: dict[str, Any]
) -> SolveOptions:
    maxiters = count("solve", "maxiters", kw["maxiters"], optional=True)
    epochs = count("solve", "epochs", kw["epochs"], optional=True)
    maxtime = number("solve", "maxtime", kw["maxtime"], positive=True, optional=True)
    callback = kw["callback"]
    _check_callback(callback)
    warm_start = kw["warm_start"]
    if warm_start is not None and not isinstance(warm_start, OptimizationSolution):
        raise InvalidProblemError(
            "`solve(warm_start=...)` must be an OptimizationSolution from an earlier solve."
        )
    if is_data_iterator(prob.p):
        maxiters, epochs = _data_budget(prob.p, maxiters, epochs)
    elif epochs is not None:
        raise InvalidProblemError(
            "`solve(epochs=...)` counts passes over a data iterator, but `p` is not one; "
            "pass maxiters=, or make p an opf.DataLoader."
        )
    return SolveOptions(
        maxiters=maxiters,
        maxtime=maxtime,
        abstol=number("solve", "abstol", kw["abstol"], optional=True),
        reltol=number("solve", "reltol", kw["reltol"], optional=True),
        callback=callback,
        progress=as_progress(kw["progress"]),
        epochs=epochs,
        warm_start=warm_start,
        save_best=bool(kw["save_best"]),
        solver_options=solver_options,
        history=as_history(kw["history"]),
    )


def _data_budget(p: Any, maxiters: int | None, epochs: int | None) -> tuple[int | None, int | None]:
    """(total steps, passes) over a data iterator; None where only walking it can tell."""
    if maxiters is None and epochs is None:
        raise InvalidProblemError(
            "`p` is a data iterator: pass epochs= (passes over the data) or maxiters= "
            "(total steps)."
        )
    if is_one_shot(p):
        if epochs not in (None, 1):
            raise InvalidProblemError(
                f"`p` is a one-shot iterator (e.g. a generator) and can be walked once, but "
                f"epochs={epochs} asks for more; pass a re-iterable (a list wrapped in a "
                "class with __iter__, or an opf.DataLoader), or epochs=1."
            )
        return maxiters, 1
    nbatches = batches_per_epoch(p)
    if nbatches == 0:
        raise InvalidProblemError("`p` is a data iterator with no batches.")
    if nbatches is None:
        return maxiters, epochs
    if epochs is None:
        return maxiters, math.ceil(maxiters / nbatches)
    if maxiters is None:
        return epochs * nbatches, epochs
    if maxiters != epochs * nbatches:
        raise InvalidProblemError(
            f"`solve(maxiters={maxiters}, epochs={epochs})` disagree: {epochs} epochs of "
            f"{nbatches} batches are {epochs * nbatches} iterations. Pass only one of them."
        )
    return maxiters, epochs


_FEATURES = {
    "bounds": ("box bounds (lb/ub)", "remove lb/ub"),
    "constraints": ("constraints (lcons/ucons)", "remove the constraints"),
    "integrality": ("integer variables (integrality)", "remove integrality"),
    "data": (
        "a data iterator as p",
        "pass the full data set as p (e.g. loader.arrays)",
    ),
    "processes": (
        "data spread over the processes of jax.distributed",
        "give every process all of p (an array of its own, not a global one)",
    ),
}


def _who_can(test: Callable[[Algorithm], bool]) -> str:
    names = [name for name, alg in registered_algorithms().items() if test(alg)]
    names.sort(key=lambda name: (":" in name, name.lower()))  # plain names before "backend:NAME"
    if not names:
        return "none is registered yet"
    shown = ", ".join(repr(n) for n in names[:10])
    return "such as " + shown + (", ..." if len(names) > 10 else "")


def _check_budget(alg: Algorithm, options: SolveOptions) -> None:
    caps = alg.capabilities
    if caps.needs_budget and options.maxiters is None and options.epochs is None:
        raise InvalidProblemError(
            f"{alg!r} needs a budget of {caps.budget}: pass solve(..., maxiters=N)."
        )


def check_capabilities(
    alg: Algorithm, prob: OptimizationProblem, keywords: dict[str, Any]
) -> None:
    """Raise `UnsupportedFeatureError` if `alg` cannot handle `prob` or the `solve`
    keywords given (`keywords`: name -> value, None or False when not given).

    Called once by `solve`, before anything else looks at the problem or the keywords.
    """
    caps = alg.capabilities
    present = {
        "bounds": prob.has_bounds,
        "constraints": prob.has_constraints,
        "integrality": prob.has_integrality,
        "data": is_data_iterator(prob.p),
        "processes": spans_processes(
            prob.p.arrays if isinstance(prob.p, DataLoader) else prob.p
        ),
    }
    for feature, is_present in present.items():
        if is_present and not getattr(caps, feature):
            what, fix = _FEATURES[feature]
            others = _who_can(lambda a, f=feature: getattr(a.capabilities, f))
            raise UnsupportedFeatureError(
                f"{alg!r} does not support {what}. Either {fix}, or use an algorithm that "
                f"does ({others})."
            )
    if caps.needs_bounds and not (
        prob.has_bounds
        and all(np.all(np.isfinite(b)) for b in jax.tree.leaves((prob.lb, prob.ub)))
    ):
        raise UnsupportedFeatureError(
            f"{alg!r} searches a box: every variable needs finite bounds. Pass "
            "OptimizationProblem(..., lb=..., ub=...), or use an algorithm that needs none "
            f"({_who_can(lambda a: not a.capabilities.needs_bounds)})."
        )
    for name in COMMON_KEYWORDS:
        value = keywords[name]
        if value is not None and value is not False and name not in caps.keywords:
            others = _who_can(lambda a, n=name: n in a.capabilities.keywords)
            raise UnsupportedFeatureError(
                f"{alg!r} does not support the `{name}` keyword. Remove it, or use an "
                f"algorithm that does ({others})."
            )
    derivs = derivatives(prob.f, prob.sense)
    available = {
        "grad": derivs.value_and_grad, "hess": derivs.hess, "hvp": derivs.hvp,
        "cons_jac": derivs.cons_jac if prob.has_constraints else True,
    }
    for need in sorted(caps.needs):
        if available[need] is None:
            raise UnsupportedFeatureError(
                f"{alg!r} needs the objective's {need} but "
                f"OptimizationFunction(ad={prob.f.ad!r}) provides none: pass {need}=... to "
                "OptimizationFunction, use ad='jax' (or 'finite'), or choose a "
                f"derivative-free algorithm ({_who_can(lambda a: not a.capabilities.needs)})."
            )
