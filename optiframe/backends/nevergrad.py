"""The Nevergrad backend: every optimizer of Nevergrad's registry behind `solve`.

A run asks Nevergrad for candidates, evaluates them (`_nevergrad_eval`: a JAX batch in one
vmapped float64 call, host code per candidate or through an `executor`) and tells Nevergrad
every value until the evaluation budget is spent; the callback, bar, clock, Ctrl-C and the
solution are the shared host lifecycle (`_host.HostRun`). See docs/nevergrad.md.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from .._checks import count, lookup, number
from .._checks import seed as check_seed
from ..errors import InvalidProblemError, UnsupportedFeatureError
from ..flat import restore_like
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, OptimizationState, ReturnCode
from ._host import BestPoint, HostRun
from ._lifecycle import Stop, budget_message, call_back, check_options
from ._nevergrad_eval import (
    Batch,
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

BAD_LOSS = 5.0e20  # Nevergrad's own cap on a told loss (it clips larger ones, with a warning)

# The bounding (`set_bounds(method=...)`) each family of optimizers gets by default; chosen
# by `benchmarks/bench_nevergrad.py --bounding` (docs/nevergrad.md has the measurements).
DEFAULT_BOUNDING = {
    **dict.fromkeys(("CMA", "DE", "PSO", "OnePlusOne", "NGOpt", "recast"), "clipping"),
    "other": "bouncing",
}

# `tell(..., constraint_violation=v, penalty_style=(a, b, c, d, e, f))` adds the penalty
# (a * [past half the budget] + max(loss, 0)) * (f + told) ** e * (b * sum(v ** c)) ** d.
# Nevergrad's default (1e5, 1, 0.5, 1, 0.5, 1) stalls CMA on Hock-Schittkowski 71 at 5-40 %
# above the optimum; the sum of violations squared, weighted 1e4 from half the budget on,
# reaches it (see docs/nevergrad.md).
PENALTY_STYLE = (1e4, 1.0, 1.0, 2.0, 0.0, 1.0)


def _must(valid: Callable[[Any], bool], expected: str) -> Callable[[str, str, Any], None]:
    """A check that raises "`where(name=value)` must be `expected`." unless `valid(value)`."""

    def check(where: str, name: str, value: Any) -> None:
        if not valid(value):
            raise InvalidProblemError(f"`{where}({name}={value!r})` must be {expected}.")

    return check


_FLAG = _must(lambda v: isinstance(v, bool), "True or False")
_SIX_NUMBERS = lambda v: isinstance(v, (tuple, list)) and len(v) == 6 and all(
    isinstance(a, (int, float)) and not isinstance(a, bool) for a in v
)

# The backend's own options: name -> (default, check(where, name, value)).
_OPTIONS: dict[str, tuple[Any, Callable[[str, str, Any], Any]]] = {
    "bounding": (None, _must(lambda v: v is None or v in BOUNDINGS, "None (the default for the "
                             f"optimizer's family) or one of {', '.join(map(repr, BOUNDINGS))}")),
    "constraints": ("penalty", _must(lambda v: v in ("penalty", "cheap"), "'penalty' or 'cheap'")),
    "constraint_tol": (1e-6, number),
    "penalty_style": (PENALTY_STYLE, _must(_SIX_NUMBERS, "6 numbers (a, b, c, d, e, f) as "
                                           "Nevergrad's tell(penalty_style=...) takes them")),
    "chunk": (None, functools.partial(count, optional=True)),
    "batch_mode": (True, _FLAG),
    "noisy": (False, _FLAG),
}


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_options(
        options, _OPTIONS, where, "Configure the optimizer itself by passing a configured "
        "optimizer, e.g. ng.families.ParametrizedCMA(popsize=20).",
    )
    for name, (_, check) in _OPTIONS.items():
        if name in options:
            check(where, name, options[name])
    return dict(options)


class NevergradResult(NamedTuple):
    """`sol.original` of a Nevergrad run.

    Attributes:
        recommendation: Nevergrad's recommendation, an `ng.p.Parameter` (for a deterministic
            objective `sol.u` is the best point evaluated, which can be better).
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


# --------------------------------------------------------------------------- the algorithm


class Nevergrad(Algorithm):
    """Any Nevergrad optimizer as an optiframe algorithm.

    `maxiters` is the evaluation budget (Nevergrad's `budget`), counted in `stats.fevals`:
    `maxiters - 1` candidates, then Nevergrad's recommendation (or, when that is the best
    candidate already, one more candidate). `sol.u` is the best point evaluated; with
    constraints, the best whose constraints hold to `constraint_tol`. The recommendation is
    in `sol.original.recommendation`.

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
        **options: also accepted by `solve`: `bounding` (None: the family's default, or one
            of "bouncing", "clipping", "arctan", "tanh", "constraint", "penalty"),
            `constraints` ("penalty" or "cheap"), `constraint_tol` (1e-6), `penalty_style`
            (see `PENALTY_STYLE`), `batch_mode` (True: with an executor, tell whole batches
            in asked order, reproducibly; False: Nevergrad's steady state, tell each result
            as it arrives), `noisy` (True: a stochastic objective, `sol.u` is the
            recommendation) and `chunk` (None: a batch is one `jax.vmap`; n: vmap n
            candidates at a time, looped inside one jitted call, which keeps a compute-bound
            evaluation in cache and bounds memory).

    Raises:
        InvalidProblemError: a bad `seed`, `num_workers`, `executor` or option.

    Example:
        >>> sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0, num_workers=8), maxiters=2000)
        >>> sol.u, sol.objective, sol.original.recommendation
    """

    def __init__(
        self, name: Any = "NGOpt", *, seed: int | None = None, num_workers: int = 1,
        executor: Any = None, **options: Any,
    ) -> None:
        if not isinstance(name, (str, type)) and (not callable(name) or hasattr(name, "ask")):
            raise _not_an_optimizer(name)
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise InvalidProblemError(
                f"`Nevergrad(executor=...)` must have a submit(fn, *args) method (a "
                f"concurrent.futures.Executor), got {type(executor).__name__}."
            )
        self.name = name.strip() if isinstance(name, str) else name
        self.seed = check_seed("Nevergrad", seed, optional=True)
        self.num_workers = count("Nevergrad", "num_workers", num_workers)
        self.executor = executor
        self.options = _check_options(options, "Nevergrad")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True, constraints=True, integrality=True, budget="evaluations",
            needs_budget=True,
            keywords=frozenset(
                ("maxiters", "maxtime", "callback", "progress", "save_best", "history")
            ),
        )

    def __repr__(self) -> str:
        extras = [repr(self.name if isinstance(self.name, str) else _display(self.name))]
        if self.seed is not None:
            extras.append(f"seed={self.seed}")
        if self.num_workers != 1:
            extras.append(f"num_workers={self.num_workers}")
        if self.executor is not None:
            extras.append(f"executor={type(self.executor).__name__}")
        extras += [f"{k}={v!r}" for k, v in sorted(self.options.items())]
        return f"Nevergrad({', '.join(extras)})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        defaults = {name: default for name, (default, _) in _OPTIONS.items()}
        settings = {**defaults, **self.options, **_check_options(options.solver_options, "solve")}
        return _NevergradRun(self, problem, options, settings).solve()


def _display(obj: Any) -> str:
    if isinstance(obj, type):
        return obj.__name__
    return getattr(obj, "name", None) or repr(obj)


def _not_an_optimizer(name: Any) -> InvalidProblemError:
    if hasattr(name, "ask") and not isinstance(name, type):
        return InvalidProblemError(
            f"`Nevergrad(name=...)` got an optimizer instance ({type(name).__name__}); pass "
            "its class or a configured optimizer instead: optiframe builds the optimizer "
            "from the problem (parametrization, budget, num_workers)."
        )
    return InvalidProblemError(
        "`Nevergrad(name=...)` must be a name in ng.optimizers.registry, an optimizer class "
        f"or a configured optimizer, got {type(name).__name__}."
    )


def resolve_optimizer(name: Any) -> tuple[Any, str]:
    """(the optimizer class or configured optimizer, its name) for `Nevergrad(name=...)`;
    imports and patches Nevergrad.

    Raises:
        InvalidProblemError: an unknown name (listing the close matches) or a bad object.
        UnsupportedFeatureError: Nevergrad is not installed.
    """
    try:
        import nevergrad as ng
        from nevergrad.optimization import base
    except ImportError as err:
        raise UnsupportedFeatureError(
            "opf.Nevergrad needs the nevergrad package: pip install 'optiframe[nevergrad]'."
        ) from err
    patch()
    # Nevergrad's CMA tells `cma` points repaired into the bounds ("injected") one ask at a
    # time, and `cma` warns about "orphanated injected solution"s a user cannot act on.
    warnings.filterwarnings("ignore", message="orphanated injected solution", module="cma")
    registry = ng.optimizers.registry
    if isinstance(name, str):
        listing = f"Nevergrad's {len(registry)} optimizers (ng.optimizers.registry)"
        return lookup(f"Nevergrad(name={name!r})", name, registry, listing)
    if isinstance(name, base.ConfiguredOptimizer) or (
        isinstance(name, type) and issubclass(name, base.Optimizer)
    ):
        return name, _display(name)
    raise _not_an_optimizer(name)


def family(factory: Any) -> str:
    """The family of a Nevergrad optimizer class or configured optimizer, the key of
    `DEFAULT_BOUNDING`."""
    from nevergrad.optimization import base, optimizerlib, recaster, recastlib
    from nevergrad.optimization.differentialevolution import DifferentialEvolution as DE

    kinds = (  # optimizer classes and configured optimizers (factories) alike
        (optimizerlib.NGOptBase, "NGOpt"),
        ((optimizerlib.MetaCMA, optimizerlib._CMA, optimizerlib.ParametrizedCMA), "CMA"),
        (DE, "DE"),
        (optimizerlib.ConfPSO, "PSO"),
        (optimizerlib.ParametrizedOnePlusOne, "OnePlusOne"),
        ((recaster.RecastOptimizer, recastlib.NonObjectOptimizer), "recast"),
    )
    test = isinstance if isinstance(factory, base.ConfiguredOptimizer) else issubclass
    return next((key for kind, key in kinds if test(factory, kind)), "other")


# --------------------------------------------------------------------------- one run


def _stop_threads(optimizer: Any, timeout: float = 1.0) -> None:
    """Stop the threads of recast optimizers anywhere inside `optimizer` and join them (up
    to `timeout` s each): a kept optimizer never blocks the interpreter's exit, and no
    thread of a finished run draws random numbers during the next one."""
    from nevergrad.optimization import base

    seen, stack = set(), [optimizer]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple, dict)):
            stack.extend(obj.values() if isinstance(obj, dict) else obj)
        elif isinstance(obj, base.Optimizer):
            stack.extend(vars(obj).values())
            thread = getattr(obj, "_messaging_thread", None)
            if thread is not None:
                thread.stop()
                if getattr(thread, "_thread", None) is not None:  # the threading.Thread
                    thread._thread.join(timeout)


def _wait(futures: list[Any], timeout: float) -> None:
    """Wait until one of `futures` is done or `timeout` seconds (inf: no limit) have passed:
    `concurrent.futures.wait`, or polling `done()` for futures of other kinds."""
    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        limit = None if math.isinf(timeout) else timeout
        concurrent.futures.wait(futures, limit, concurrent.futures.FIRST_COMPLETED)
        return
    deadline, pause = time.perf_counter() + timeout, 1e-4
    while not any(f.done() for f in futures) and time.perf_counter() < deadline:
        time.sleep(pause)
        pause = min(2 * pause, 0.01)


class _Books:
    """What `HostRun.pack` reads from `HostRun.objective`: a Nevergrad run evaluates through
    its own evaluators and keeps its counts (calls of `fun`, non-finite values) here."""

    gevals = hevals = 0

    def __init__(self, problem: OptimizationProblem, space: SearchSpace) -> None:
        self.sign, self.fevals, self.nonfinite = problem.sense.sign, 0, 0
        self.u = lambda x: restore_like(space.tree(x), problem.u0)  # (n,) -> u0's structure


class _Started(NamedTuple):
    """Candidates being evaluated, with their points and box violations (`_points`)."""

    candidates: list[Any]
    X: np.ndarray
    box: np.ndarray | None
    pending: Pending


class _NevergradRun(HostRun):
    """One call of `solve` with the Nevergrad backend."""

    alg: Nevergrad
    search = True

    def __init__(
        self, alg: Nevergrad, problem: OptimizationProblem, options: SolveOptions,
        settings: dict[str, Any],
    ) -> None:
        super().__init__(alg, problem, options)
        self.settings, self.k, self.executor = settings, alg.num_workers, alg.executor
        self.factory, self.label = resolve_optimizer(alg.name)
        self.space = SearchSpace(problem)
        self.tol = float(settings["constraint_tol"])
        self.best = BestPoint(self.tol)
        self.cheap = problem.has_constraints and settings["constraints"] == "cheap"
        for refused, message in (
            (getattr(self.factory, "no_parallelization", False) and self.k > 1,
             f"Nevergrad's {self.label} evaluates one candidate at a time and cannot take "
             f"num_workers={self.k}; use num_workers=1, or a population method that "
             "batches well ('TwoPointsDE', 'PSO', 'CMA', 'NGOpt')."),
            (not settings["batch_mode"] and self.executor is None,
             "`batch_mode=False` (Nevergrad's steady state: tell each result as it arrives) "
             "needs an executor; pass Nevergrad(executor=...) or drop batch_mode."),
            (self.cheap and np.any(problem.lcons == problem.ucons),
             "`constraints='cheap'` resamples candidates until the constraints hold, which "
             "random samples of an equality constraint (lcons == ucons) almost never do; "
             "use constraints='penalty' (the default)."),
        ):
            if refused:
                raise UnsupportedFeatureError(message)
        penalties = problem.has_constraints and not self.cheap  # constraints told as violations
        self.bounding = settings["bounding"] or (
            "penalty" if penalties else DEFAULT_BOUNDING[family(self.factory)])
        self.style = tuple(float(v) for v in settings["penalty_style"])
        # Candidates per evaluation call, started as soon as they are asked: a JAX call
        # takes the whole batch, host code and an executor one candidate.
        if self.executor is None and problem.f.ad == "jax":
            self.evaluator, self.per_call = JaxEvaluator(problem, self.k, settings["chunk"]), self.k
        else:
            self.evaluator, self.per_call = HostEvaluator(problem, self.space, self.executor), 1
        self.objective = _Books(problem, self.space)
        self.recommendation, self.recommended_objective = None, np.nan
        self.notes: list[str] = []

    @property
    def done(self) -> int:
        """What the bar counts: evaluations."""
        return self.objective.fevals

    def _optimizer(self) -> Any:
        import nevergrad as ng

        param = self.space.parametrization(ng, self.bounding)
        if self.settings["noisy"]:
            param.function.deterministic = False
        if self.cheap:  # one cheap constraint each, a float >= 0 when it holds
            cons, tol = HostConstraints(self.problem, self.space), self.tol
            for i in range(self.problem.lcons.size):

                def satisfied(value: Any, i: int = i) -> float:
                    return float(tol - cons(self.space.flat(value)[None])[0, i])

                satisfied.__name__ = f"constraint_{i}"
                param.register_cheap_constraint(satisfied)
        if self.alg.seed is not None:
            param.random_state = np.random.RandomState(self.alg.seed)
        return self._guarded(
            self.factory, parametrization=param, budget=self.options.maxiters, num_workers=self.k
        )

    def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """`call(...)`, a package the optimizer needs but cannot import raised as an
        `UnsupportedFeatureError`."""
        try:
            return call(*args, **kwargs)
        except (ImportError, RuntimeError) as err:
            missing = err if isinstance(err, ImportError) else err.__cause__
            if not isinstance(missing, ImportError):
                raise
            raise UnsupportedFeatureError(
                f"Nevergrad's {self.label} needs a package that is not installed "
                f"({getattr(missing, 'name', None) or missing}): install it, or choose "
                "another optimizer (e.g. 'NGOpt', 'CMA', 'TwoPointsDE')."
            ) from err

    # -- the loop

    def minimize(self) -> tuple[ReturnCode, str] | None:
        """Run Nevergrad; None when the budget is spent, else the verdict of the optimizer's
        own stopping rule."""
        from nevergrad.optimization import optimizerlib, recaster

        optimizer = self.optimizer = self._optimizer()
        inner = optimizer.optim if isinstance(optimizer, optimizerlib.NGOptBase) else optimizer
        self.selected = getattr(inner, "name", type(inner).__name__)
        # a library's own loop in a thread (scipy's Powell, COBYLA, ...) may end early
        self.recast = isinstance(inner, recaster.SequentialRecastOptimizer)
        budget = self.options.maxiters
        try:
            with seeded_cma(self.alg.seed):
                ended = self._search(optimizer, budget - 1)
                if self.objective.fevals < budget:
                    ended = self._last(optimizer) or ended
        finally:
            try:
                self.recommendation = optimizer.provide_recommendation()
            except Exception:  # a recommendation is a courtesy; the run's result stands
                self.recommendation = None
            _stop_threads(optimizer)
        return ended

    def _search(self, optimizer: Any, budget: int) -> tuple[ReturnCode, str] | None:
        """Ask, evaluate and tell `budget` more candidates, `num_workers` at a time; None
        once they are told, else the verdict of a recast optimizer's own stopping rule.
        In batches, each told whole in asked order (Nevergrad sees the sequential ask-all,
        tell-all order); in the steady state (`batch_mode=False`), each result as it arrives,
        a new candidate taking its worker."""
        steady, running, ended = not self.settings["batch_mode"], [], False
        try:
            while True:
                if not ended and (steady or not running):
                    room = min(self.k - sum(len(s.candidates) for s in running), budget)
                    asked = self._fill(optimizer, room, running)
                    budget, ended = budget - asked, asked < room
                if not running:
                    break
                if steady:  # wait for the first result (or maxtime)
                    _wait([f for s in running for f in s.pending.futures], self.clock.remaining())
                    self.clock.check()
                done = [not steady or s.pending.done() for s in running]
                told = [s for s, d in zip(running, done) if d]
                running = [s for s, d in zip(running, done) if not d]
                self._tell(optimizer, told)
        finally:
            for started in running:
                started.pending.cancel()
        fevals = self.objective.fevals
        message = f"{self.selected}'s own stopping rule ended it after {fevals} evaluations"
        return (ReturnCode.Success, message) if ended else None

    def _fill(self, optimizer: Any, room: int, running: list[_Started]) -> int:
        """Ask up to `room` candidates (fewer once a recast optimizer's loop has ended),
        starting the evaluation of each `per_call` as soon as they are asked, so that later
        asks overlap it; returns how many were asked."""
        asked, chunk = 0, []
        while asked < room:
            candidate = self._ask(optimizer)
            if candidate is None:
                break
            asked += 1
            chunk.append(candidate)
            if len(chunk) == self.per_call:
                running.append(self._start(chunk))
                chunk = []
        if chunk:
            running.append(self._start(chunk))
        return asked

    def _ask(self, optimizer: Any) -> Any | None:
        """One candidate, or None when a recast optimizer's own loop has ended."""
        if not self.recast:
            return self._guarded(optimizer.ask)
        from nevergrad.common.errors import FinishedUnderlyingOptimizerWarning as Finished

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Finished)
            candidate = self._guarded(optimizer.ask)
        for w in caught:
            if not issubclass(w.category, Finished):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return None if any(issubclass(w.category, Finished) for w in caught) else candidate

    def _start(self, candidates: list[Any]) -> _Started:
        X, box = self._points(candidates)
        return _Started(candidates, X, box, self.evaluator.start(X))

    def _points(self, candidates: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """(the points (b, n) to evaluate, inside the box; how far outside it Nevergrad's
        points lie (b,) with the "penalty" bounding, else None)."""
        raw = np.stack([self.space.flat(c.value, clip=False) for c in candidates])
        if not self.problem.has_bounds:
            return raw, None
        box = self.space.box_violation(raw) if self.bounding == "penalty" else None
        return np.clip(raw, self.space.lb, self.space.ub), box

    def _tell(self, optimizer: Any, started: list[_Started]) -> None:
        """Tell Nevergrad each evaluation of `started` as it ends, in order; then count them
        as one iteration: the best point, the bar, the callback, the clock."""
        batches = []
        for s in started:
            batch = s.pending.result()
            losses = np.where(np.isfinite(batch.losses), batch.losses, BAD_LOSS)
            told = self._told_violations(batch, s.box)
            for i, candidate in enumerate(s.candidates):
                self._guarded(
                    optimizer.tell, candidate, float(losses[i]),
                    constraint_violation=None if told is None else list(told[i]),
                    penalty_style=None if told is None else self.style,
                )
            batches.append(batch)
        X, batch = np.concatenate([s.X for s in started]), join(batches)
        worst = self._count(X, batch)
        self.iterations += 1
        self.progress.show(self.objective.fevals, self.sign * self.best.loss)
        if self.options.callback is None and self.recorder is None:
            self.clock.check()
            return
        keys = [(0, loss) if v <= self.tol else (1, v) if np.isfinite(loss) else (2, 0.0)
                for loss, v in zip(batch.losses, worst)]
        i = min(range(len(keys)), key=keys.__getitem__)  # the batch's best candidate
        self.record(float(batch.objectives[i]), X[i])
        if self.options.callback is not None:
            step = NevergradStep(
                optimizer, [c for s in started for c in s.candidates],
                [self.space.tree(x) for x in X], batch.objectives,
                None if batch.violations is None else worst, float(self.sign * self.best.loss),
            )
            call_back(self.options.callback, OptimizationState(
                iter=self.iterations, u=self.objective.u(X[i]),
                objective=float(batch.objectives[i]), p=self.problem.p,
                aux=aux_at(batch.aux, i), original=step,
            ))
        self.clock.check()

    def _told_violations(self, batch: Batch, box: np.ndarray | None) -> np.ndarray | None:
        """(b, m) the violations Nevergrad is told: the constraints' past `constraint_tol`
        (unless cheap), the distance outside the box (the "penalty" bounding); or None."""
        parts = [] if box is None else [box[:, None]]
        if batch.violations is not None and not self.cheap:
            parts.insert(0, np.maximum(batch.violations - self.tol, 0.0))
        return np.minimum(np.concatenate(parts, axis=1), BAD_LOSS) if parts else None

    def _count(self, X: np.ndarray, batch: Batch) -> np.ndarray:
        """Count the evaluations at the rows of `X` and offer each to the best point;
        returns their largest constraint violations (b,)."""
        self.objective.fevals += len(X)
        self.objective.nonfinite += int(np.sum(~np.isfinite(batch.losses)))
        worst = np.zeros(len(X)) if batch.violations is None else np.max(batch.violations, axis=1)
        for x, loss, violation in zip(X, batch.losses, worst):
            self.best.offer(x, loss, violation)
        return worst

    def _last(self, optimizer: Any) -> tuple[ReturnCode, str] | None:
        """The budget's last evaluation: Nevergrad's recommendation (CMA's mean, a metamodel's
        optimum: points never evaluated that can beat every candidate), unless it is the
        best candidate already (then one more candidate). With `noisy=True` it is `sol.u`."""
        recommendation = self._guarded(optimizer.provide_recommendation)
        X, _ = self._points([recommendation])
        noisy = self.settings["noisy"]
        if not noisy and self.best.x is not None and np.array_equal(X[0], self.best.x):
            self.recommended_objective = self.sign * self.best.loss
            return self._search(optimizer, 1)
        batch = self.evaluator.start(X).result()
        self.recommended_objective = float(batch.objectives[0])
        if noisy:
            self.best = BestPoint(self.tol)
        before = self.best.x
        self._count(X, batch)
        if self.best.x is not before and not noisy:
            self.notes.append(
                "the best point is Nevergrad's recommendation, the budget's last evaluation"
            )
        return None

    # -- the result

    def solution(self, result: Any, stop: Stop) -> OptimizationSolution:
        best, notes = self.best, self.notes
        retcode, message = stop.retcode, stop.message
        if retcode is None and result is not None:
            retcode, message = result
        x, loss = best.x, best.loss
        if x is None:
            x, loss = self.space.x0, np.nan
            retcode, message = ReturnCode.Failure, (
                "no evaluation returned a finite objective; returning u0"
                if self.objective.fevals else "no candidate was evaluated; returning u0"
            )
        elif (self.problem.has_constraints and best.violation > self.tol
              and not self.settings["noisy"]):
            if retcode in (None, ReturnCode.Success):
                retcode = ReturnCode.Infeasible
            notes = [
                f"no candidate met the constraints to constraint_tol={self.tol}; returning "
                f"the least violating one (largest violation {best.violation:.3g})",
                *notes,
            ]
        if retcode is None:
            retcode, message = budget_message(self.options, self.alg.capabilities.budget)
        return self.pack(result, x, loss, retcode, "; ".join(m for m in [message, *notes] if m))

    def original(self, result: Any, x: np.ndarray, loss: float, message: str) -> Any:
        rec = self.recommendation
        u = None if rec is None else self.objective.u(self.space.flat(rec.value))
        return NevergradResult(
            rec, u, self.recommended_objective, self.optimizer, self.selected,
            self.objective.nonfinite,
        )


# --------------------------------------------------------------------------- names


register_prefix("nevergrad", lambda name: Nevergrad(name))
for _name in ("NGOpt", "CMA", "TwoPointsDE", "PSO", "DE", "OnePlusOne"):
    register(f"nevergrad:{_name}", lambda _name=_name: Nevergrad(_name))
