"""The Nevergrad backend: every optimizer of Nevergrad's registry behind `solve`.

One run asks Nevergrad for a batch of candidates, evaluates the batch, tells Nevergrad every
value, and repeats until the evaluation budget (`maxiters`) is spent:

- an objective written in JAX (`ad="jax"`, the default) is evaluated a whole batch at a
  time, in one `jax.vmap`-ed, jitted call, in float64 (`_nevergrad_eval.JaxEvaluator`);
- host code (`ad="finite"` or `ad=None`) is called once per candidate on NumPy
  (`_nevergrad_eval.HostEvaluator`), or in parallel through an `executor`.

Evaluations start as soon as their candidates are asked (a JAX batch once the whole batch
is). The last evaluation of the budget goes to Nevergrad's recommendation; `sol.u` is the
best point evaluated (for a deterministic objective), and the recommendation stays in
`sol.original`. The run around the loop (callback, bar, clock, Ctrl-C, best point) is the
shared host lifecycle (`_host.py`). See docs/nevergrad.md.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .._checks import count, lookup, number
from .._checks import seed as check_seed
from ..errors import InvalidProblemError, UnsupportedFeatureError
from ..flat import restore_like
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from ._host import BestPoint, HostRun
from ._lifecycle import Stop, budget_message, call_back, check_options
from ._nevergrad_eval import (
    Batch,
    ExecutorEvaluator,
    HostConstraints,
    HostEvaluator,
    JaxEvaluator,
    Pending,
    aux_at,
    join,
)
from ._nevergrad_patches import patch, seeded_cma
from ._nevergrad_space import BOUNDINGS, SearchSpace
from .base import Algorithm, Capabilities, SolveOptions, register, register_prefix

# Nevergrad's own cap on a loss it is told (larger values are clipped, with a warning).
BAD_LOSS = 5.0e20

# The bounding (`set_bounds(method=...)`) each family of optimizers gets by default; chosen
# by `benchmarks/bench_nevergrad.py --bounding` (docs/nevergrad.md has the measurements).
DEFAULT_BOUNDING = {
    "CMA": "clipping",
    "DE": "clipping",
    "PSO": "clipping",
    "OnePlusOne": "clipping",
    "NGOpt": "clipping",
    "recast": "clipping",
    "other": "bouncing",
}

# Nevergrad's `tell(..., constraint_violation=v, penalty_style=(a, b, c, d, e, f))` adds
# (a * [past half the budget] + max(loss, 0)) * (f + told) ** e * (b * sum(v ** c)) ** d.
# Nevergrad's default (1e5, 1, 0.5, 1, 0.5, 1), a square root of the violation under a
# weight growing with time, stalls CMA on Hock-Schittkowski 71 at 5-40 % above the optimum;
# a fixed quadratic penalty (the sum of violations squared) with a weight of 1e4 from half
# the budget reaches it (see docs/nevergrad.md).
PENALTY_STYLE = (1e4, 1.0, 1.0, 2.0, 0.0, 1.0)

_OPTIONS: dict[str, Any] = {
    "bounding": None,
    "constraints": "penalty",
    "constraint_tol": 1e-6,
    "penalty_style": PENALTY_STYLE,
    "batch_mode": True,
    "noisy": False,
    "chunk": None,
}
_CONSTRAINT_MODES = ("penalty", "cheap")


def _import_nevergrad() -> Any:
    try:
        import nevergrad as ng
    except ImportError as err:
        raise UnsupportedFeatureError(
            "opf.Nevergrad needs the nevergrad package: pip install 'optiframe[nevergrad]'."
        ) from err
    patch()
    # Nevergrad's CMA tells the `cma` package points repaired into the bounds ("injected"),
    # one ask at a time, and `cma` then warns about "orphanated injected solution"s: a
    # notice about Nevergrad's calling pattern that a user cannot act on.
    warnings.filterwarnings("ignore", message="orphanated injected solution", module="cma")
    return ng


# --------------------------------------------------------------------------- results


class NevergradResult(NamedTuple):
    """`sol.original` of a Nevergrad run.

    Attributes:
        recommendation: Nevergrad's recommendation (`optimizer.provide_recommendation()`),
            an `ng.p.Parameter`; for a deterministic objective `sol.u` is instead the best
            point evaluated, which can be better.
        recommended_u: the recommendation in `u0`'s structure (NumPy leaves).
        recommended_objective: `fun` at the recommendation (NaN if there is none or the run
            was interrupted).
        optimizer: the Nevergrad optimizer after the run (background threads of recast
            optimizers stopped: it can be inspected, not continued).
        selected: the optimizer that did the work (NGOpt and the other wizards pick one).
        nonfinite: how many evaluations returned NaN or inf.
    """

    recommendation: Any
    recommended_u: Any
    recommended_objective: float
    optimizer: Any
    selected: str
    nonfinite: int


class NevergradStep(NamedTuple):
    """`state.original` in a callback: the batch just told.

    Attributes:
        optimizer: the Nevergrad optimizer.
        candidates: the told `ng.p.Parameter`s.
        us: the candidates in `u0`'s structure (NumPy leaves).
        objectives: (b,) the value of `fun` at each.
        violations: (b,) the largest constraint violation of each, or None.
        best_objective: the best objective seen so far (over feasible candidates).
    """

    optimizer: Any
    candidates: list[Any]
    us: list[Any]
    objectives: np.ndarray
    violations: np.ndarray | None
    best_objective: float


# --------------------------------------------------------------------------- options


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_options(
        options, _OPTIONS, where, "Configure the optimizer itself by passing a configured "
        "optimizer, e.g. ng.families.ParametrizedCMA(popsize=20).",
    )
    bounding = options.get("bounding")
    if bounding is not None and bounding not in BOUNDINGS:
        raise InvalidProblemError(
            f"`{where}(bounding={bounding!r})` must be None (the default for the optimizer's "
            f"family) or one of {', '.join(map(repr, BOUNDINGS))}."
        )
    mode = options.get("constraints", "penalty")
    if mode not in _CONSTRAINT_MODES:
        raise InvalidProblemError(
            f"`{where}(constraints={mode!r})` must be 'penalty' or 'cheap'."
        )
    number(where, "constraint_tol", options.get("constraint_tol", 0.0))
    style = options.get("penalty_style", PENALTY_STYLE)
    if not (
        isinstance(style, (tuple, list)) and len(style) == 6
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in style)
    ):
        raise InvalidProblemError(
            f"`{where}(penalty_style={style!r})` must be 6 numbers (a, b, c, d, e, f) as "
            "Nevergrad's tell(penalty_style=...) takes them."
        )
    count(where, "chunk", options.get("chunk"), optional=True)
    for flag in ("batch_mode", "noisy"):
        if flag in options and not isinstance(options[flag], bool):
            raise InvalidProblemError(f"`{where}({flag}={options[flag]!r})` must be True or False.")
    return dict(options)


# --------------------------------------------------------------------------- the algorithm


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Nevergrad(Algorithm):
    """Any Nevergrad optimizer as an optiframe algorithm.

    `maxiters` is the evaluation budget: the number of candidates evaluated (Nevergrad's
    `budget`); Nevergrad's recommendation, unless it is the best candidate already, is
    evaluated once more after the budget (counted in `stats.fevals`). `sol.u` is the best
    point evaluated; with constraints, the best whose constraints hold to `constraint_tol`.
    The recommendation is in `sol.original.recommendation`.

    Args:
        name: a name in `ng.optimizers.registry` ("NGOpt", "CMA", "TwoPointsDE", "PSO",
            ...; a unique case-insensitive match is accepted), an optimizer class, or a
            configured optimizer (`ng.families.ParametrizedCMA(popsize=20)`).
        seed: seeds Nevergrad's random state; the same seed gives the same result. None
            draws a fresh one.
        num_workers: candidates asked, evaluated and told per batch. On a JAX objective a
            batch is one `jax.vmap`-ed call; with `executor`, up to this many evaluations
            run at once. Nevergrad also adapts its strategy to it (e.g. CMA's population).
        executor: a `concurrent.futures.Executor` (a process pool, or a dask.distributed
            client's `get_executor()`) that evaluates `fun(u, p)` on NumPy, as Nevergrad's
            own `minimize(executor=...)` does, for objectives that are not JAX.
        **options: `bounding` (None: the default of the optimizer's family, or one of
            "bouncing", "clipping", "arctan", "tanh", "constraint"), `constraints`
            ("penalty", the default, or "cheap"), `constraint_tol` (1e-6), `batch_mode`
            (True: with an executor, tell whole batches in asked order, reproducibly;
            False: Nevergrad's steady state, tell each result as it arrives), `noisy`
            (False; True: the objective is stochastic, `sol.u` is Nevergrad's
            recommendation), `penalty_style` (see `PENALTY_STYLE`) and `chunk` (None: a
            batch is one `jax.vmap`; an integer: vmap that many candidates at a time, the
            chunks looped inside the same jitted call, which keeps a compute-bound
            evaluation in cache and bounds memory). The same options may be given to
            `solve`.

    Raises:
        InvalidProblemError: a bad `seed`, `num_workers`, `executor` or option.

    Example:
        >>> sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0, num_workers=8), maxiters=2000)
        >>> sol.u, sol.objective, sol.original.recommendation
    """

    name: Any
    seed: int | None
    num_workers: int
    executor: Any
    options: Mapping[str, Any]

    def __init__(
        self,
        name: Any = "NGOpt",
        *,
        seed: int | None = None,
        num_workers: int = 1,
        executor: Any = None,
        **options: Any,
    ) -> None:
        if hasattr(name, "ask") and hasattr(name, "tell") and not isinstance(name, type):
            raise InvalidProblemError(
                f"`Nevergrad(name=...)` got an optimizer instance ({type(name).__name__}); pass "
                "its class or a configured optimizer instead: optiframe builds the optimizer "
                "from the problem (parametrization, budget, num_workers)."
            )
        if not isinstance(name, str) and not callable(name):
            raise InvalidProblemError(
                f"`Nevergrad(name={name!r})` must be a name in ng.optimizers.registry, an "
                "optimizer class or a configured optimizer."
            )
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise InvalidProblemError(
                f"`Nevergrad(executor=...)` must have a submit(fn, *args) method (a "
                f"concurrent.futures.Executor), got {type(executor).__name__}."
            )
        options = _check_options(options, "Nevergrad")
        for field, value in (
            ("name", name.strip() if isinstance(name, str) else name),
            ("seed", check_seed("Nevergrad", seed, optional=True)),
            ("num_workers", count("Nevergrad", "num_workers", num_workers)),
            ("executor", executor),
            ("options", options),
        ):
            object.__setattr__(self, field, value)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True,
            constraints=True,
            integrality=True,
            data=False,
            budget="evaluations",
            needs_budget=True,
            keywords=frozenset(("maxiters", "maxtime", "callback", "progress", "save_best")),
        )

    def __repr__(self) -> str:
        name = self.name if isinstance(self.name, str) else _display(self.name)
        extras = [f"{name!r}"]
        if self.seed is not None:
            extras.append(f"seed={self.seed}")
        if self.num_workers != 1:
            extras.append(f"num_workers={self.num_workers}")
        if self.executor is not None:
            extras.append(f"executor={type(self.executor).__name__}")
        extras += [f"{k}={v!r}" for k, v in sorted(self.options.items())]
        return f"Nevergrad({', '.join(extras)})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        settings = {
            **_OPTIONS,
            **self.options,
            **_check_options(options.solver_options, "solve"),
        }
        return _NevergradRun(self, problem, options, settings).solve()


def _display(obj: Any) -> str:
    if isinstance(obj, type):
        return obj.__name__
    return getattr(obj, "name", None) or repr(obj)


def resolve_optimizer(name: Any) -> tuple[Any, str]:
    """(the optimizer class or configured optimizer, its name) for `Nevergrad(name=...)`.

    Raises:
        InvalidProblemError: an unknown name (listing the close matches) or a bad object.
    """
    ng = _import_nevergrad()
    from nevergrad.optimization import base

    registry = ng.optimizers.registry
    if isinstance(name, str):
        listing = f"Nevergrad's {len(registry)} optimizers (ng.optimizers.registry)"
        return lookup(f"Nevergrad(name={name!r})", name, registry, listing)
    if isinstance(name, base.ConfiguredOptimizer) or (
        isinstance(name, type) and issubclass(name, base.Optimizer)
    ):
        return name, _display(name)
    if isinstance(name, base.Optimizer):
        raise InvalidProblemError(
            f"`Nevergrad(name=...)` got an optimizer instance ({type(name).__name__}); pass "
            "its class or a configured optimizer instead: optiframe builds the optimizer "
            "from the problem (parametrization, budget, num_workers)."
        )
    raise InvalidProblemError(
        f"`Nevergrad(name=...)` must be a name in ng.optimizers.registry, an optimizer class "
        f"or a configured optimizer, got {type(name).__name__}."
    )


def family(factory: Any) -> str:
    """The family of a Nevergrad optimizer class or configured optimizer, the key of
    `DEFAULT_BOUNDING`."""
    from nevergrad.optimization import (
        base,
        differentialevolution,
        optimizerlib,
        recaster,
        recastlib,
    )

    if isinstance(factory, base.ConfiguredOptimizer):
        kinds = (
            (optimizerlib.ParametrizedCMA, "CMA"),
            (differentialevolution.DifferentialEvolution, "DE"),
            (optimizerlib.ConfPSO, "PSO"),
            (optimizerlib.ParametrizedOnePlusOne, "OnePlusOne"),
            (recastlib.NonObjectOptimizer, "recast"),
        )
        for kind, key in kinds:
            if isinstance(factory, kind):
                return key
        return "other"
    if issubclass(factory, optimizerlib.NGOptBase):
        return "NGOpt"
    if issubclass(factory, (optimizerlib.MetaCMA, optimizerlib._CMA)):
        return "CMA"
    if issubclass(factory, recaster.RecastOptimizer):
        return "recast"
    return "other"


# --------------------------------------------------------------------------- one run


def _stop_threads(optimizer: Any, timeout: float = 1.0) -> None:
    """Stop the background threads of recast optimizers anywhere inside `optimizer` and wait
    (up to `timeout` seconds each) until they have ended, so a kept optimizer never blocks
    the interpreter's exit and no thread of a finished run draws random numbers during the
    next one."""
    from nevergrad.optimization import base

    seen: set[int] = set()
    stack = [optimizer]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, base.Optimizer):
            thread = getattr(obj, "_messaging_thread", None)
            if thread is not None:
                thread.stop()
                inner = getattr(thread, "_thread", None)  # the threading.Thread itself
                if inner is not None:
                    inner.join(timeout)
            stack.extend(vars(obj).values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())


class _NevergradRun(HostRun):
    """One call of `solve` with the Nevergrad backend: `maxiters - 1` candidates asked,
    evaluated and told in batches, then the last evaluation of the budget spent on
    Nevergrad's recommendation (or, when that is the best candidate already, on one more
    candidate)."""

    alg: Nevergrad
    search = True

    def __init__(
        self, alg: Nevergrad, problem: OptimizationProblem, options: SolveOptions,
        settings: dict[str, Any],
    ) -> None:
        super().__init__(alg, problem, options)
        self.settings = settings
        self.ng = _import_nevergrad()
        self.factory, self.label = resolve_optimizer(alg.name)
        self.family = family(self.factory)
        self.space = SearchSpace(problem)
        self.k = alg.num_workers
        self.executor = alg.executor
        self.tol = float(settings["constraint_tol"])
        self.best = BestPoint(self.tol)
        self.cheap = problem.has_constraints and settings["constraints"] == "cheap"
        if getattr(self.factory, "no_parallelization", False) and self.k > 1:
            raise UnsupportedFeatureError(
                f"Nevergrad's {self.label} evaluates one candidate at a time and cannot take "
                f"num_workers={self.k}; use num_workers=1, or a population method that "
                "batches well ('TwoPointsDE', 'PSO', 'CMA', 'NGOpt')."
            )
        if not settings["batch_mode"] and self.executor is None:
            raise UnsupportedFeatureError(
                "`batch_mode=False` (Nevergrad's steady state: tell each result as it arrives) "
                "needs an executor; pass Nevergrad(executor=...) or drop batch_mode."
            )
        if self.cheap and np.any(problem.lcons == problem.ucons):
            raise UnsupportedFeatureError(
                "`constraints='cheap'` resamples candidates until the constraints hold, "
                "which random samples of an equality constraint (lcons == ucons) almost never "
                "do; use constraints='penalty' (the default)."
            )
        default = "penalty" if problem.has_constraints and not self.cheap else None
        self.bounding = settings["bounding"] or default or DEFAULT_BOUNDING[self.family]
        self.penalised = (problem.has_constraints and not self.cheap) or (
            self.bounding == "penalty" and problem.has_bounds
        )
        self.style = tuple(float(v) for v in settings["penalty_style"])
        # Candidates per evaluation call, started as soon as they are asked: a JAX call
        # takes the whole batch, host code and an executor one candidate.
        if self.executor is not None:
            self.evaluator = ExecutorEvaluator(problem, self.space, self.executor)
            self.per_call = 1
        elif problem.f.ad != "jax":
            self.evaluator = HostEvaluator(problem, self.space)
            self.per_call = 1
        else:
            self.evaluator = JaxEvaluator(problem, self.k, settings["chunk"])
            self.per_call = self.k

        self.fevals = self.batches = self.nonfinite = 0
        self.recommendation, self.recommended_objective = None, np.nan
        self.notes: list[str] = []

    # -- setting up

    def _optimizer(self) -> Any:
        param = self.space.parametrization(self.ng, self.bounding)
        if self.settings["noisy"]:
            param.function.deterministic = False
        if self.cheap:
            for check in self._cheap_checks():
                param.register_cheap_constraint(check)
        if self.alg.seed is not None:
            param.random_state = np.random.RandomState(self.alg.seed)
        try:
            return self.factory(
                parametrization=param, budget=self.options.maxiters, num_workers=self.k
            )
        except ImportError as err:
            raise _missing(self.label, err) from err

    def _cheap_checks(self) -> list[Any]:
        """One cheap constraint per constraint, as Nevergrad wants them: a float >= 0 when
        satisfied (to `constraint_tol`)."""
        cons = HostConstraints(self.problem, self.space)
        space, tol = self.space, self.tol

        def check(i):
            def satisfied(value) -> float:
                return float(tol - cons(space.flat(value)[None])[0, i])

            satisfied.__name__ = f"constraint_{i}"
            return satisfied

        return [check(i) for i in range(self.problem.lcons.size)]

    # -- the loop

    def minimize(self) -> tuple[ReturnCode, str] | None:
        """Run Nevergrad; None when the budget is spent, else the verdict of the optimizer's
        own stopping rule."""
        optimizer = self.optimizer = self._optimizer()
        self.recast = self._recast_driver(optimizer)
        budget, steady = self.options.maxiters, self.executor and not self.settings["batch_mode"]
        try:
            with seeded_cma(self.alg.seed):
                ended = (self._steady if steady else self._batched)(optimizer, budget - 1)
                if self.fevals < budget:
                    ended = self._last(optimizer) or ended
        finally:
            try:
                self.recommendation = optimizer.provide_recommendation()
            except Exception:  # a recommendation is a courtesy; the run's result stands
                self.recommendation = None
            _stop_threads(optimizer)
        return ended

    def _last(self, optimizer: Any) -> tuple[ReturnCode, str] | None:
        """The last evaluation of the budget: Nevergrad's recommendation, unless it is the
        best candidate already (then one more candidate). CMA recommends the mean of its
        search distribution and a metamodel the optimum of its fitted model, points never
        evaluated that can beat every evaluated one. With `noisy=True` it is `sol.u`
        whatever its value."""
        recommendation = self._guarded(optimizer.provide_recommendation)
        X, _ = self._points([recommendation])
        noisy = self.settings["noisy"]
        if not noisy and self.best.x is not None and np.array_equal(X[0], self.best.x):
            self.recommended_objective = self.sign * self.best.loss
            return self._batched(optimizer, 1)
        batch = self.evaluator.start(X)()
        self.fevals += 1
        self.recommended_objective = float(batch.objectives[0])
        if not np.isfinite(batch.losses[0]):
            self.nonfinite += 1
        worst = 0.0 if batch.violations is None else float(np.max(batch.violations[0]))
        if noisy:
            self.best = BestPoint(self.tol)
        before = self.best.x
        self.best.offer(X[0], batch.losses[0], worst)
        if self.best.x is not before and not noisy:
            self.notes.append(
                "the best point is Nevergrad's recommendation, the budget's last evaluation"
            )
        return None

    def _recast_driver(self, optimizer: Any) -> bool:
        """Whether the optimizer doing the work runs a library's own loop in a thread
        (scipy's Powell, COBYLA, ...), which may converge before the budget is spent."""
        from nevergrad.optimization import optimizerlib, recaster

        inner = optimizer.optim if isinstance(optimizer, optimizerlib.NGOptBase) else optimizer
        self.selected = getattr(inner, "name", type(inner).__name__)
        return isinstance(inner, recaster.SequentialRecastOptimizer)

    def _ask(self, optimizer: Any) -> Any | None:
        """One candidate, or None when a recast optimizer's own loop has converged."""
        if not self.recast:
            return self._guarded(optimizer.ask)
        from nevergrad.common import errors

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", errors.FinishedUnderlyingOptimizerWarning)
            candidate = self._guarded(optimizer.ask)
        done = errors.FinishedUnderlyingOptimizerWarning
        finished = [w for w in caught if issubclass(w.category, done)]
        for w in caught:
            if w not in finished:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return None if finished else candidate

    def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except ImportError as err:
            raise _missing(self.label, err) from err
        except RuntimeError as err:
            if isinstance(err.__cause__, ImportError):
                raise _missing(self.label, err.__cause__) from err
            raise

    def _points(self, candidates: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """(the points to evaluate, inside the box; how far outside it Nevergrad's points
        lie, with the "penalty" bounding, else None)."""
        raw = np.stack([self.space.flat(c.value, clip=False) for c in candidates])
        if not self.problem.has_bounds:
            return raw, None
        box = self.space.box_violation(raw) if self.bounding == "penalty" else None
        return np.clip(raw, self.space.lb, self.space.ub), box

    def _tell_all(self, optimizer: Any, candidates: list[Any], batch: Batch, box: Any) -> None:
        told = np.where(np.isfinite(batch.losses), batch.losses, BAD_LOSS)
        if not self.penalised:
            for candidate, loss in zip(candidates, told):
                self._guarded(optimizer.tell, candidate, float(loss))
            return
        parts = []
        if batch.violations is not None and not self.cheap:
            parts.append(np.maximum(batch.violations - self.tol, 0.0))
        if box is not None:
            parts.append(box[:, None])
        v = np.minimum(np.concatenate(parts, axis=1), BAD_LOSS)
        for candidate, loss, row in zip(candidates, told, v):
            self._guarded(
                optimizer.tell, candidate, float(loss), list(row), penalty_style=self.style
            )

    def _batched(self, optimizer: Any, budget: int) -> tuple[ReturnCode, str] | None:
        """Ask a batch, evaluate it, tell it, until `budget` more candidates are evaluated.
        The evaluation of each `self.per_call` candidates starts as soon as they are asked
        (with an executor, each candidate's), so Nevergrad's asks overlap the evaluation of
        the earlier ones, and the tells of each chunk the evaluation of the later ones;
        Nevergrad sees exactly the sequential ask-all, tell-all order."""
        end = self.fevals + budget
        while self.fevals < end:
            candidates: list[Any] = []
            started: list[tuple[list[Any], np.ndarray, Any, Pending]] = []
            size = min(self.k, end - self.fevals)
            while len(candidates) < size:
                candidate = self._ask(optimizer)
                if candidate is None:
                    break
                candidates.append(candidate)
                if len(candidates) % self.per_call == 0:
                    started.append(self._start(candidates[-self.per_call :]))
            if not candidates:
                return self._finished()
            if len(candidates) % self.per_call:
                started.append(self._start(candidates[-(len(candidates) % self.per_call) :]))
            X, batches = [], []
            for chunk, points, box, pending in started:
                batch = pending()
                self._tell_all(optimizer, chunk, batch, box)
                X.append(points)
                batches.append(batch)
            self._after_batch(optimizer, candidates, np.concatenate(X), join(batches))
        return None

    @property
    def done(self) -> int:
        """What the bar counts: evaluations."""
        return self.fevals

    def _finished(self) -> tuple[ReturnCode, str]:
        return ReturnCode.Success, (
            f"{self.selected}'s own stopping rule ended it after {self.fevals} evaluations"
        )

    def _start(self, candidates: list[Any]) -> tuple[list[Any], np.ndarray, Any, Pending]:
        """Start evaluating `candidates`: (them, their points, box violations, pending)."""
        X, box = self._points(candidates)
        return candidates, X, box, self.evaluator.start(X)

    def _steady(self, optimizer: Any, budget: int) -> tuple[ReturnCode, str] | None:
        """Nevergrad's steady state with an executor: keep `num_workers` evaluations
        running, tell each result as it arrives (the order depends on timing)."""
        running: dict[Any, Any] = {}
        asked = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(running) < self.k and asked < budget:
                    candidate = self._ask(optimizer)
                    if candidate is None:
                        exhausted = True
                        break
                    running[self.evaluator.submit(self._points([candidate])[0][0])] = candidate
                    asked += 1
                if not running:
                    break
                remaining = self.clock.remaining()
                done, _ = _wait(list(running), remaining if np.isfinite(remaining) else None)
                self.clock.check()
                done = [f for f in running if f in done]  # in asked order
                candidates = [running.pop(f) for f in done]
                X, box = self._points(candidates)
                batch = self.evaluator.collect(X, done)
                self._tell_all(optimizer, candidates, batch, box)
                self._after_batch(optimizer, candidates, X, batch)
        finally:
            for future in running:
                future.cancel()
        return self._finished() if exhausted else None

    def _after_batch(
        self, optimizer: Any, candidates: list[Any], X: np.ndarray, batch: Batch
    ) -> None:
        """Count a told batch, keep its best candidate, show it to the bar and the callback,
        and check the clock."""
        b = len(candidates)
        self.fevals += b
        self.batches += 1
        self.nonfinite += int(np.sum(~np.isfinite(batch.losses)))
        worst = np.zeros(b) if batch.violations is None else np.max(batch.violations, axis=1)
        for i in range(b):
            self.best.offer(X[i], batch.losses[i], worst[i])
        self.progress.show(self.fevals, self.sign * self.best.loss)
        if self.options.callback is not None:
            keys = [
                (0, loss) if v <= self.tol else (1, v) if np.isfinite(loss) else (2, 0.0)
                for loss, v in zip(batch.losses, worst)
            ]
            i = min(range(b), key=keys.__getitem__)
            us = [self.space.tree(x) for x in X]
            step = NevergradStep(
                optimizer, candidates, us, batch.objectives,
                None if batch.violations is None else worst, float(self.sign * self.best.loss),
            )
            call_back(self.options.callback, OptimizationState(
                iter=self.batches, u=restore_like(us[i], self.problem.u0),
                objective=float(batch.objectives[i]), p=self.problem.p,
                aux=aux_at(batch.aux, i), original=step,
            ))
        self.clock.check()

    # -- the result

    def solution(self, result: Any, stop: Stop) -> OptimizationSolution:
        problem, best, space = self.problem, self.best, self.space
        retcode, message = stop.retcode, stop.message
        if retcode is None and result is not None:
            retcode, message = result
        recommended_u = None
        if self.recommendation is not None:
            recommended_u = restore_like(
                space.tree(space.flat(self.recommendation.value)), problem.u0
            )
        x, objective = best.x, self.sign * best.loss
        notes = list(self.notes)
        if self.nonfinite:
            notes.append(f"{self.nonfinite} evaluations were NaN or inf")
        if x is None:
            x, objective = space.x0, np.nan
            retcode, message = ReturnCode.Failure, (
                "no evaluation returned a finite objective; returning u0"
                if self.fevals else "no candidate was evaluated; returning u0"
            )
        elif problem.has_constraints and best.violation > self.tol and not self.settings["noisy"]:
            if retcode is None or retcode is ReturnCode.Success:
                retcode = ReturnCode.Infeasible
            notes.insert(0, (
                f"no candidate met the constraints to constraint_tol={self.tol}; returning "
                f"the least violating one (largest violation {best.violation:.3g})"
            ))
        if retcode is None:
            retcode, message = budget_message(self.options, "evaluations")
        return OptimizationSolution(
            u=restore_like(space.tree(x), problem.u0),
            objective=float(objective),
            retcode=retcode,
            stats=Stats(iterations=self.batches, fevals=self.fevals),
            original=NevergradResult(
                self.recommendation, recommended_u, self.recommended_objective,
                self.optimizer, self.selected, self.nonfinite,
            ),
            message="; ".join(m for m in [message, *notes] if m),
        )


def _wait(futures: list[Any], timeout: float | None) -> tuple[set[Any], set[Any]]:
    """`concurrent.futures.wait(FIRST_COMPLETED)`, also for futures of other kinds (anything
    with done()), polled."""
    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        return concurrent.futures.wait(
            futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
    deadline = None if timeout is None else time.perf_counter() + timeout
    pause = 1e-4
    while True:
        done = {f for f in futures if f.done()}
        if done or (deadline is not None and time.perf_counter() >= deadline):
            return done, set(futures) - done
        time.sleep(pause)
        pause = min(2 * pause, 0.01)


def _missing(label: str, err: BaseException) -> UnsupportedFeatureError:
    package = getattr(err, "name", None) or str(err)
    return UnsupportedFeatureError(
        f"Nevergrad's {label} needs a package that is not installed ({package}): install it, "
        "or choose another optimizer (e.g. 'NGOpt', 'CMA', 'TwoPointsDE')."
    )


# --------------------------------------------------------------------------- names


register_prefix("nevergrad", lambda name: Nevergrad(name))
for _name in ("NGOpt", "CMA", "TwoPointsDE", "PSO", "DE", "OnePlusOne"):
    register(f"nevergrad:{_name}", lambda _name=_name: Nevergrad(_name))
