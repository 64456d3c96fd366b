"""The optimistix backend: any optimistix minimiser or least-squares solver behind `solve`.

An iteration is one call of the solver's own `step` and `terminate`, as in optimistix's
`_iterate.py`; the shared on-device lifecycle (`_device.py`) owns the loop around them, as
`optimistix.minimise` would, and adds the callback, the best iterate, `maxtime`, Ctrl-C and
warm starts. `abstol`/`reltol` are the solver's `atol`/`rtol`, `maxiters` its `max_steps`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..derivatives import Derivatives, derivatives
from ..errors import OptiframeError, UnsupportedFeatureError
from ..problem import MinSense, OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from ._device import DeviceRun
from ._lifecycle import check_options
from ._program import (
    FIRST_STOP,
    NONFINITE,
    RUNNING,
    DeviceMethod,
    Evaluation,
    counts,
    loss_dtype,
)
from .base import COMMON_KEYWORDS, Algorithm, Capabilities, SolveOptions, register, register_prefix

# The solvers registered by name ("optimistix:BFGS"): name -> least squares (residuals).
NAMES = {
    "BFGS": False, "DFP": False, "LBFGS": False, "NonlinearCG": False,
    "GaussNewton": True, "LevenbergMarquardt": True, "IndirectLevenbergMarquardt": True,
    "Dogleg": True,
}
# rtol and atol of a solver built from its name (optimistix has no defaults).
DEFAULT_TOL = 1e-6
# optimistix's `max_steps` default, used when `maxiters` is not given.
DEFAULT_MAX_STEPS = 256
# The `options` optimistix's solvers read, by kind (least squares or not).
_OPTIONS = {False: ("autodiff_mode",), True: ("jac",)}

# optimistix's RESULTS, by name -> ReturnCode (a name missing here is a Failure). The status
# of a run that ended with result `r` is FIRST_STOP + r's index; `successful` with the
# solver's convergence test passed.
RESULT_CODES = {
    "successful": ReturnCode.Success,
    "max_steps_reached": ReturnCode.Failure,  # of a linear solve inside a step
    "singular": ReturnCode.Failure,
    "breakdown": ReturnCode.Failure,
    "stagnation": ReturnCode.Stalled,
    "conlim": ReturnCode.Failure,
    "nonfinite_input": ReturnCode.Failure,
    "nonlinear_max_steps_reached": ReturnCode.MaxIters,
    "nonlinear_divergence": ReturnCode.Failure,
    "nonfinite": ReturnCode.Failure,
}
_TAGS: frozenset[Any] = frozenset()


class OptimistixState(NamedTuple):
    """`sol.state`: what `solve(..., warm_start=sol)` continues.

    Attributes:
        y: the last iterate, in `u0`'s structure.
        state: the solver's state (its arrays; the rest is rebuilt from the solver).
        steps: steps taken since the first solve of the chain.
    """

    y: Any
    state: Any
    steps: jax.Array


def _optimistix() -> Any:
    try:
        import optimistix
    except ImportError as err:
        raise UnsupportedFeatureError(
            "opf.Optimistix needs the optimistix package: pip install 'optiframe[optimistix]'."
        ) from err
    return optimistix


@dataclasses.dataclass(frozen=True, eq=False)
class Optimistix(Algorithm):
    """An optimistix solver as an optiframe algorithm: a minimiser (`optx.BFGS`,
    `optx.NonlinearCG`, `optx.GradientDescent`, `optx.OptaxMinimiser`, ...) for a scalar
    objective, or a least-squares solver (`optx.LevenbergMarquardt`, `optx.GaussNewton`,
    `optx.Dogleg`) for an objective that returns residuals r, minimising ½‖r‖²
    (`sol.objective` is that cost, as for `ScipyLeastSquares`).

    `solve`'s `reltol`/`abstol` replace the solver's `rtol`/`atol` (optimistix's Cauchy
    test on the change of `y` and of the objective), `maxiters` is `max_steps` (optimistix's
    256 by default), and `solver_options` are optimistix's `options` (`autodiff_mode` for a
    minimiser, `jac` for a least-squares solver). One iteration is one `step` of the solver:
    one evaluation of `fun` and of its gradient (or Jacobian).

    Args:
        solver: an optimistix solver, or the name of a registered one ("BFGS", "LBFGS",
            "DFP", "NonlinearCG", "GaussNewton", "LevenbergMarquardt",
            "IndirectLevenbergMarquardt", "Dogleg"), built with `rtol = atol = 1e-6`.

    Example:
        >>> sol = opf.solve(prob, opf.Optimistix(optx.BFGS(rtol=1e-8, atol=1e-8)))
    """

    solver: Any

    def __post_init__(self) -> None:
        if isinstance(self.solver, str):
            if self.solver not in NAMES:
                close = difflib.get_close_matches(self.solver, list(NAMES), n=3, cutoff=0.4)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise OptiframeError(
                    f"`Optimistix({self.solver!r})`: unknown solver name.{hint} Names: "
                    f"{', '.join(NAMES)}; or pass an optimistix solver object."
                )
            return
        optx = _optimistix()
        kinds = (optx.AbstractMinimiser, optx.AbstractLeastSquaresSolver)
        if not isinstance(self.solver, kinds):
            raise OptiframeError(
                f"`Optimistix(solver=...)` must be an optimistix minimiser or least-squares "
                f"solver (e.g. optx.BFGS(rtol=1e-8, atol=1e-8)), got "
                f"{type(self.solver).__name__}."
            )
        if not isinstance(self.solver, _families(optx)):
            raise UnsupportedFeatureError(
                f"`Optimistix({type(self.solver).__name__})`: optiframe counts the "
                "evaluations of the gradient-based optimistix solvers (subclasses of "
                "AbstractGradientDescent, AbstractQuasiNewton, AbstractGaussNewton, and "
                "OptaxMinimiser); for Nelder-Mead use opf.NelderMead()."
            )

    @property
    def least_squares(self) -> bool:
        """The solver minimises ½‖r‖² of residuals r (else a scalar objective)."""
        if isinstance(self.solver, str):
            return NAMES[self.solver]
        return not isinstance(self.solver, _optimistix().AbstractMinimiser)

    @functools.cached_property
    def built(self) -> Any:
        """The optimistix solver (built from its name with rtol = atol = DEFAULT_TOL)."""
        if isinstance(self.solver, str):
            return getattr(_optimistix(), self.solver)(rtol=DEFAULT_TOL, atol=DEFAULT_TOL)
        return self.solver

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            needs=frozenset({"grad"}), residuals=self.least_squares,
            keywords=frozenset(COMMON_KEYWORDS) - {"epochs"}, ensemble=True,
        )

    def __repr__(self) -> str:
        name = self.solver if isinstance(self.solver, str) else type(self.solver).__name__
        return f"Optimistix({name})"

    def solve(self, problem: OptimizationProblem, options: SolveOptions) -> OptimizationSolution:
        kind = "least-squares solver" if self.least_squares else "minimiser"
        check_options(
            options.solver_options, _OPTIONS[self.least_squares],
            f"solve(..., **options) with an optimistix {kind}",
        )
        if problem.f.ad != "jax":
            raise UnsupportedFeatureError(
                f"{self!r} differentiates `fun` with JAX, but the problem's "
                f"OptimizationFunction has ad={problem.f.ad!r}: use ad='jax', or a SciPy "
                "method for an objective JAX cannot trace."
            )
        if self.least_squares and problem.sense is not MinSense:
            raise UnsupportedFeatureError(
                f"{self!r} minimises ½‖r(u)‖²; MaxSense has no meaning for it."
            )
        if options.maxiters is None:
            options = dataclasses.replace(options, maxiters=DEFAULT_MAX_STEPS)
        solver = self.built
        settings = tuple(sorted(options.solver_options.items()))
        key = ("optimistix", _fingerprint(solver), self.least_squares, settings)
        build = lambda: OptimistixMethod(
            solver, derivatives(problem.f, problem.sense), self.least_squares,
            dict(options.solver_options),
        )
        run = DeviceRun(self, problem, options, key, build)
        rtol = solver.rtol if options.reltol is None else options.reltol
        atol = solver.atol if options.abstol is None else options.abstol
        return run.solve(np.asarray([rtol, atol], loss_dtype()))


def _families(optx: Any) -> tuple[type, ...]:
    """The solver families whose step evaluates `fun` (and its gradient or Jacobian) once."""
    return (
        optx.AbstractGradientDescent, optx.AbstractQuasiNewton, optx.AbstractGaussNewton,
        optx.OptaxMinimiser,
    )


def _fingerprint(solver: Any) -> Any:
    """A hashable summary of `solver` without its tolerances (they are run constants):
    its tree structure and leaves, arrays by value, so equal solvers share compiled code;
    its identity where that fails (the cached program keeps it alive)."""
    import equinox as eqx

    stripped = eqx.tree_at(lambda s: (s.rtol, s.atol), solver, (0.0, 0.0))
    leaves, treedef = jax.tree.flatten(stripped)
    by_value = lambda x: (
        ("array", x.shape, str(x.dtype), np.asarray(x).tobytes()) if eqx.is_array(x) else x
    )
    key = (treedef, tuple(map(by_value, leaves)))
    try:
        hash(key)
    except TypeError:
        return ("id", id(solver))
    return key


def _is_shape(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct))


@functools.cache
def _watch_class() -> type:
    optx = _optimistix()

    class Watched(optx.AbstractSearch):
        """A solver's search (line search, trust region, learning rate) that also keeps
        the loss at the point the last step evaluated: optimistix keeps a rejected
        point's value nowhere, and a non-finite one must end the run."""

        inner: Any

        def init(self, y, f_info_struct):
            return self.inner.init(y, f_info_struct), jnp.zeros((), loss_dtype())

        def step(self, first_step, y, y_eval, f_info, f_eval_info, state):
            size, accept, result, inner = self.inner.step(
                first_step, y, y_eval, f_info, f_eval_info, state[0]
            )
            return size, accept, result, (inner, f_eval_info.as_min().astype(loss_dtype()))

    return Watched


def _watched(solver: Any) -> Any:
    """`solver` with its search watched (`Watched`), if it has one (an optax minimiser
    evaluates only its iterates)."""
    import equinox as eqx

    if not hasattr(solver, "search"):
        return solver
    return eqx.tree_at(lambda s: s.search, solver, _watch_class()(solver.search))


class OptimistixMethod(DeviceMethod):
    """One optimistix step and test. The state is `(y, the solver state's arrays)`; the
    rest of the solver state (functions, jaxprs) is rebuilt by tracing the solver's `init`
    (it never changes). The evaluation of an iteration is the point the step started from,
    with its loss: optimistix steps return the auxiliary output at that point, and `fn`
    returns its loss there as auxiliary output. The run's constants are `[rtol, atol]`."""

    evaluates_start = True  # `init` traces `fun` on `p` for its output's shape

    def __init__(
        self, solver: Any, derivs: Derivatives, least_squares: bool, options: dict[str, Any]
    ) -> None:
        optx = _optimistix()
        self.solver, self.derivs, self.least_squares = _watched(solver), derivs, least_squares
        self.options, self.results = options, optx.RESULTS
        self.stops = {  # a result a newer optimistix adds is a Failure
            FIRST_STOP + item._value: (RESULT_CODES.get(name, ReturnCode.Failure), name)
            for name, item in optx.RESULTS._name_to_item.items()
        }

    def _fn(self, y: Any, p: Any) -> tuple[Any, tuple[Any, Any]]:
        """optimistix's `fn(y, args)`: (signed loss, or residuals; (loss, the user's aux))."""
        out, aux = self.derivs.value_aux(y, p)
        if self.least_squares:
            loss = 0.5 * sum(jnp.sum(r**2) for r in jax.tree.leaves(out))
            return out, (loss, aux)
        return out, (out, aux)

    def _solver(self, tol: Any) -> Any:
        import equinox as eqx

        return eqx.tree_at(lambda s: (s.rtol, s.atol), self.solver, (tol[0], tol[1]))

    def _init(self, solver: Any, y: Any, p: Any, shapes_only: bool = False) -> Any:
        import equinox as eqx

        f_struct, aux_struct = jax.eval_shape(self._fn, y, p)
        init = functools.partial(solver.init, self._fn)
        args = (y, p, self.options, f_struct, aux_struct, _TAGS)
        return eqx.filter_eval_shape(init, *args) if shapes_only else init(*args)

    def init(self, u: Any, p: Any, consts: Any) -> tuple[Any, None]:
        import equinox as eqx

        state = self._init(self._solver(consts), u, p)
        return (u, eqx.filter(state, eqx.is_array)), None

    def point(self, state: Any) -> Any:
        return state[0]

    def step(self, state: Any, p: Any, consts: Any) -> tuple[Any, Evaluation]:
        import equinox as eqx

        y, arrays = state
        solver = self._solver(consts)
        static = eqx.filter(self._init(solver, y, p, shapes_only=True), _is_shape, inverse=True)
        full = eqx.combine(arrays, static)
        new_y, full, (loss, aux) = solver.step(self._fn, y, p, self.options, full, _TAGS)
        done, result = solver.terminate(self._fn, new_y, p, self.options, full, _TAGS)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_y)]))
        result = self.results.where(finite, result, self.results.nonfinite)
        index = result._value
        stop = done | (index != self.results.successful._value)
        status = jnp.where(stop, FIRST_STOP + index, RUNNING)
        if hasattr(self.solver, "search"):  # the point the step evaluated (maybe rejected)
            status = jnp.where(jnp.isfinite(full.search_state[1]), status, NONFINITE)
        evaluation = Evaluation(
            u=y, loss=jnp.asarray(loss, loss_dtype()), grad=None, aux=aux,
            counts=counts(1, 1, 1), status=status.astype(jnp.int32), at_state=False,
        )
        return (new_y, eqx.filter(full, eqx.is_array)), evaluation

    def final(self, state: Any, p: Any, consts: Any) -> tuple[Any, jax.Array]:
        loss = self._fn(state[0], p)[1][0]
        return jnp.asarray(loss, loss_dtype()), counts(0, 1, 0)

    def verdict(self, status: int, state: Any, options: SolveOptions) -> tuple[ReturnCode, str]:
        code, name = self.stops[status]
        if name == "successful":
            rtol = self.solver.rtol if options.reltol is None else options.reltol
            atol = self.solver.atol if options.abstol is None else options.abstol
            return code, f"optimistix's convergence test passed (rtol={rtol}, atol={atol})"
        return code, f"optimistix: {name}: {self.results._index_to_message[status - FIRST_STOP]}"

    def export(self, state: Any, steps: Any, best: Any) -> OptimistixState:
        return OptimistixState(state[0], state[1], steps)

    def restore(self, public: OptimistixState) -> tuple[Any, Any, None]:
        return (public.y, public.state), public.steps, None

    def original(self, before: Any, after: Any, evaluation: Evaluation) -> Any:
        return after[1]

    def result(self, state: Any, consts: Any, extra: Any) -> Any:
        return state[1]


@functools.cache
def _named(name: str) -> Optimistix:
    """One instance per registered name, so repeated solves reuse compiled code."""
    return Optimistix(name)


register_prefix("optimistix", lambda name: _named(name) if name in NAMES else Optimistix(name))
for _name in NAMES:
    register(f"optimistix:{_name}", functools.partial(_named, _name))
