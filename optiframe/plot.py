"""Plots of recorded runs (`solve(..., history=...)`, `opf.read_history`), with
matplotlib: `convergence`, `params` and `profile`. Each returns its figure and never calls
`show()`. Imported on first use (`opf.plot`); needs matplotlib.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import InvalidProblemError, OptiframeError
from .history import Run, read_history
from .solution import OptimizationSolution

_AXES = {"iteration": ("iteration", "iteration"), "fevals": ("fevals_trace", "evaluations"),
         "time": ("time", "wall time (s)")}


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptiframeError("opf.plot needs matplotlib: pip install matplotlib.") from None
    return plt


def _runs(runs: Any) -> list[Run]:
    """`runs` as a list of `Run`: a Run, a history path (all its runs), a solution of a
    recorded solve, or several."""
    if isinstance(runs, Run):
        return [runs]
    if isinstance(runs, OptimizationSolution):
        if runs.history is None:
            raise InvalidProblemError(
                "opf.plot: this solution was not recorded; solve with history=... to plot "
                "its convergence."
            )
        path, run = runs.history
        return [r for r in read_history(path) if r.id == run]
    if isinstance(runs, (str, os.PathLike)):
        return read_history(runs)
    if isinstance(runs, Iterable):
        return [run for item in runs for run in _runs(item)]
    raise InvalidProblemError(
        f"opf.plot: expected a Run, a history path or a list of them, got "
        f"{type(runs).__name__}."
    )


def _axes(ax: Any, plt: Any) -> tuple[Any, Any]:
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
        return fig, ax
    return ax.figure, ax


def convergence(runs: Any, *, x: str = "iteration", ax: Any = None) -> Any:
    """The objective against iteration, evaluations or wall time, one line per run,
    labelled by algorithm (and run id where an algorithm ran more than once), on a log
    scale (symlog where an objective is not positive). Where a run was resumed, a dotted
    line marks the point.

    Args:
        runs: a `Run`, a history file's path (all its runs), a solution of a solve with
            `history=`, or a list of them.
        x: "iteration", "fevals" or "time".
        ax: a matplotlib Axes to draw into (default: a new figure).

    Returns:
        The matplotlib Figure.
    """
    if x not in _AXES:
        raise InvalidProblemError(
            f"`plot.convergence(x={x!r})`: x must be one of {', '.join(map(repr, _AXES))}."
        )
    runs = _runs(runs)
    plt = _pyplot()
    fig, ax = _axes(ax, plt)
    attribute, label = _AXES[x]
    times = collections.Counter(run.algorithm for run in runs)
    for run in runs:
        name = run.algorithm if times[run.algorithm] == 1 else f"{run.algorithm} (run {run.id})"
        xs = getattr(run, attribute)
        (line,) = ax.plot(xs, run.objective_trace, label=name)
        for start in run.resumed_at:  # where a resumed part starts
            at = xs[np.searchsorted(run.iteration, start)] if start < run.iteration[-1] else xs[-1]
            ax.axvline(at, color=line.get_color(), linestyle=":", linewidth=1)
    values = np.concatenate([run.objective_trace for run in runs] or [np.ones(1)])
    finite = values[np.isfinite(values)]
    ax.set_yscale("log" if finite.size and finite.min() > 0 else "symlog")
    ax.set_xlabel(label)
    ax.set_ylabel("objective")
    ax.legend()
    return fig


def params(run: Run, *, ax: Any = None, limit: int = 12) -> Any:
    """The recorded parameters of one run against iteration, each line labelled by its
    leaf's path and index (`['w'][0, 2]`); at most `limit` of them.

    Returns:
        The matplotlib Figure.
    """
    if not isinstance(run, Run):
        raise InvalidProblemError(
            f"`plot.params(run)`: run must be an opf.Run (from opf.read_history), got "
            f"{type(run).__name__}."
        )
    if not len(run.params_iteration):
        raise OptiframeError(f"Run {run.id} recorded no parameters.")
    plt = _pyplot()
    fig, ax = _axes(ax, plt)
    for j, name in enumerate(parameter_names(run)[:limit]):
        ax.plot(run.params_iteration, run.params[:, j], label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("parameter")
    title = f"{run.algorithm}, run {run.id}"
    if run.params.shape[1] > limit:
        title += f" (first {limit} of {run.params.shape[1]} parameters)"
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def parameter_names(run: Run) -> list[str]:
    """A name for each flat parameter of `run`: its leaf's path, and its index in the
    leaf if the leaf is not a scalar."""
    names = []
    for path, shape, _ in run.leaves:
        if not shape:
            names.append(path or "u")
        else:
            names += [f"{path or 'u'}[{', '.join(map(str, i))}]" for i in np.ndindex(*shape)]
    return names


@dataclasses.dataclass(frozen=True)
class Profiles:
    """What `profile` draws.

    Attributes:
        problems, algorithms: the names, in order.
        cost: (problems, algorithms) the cost to solve each problem (inf if not solved).
        ratio: (problems, algorithms) cost over the best algorithm's on that problem.
        n: (problems,) the number of parameters of each problem.
    """

    problems: list[str]
    algorithms: list[str]
    cost: np.ndarray
    ratio: np.ndarray
    n: np.ndarray

    def performance(self, tau: np.ndarray) -> np.ndarray:
        """(len(tau), algorithms) the share of problems each solves within tau times the
        best cost (Dolan and Moré)."""
        return np.mean(self.ratio[None] <= tau[:, None, None], axis=1)

    def data(self, alpha: np.ndarray) -> np.ndarray:
        """(len(alpha), algorithms) the share of problems each solves within alpha (n + 1)
        of the cost, the cost in "simplex gradients" (Moré and Wild)."""
        scaled = self.cost / (self.n[:, None] + 1)
        return np.mean(scaled[None] <= alpha[:, None, None], axis=1)


def profiles(
    runs: Mapping[tuple[str, str], Run], *, tol: float = 1e-3, cost: str = "fevals",
    f_star: Mapping[str, float] | None = None,
) -> Profiles:
    """The costs `profile` draws. A run solves its problem once `f - f* <= tol (f0 - f*)`
    (Moré and Wild's test), `f0` its first recorded objective and `f*` the problem's optimum
    (`f_star`, default the best objective any run reached); its cost is the evaluations
    ("fevals"), iterations ("iteration") or seconds ("time") by then.

    Args:
        runs: {(problem, algorithm): Run}.
        tol: the share of the initial gap `f0 - f*` a run must close.
        cost: "fevals", "iteration" or "time".
        f_star: {problem: its optimum}; default the best objective any run reached.
    """
    if cost not in _AXES:
        raise InvalidProblemError(
            f"`plot.profile(cost={cost!r})`: cost must be one of {', '.join(map(repr, _AXES))}."
        )
    problems = sorted({p for p, _ in runs})
    algorithms = sorted({a for _, a in runs})
    table = np.full((len(problems), len(algorithms)), np.inf)
    n = np.zeros(len(problems))
    for (problem, algorithm), run in runs.items():
        i, j = problems.index(problem), algorithms.index(algorithm)
        n[i] = sum(int(np.prod(shape)) for _, shape, _ in run.leaves)
        best = min(np.nanmin(r.objective_trace) for (p, _), r in runs.items() if p == problem)
        target = best if f_star is None else f_star[problem]
        trace = np.minimum.accumulate(np.nan_to_num(run.objective_trace, nan=np.inf))
        solved = trace - target <= tol * (trace[0] - target)
        if solved.any():
            table[i, j] = getattr(run, _AXES[cost][0])[np.argmax(solved)]
    best = table.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(table), table / np.maximum(best, 1e-300), np.inf)
    return Profiles(problems, algorithms, table, ratio, n)


def profile(
    runs: Mapping[tuple[str, str], Run], *, kind: str = "performance", tol: float = 1e-3,
    cost: str = "fevals", f_star: Mapping[str, float] | None = None, ax: Any = None,
) -> Any:
    """Performance profiles (Dolan and Moré: the share of problems each algorithm solves
    within tau times the best algorithm's cost) or data profiles (Moré and Wild: within
    alpha (n + 1) evaluations), over a set of problems x algorithms, as optimagic's
    `profile_plot`. See `profiles` for when a run counts as solving its problem.

    Args:
        runs: {(problem name, algorithm name): Run}.
        kind: "performance" or "data".

    Returns:
        The matplotlib Figure.
    """
    if kind not in ("performance", "data"):
        raise InvalidProblemError(
            f"`plot.profile(kind={kind!r})`: kind must be 'performance' or 'data'."
        )
    table = profiles(runs, tol=tol, cost=cost, f_star=f_star)
    plt = _pyplot()
    fig, ax = _axes(ax, plt)
    finite = table.ratio[np.isfinite(table.ratio)] if kind == "performance" else (
        (table.cost / (table.n[:, None] + 1))[np.isfinite(table.cost)]
    )
    top = max(float(finite.max()) if finite.size else 1.0, 1.0) * 1.1
    grid = np.geomspace(1.0, top, 200) if kind == "performance" else np.linspace(0, top, 200)
    shares = table.performance(grid) if kind == "performance" else table.data(grid)
    for j, algorithm in enumerate(table.algorithms):
        ax.step(grid, shares[:, j], where="post", label=algorithm)
    if kind == "performance":
        ax.set_xscale("log")
        ax.set_xlabel(f"tau: {cost} relative to the best algorithm's")
    else:
        ax.set_xlabel(f"{cost} / (n + 1)")
    ax.set_ylabel("share of problems solved")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{kind} profile, {len(table.problems)} problems, tol = {tol:g}")
    ax.legend()
    return fig
