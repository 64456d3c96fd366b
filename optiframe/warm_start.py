"""A learned warm start: `fit_warm_start` solves a family's training tasks as one ensemble
and fits a map `p -> u0` (a linear map plus a small MLP) to their solutions; `WarmStart`
predicts a start from which the solver then runs.

The prediction only chooses where the solver begins: every `WarmStart.solve` runs the
algorithm to its own convergence test, so a poor prediction costs iterations, never the
answer. optax (the fit's optimizer) is imported when a warm start is fitted.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import count
from ._checks import seed as check_seed
from .backends.base import Algorithm, resolve
from .ensemble import EnsembleProblem, EnsembleSolution, stacked_like
from .errors import InvalidProblemError, OptiframeError
from .family import ProblemFamily
from .problem import OptimizationProblem
from .solution import OptimizationSolution
from .solve import solve

HIDDEN = (64, 64)  # the MLP's hidden layers (tanh)
STEPS = 3000  # full-batch Adam steps that fit it
LEARNING_RATE = 1e-2  # Adam's, decayed to 0 along a cosine
# The MLP's last layer is drawn this much smaller than the others, so the map starts near
# its least-squares linear part: on 32 tasks of a linear p -> u the MLP alone was 0.3 off
# on held-out tasks, the linear part with a zero last layer 0.001, with this 0.006; on
# bench_l2o.py's 2,000 tasks a zero last layer learned slower (1.2e-3 mean error against
# 8e-4, one more evaluation per warm solve).
LAST_LAYER = 0.1
# L-BFGS-B stops once an iteration lowers f by less than ftol max(|f|, 1) (ftol = reltol,
# SciPy's default 2.2e-9): below f = 1 an absolute test, which a start near the answer meets
# sooner, farther from the optimum than a cold start stops (bench_l2o.py: 25x farther at
# worst, 1.2e-7 relative). With this reltol the warm-started solves end as close as cold
# ones with SciPy's defaults, for 3 more evaluations; training solves and `WarmStart.solve`
# use it unless a reltol (or ftol) is given.
WARM_RELTOL = 1e-11


class Scaling(NamedTuple):
    """The training set's standardization: features `(x - mean) / std`, per column.

    Attributes:
        p_mean, p_std: (d_p,) of the flattened parameters.
        u_mean, u_std: (d_u,) of the flattened solutions.
    """

    p_mean: np.ndarray
    p_std: np.ndarray
    u_mean: np.ndarray
    u_std: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class WarmStart:
    """A fitted map `p -> u0` for a `ProblemFamily`'s tasks, and the solver it was fitted
    for. Made by `opf.fit_warm_start`.

    Attributes:
        family: the family whose tasks it predicts starts for.
        alg: the algorithm the training tasks were solved with; `solve` runs it.
        weights: the map's parameters: {"linear": {"w": (d_p, d_u), "b": (d_u,)}, "layers":
            the MLP's, a list of {"w": (d_in, d_out), "b": (d_out,)}}.
        scaling: the standardization of its inputs (flattened p) and outputs (flattened u).
        solve_kwargs: the keywords of the training solves; `solve` passes them too.
        training: the training ensemble's solution (`training.u`: (n, ...) the solutions).
        fit: the map's own `solve` (its objective is the standardized mean squared error).

    `ws(p)` is a start shaped like `family.prob.u0` (same pytree, shapes, dtypes);
    `ws.batch(ps)` N of them from N stacked parameter sets in one compiled call.

    Example:
        >>> ws = opf.fit_warm_start(family, opf.LBFGSB(), n=2000)
        >>> sol = ws.solve(p)                            # L-BFGS-B from ws(p)
        >>> esol = opf.solve(ws.ensemble(ps), ws.alg)     # N tasks, each from its prediction
    """

    family: ProblemFamily
    alg: Algorithm
    weights: dict[str, Any] = dataclasses.field(repr=False)
    scaling: Scaling = dataclasses.field(repr=False)
    solve_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: EnsembleSolution | None = dataclasses.field(default=None, repr=False)
    fit: OptimizationSolution | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.family, ProblemFamily):
            raise InvalidProblemError(
                f"`WarmStart(family=...)` must be an opf.ProblemFamily, got "
                f"{type(self.family).__name__}; make one with opf.fit_warm_start."
            )

    @property
    def used(self) -> np.ndarray:
        """(n,) bool: the training tasks the map was fitted to (those solved with `Success`
        to a finite point)."""
        return _usable(self.training)

    def __call__(self, p: Any) -> Any:
        """The predicted start for parameters `p` (shaped like `family.prob.p`): a pytree
        like `family.prob.u0`, inside its bounds if it has any."""
        _check_p(p, self.family.prob.p, "WarmStart(p)", batched=False)
        return self._starts(self._predict(self.weights, self.scaling, p, False))

    def batch(self, ps: Any) -> Any:
        """Starts for N stacked parameter sets `ps` (`family.prob.p`'s leaves with a leading
        axis N), in one compiled call: `u0s`, `family.prob.u0`'s leaves with a leading axis
        N. Equals stacking `ws(p)` over the members (to rounding)."""
        _check_p(ps, self.family.prob.p, "WarmStart.batch(ps)", batched=True)
        return self._starts(self._predict(self.weights, self.scaling, ps, True))

    def problem(self, p: Any) -> OptimizationProblem:
        """The task `p` starting from its prediction: `prob.remake(p=p, u0=ws(p))`."""
        return self.family.prob.remake(p=p, u0=self(p))

    def ensemble(self, ps: Any) -> EnsembleProblem:
        """N tasks, each starting from its prediction:
        `EnsembleProblem(prob, ps=ps, u0s=ws.batch(ps))`."""
        return EnsembleProblem(self.family.prob, ps=ps, u0s=self.batch(ps))

    def solve(self, p: Any, **kwargs: Any) -> OptimizationSolution:
        """`opf.solve(ws.problem(p), ws.alg, **{**ws.solve_kwargs, **kwargs})`: the solver
        always runs after the prediction, to its own convergence test."""
        return solve(self.problem(p), self.alg, **{**self.solve_kwargs, **kwargs})

    def __repr__(self) -> str:
        layers = self.weights["layers"]
        sizes = "-".join(str(np.shape(layer["w"])[0]) for layer in layers)
        sizes += f"-{np.shape(layers[-1]['w'])[1]}"
        used = "" if self.training is None else (
            f", fitted to {int(self.used.sum())} of {len(self.training)} tasks"
        )
        return f"WarmStart({self.alg!r}, linear + MLP {sizes}{used})"

    @functools.cached_property
    def _predict(self) -> Callable[..., list[jax.Array]]:
        """`(weights, scaling, p, batched) -> u0's leaves`: flatten p, standardize, the
        network, unstandardize, split into u0's leaves in their dtypes and clip them into
        the bounds, all in one compiled call."""
        prob = self.family.prob
        refs = jax.tree.leaves(prob.u0)
        dtypes = [jnp.result_type(ref) for ref in refs]  # as JAX computes them
        boxes = [None] * len(refs) if not prob.has_bounds else [
            _inside(lb, ub, dtype)
            for lb, ub, dtype in zip(jax.tree.leaves(prob.lb), jax.tree.leaves(prob.ub), dtypes)
        ]

        def predict(weights: Any, scaling: Scaling, p: Any, batched: bool) -> list[jax.Array]:
            leaves = jax.tree.leaves(p)
            lead = np.shape(leaves[0])[:1] if batched else ()
            dtype = weights["linear"]["w"].dtype
            x = jnp.concatenate([jnp.reshape(leaf, (*lead, -1)).astype(dtype)
                                 for leaf in leaves], axis=-1)
            y = _net(weights, (x - scaling.p_mean) / scaling.p_std)
            y = y * scaling.u_std + scaling.u_mean
            out, start = [], 0
            for ref, dtype, box in zip(refs, dtypes, boxes):
                size = int(np.size(ref))
                part = jnp.reshape(y[..., start:start + size], (*lead, *np.shape(ref)))
                part = part.astype(dtype)
                out.append(part if box is None else jnp.clip(part, *box))
                start += size
            return out

        return jax.jit(predict, static_argnums=3)

    def _starts(self, leaves: list[jax.Array]) -> Any:
        """Predicted leaves as `u0`'s pytree, each leaf of u0's type (NumPy stays NumPy)."""
        refs, treedef = jax.tree.flatten(self.family.prob.u0)
        return jax.tree.unflatten(treedef, [stacked_like(x, ref) for x, ref in zip(leaves, refs)])


def fit_warm_start(
    family: ProblemFamily,
    alg: Any,
    *,
    n: int,
    seed: int = 0,
    hidden: tuple[int, ...] = HIDDEN,
    steps: int = STEPS,
    executor: Any = None,
    **solve_kwargs: Any,
) -> WarmStart:
    """Solve `n` tasks of `family` with `alg` as one ensemble and fit a map `p -> u`.

    The n tasks are `family.draw(key, n)` (each from its own `u0`), solved by
    `opf.solve(opf.EnsembleProblem(family.prob, ps=ps, u0s=u0s), alg, executor=executor,
    **solve_kwargs)`: one compiled program for an on-device algorithm, one member after
    another (on `executor` if given) for SciPy or Nevergrad. Only the tasks that ended with
    `Success` at a finite point are fitted (`ws.used`): a solve that ran out of budget,
    stalled or failed has no reliable answer to learn. The map takes the flattened `p`,
    standardized by the training mean and standard deviation, to the flattened solution,
    standardized likewise: a linear map plus an MLP (tanh layers `hidden`). It starts near
    the least-squares linear fit (the MLP drawn from `seed`, its last layer small), which
    keeps a small training set from overfitting, and is then fitted with `opf.solve`
    itself: `steps` full-batch Adam steps (learning rate 1e-2, cosine decay).

    Tolerances: `ws.solve` passes the training solves' `solve_kwargs`. For L-BFGS-B, whose
    relative `ftol` (reltol, 2.2e-9) is floored at |f| = 1 and so acts absolutely below
    f = 1, a start near the answer meets it early, farther from the optimum than a cold
    start ends; unless `reltol` or `ftol` is given, both use `reltol=WARM_RELTOL` (1e-11),
    which costs the warm solves a few evaluations (`benchmarks/bench_l2o.py`).

    Args:
        family: the tasks, an `opf.ProblemFamily`.
        alg: the algorithm (an optiframe algorithm, an optax transform or a registered
            name); `ws.solve` runs it.
        n: training tasks, at least 2 (hundreds to thousands for a useful map).
        seed: draws the tasks and the MLP's initial weights.
        hidden: the MLP's hidden layer widths.
        steps: Adam steps of the fit.
        executor: a `concurrent.futures.Executor` for the members of a host algorithm.
        **solve_kwargs: keywords of the training solves (`maxiters=`, `reltol=`, solver
            options) and the defaults of `ws.solve`.

    Returns:
        The fitted `WarmStart`.

    Raises:
        InvalidProblemError: a family that is not an `opf.ProblemFamily` or whose `p` has
            no arrays, `n < 2`, a bad `seed`, `hidden` or `steps`.
        OptiframeError: fewer than 2 training tasks solved (their return codes are named).

    Example:
        >>> ws = opf.fit_warm_start(family, opf.LBFGSB(), n=2000)
        >>> sol = ws.solve(p)
    """
    call = "fit_warm_start"
    if not isinstance(family, ProblemFamily):
        raise InvalidProblemError(
            f"`{call}(family=...)` must be an opf.ProblemFamily, got {type(family).__name__}; "
            "wrap the problem: opf.ProblemFamily(prob, sample_p)."
        )
    if not jax.tree.leaves(family.prob.p):
        raise InvalidProblemError(
            f"`{call}(family=...)`: the family's p has no arrays, so there is nothing to "
            "predict a start from; give the problem the parameters its tasks vary."
        )
    n = count(call, "n", n)
    if n < 2:
        raise InvalidProblemError(
            f"`{call}(n={n})`: a fit needs at least 2 training tasks; pass n >= 2 "
            "(hundreds to thousands for a useful map)."
        )
    seed = check_seed(call, seed)
    if not isinstance(hidden, (tuple, list)):
        raise InvalidProblemError(
            f"`{call}(hidden={hidden!r})` must be a tuple of layer widths, e.g. (64, 64)."
        )
    hidden = tuple(count(call, "hidden", width) for width in hidden)
    steps = count(call, "steps", steps)
    algorithm = resolve(alg)
    solve_kwargs = _warm_tolerances(algorithm, family.prob, solve_kwargs)

    task_key, init_key = jax.random.split(jax.random.key(seed))
    ps, u0s = family.draw(task_key, n)
    training = solve(EnsembleProblem(family.prob, ps=ps, u0s=u0s), algorithm,
                     executor=executor, **solve_kwargs)
    used = _usable(training)
    if used.sum() < 2:
        codes = ", ".join(f"{code.value}: {k}" for code, k in Counter(training.retcodes).items())
        raise OptiframeError(
            f"`{call}`: {int(used.sum())} of {n} training solves ended with Success at a "
            f"finite point ({codes}); a fit needs at least 2. Give the solves more budget "
            "(maxiters=) or looser tolerances, or check the family's tasks."
        )
    x = np.concatenate([np.reshape(np.asarray(leaf, np.float64), (n, -1))
                        for leaf in jax.tree.leaves(ps)], axis=1)[used]
    y = np.concatenate([np.reshape(np.asarray(leaf), (n, -1))
                        for leaf in jax.tree.leaves(training.u)], axis=1)[used]
    scaling = _scaling(x, y)
    weights, fit = _fit(x, y, scaling, hidden, steps, init_key)
    return WarmStart(family, algorithm, weights, scaling, solve_kwargs, training, fit)


def _warm_tolerances(
    algorithm: Algorithm, prob: OptimizationProblem, solve_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """`solve_kwargs`, with `reltol=WARM_RELTOL` for L-BFGS-B unless a reltol or ftol is
    given (to `fit_warm_start`, the problem or the algorithm)."""
    if getattr(getattr(algorithm, "spec", None), "name", None) != "L-BFGS-B":
        return dict(solve_kwargs)
    given = {**prob.kwargs, **getattr(algorithm, "options", {}), **solve_kwargs}
    if given.get("reltol") is not None or given.get("ftol") is not None:
        return dict(solve_kwargs)
    return {"reltol": WARM_RELTOL, **solve_kwargs}


def _usable(training: EnsembleSolution | None) -> np.ndarray:
    """(n,) bool: members with `Success` and a finite solution and objective."""
    if training is None:
        return np.zeros(0, bool)
    finite = np.isfinite(training.objective)
    for leaf in jax.tree.leaves(training.u):
        finite &= np.all(np.isfinite(np.reshape(np.asarray(leaf), (len(training), -1))), axis=1)
    return training.successful & finite


def _scaling(x: np.ndarray, y: np.ndarray) -> Scaling:
    """Column means and standard deviations (1 where a column is constant), in the default
    float dtype."""
    dtype = jnp.result_type(float)

    def stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = a.astype(np.float64)
        mean, std = a.mean(axis=0), a.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        return mean.astype(dtype), std.astype(dtype)

    return Scaling(*stats(x), *stats(y))


def _check_p(p: Any, like: Any, call: str, *, batched: bool) -> None:
    """Raises unless `p` is shaped like `like` (with a leading axis N on every leaf when
    `batched`)."""
    fix = "shaped like family.prob.p" + (", with a leading axis of N tasks" if batched else "")
    if jax.tree.structure(p) != jax.tree.structure(like):
        raise InvalidProblemError(
            f"`{call}`: p has pytree structure {jax.tree.structure(p)}, but the family's p "
            f"has {jax.tree.structure(like)}; pass p {fix}."
        )
    paths = jax.tree_util.tree_flatten_with_path(p)[0]
    lead = np.shape(paths[0][1])[:1] if batched else ()
    for (path, leaf), ref in zip(paths, jax.tree.leaves(like)):
        shape, want = np.shape(leaf), (*lead, *np.shape(ref))
        if shape != want or (batched and not lead):
            raise InvalidProblemError(
                f"`{call}`: p{jax.tree_util.keystr(path)} has shape {shape}, but the "
                f"family's p has shape {np.shape(ref)} there; pass p {fix}."
            )


def _inside(lb: np.ndarray, ub: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """The bounds in `dtype`, rounded inwards (so a value clipped to them stays inside)."""
    lo, hi = np.asarray(lb).astype(dtype), np.asarray(ub).astype(dtype)
    lo = np.where(lo < lb, np.nextafter(lo, np.asarray(np.inf, dtype)), lo)
    hi = np.where(hi > ub, np.nextafter(hi, np.asarray(-np.inf, dtype)), hi)
    return lo, hi


def _net(weights: dict[str, Any], x: jax.Array) -> jax.Array:
    """(N, d_in) -> (N, d_out): a linear map plus an MLP (tanh hidden layers, a linear
    last layer)."""
    out = x @ weights["linear"]["w"] + weights["linear"]["b"]
    for layer in weights["layers"][:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return out + x @ weights["layers"][-1]["w"] + weights["layers"][-1]["b"]


def _mse(weights: dict[str, Any], data: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = data
    return jnp.mean((_net(weights, x) - y) ** 2)


def _fit(
    x: np.ndarray, y: np.ndarray, scaling: Scaling, hidden: tuple[int, ...], steps: int,
    key: jax.Array,
) -> tuple[dict[str, Any], OptimizationSolution]:
    """The map's weights fitted to (x, y), standardized: it starts near the least-squares
    linear map (the MLP's last layer drawn small), then full-batch Adam through `solve`
    trains all of it. Returns (weights, the fit's solution)."""
    import optax

    dtype = jnp.result_type(float)
    xs = (x - scaling.p_mean.astype(np.float64)) / scaling.p_std.astype(np.float64)
    ys = (y - scaling.u_mean.astype(np.float64)) / scaling.u_std.astype(np.float64)
    coef = np.linalg.lstsq(np.c_[xs, np.ones(len(xs))], ys, rcond=None)[0]
    sizes = (xs.shape[1], *hidden, ys.shape[1])
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [
        {"w": jax.random.normal(k, (d_in, d_out), dtype) / np.sqrt(d_in),
         "b": jnp.zeros(d_out, dtype)}
        for k, d_in, d_out in zip(keys, sizes[:-1], sizes[1:])
    ]
    layers[-1]["w"] = LAST_LAYER * layers[-1]["w"]
    weights0 = {"linear": {"w": jnp.asarray(coef[:-1], dtype), "b": jnp.asarray(coef[-1], dtype)},
                "layers": layers}
    adam = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, steps))
    data = (jnp.asarray(xs, dtype), jnp.asarray(ys, dtype))
    fit = solve(OptimizationProblem(_mse, weights0, data), adam, maxiters=steps)
    return fit.u, fit
