"""The history of one solve (`solve(..., history=...)`): one more observer of the shared
lifecycle. `_device.DeviceRun` and `_host.HostRun` tell it each iteration (or a chunk of
iterations from the device), ask it whether a checkpoint is due, and tell it the solution;
it writes them to the file (`.._sqlite`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import os
import pickle
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .. import _sqlite
from ..data import DataLoader
from ..history import History
from ..problem import OptimizationProblem
from ..solution import OptimizationSolution, ReturnCode
from .base import Algorithm, SolveOptions

PARAM_BYTES = 256  # the parameters take at most about this many bytes per iteration
PICKLE_BYTES = 16 << 20  # a problem and algorithm larger than this are not pickled
LOG_ROWS = 1024  # rows of a fused run's on-device log (at least `params_every`)
# The library each backend module wraps, for the recorded versions.
_LIBRARIES = {
    "optax": "optax", "scipy": "scipy", "scipy_global": "scipy",
    "scipy_least_squares": "scipy", "nevergrad": "nevergrad", "evosax": "evosax",
    "ode": "diffrax", "optimistix": "optimistix",
}


def params_every(n: int) -> int:
    """Record the parameters every k-th iteration, k the smallest power of two with
    `8 n / k <= PARAM_BYTES` (n float64 values)."""
    k = 1
    while 8 * n > PARAM_BYTES * k:
        k *= 2
    return k


def blob(u: Any) -> bytes:
    """The leaves of `u` (NumPy or JAX, or a flat vector) as float64 bytes, in `ravel`
    order: a row's parameters as stored (bytes are returned as they are)."""
    if isinstance(u, bytes):
        return u
    if isinstance(u, np.ndarray):
        return np.asarray(u, np.float64).tobytes()
    return b"".join(np.asarray(x, np.float64).tobytes() for x in jax.tree.leaves(u))


@functools.cache
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pickled(
    problem: OptimizationProblem, alg: Algorithm, solver_options: dict[str, Any]
) -> bytes | None:
    """(problem, algorithm, solver options) pickled (with cloudpickle if installed:
    lambdas, optax transforms), or None if they do not pickle or the problem's arrays
    (`u0`, `p`, a DataLoader's) take more than `PICKLE_BYTES`."""
    p = problem.p.arrays if isinstance(problem.p, DataLoader) else problem.p
    arrays = jax.tree.leaves((problem.u0, p))
    if sum(getattr(x, "nbytes", 0) for x in arrays) > PICKLE_BYTES:
        return None
    try:
        import cloudpickle as dumper
    except ImportError:
        dumper = pickle
    try:
        blob = dumper.dumps((problem, alg, solver_options))
    except Exception:  # anything unpicklable: the user passes them to resume
        return None
    return blob if len(blob) <= PICKLE_BYTES else None


class Recorder:
    """The history of one solve.

    Args:
        history: where and how to record.
        problem, alg, options: the solve's.
    """

    def __init__(
        self, history: History, problem: OptimizationProblem, alg: Algorithm,
        options: SolveOptions,
    ) -> None:
        self.history = history
        leaves = jax.tree_util.tree_leaves_with_path(problem.u0)
        n = sum(int(np.size(x)) for _, x in leaves)
        self.every = history.params_every or params_every(n)
        self.problem, self.alg, self.solver_options = problem, alg, options.solver_options
        db = _sqlite.writer_connection(history.path)
        if history.continues is None:
            library = _LIBRARIES.get(type(alg).__module__.rsplit(".", 1)[-1])
            keywords = {
                name: getattr(options, name)
                for name in ("maxiters", "maxtime", "abstol", "reltol", "epochs", "save_best")
            }
            keywords["solver_options"] = options.solver_options
            keywords["history"] = {  # what a resumed part records with
                "checkpoint_every": history.checkpoint_every,
                "checkpoint_seconds": history.checkpoint_seconds,
                "params_every": self.every,
            }
            record = dict(
                problem=repr(problem), algorithm=repr(alg),
                keywords=keywords,
                versions={
                    "optiframe": _version("optiframe"), "jax": jax.__version__,
                    **({library: _version(library)} if library else {}),
                },
                leaves=[[jax.tree_util.keystr(path), list(np.shape(x)),
                         str(getattr(x, "dtype", None) or np.result_type(x))]
                        for path, x in leaves],
                started=time.time(),
            )
            opening = lambda db: _sqlite.insert_run(db, record)
            self.start, self.time0, self.fevals0 = 0, 0.0, 0
        else:
            run, self.start = history.continues
            opening = lambda db: _sqlite.insert_segment(db, run, self.start)
            self.time0, self.fevals0 = db.execute(
                "SELECT time, fevals FROM checkpoints WHERE run=? AND iteration=? "
                "ORDER BY segment DESC LIMIT 1", (run, self.start),
            ).fetchone()
        self.writer = _sqlite.Writer(db, opening, encode=blob)
        self.pickled = False  # (problem, alg) are stored with the first checkpoint
        self.clock = time.perf_counter()
        self._checkpointed(0)

    def elapsed(self) -> float:
        """Seconds since the run started (over its resumed parts)."""
        return self.time0 + time.perf_counter() - self.clock

    def row(self, iteration: int, objective: float, fevals: int, u: Any) -> None:
        """Record iteration `iteration` (of this solve) at `u`: a NumPy vector, kept until
        the rows are committed (the caller does not change it), or a pytree, read from the
        device at once (its memory is not held)."""
        at = self.start + iteration
        params = None
        if at % self.every == 0:
            params = u if isinstance(u, np.ndarray) else blob(u)
        self.writer.iterations([(
            at, self.time0 + time.perf_counter() - self.clock, objective,
            self.fevals0 + fevals, params,
        )])

    def rows(
        self, iterations: Sequence[int], objectives: np.ndarray, fevals: np.ndarray,
        params: dict[int, Any], since: float,
    ) -> None:
        """Record iterations computed together since `since` (seconds, `elapsed()`): their
        times are spread evenly up to now; `params` maps an iteration to its parameters."""
        m = len(iterations)
        its = np.asarray(iterations, np.int64)
        times = since + (self.elapsed() - since) * np.arange(1, m + 1) / m
        self.writer.iterations(zip(
            (self.start + its).tolist(), times.tolist(),
            np.asarray(objectives, np.float64).tolist(),
            (self.fevals0 + np.asarray(fevals, np.int64)).tolist(),
            [params.get(it) for it in iterations],
        ))

    def due(self, iteration: int) -> bool:
        """Whether a checkpoint is due after iteration `iteration` of this solve."""
        return iteration >= self.due_iteration or time.perf_counter() >= self.due_time

    def _checkpointed(self, iteration: int) -> None:
        """A checkpoint was written after `iteration`: when the next one is due."""
        every, seconds = self.history.checkpoint_every, self.history.checkpoint_seconds
        self.due_iteration = math.inf if every is None else iteration + every
        self.due_time = math.inf if seconds is None else time.perf_counter() + seconds

    def checkpoint(self, iteration: int, fevals: int, kind: str, state: Any) -> None:
        """Write `state` after iteration `iteration`: kind "state" (what `warm_start`
        continues) or "point" (the iterate a host method restarts from)."""
        blob = pickle.dumps((kind, jax.device_get(state)))
        pickled = None if self.pickled else _pickled(
            self.problem, self.alg, self.solver_options
        )
        self.writer.checkpoint(
            self.start + iteration, self.elapsed(), self.fevals0 + int(fevals), blob, pickled
        )
        self._checkpointed(iteration)
        self.pickled = True

    def finish(self, sol: OptimizationSolution, kind: str, state: Any) -> OptimizationSolution:
        """Record the outcome; a run that stopped early (`Terminated`, `MaxTime`), which
        `resume` continues, with a last checkpoint (and its problem and algorithm pickled,
        if no checkpoint did it before). Returns `sol` with where it was recorded."""
        if sol.retcode in (ReturnCode.Terminated, ReturnCode.MaxTime):
            self.checkpoint(sol.stats.iterations, sol.stats.fevals, kind, state)
        self.writer.finish(
            sol.retcode.name, sol.message, sol.objective, self.start + sol.stats.iterations,
            self.fevals0 + sol.stats.fevals,
        )
        return dataclasses.replace(
            sol, history=(os.fspath(self.history.path), self.writer.run)
        )
