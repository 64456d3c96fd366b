"""The evosax backend: evosax's evolution strategies and genetic algorithms behind `solve`.

Ask, evaluate and tell stay on the device (`evosax_loop.py`). Two drivers run them:

- fused: no callback — the whole search is one jitted `lax.while_loop` over generations,
  the stop tests inside (with `maxtime`, a few chunks of it, the clock read between them);
- stepwise: a callback — one jitted generation per call, the next generation dispatched
  before the host looks at the current one.

`maxiters` counts generations; `sol.u` is the best candidate evaluated and evosax's own
state stays in `sol.original`. See docs/evosax.md.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import inspect
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import check_objective, derivatives
from ..errors import InvalidProblemError, UnsupportedFeatureError
from ..flat import device_shapes, ravel, restore_like, to_device
from ..problem import OptimizationProblem
from ..progress import advance
from ..solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .base import Algorithm, Capabilities, SolveOptions, register, register_prefix
from .evosax_loop import (
    BEST,
    CONVERGED_ABSTOL,
    CONVERGED_RELTOL,
    FEVALS,
    GENERATION,
    ITERATIONS,
    NONFINITE,
    RUNNING,
    STATUS,
    Carry,
    GenerationProgram,
    LoopSpec,
    search_dtype,
)

_CACHE_SIZE = 8  # compiled programs kept per objective
# The backend's own options and their defaults; every other option configures the evosax
# algorithm (a constructor argument, or a field of its `default_params`).
_OPTIONS: dict[str, Any] = {"patience": 10, "init_std": None}
# Constructor arguments optiframe sets itself.
_RESERVED = ("self", "population_size", "solution")


class EvoSaxResult(NamedTuple):
    """`sol.original` of an evosax run.

    Attributes:
        state: the evosax state after the last generation told.
        mean: the search distribution's mean in `u0`'s structure (evosax's
            `get_mean`), or None for a population-based algorithm.
        algorithm: the evosax algorithm object.
        params: the evosax params the run used (`default_params` with the options applied).
        nonfinite: how many evaluations of this solve returned NaN or inf.
    """

    state: Any
    mean: Any
    algorithm: Any
    params: Any
    nonfinite: int


class EvoSaxStep(NamedTuple):
    """`state.original` in a callback: the generation just told.

    Attributes:
        state: the evosax state after the tell.
        population: the candidates evaluated, `u0`'s structure with a leading axis (size,).
        objectives: (size,) the value of `fun` at each.
        best_objective: the best objective seen so far.
    """

    state: Any
    population: Any
    objectives: np.ndarray
    best_objective: float


class EvoSaxState(NamedTuple):
    """`sol.state`: what `solve(..., warm_start=sol)` continues.

    Attributes:
        state: the evosax state.
        key: the run's key.
        generation: generations since the first solve of the chain (they pick the keys).
        losses: (2,) the best and worst finite fitness (`sign * fun`) seen.
        best_u: (n,) the best candidate, flat.
    """

    state: Any
    key: jax.Array
    generation: jax.Array
    losses: jax.Array
    best_u: jax.Array


# --------------------------------------------------------------------------- options


def _import_evosax() -> Any:
    try:
        from evosax import algorithms
    except ImportError as err:
        raise UnsupportedFeatureError(
            "opf.EvoSax needs the evosax package: pip install 'optiframe[evosax]'."
        ) from err
    return algorithms


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate the backend's own options; others are checked against evosax at solve."""
    patience = options.get("patience", 1)
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise InvalidProblemError(f"`{where}(patience={patience!r})` must be an integer >= 1.")
    init_std = options.get("init_std")
    if init_std is not None and (
        isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0
    ):
        raise InvalidProblemError(f"`{where}(init_std={init_std!r})` must be None or a number > 0.")
    return dict(options)


def resolve_algorithm(name: Any) -> tuple[type, str]:
    """(the evosax algorithm class, its name) for `EvoSax(name=...)`.

    Raises:
        InvalidProblemError: an unknown name (listing the close matches) or a bad object.
    """
    algorithms = _import_evosax()
    from evosax.algorithms.base import EvolutionaryAlgorithm

    if isinstance(name, type) and issubclass(name, EvolutionaryAlgorithm):
        return name, name.__name__
    if isinstance(name, EvolutionaryAlgorithm):
        raise InvalidProblemError(
            f"`EvoSax(name=...)` got an evosax algorithm instance ({type(name).__name__}); "
            "pass its name or class instead: optiframe builds it from the problem "
            "(population_size, the template solution)."
        )
    if not isinstance(name, str):
        raise InvalidProblemError(
            f"`EvoSax(name=...)` must be a name in evosax.algorithms.algorithms or an evosax "
            f"algorithm class, got {type(name).__name__}."
        )
    registry = dict(algorithms.algorithms)
    for cls in list(registry.values()):  # class names too: "DiscoveredES" for "DES"
        registry.setdefault(cls.__name__, cls)
    if name in registry:
        return registry[name], name
    folded = [key for key in registry if key.lower() == name.lower()]
    if len({registry[key] for key in folded}) == 1:
        return registry[folded[0]], folded[0]
    lower = {key.lower(): key for key in registry}
    close = [lower[k] for k in difflib.get_close_matches(name.lower(), list(lower), 6, 0.6)]
    close += [k for k in registry if k.lower().startswith(name.lower()[:3]) and k not in close]
    hint = f" Did you mean {', '.join(repr(c) for c in close[:8])}?" if close else ""
    raise InvalidProblemError(
        f"`EvoSax(name={name!r})`: no algorithm of that name in evosax "
        f"({', '.join(sorted(algorithms.algorithms))}).{hint}"
    )


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _default_population(n: int) -> int:
    """CMA-ES's default, 4 + floor(3 ln n), made even and at least 8."""
    size = 4 + math.floor(3 * math.log(max(n, 1)))
    return max(8, size + size % 2)


# --------------------------------------------------------------------------- the algorithm


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class EvoSax(Algorithm):
    """Any evosax algorithm as an optiframe algorithm: the whole search on the device.

    `maxiters` is the number of generations; each evaluates `population_size` candidates
    in one `jax.vmap` of the objective, so `sol.stats.fevals` is generations x population.
    A population-based algorithm (PSO, DE, the GAs) spends its first generation on its
    initial population: `u0` and `population_size - 1` draws, uniform in the box when every
    bound is finite, else `u0 + init_std * N(0, I)`. A distribution-based one (CMA-ES, NES,
    OpenES, ...) starts its mean at `u0`. `sol.u` is the best candidate evaluated.

    Bounds: each asked candidate is clipped into the box before it is evaluated, and
    evosax is told the clipped candidate, so the search learns from the points it evaluated.
    Non-finite fitness values are told as worse than every finite value seen.

    Convergence: with `abstol` (`reltol`), the run stops with `Success` when the best
    objective has improved by at most `abstol` (`reltol * |best|`) over the last
    `patience` generations.

    Args:
        name: a name in `evosax.algorithms.algorithms` ("CMA_ES", "Sep_CMA_ES", "SNES",
            "xNES", "Open_ES", "PGPE", "DifferentialEvolution", "PSO", "SimpleGA", ...; a
            unique case-insensitive match or the class name is accepted), or an evosax
            algorithm class.
        population_size: candidates per generation (default: 4 + floor(3 ln n), made even
            and at least 8, for n variables); for the Stein variational algorithms
            (`SV_CMA_ES`, `SV_Open_ES`) the size of each of `num_populations` populations.
        seed: the run's `jax.random.key`; the same seed gives the same result.
        **options: the backend's own: `patience` (10 generations) and `init_std` (None:
            see above); any other
            option configures the evosax algorithm: a constructor argument (`num_diff=2`
            for DE, `optimizer=optax.adam(0.05)` for Open_ES, ...) or a field of its
            `default_params` (`std_init=2.0`, `crossover_rate=0.5`, ...). Unknown names are
            refused when the run starts. The same options may be given to `solve`.

    Raises:
        InvalidProblemError: a bad `population_size`, `seed` or option.

    Example:
        >>> sol = opf.solve(prob, opf.EvoSax("CMA_ES", population_size=64, std_init=0.5),
        ...                 maxiters=200)
        >>> sol.u, sol.objective, sol.original.state
    """

    name: Any
    population_size: int | None
    seed: int
    options: Mapping[str, Any]

    def __init__(
        self,
        name: Any = "CMA_ES",
        *,
        population_size: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if not isinstance(name, (str, type)):
            raise InvalidProblemError(
                f"`EvoSax(name={name!r})` must be a name in evosax.algorithms.algorithms or "
                "an evosax algorithm class."
            )
        if population_size is not None and (
            isinstance(population_size, bool)
            or not isinstance(population_size, (int, np.integer)) or population_size < 1
        ):
            raise InvalidProblemError(
                f"`EvoSax(population_size={population_size!r})` must be None or a positive "
                "integer."
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            0 <= seed < 2**32
        ):
            raise InvalidProblemError(f"`EvoSax(seed={seed!r})` must be an integer in [0, 2**32).")
        for field, value in (
            ("name", name.strip() if isinstance(name, str) else name),
            ("population_size", None if population_size is None else int(population_size)),
            ("seed", int(seed)),
            ("options", _check_options(options, "EvoSax")),
        ):
            object.__setattr__(self, field, value)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True,
            keywords=frozenset((
                "maxiters", "maxtime", "abstol", "reltol", "callback", "progress",
                "warm_start", "save_best",
            )),
        )

    def __repr__(self) -> str:
        name = self.name if isinstance(self.name, str) else self.name.__name__
        extras = [repr(name)]
        if self.population_size is not None:
            extras.append(f"population_size={self.population_size}")
        if self.seed:
            extras.append(f"seed={self.seed}")
        extras += [f"{k}={v!r}" for k, v in sorted(self.options.items())]
        return f"EvoSax({', '.join(extras)})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        settings = {**self.options, **_check_options(options.solver_options, "solve")}
        return _Run(self, problem, options, settings).run()


# --------------------------------------------------------------------------- programs


def _frozen(value: Any) -> Any:
    """`value` if hashable, else its identity (the cached program keeps it alive)."""
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _program(
    cls: type, size: int, ctor: dict[str, Any], problem: OptimizationProblem, u: Any,
    spec: LoopSpec,
) -> GenerationProgram:
    """The compiled generation for this objective, algorithm and spec: cached on the
    objective (least recently used dropped past `_CACHE_SIZE`)."""
    cache = problem.f._cache.setdefault("evosax", collections.OrderedDict())
    leaves, treedef = jax.tree.flatten(u)
    key = (
        problem.sense, cls, size, tuple((k, _frozen(v)) for k, v in sorted(ctor.items())),
        treedef, tuple((x.shape, x.dtype) for x in leaves), spec,
    )
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    template = jax.tree.map(lambda x: jnp.zeros(x.shape, search_dtype()), u)
    try:
        algorithm = cls(population_size=size, solution=template, **ctor)
    except (AssertionError, TypeError, ValueError) as err:
        detail = str(err) or type(err).__name__
        raise InvalidProblemError(
            f"`EvoSax({cls.__name__!r}, population_size={size}"
            + "".join(f", {k}=..." for k in sorted(ctor))
            + f")`: evosax refused the configuration: {detail}. Constructor arguments are "
            "options: EvoSax(name, argument=value)."
        ) from err
    dtypes = jax.tree.map(lambda x: x.dtype, u)
    program = GenerationProgram(algorithm, derivatives(problem.f, problem.sense), dtypes, spec)
    cache[key] = program
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return program


def _params(algorithm: Any, overrides: dict[str, Any], cls_name: str, known: list[str]) -> Any:
    """evosax's `default_params` with the options that name its fields applied."""
    params = _defaults(algorithm)
    fields = [f.name for f in dataclasses.fields(params)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        allowed = sorted(set(known) | set(fields))
        raise InvalidProblemError(
            f"`EvoSax({cls_name!r}, ...)`: unknown option(s) "
            f"{', '.join(_hint(n, allowed) for n in unknown)}; it takes the backend's "
            f"{', '.join(sorted(_OPTIONS))}, the constructor arguments and params fields of "
            f"evosax's {cls_name}: {', '.join(sorted(set(known) - set(_OPTIONS)) + fields)}."
        )
    values = {}
    for name, value in overrides.items():
        old = getattr(params, name)
        try:
            values[name] = jnp.asarray(value, dtype=old.dtype)
        except (TypeError, ValueError) as err:
            raise InvalidProblemError(
                f"`EvoSax({cls_name!r}, {name}={value!r})`: {err}"
            ) from err
    return params.replace(**values)


def _defaults(algorithm: Any) -> Any:
    """evosax's `default_params` of `algorithm` (computed eagerly by evosax: kept), as
    strongly typed arrays, so that overriding a field (a Python float in the defaults,
    weakly typed) does not change the compiled program's signature."""
    if not hasattr(algorithm, "_optiframe_defaults"):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype),
                              algorithm.default_params)
        algorithm._optiframe_defaults = params
    return algorithm._optiframe_defaults


# --------------------------------------------------------------------------- one run


class _Run:
    """One call of `solve` with the evosax backend."""

    def __init__(
        self, alg: EvoSax, problem: OptimizationProblem, options: SolveOptions,
        settings: dict[str, Any],
    ):
        if options.maxiters is None:
            raise InvalidProblemError(
                "The evosax backend needs a generation budget: pass solve(..., maxiters=N)."
            )
        if problem.f.ad == "finite":
            raise UnsupportedFeatureError(
                "opf.EvoSax evaluates the objective inside a compiled loop (a jax.vmap over "
                "the population), but OptimizationFunction(ad='finite') declares host code. "
                "Use opf.Nevergrad for objectives JAX cannot trace, or ad='jax' if fun is "
                "written in JAX."
            )
        check_objective(problem.f, device_shapes(problem.u0), problem.p)  # ad=None too
        self.alg, self.problem, self.options = alg, problem, options
        cls, self.label = resolve_algorithm(alg.name)
        ours = {k: settings.pop(k) for k in list(settings) if k in _OPTIONS}
        ours = {**_OPTIONS, **ours}
        signature = inspect.signature(cls.__init__).parameters
        accepted = [k for k in signature if k not in _RESERVED]
        ctor = {k: settings.pop(k) for k in list(settings) if k in accepted}
        self.u = to_device(problem.u0)
        n = sum(x.size for x in jax.tree.leaves(self.u))
        size = alg.population_size or _default_population(n)
        self.lb = self.ub = None
        box = False
        if problem.has_bounds:
            dtype = search_dtype()
            self.lb = jax.tree.map(lambda b, x: jnp.broadcast_to(jnp.asarray(b, dtype), x.shape),
                                   problem.lb, self.u)
            self.ub = jax.tree.map(lambda b, x: jnp.broadcast_to(jnp.asarray(b, dtype), x.shape),
                                   problem.ub, self.u)
            box = all(np.all(np.isfinite(b)) for b in jax.tree.leaves((problem.lb, problem.ub)))
        population_based = _population_based(cls)
        if ours["init_std"] is not None and not population_based:
            raise InvalidProblemError(
                f"`EvoSax({self.label!r}, init_std=...)` draws the first population of a "
                f"population-based algorithm (DE, PSO, the GAs); {self.label} starts its "
                "distribution at u0: set its spread with its own params field (e.g. "
                "std_init=...)."
            )
        stall = options.abstol is not None or options.reltol is not None
        spec = LoopSpec(
            population_based=population_based,
            bounded=problem.has_bounds,
            init_box=population_based and box and ours["init_std"] is None,
            stall=stall,
            patience=int(ours["patience"]) if stall else 1,
            progress=options.callback is None and options.progress is not None,
        )
        self.program = _program(cls, size, ctor, problem, self.u, spec)
        known = accepted + list(_OPTIONS)
        self.params = _params(self.program.algorithm, settings, self.label, known)
        self.init_std = jnp.asarray(ours["init_std"] or 1.0, search_dtype())
        self.tol = jnp.asarray(
            [-np.inf if t is None else t for t in (options.abstol, options.reltol)],
            search_dtype(),
        )
        self.first = None  # a population-based algorithm's first generation, for the callback

    def _initial_carry(self) -> Carry:
        warm, program = self.options.warm_start, self.program
        args = (self.u, self.problem.p, self.lb, self.ub, self.params, self.tol, self.init_std)
        if warm is None:
            carry, self.first = program.init(jax.random.key(self.alg.seed), *args)
            return carry
        state = warm.state
        ours = jax.eval_shape(program.init, jax.random.key(0), *args)[0]
        if not isinstance(state, EvoSaxState) or _shapes(state.state) != _shapes(ours.state) or (
            np.shape(state.best_u) != ours.best_u.shape
        ):
            raise InvalidProblemError(
                "`solve(warm_start=sol)`: sol.state does not come from this evosax algorithm "
                "on a problem of this shape. To start another algorithm from a result, use "
                "prob.remake(u0=sol.u)."
            )
        counts = jnp.zeros(5, jnp.int32).at[GENERATION].set(state.generation)
        history = jnp.full(ours.history.shape, jnp.inf, ours.history.dtype)
        return Carry(state.state, state.key, counts, state.losses, state.best_u, history)

    # -- drivers

    def run(self) -> OptimizationSolution:
        self.start = time.perf_counter()
        self.bar = None
        if self.options.progress is not None:
            self.bar = self.options.progress.open(self.options.maxiters)
        retcode, message = None, ""
        self.carry = self._initial_carry()
        try:
            if self.options.callback is None:
                retcode, message = self._fused()
            else:
                retcode, message = self._stepwise()
        except KeyboardInterrupt:
            warnings.warn(
                "solve() interrupted: returning the best candidate so far (Terminated).",
                stacklevel=4,
            )
            retcode, message = ReturnCode.Terminated, "interrupted by KeyboardInterrupt"
        finally:
            if self.bar is not None:
                jax.effects_barrier()
                self.bar.close()
        return self._solution(retcode, message)

    def _run_fused(self, limit: int, every: int) -> None:
        self.carry = self.program.run(
            self.carry, limit, self.problem.p, self.lb, self.ub, self.params, self.tol, every
        )

    def _fused(self) -> tuple[ReturnCode | None, str]:
        maxiters, maxtime = self.options.maxiters, self.options.maxtime
        every = 1
        if self.bar is not None:
            bar, every = self.bar, self.options.progress.interval(maxiters)
            sign = self.program.derivs.sign
            self.program.progress_hook = lambda i, loss: advance(bar, i, sign * loss)
        if maxtime is None:
            self._run_fused(maxiters, every)
            return None, ""
        chunk = 4
        while True:
            done = int(self.carry.counts[ITERATIONS])
            tic = time.perf_counter()
            self._run_fused(min(maxiters, done + chunk), every)
            counts = np.asarray(self.carry.counts)
            status, now_done = int(counts[STATUS]), int(counts[ITERATIONS])
            if status != RUNNING or now_done >= maxiters:
                return None, ""
            if time.perf_counter() - self.start >= maxtime:
                return ReturnCode.MaxTime, f"maxtime={maxtime} s reached"
            per_generation = (time.perf_counter() - tic) / max(now_done - done, 1)
            remaining = maxtime - (time.perf_counter() - self.start)
            chunk = int(np.clip(0.1 * remaining / max(per_generation, 1e-9), 1, 1_000_000))

    def _stepwise(self) -> tuple[ReturnCode | None, str]:
        program, options, callback = self.program, self.options, self.options.callback
        every = options.progress.interval(options.maxiters) if self.bar is not None else 0
        step = lambda c: program.step(  # noqa: E731
            c, self.problem.p, self.lb, self.ub, self.params, self.tol
        )
        done = 0
        pending = (self.carry, self.first) if self.first is not None else step(self.carry)
        while True:
            after, generation = pending
            done += 1
            # Dispatched before this generation is read, so the device works meanwhile.
            nxt = step(after) if done < options.maxiters else None
            self.carry = after
            counts = np.asarray(after.counts)
            state = self._state(done, after, generation)
            if callback(state, state.objective):
                return ReturnCode.Terminated, f"callback returned True after generation {done}"
            if int(counts[STATUS]) != RUNNING:
                return None, ""
            if every and done % every == 0:
                advance(self.bar, done, state.original.best_objective)
            if options.maxtime is not None and time.perf_counter() - self.start >= options.maxtime:
                return ReturnCode.MaxTime, f"maxtime={options.maxtime} s reached"
            if nxt is None:
                return None, ""
            pending = nxt

    def _state(self, k: int, carry: Carry, generation: Any) -> OptimizationState:
        population, fitness, aux = generation
        sign = self.program.derivs.sign
        objectives = sign * np.asarray(fitness, float)
        keys = np.where(np.isfinite(objectives), sign * objectives, np.inf)
        i = int(np.argmin(keys))
        u0 = self.problem.u0
        restore = lambda x: restore_like(x, u0)  # noqa: E731
        return OptimizationState(
            iter=k,
            u=restore(jax.tree.map(lambda x: x[i], population)),
            objective=float(objectives[i]),
            p=self.problem.p,
            aux=None if aux is None else jax.tree.map(lambda a: a[i], aux),
            original=EvoSaxStep(
                carry.state,
                jax.tree.map(lambda x, r: jnp.asarray(x, jnp.result_type(r)), population, u0),
                objectives,
                float(sign * carry.losses[BEST]),
            ),
        )

    # -- the result

    def _solution(self, retcode: ReturnCode | None, message: str) -> OptimizationSolution:
        carry, program, sign = self.carry, self.program, self.program.derivs.sign
        counts, losses = (np.asarray(x) for x in jax.device_get((carry.counts, carry.losses)))
        status, iterations = int(counts[STATUS]), int(counts[ITERATIONS])
        fevals, nonfinite = int(counts[FEVALS]), int(counts[NONFINITE])
        notes = [f"{nonfinite} evaluations were NaN or inf"] if nonfinite else []
        best = float(losses[BEST])
        if not np.isfinite(best):
            u, objective = self.problem.u0, math.nan
            retcode, message = ReturnCode.Failure, (
                "no evaluation returned a finite objective; returning u0" if fevals
                else "no candidate was evaluated; returning u0"
            )
        else:
            u = restore_like(ravel(self.u)[1](carry.best_u), self.problem.u0)
            objective = sign * best
            if retcode is None:
                retcode, message = self._verdict(status)
        mean = None
        if not program.spec.population_based and hasattr(program.algorithm, "get_mean"):
            mean = program.algorithm.get_mean(carry.state)
        return OptimizationSolution(
            u=u,
            objective=float(objective),
            retcode=retcode,
            stats=Stats(iterations=iterations, fevals=fevals),
            original=EvoSaxResult(carry.state, mean, program.algorithm, self.params, nonfinite),
            state=EvoSaxState(
                carry.state, carry.key, carry.counts[GENERATION], carry.losses, carry.best_u
            ),
            message="; ".join(m for m in [message, *notes] if m),
        )

    def _verdict(self, status: int) -> tuple[ReturnCode, str]:
        patience = self.program.spec.patience
        if status == CONVERGED_ABSTOL:
            return ReturnCode.Success, (
                f"best objective improved by <= abstol={self.options.abstol} over the last "
                f"{patience} generations"
            )
        if status == CONVERGED_RELTOL:
            return ReturnCode.Success, (
                f"best objective improved by <= reltol={self.options.reltol} x |best| over "
                f"the last {patience} generations"
            )
        return ReturnCode.MaxIters, f"maxiters={self.options.maxiters} generations done"


def _shapes(tree: Any) -> Any:
    return jax.tree.structure(tree), [np.shape(x) for x in jax.tree.leaves(tree)]


def _population_based(cls: type) -> bool:
    from evosax.algorithms.population_based.base import PopulationBasedAlgorithm

    return issubclass(cls, PopulationBasedAlgorithm)


# --------------------------------------------------------------------------- names


register_prefix("evosax", lambda name: EvoSax(name))
for _name in ("CMA_ES", "Sep_CMA_ES", "SNES", "xNES", "Open_ES", "PGPE",
              "DifferentialEvolution", "PSO", "SimpleGA"):
    register(f"evosax:{_name}", lambda _name=_name: EvoSax(_name))
