"""The evosax backend: evosax's evolution strategies and genetic algorithms behind `solve`.

A generation (`EvoSaxMethod`, run by the shared on-device lifecycle, `_device.py`) asks
evosax for a population, clips it into the box, evaluates it in one `jax.vmap`, tells the
fitness (a non-finite value as worse than every finite one seen) and runs the stall tests.
`maxiters` counts generations; `sol.u` is the best candidate evaluated, evosax's state is
in `sol.original`. See docs/evosax.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import count, lookup, number
from .._checks import seed as check_seed
from ..derivatives import Derivatives, check_objective, derivatives
from ..errors import InvalidProblemError, UnsupportedFeatureError
from ..flat import device_shapes, ravel
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._device import DeviceRun
from ._lifecycle import check_options
from ._program import FIRST_STOP, RUNNING, DeviceMethod, Evaluation, counts, loss_dtype
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, register_prefix

# The backend's own options and their defaults; every other option configures the evosax
# algorithm (a constructor argument, or a field of its `default_params`).
_OPTIONS: dict[str, Any] = {"patience": 10, "init_std": None}
# Constructor arguments optiframe sets itself.
_RESERVED = ("self", "population_size", "solution")
ABSTOL, RELTOL = FIRST_STOP, FIRST_STOP + 1


class EvoSaxResult(NamedTuple):
    """`sol.original` of an evosax run.

    Attributes:
        state: the evosax state after the last generation told.
        mean: the distribution's mean in `u0`'s structure (evosax's `get_mean`), or None
            for a population-based algorithm.
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
        best_u: the best candidate, in `u0`'s structure.
    """

    state: Any
    key: jax.Array
    generation: jax.Array
    losses: jax.Array
    best_u: jax.Array


# --------------------------------------------------------------------------- options


def _check_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate the backend's own options; others are checked against evosax at solve."""
    count(where, "patience", options.get("patience", 1))
    number(where, "init_std", options.get("init_std"), positive=True, optional=True)
    return dict(options)


def resolve_algorithm(name: Any) -> tuple[type, str]:
    """(the evosax algorithm class, its name) for `EvoSax(name=...)`; an unknown name
    (listing the close matches) or a bad object raises `InvalidProblemError`."""
    try:
        from evosax import algorithms
        from evosax.algorithms.base import EvolutionaryAlgorithm
    except ImportError as err:
        raise UnsupportedFeatureError(
            "opf.EvoSax needs the evosax package: pip install 'optiframe[evosax]'."
        ) from err
    if isinstance(name, type) and issubclass(name, EvolutionaryAlgorithm):
        return name, name.__name__
    if isinstance(name, EvolutionaryAlgorithm):
        raise InvalidProblemError(
            f"`EvoSax(name=...)` got an evosax algorithm instance ({type(name).__name__}); "
            "pass its name or class instead: optiframe builds it from the problem "
            "(population_size, the template solution)."
        )
    registry = dict(algorithms.algorithms)
    for cls in list(registry.values()):  # class names too: "DiscoveredES" for "DES"
        registry.setdefault(cls.__name__, cls)
    listing = f"evosax's algorithms ({', '.join(sorted(algorithms.algorithms))})"
    return lookup(f"EvoSax(name={name!r})", name, registry, listing)


# --------------------------------------------------------------------------- the algorithm


class EvoSax(Algorithm):
    """Any evosax algorithm as an optiframe algorithm: the whole search on the device.

    `maxiters` counts generations of `population_size` candidates, evaluated in one
    `jax.vmap` (`sol.stats.fevals` = generations x population). A population-based
    algorithm (PSO, DE, the GAs) evaluates `u0` and `population_size - 1` draws first:
    uniform in the box when every bound is finite, else `u0 + init_std * N(0, I)`; a
    distribution-based one (CMA-ES, NES, OpenES, ...) starts its mean at `u0`. Candidates
    are clipped into the box, evaluated and told clipped; a non-finite fitness is told as
    worse than every finite one seen. With `abstol` (`reltol`) the run stops with `Success`
    once the best objective improved by at most `abstol` (`reltol * |best|`) over the last
    `patience` generations. `sol.u` is the best candidate evaluated. See docs/evosax.md.

    Args:
        name: a key of `evosax.algorithms.algorithms` ("CMA_ES", "Sep_CMA_ES", "SNES",
            "xNES", "Open_ES", "PGPE", "DifferentialEvolution", "PSO", "SimpleGA", ...),
            its class name, a unique case-insensitive match, or an evosax algorithm class.
        population_size: candidates per generation (default 4 + floor(3 ln n), made even
            and at least 8, for n variables); for `SV_CMA_ES` and `SV_Open_ES`, per each
            of `num_populations` populations.
        seed: the run's `jax.random.key`; the same seed gives the same result.
        **options: the backend's `patience` (10 generations) and `init_std` (None: see
            above); any other is an evosax constructor argument (`num_diff=2` for DE,
            `optimizer=optax.adam(0.05)` for Open_ES) or a `default_params` field
            (`std_init=2.0`, `crossover_rate=0.5`), else refused at the run's start.
            `solve` takes them too.

    Raises:
        InvalidProblemError: a bad `population_size`, `seed` or option.

    Example:
        >>> sol = opf.solve(prob, opf.EvoSax("CMA_ES", population_size=64, std_init=0.5),
        ...                 maxiters=200)
        >>> sol.u, sol.objective, sol.original.state
    """

    def __init__(
        self, name: Any = "CMA_ES", *, population_size: int | None = None, seed: int = 0,
        **options: Any,
    ) -> None:
        if not isinstance(name, (str, type)):
            raise InvalidProblemError(
                f"`EvoSax(name={name!r})` must be a name in evosax.algorithms.algorithms or "
                "an evosax algorithm class."
            )
        self.name = name.strip() if isinstance(name, str) else name
        self.population_size = count("EvoSax", "population_size", population_size, optional=True)
        self.seed = check_seed("EvoSax", seed)
        self.options = _check_options(options, "EvoSax")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            bounds=True, budget="generations", needs_budget=True,
            keywords=frozenset(COMMON_KEYWORDS) - {"epochs"}, ensemble=True,
        )

    def __repr__(self) -> str:
        name = self.name if isinstance(self.name, str) else self.name.__name__
        own = {"population_size": self.population_size, "seed": self.seed or None}
        extras = [repr(name), *(f"{k}={v}" for k, v in own.items() if v is not None)]
        extras += [f"{k}={v!r}" for k, v in sorted(self.options.items())]
        return f"EvoSax({', '.join(extras)})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        if problem.f.ad == "finite":
            raise UnsupportedFeatureError(
                "opf.EvoSax evaluates the objective inside a compiled loop (a jax.vmap over "
                "the population), but OptimizationFunction(ad='finite') declares host code. "
                "Use opf.Nevergrad for objectives JAX cannot trace, or ad='jax' if fun is "
                "written in JAX."
            )
        shapes = device_shapes(problem.u0)
        check_objective(problem.f, shapes, problem.p)  # ad=None too
        settings = {**self.options, **_check_options(options.solver_options, "solve")}
        cls, label = resolve_algorithm(self.name)
        from evosax.algorithms.population_based.base import PopulationBasedAlgorithm

        population_based = issubclass(cls, PopulationBasedAlgorithm)
        # Options: the backend's own, evosax's constructor arguments, the rest params fields.
        ours = {k: settings.pop(k, default) for k, default in _OPTIONS.items()}
        accepted = [k for k in inspect.signature(cls.__init__).parameters if k not in _RESERVED]
        ctor = {k: settings.pop(k) for k in accepted if k in settings}
        if ours["init_std"] is not None and not population_based:
            raise InvalidProblemError(
                f"`EvoSax({label!r}, init_std=...)` draws the first population of a "
                f"population-based algorithm (DE, PSO, the GAs); {label} starts its "
                "distribution at u0: set its spread with its own params field (e.g. "
                "std_init=...)."
            )
        leaves, treedef = jax.tree.flatten(shapes)
        default = 4 + math.floor(3 * math.log(max(sum(x.size for x in leaves), 1)))
        size = self.population_size or max(8, default + default % 2)  # CMA-ES's, made even
        init_box = population_based and ours["init_std"] is None and problem.has_bounds and all(
            np.all(np.isfinite(b)) for b in jax.tree.leaves((problem.lb, problem.ub))
        )
        stall = options.abstol is not None or options.reltol is not None
        patience = int(ours["patience"]) if stall else 1
        spec = SearchSpec(population_based, problem.has_bounds, init_box, stall, patience)
        key = (
            "evosax", cls, size, tuple((k, _frozen(v)) for k, v in sorted(ctor.items())),
            treedef, tuple((x.shape, x.dtype) for x in leaves), spec,
        )
        build = lambda: EvoSaxMethod(
            _algorithm(cls, size, ctor, shapes), derivatives(problem.f, problem.sense), shapes, spec
        )
        run = DeviceRun(self, problem, options, key, build)
        params = _params(run.method, settings, label, accepted + list(_OPTIONS))
        dtype = loss_dtype()
        bounds = None if not problem.has_bounds else tuple(
            jax.tree.map(lambda b, x: jnp.broadcast_to(jnp.asarray(b, dtype), x.shape), b, shapes)
            for b in (problem.lb, problem.ub)
        )
        tol = jnp.asarray(
            [-np.inf if t is None else t for t in (options.abstol, options.reltol)], dtype
        )
        init_std = jnp.asarray(ours["init_std"] or 1.0, dtype)
        return run.solve((bounds, params, tol, init_std, jax.random.key(self.seed)))


def _frozen(value: Any) -> Any:
    """`value` if hashable, else its identity (the cached method keeps it alive)."""
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _algorithm(cls: type, size: int, ctor: dict[str, Any], shapes: Any) -> Any:
    """The evosax algorithm for candidates shaped like `shapes`, in the loss dtype."""
    template = jax.tree.map(lambda x: jnp.zeros(x.shape, loss_dtype()), shapes)
    try:
        return cls(population_size=size, solution=template, **ctor)
    except (AssertionError, TypeError, ValueError) as err:
        detail = str(err) or type(err).__name__
        raise InvalidProblemError(
            f"`EvoSax({cls.__name__!r}, population_size={size}"
            + "".join(f", {k}=..." for k in sorted(ctor))
            + f")`: evosax refused the configuration: {detail}. Constructor arguments are "
            "options: EvoSax(name, argument=value)."
        ) from err


def _params(method: EvoSaxMethod, overrides: dict[str, Any], label: str, known: list[str]) -> Any:
    """The method's `defaults` with the options that name their fields applied."""
    params = method.defaults
    check_options(
        overrides, set(known) | {f.name for f in dataclasses.fields(params)},
        f"EvoSax({label!r}, ...)",
        "Options are the backend's own, evosax's constructor arguments and params fields.",
    )
    values = {}
    for name, value in overrides.items():
        try:
            values[name] = jnp.asarray(value, dtype=getattr(params, name).dtype)
        except (TypeError, ValueError) as err:
            raise InvalidProblemError(f"`EvoSax({label!r}, {name}={value!r})`: {err}") from err
    return params.replace(**values)


# --------------------------------------------------------------------------- the method


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """The static settings an evosax program depends on (besides shapes).

    Attributes:
        population_based: `init` takes an evaluated population (PSO, DE, GAs), not a mean.
        bounded: clip asked candidates into `[lb, ub]`.
        init_box: draw the first population uniformly in the box (else around `u0`, with
            standard deviation `init_std`).
        stall: the stall tests run (`abstol` and `reltol`; an unset one is -inf).
        patience: the generations they look back over.
    """

    population_based: bool
    bounded: bool
    init_box: bool
    stall: bool
    patience: int


class Search(NamedTuple):
    """The state of an evosax search.

    Attributes:
        state: the evosax algorithm's state.
        key: the run's key; generation g draws from `fold_in(key, g)`.
        generation: generations over a warm-start chain (they pick the keys).
        done: generations of this solve.
        best, worst: the best finite fitness seen (inf if none) and the worst (-inf).
        history: (patience,) the best fitness at the end of each of the last `patience`
            generations of this solve (a ring buffer; inf where not yet filled).
        nonfinite: evaluations of this solve that were NaN or inf.
    """

    state: Any
    key: jax.Array
    generation: jax.Array
    done: jax.Array
    best: jax.Array
    worst: jax.Array
    history: jax.Array
    nonfinite: jax.Array


class EvoSaxMethod(DeviceMethod):
    """One generation of an evosax algorithm: ask, clip, evaluate (one `jax.vmap`), tell,
    and the stall tests (`stops`). The run's constants are `(bounds or None, params,
    tol (2,), init_std, seed key)`; `defaults` are evosax's `default_params` as strongly
    typed arrays, so that an option overriding a (weakly typed) field compiles nothing."""

    search = True
    evaluates_start = True
    stops = {
        ABSTOL: (ReturnCode.Success, "best objective improved by <= abstol={options.abstol} "
                 "over the last {method.spec.patience} generations"),
        RELTOL: (ReturnCode.Success, "best objective improved by <= reltol={options.reltol} "
                 "x |best| over the last {method.spec.patience} generations"),
    }

    def __init__(self, algorithm: Any, derivs: Derivatives, shapes: Any, spec: SearchSpec):
        self.algorithm, self.derivs, self.shapes, self.spec = algorithm, derivs, shapes, spec
        # Stein variational algorithms run `num_populations` populations side by side.
        self.groups = getattr(algorithm, "num_populations", None)
        self.size = getattr(algorithm, "total_population_size", algorithm.population_size)
        self.defaults = jax.tree.map(
            lambda x: jnp.asarray(x, jnp.asarray(x).dtype), algorithm.default_params
        )

    def point(self, state: Search) -> Any:
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.shapes)

    def _search(
        self, state: Any, key: Any, generation: Any, best: Any = jnp.inf, worst: Any = -jnp.inf
    ) -> Search:
        """A search at the start of a solve."""
        dtype, zero = loss_dtype(), jnp.zeros((), jnp.int32)
        return Search(
            state, key, jnp.asarray(generation, jnp.int32), zero, jnp.asarray(best, dtype),
            jnp.asarray(worst, dtype), jnp.full(self.spec.patience, jnp.inf, dtype), zero,
        )

    def _into_box(self, population: Any, bounds: Any) -> Any:
        return jax.tree.map(jnp.clip, population, *bounds) if self.spec.bounded else population

    def _generation(
        self, search: Search, population: Any, p: Any, tol: Any,
        tell: Callable[[Any, jax.Array], Any],
    ) -> tuple[Search, Evaluation]:
        """Evaluate `population` (one `jax.vmap`), tell evosax (`tell(population, fitness)`
        gives its new state), run the stall tests; the evaluation is the best candidate.
        Fitness is `sign * fun` in the loss dtype, a non-finite one told as `W + |W| + 1`
        (`W` the worst finite fitness of the run)."""
        dtype, spec = loss_dtype(), self.spec
        evaluated = jax.tree.map(lambda x, s: x.astype(s.dtype), population, self.shapes)
        fitness, aux = jax.vmap(self.derivs.value_aux, in_axes=(0, None))(evaluated, p)
        fitness = jnp.asarray(fitness).astype(dtype)
        finite = jnp.isfinite(fitness)
        worst = jnp.maximum(search.worst, jnp.max(jnp.where(finite, fitness, -jnp.inf)))
        bad = jnp.where(jnp.isfinite(worst), worst + jnp.abs(worst) + 1, 0.0)
        bad = jnp.where(jnp.isfinite(bad), bad, jnp.finfo(dtype).max)
        told = jax.tree.map(lambda x: x.astype(dtype), evaluated)
        state = tell(told, jnp.where(finite, fitness, bad.astype(dtype)))
        masked = jnp.where(finite, fitness, jnp.inf)
        i = jnp.argmin(masked)
        best = jnp.minimum(search.best, masked[i])
        status, history = jnp.asarray(RUNNING, jnp.int32), search.history
        if spec.stall:
            slot = search.done % spec.patience
            gain = history[slot] - best  # inf until `patience` generations are done
            status = jnp.where(gain <= tol[1] * jnp.abs(best), RELTOL, status)
            status = jnp.where(gain <= tol[0], ABSTOL, status)
            history = history.at[slot].set(best)
        search = search._replace(
            state=state, generation=search.generation + 1, done=search.done + 1, best=best,
            worst=worst, history=history,
            nonfinite=search.nonfinite + jnp.sum(~finite).astype(jnp.int32),
        )
        evaluation = Evaluation(
            u=jax.tree.map(lambda x: x[i], evaluated), loss=masked[i], grad=None,
            aux=None if aux is None else jax.tree.map(lambda a: a[i], aux),
            counts=counts(1, fitness.size, 0), status=status, at_state=False,
            extra=(evaluated, fitness),
        )
        return search, evaluation

    def init(self, u: Any, p: Any, consts: Any) -> tuple[Search, Evaluation | None]:
        bounds, params, tol, init_std, seed = consts
        u = jax.tree.map(lambda x: x.astype(loss_dtype()), u)
        init_key, run_key = jax.random.split(seed)
        search = self._search(None, run_key, 0)
        if not self.spec.population_based:
            mean = u if self.groups is None else jax.tree.map(
                lambda x: jnp.broadcast_to(x, (self.groups, *x.shape)), u
            )
            search = search._replace(state=self.algorithm.init(init_key, mean, params))
            return self._settled(search, p, consts), None
        draw_key, init_key = jax.random.split(init_key)
        population = self._first_population(draw_key, u, bounds, init_std)
        tell = lambda x, fitness: self.algorithm.init(init_key, x, fitness, params)
        search, evaluation = self._generation(search, population, p, tol, tell)
        return self._settled(search, p, consts), evaluation

    def _settled(self, search: Search, p: Any, consts: Any) -> Search:
        """`search` with the leaf types a generation gives back (evosax's `init` leaves some
        weakly typed, or CMAAnchoredLES's step size float32 under x64), so that the fused
        loop accepts it and fresh and stepped states share compiled code."""
        out = jax.eval_shape(lambda s: self.step(s, p, consts)[0], search)
        return jax.tree.map(lambda x, s: jax.lax.convert_element_type(x, s.dtype), search, out)

    def _first_population(self, key, u, bounds, init_std):
        """`u0` and `size - 1` draws: uniform in the box, or around `u0`."""
        x0, unravel = ravel(u)
        shape = (self.size - 1, x0.size)
        if self.spec.init_box:
            lo, hi = ravel(bounds[0])[0], ravel(bounds[1])[0]
            draws = jax.random.uniform(key, shape, x0.dtype, lo, hi)
        else:
            draws = x0 + init_std * jax.random.normal(key, shape, x0.dtype)
        population = jax.vmap(unravel)(jnp.concatenate([x0[None], draws]))
        return self._into_box(population, bounds)

    def step(self, search: Search, p: Any, consts: Any) -> tuple[Search, Evaluation]:
        bounds, params, tol, _, _ = consts
        ask_key, tell_key = jax.random.split(jax.random.fold_in(search.key, search.generation))
        population, state = self.algorithm.ask(ask_key, search.state, params)

        def tell(population, fitness):
            if self.groups is not None:  # evosax wants (num_populations, population_size, ...)
                population = jax.tree.map(
                    lambda x: x.reshape(self.groups, -1, *x.shape[1:]), population
                )
            return self.algorithm.tell(tell_key, population, fitness, state, params)[0]

        return self._generation(search, self._into_box(population, bounds), p, tol, tell)

    # -- on the host

    def export(self, search: Search, steps: Any, best: Any) -> EvoSaxState:
        losses = jnp.stack([best[1].astype(search.best.dtype), search.worst])
        return EvoSaxState(search.state, search.key, search.generation, losses, best[0])

    def restore(self, public: EvoSaxState) -> tuple[Search, Any, tuple[Any, Any]]:
        best, worst = public.losses
        search = self._search(public.state, public.key, public.generation, best, worst)
        return search, public.generation, (public.best_u, best)

    def original(self, before: Search, after: Search, evaluation: Evaluation) -> EvoSaxStep:
        (population, fitness), sign = evaluation.extra, self.derivs.sign
        objectives = sign * np.asarray(fitness, float)
        return EvoSaxStep(after.state, population, objectives, float(sign * after.best))

    def result(self, search: Search, consts: Any, extra: Any) -> EvoSaxResult:
        distribution = not self.spec.population_based and hasattr(self.algorithm, "get_mean")
        mean = self.algorithm.get_mean(search.state) if distribution else None
        return EvoSaxResult(search.state, mean, self.algorithm, consts[1], int(search.nonfinite))

    def note(self, search: Search) -> str:
        nonfinite = int(search.nonfinite)
        return f"{nonfinite} evaluations were NaN or inf" if nonfinite else ""


register_prefix("evosax", lambda name: EvoSax(name))
for _name in ("CMA_ES", "Sep_CMA_ES", "SNES", "xNES", "Open_ES", "PGPE",
              "DifferentialEvolution", "PSO", "SimpleGA"):
    register(f"evosax:{_name}", lambda _name=_name: EvoSax(_name))
