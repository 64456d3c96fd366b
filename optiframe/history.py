"""Run histories: `solve(..., history=...)` records a run in SQLite (`History`),
`read_history` reads the runs back (`Run`); `resume.py` continues the last one.

The file (see `_sqlite.py`) holds one row per solve, one row per iteration (wall time,
objective, fevals and, every k-th iteration, the parameters) and checkpoints of the
solver's state. Checkpoints are pickled: open only histories you trust, as with any
pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from ._checks import count, number
from .errors import InvalidProblemError, OptiframeError
from .solution import ReturnCode


@dataclasses.dataclass(frozen=True)
class History:
    """Where and how `solve` records a run.

    Args:
        path: the SQLite file (created if missing; several runs and processes may share it).
        checkpoint_every: write a checkpoint of the solver's state after this many
            iterations (None: by time only). A fused on-device run writes it at the end of
            the chunk (about `HISTORY_SECONDS`, 0.5 s, of iterations) that passes it.
        checkpoint_seconds: ... or this many seconds (None: by count only). A run that
            stops early (`Terminated`, `MaxTime`) writes one more where it stopped.
        params_every: record the parameters every this many iterations (None: chosen from
            their size, so that they take at most about 4 KiB per iteration on average:
            every iteration up to 512 float64 values, every 2nd up to 1,024, ...).
        continues: set by `opf.resume`: (run id, iteration) the solve continues from.

    Example:
        >>> opf.solve(prob, optax.adam(1e-3), maxiters=10_000,
        ...           history=opf.History("fit.sqlite", checkpoint_every=500))
    """

    path: str | os.PathLike[str]
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = 30.0
    params_every: int | None = None
    continues: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)):
            raise InvalidProblemError(
                f"`History(path=...)` must be a file path, got {type(self.path).__name__}."
            )
        count("History", "checkpoint_every", self.checkpoint_every, optional=True)
        number("History", "checkpoint_seconds", self.checkpoint_seconds, positive=True,
               optional=True)
        count("History", "params_every", self.params_every, optional=True)


def as_history(value: Any) -> History | None:
    """`solve(history=...)`: a path or a `History` (None: no history)."""
    if value is None or isinstance(value, History):
        return value
    if isinstance(value, (str, os.PathLike)):
        return History(value)
    raise InvalidProblemError(
        f"`solve(history=...)` must be a file path or an opf.History, got "
        f"{type(value).__name__}."
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One recorded solve, as `read_history` returns it.

    Attributes:
        id: the run's number in its file.
        problem, algorithm: their descriptions (repr).
        keywords: the common keywords of the solve (JSON values).
        versions: optiframe, JAX and the backend's library versions.
        leaves: the parameters' leaves, as [path, shape, dtype] in `ravel` order.
        started, ended: POSIX times (ended None while running or if the process died).
        retcode: the outcome, None if the run never finished.
        message, objective, fevals: the solution's, once finished.
        iteration, time, objective_trace, fevals_trace: one entry per recorded iteration
            (int, seconds since the start, float, int arrays (m,)).
        params_iteration, params: the iterations whose parameters were recorded (k,) and
            the parameters there (k, n) float64, flattened in `leaves` order.
        checkpoints: the iterations with a checkpoint.
        resumed_at: the checkpoints `opf.resume` continued the run from, in order.
    """

    id: int
    problem: str
    algorithm: str
    keywords: dict[str, Any]
    versions: dict[str, str]
    leaves: list[Any]
    started: float
    ended: float | None
    retcode: ReturnCode | None
    message: str | None
    objective: float | None
    fevals: int | None
    iteration: np.ndarray
    time: np.ndarray
    objective_trace: np.ndarray
    fevals_trace: np.ndarray
    params_iteration: np.ndarray
    params: np.ndarray
    checkpoints: np.ndarray
    resumed_at: list[int] = dataclasses.field(default_factory=list)

    def frame(self) -> Any:
        """The iterations as a pandas DataFrame (columns iteration, time, objective,
        fevals); needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise OptiframeError(
                "Run.frame() needs pandas: pip install pandas (or use the NumPy arrays "
                "run.iteration, run.objective_trace, ...)."
            ) from None
        return pd.DataFrame({
            "iteration": self.iteration, "time": self.time,
            "objective": self.objective_trace, "fevals": self.fevals_trace,
        })


def read_history(path: str | os.PathLike[str]) -> list[Run]:
    """The runs recorded in `path`, oldest first. Rows a resumed run recomputed replace
    those its killed part wrote past the checkpoint it resumed from.

    Raises:
        OptiframeError: `path` is missing, not an optiframe history, or from a newer one.
    """
    from . import _sqlite  # sqlite3 is imported when a history is read or written

    db = _sqlite.connect(path, create=False)
    try:
        return [_run(db, row) for row in db.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        db.close()


def _live(db: Any, run: int, table: str, columns: str) -> list[tuple[Any, ...]]:
    """The rows of `table` for `run` that no later segment superseded, by iteration."""
    starts = dict(db.execute("SELECT segment, start FROM segments WHERE run=?", (run,)))
    rows = db.execute(
        f"SELECT segment, iteration, {columns} FROM {table} WHERE run=? "
        "ORDER BY segment, iteration", (run,),
    ).fetchall()
    ends = {s: starts.get(s + 1, np.inf) for s in starts}
    return [r[1:] for r in rows if r[1] <= ends[r[0]]]


def _run(db: Any, row: tuple[Any, ...]) -> Run:
    (run, problem, algorithm, keywords, versions, leaves, _, started, ended, retcode,
     message, objective, _, fevals) = row
    its = _live(db, run, "iterations", "time, objective, fevals, params")
    with_params = [(r[0], np.frombuffer(r[4], np.float64)) for r in its if r[4] is not None]
    n = sum(int(np.prod(shape)) for _, shape, _ in json.loads(leaves))
    return Run(
        id=run, problem=problem, algorithm=algorithm, keywords=json.loads(keywords),
        versions=json.loads(versions), leaves=json.loads(leaves), started=started,
        ended=ended, retcode=None if retcode is None else ReturnCode[retcode],
        message=message, objective=objective, fevals=fevals,
        iteration=np.array([r[0] for r in its], np.int64),
        time=np.array([r[1] for r in its], np.float64),
        objective_trace=np.array([np.nan if r[2] is None else r[2] for r in its], np.float64),
        fevals_trace=np.array([r[3] for r in its], np.int64),
        params_iteration=np.array([i for i, _ in with_params], np.int64),
        params=np.stack([p for _, p in with_params]) if with_params else np.empty((0, n)),
        checkpoints=np.array([r[0] for r in _live(db, run, "checkpoints", "time")], np.int64),
        resumed_at=[start for (start,) in db.execute(
            "SELECT start FROM segments WHERE run=? AND segment>0 ORDER BY segment", (run,)
        )],
    )
