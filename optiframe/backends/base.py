"""The one protocol every backend implements, and the registry of string names.

A backend is an `Algorithm`: an immutable object that declares its `Capabilities` and
implements `solve(problem, options)`. `opf.solve` checks the capabilities once, before
dispatch (`optiframe.solve.check_capabilities`), so a backend's `solve` may assume the
problem and keywords are ones it declared it can handle.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import functools
import importlib
from collections.abc import Callable
from typing import Any

from ..errors import OptiframeError

COMMON_KEYWORDS = (
    "maxiters", "maxtime", "abstol", "reltol", "callback", "progress", "epochs",
    "warm_start", "save_best", "history",
)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an algorithm can handle. Everything defaults to "no".

    Attributes:
        bounds: box bounds `lb`/`ub`.
        constraints: general constraints `lcons <= cons(u, p) <= ucons`.
        integrality: integer variables.
        data: a data iterator as `p` (a changing objective).
        needs: derivatives it cannot run without: any of "grad", "hess", "hvp", "cons_jac".
        needs_bounds: it searches a box, so every variable needs finite `lb` and `ub`.
        residuals: the objective returns a residual vector (least squares), not a scalar.
        budget: what `maxiters` counts ("iterations", "evaluations", "generations", ...).
        needs_budget: it cannot run without `maxiters` (or `epochs` over a data iterator).
        keywords: the common `solve` keywords it honours.
        ensemble: it runs the members of an `EnsembleProblem` as one vmapped program
            (on the device); else `solve` runs them one by one.
        processes: it runs on data spread over the processes of `jax.distributed` (a
            `DataLoader`, or `p` sharded over them).
    """

    bounds: bool = False
    constraints: bool = False
    integrality: bool = False
    data: bool = False
    needs: frozenset[str] = frozenset()
    needs_bounds: bool = False
    residuals: bool = False
    budget: str = "iterations"
    needs_budget: bool = False
    keywords: frozenset[str] = frozenset(("maxiters",))
    ensemble: bool = False
    processes: bool = False


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """The common keywords of `solve`, validated, plus the backend's own options.

    `maxiters` and `epochs` are resolved by `solve`: for a data iterator, `maxiters` is the
    total number of steps and `epochs` the passes it spans. `ensemble` is the
    `EnsembleProblem` whose members an algorithm with `Capabilities.ensemble` solves
    together (the problem it is given is the members' shared one), else None.
    """

    maxiters: int | None = None
    maxtime: float | None = None
    abstol: float | None = None
    reltol: float | None = None
    callback: Callable[..., Any] | None = None
    progress: Any = None
    epochs: int | None = None
    warm_start: Any = None
    save_best: bool = False
    solver_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    ensemble: Any = None
    history: Any = None


class Algorithm(abc.ABC):
    """An optimisation algorithm behind `solve`.

    Subclasses hold the algorithm's configuration only, checked when they are built and
    not changed after; per-run state lives in the backend's `solve` and in
    `OptimizationSolution.state`.
    """

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this configured algorithm can handle."""

    @abc.abstractmethod
    def solve(self, problem: Any, options: SolveOptions) -> Any:
        """Run on `problem` and return an `OptimizationSolution`."""


# The backend modules: each registers its names and adapters when imported, which happens
# the first time a name, an adapter or the list of algorithms is needed (`load_backends`),
# not with `import optiframe`.
BACKENDS = (
    "optax", "optimistix", "scipy", "scipy_global", "scipy_least_squares", "composite",
    "nevergrad", "evosax", "ode",
)
_NAMES: dict[str, tuple[str, Callable[[], Algorithm]]] = {}  # key -> (spelling, factory)
_PREFIXES: dict[str, tuple[str, Callable[[str], Algorithm]]] = {}
_ADAPTERS: list[tuple[Callable[[Any], bool], Callable[[Any], Algorithm]]] = []


def _normalise(name: str) -> str:
    return name.strip().lower()


def register(name: str, factory: Callable[[], Algorithm]) -> None:
    """Make `solve(prob, name)` (in any case) use `factory()`."""
    _NAMES[_normalise(name)] = (name, factory)


def register_prefix(prefix: str, factory: Callable[[str], Algorithm]) -> None:
    """Make `solve(prob, "prefix:NAME")` use `factory("NAME")`."""
    _PREFIXES[_normalise(prefix)] = (prefix, factory)


def register_adapter(accepts: Callable[[Any], bool], wrap: Callable[[Any], Algorithm]) -> None:
    """Make `solve` accept foreign objects (e.g. an `optax.GradientTransformation`)."""
    _ADAPTERS.append((accepts, wrap))


@functools.cache
def load_backends() -> None:
    """Import every backend module (once), registering its names and adapters."""
    for name in BACKENDS:
        importlib.import_module(f"{__package__}.{name}")


def registered_names() -> list[str]:
    """The registered names, as they were registered."""
    load_backends()
    return sorted(name for name, _ in _NAMES.values())


def registered_algorithms() -> dict[str, Algorithm]:
    """Every registered name with a default instance (construction imports nothing)."""
    load_backends()
    return {name: factory() for name, factory in sorted(_NAMES.values())}


def resolve(alg: Any) -> Algorithm:
    """An `Algorithm` for `alg`: itself, a registered name, or an adapted foreign object.

    Raises:
        OptiframeError: for an unknown name (listing close matches) or object.
    """
    if isinstance(alg, Algorithm):
        return alg
    load_backends()
    if isinstance(alg, str):
        key = _normalise(alg)
        if key in _NAMES:
            return _NAMES[key][1]()
        prefix, sep, rest = key.partition(":")
        if sep and prefix in _PREFIXES:
            return _PREFIXES[prefix][1](alg.strip()[len(prefix) + 1 :])
        spellings = {k: name for k, (name, _) in _NAMES.items()}
        spellings.update({f"{k}:": f"{name}:" for k, (name, _) in _PREFIXES.items()})
        close = difflib.get_close_matches(key, list(spellings), n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(spellings[c]) for c in close)}?" if close else ""
        raise OptiframeError(
            f"Unknown algorithm name {alg!r}.{hint} Registered names: "
            f"{', '.join(registered_names())}; prefixes: "
            f"{', '.join(name + ':NAME' for name, _ in sorted(_PREFIXES.values()))}."
        )
    for accepts, wrap in _ADAPTERS:
        if accepts(alg):
            return wrap(alg)
    raise OptiframeError(
        f"`solve(prob, alg)`: {type(alg).__name__} is not an algorithm; pass an optax "
        "GradientTransformation, an optiframe algorithm (e.g. opf.LBFGSB()) or a "
        "registered name (e.g. 'adam')."
    )
