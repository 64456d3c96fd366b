"""`resume`: continue the last run of a history file from its last checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from typing import Any

import numpy as np

from ._mesh import distributed
from .errors import OptiframeError
from .history import History
from .solution import OptimizationSolution, ReturnCode, Stats
from .solve import solve


def resume(
    path: str | os.PathLike[str], prob: Any = None, alg: Any = None, **keywords: Any
) -> OptimizationSolution:
    """Continue the last run of `path` from its last checkpoint, recording into the same
    run.

    On-device algorithms (optax, evosax, optimistix) continue from the checkpointed state,
    and a deterministic run (full data, or a `DataLoader` with its key; evosax with its
    seed) ends bit for bit where the uninterrupted run would. A host method (SciPy,
    Nevergrad) cannot have its internal state restored: it restarts from the checkpointed
    point with the rest of the budget, and says so.

    Args:
        path: the history file.
        prob: the problem, when the file could not store it (a lambda or an optax
            transform pickles only with cloudpickle installed; large data is not pickled);
            always under `jax.distributed`, where each process has its own data (every
            process reads `path`, which process 0 wrote: a file system they share).
        alg: the algorithm, likewise.
        **keywords: `solve` keywords that replace the recorded ones (a callback or a
            progress bar, which are not recorded, or a new `maxtime`). The run's solver
            options come back with its pickled problem.

    Raises:
        OptiframeError: no run, nothing to resume (the run finished), no checkpoint, or the
            problem or algorithm is needed.
    """
    from . import _sqlite  # sqlite3 is imported when a history is read or written

    if distributed():  # every process reads the file once process 0 has written it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("optiframe.resume")
    db = _sqlite.connect(path, create=False)
    try:
        row = db.execute(
            "SELECT id, keywords, pickled, retcode FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise OptiframeError(f"{os.fspath(path)!r} holds no run to resume.")
        run, recorded, pickled, retcode = row
        if retcode is not None and retcode not in ("Terminated", "MaxTime"):
            raise OptiframeError(
                f"Run {run} of {os.fspath(path)!r} finished with {retcode}: there is nothing "
                "to resume. To run it further, solve again with warm_start=sol."
            )
        checkpoint = db.execute(
            "SELECT iteration, fevals, state FROM checkpoints WHERE run=? "
            "ORDER BY segment DESC, iteration DESC LIMIT 1", (run,),
        ).fetchone()
    finally:
        db.close()
    if checkpoint is None:
        raise OptiframeError(
            f"Run {run} of {os.fspath(path)!r} has no checkpoint yet; solve it again."
        )
    if prob is None and distributed():
        raise OptiframeError(
            "opf.resume under jax.distributed: the file holds process 0's problem, and each "
            "process resumes with its own data. Pass it: opf.resume(path, prob)."
        )
    recorded = json.loads(recorded)
    stored = pickle.loads(pickled) if pickled is not None else (None, None, {})
    prob, alg = prob if prob is not None else stored[0], alg if alg is not None else stored[1]
    if prob is None or alg is None:
        raise OptiframeError(
            f"Run {run} of {os.fspath(path)!r} could not store its problem and algorithm "
            "(they do not pickle; installing cloudpickle helps): pass them, "
            "opf.resume(path, prob, alg)."
        )
    iteration, _, blob = checkpoint
    kind, state = pickle.loads(blob)
    kw = {k: v for k, v in recorded.items() if k in ("abstol", "reltol", "save_best")}
    kw.update(stored[2])  # the solver options
    kw.update(keywords)
    if recorded["maxiters"] is not None:
        kw.setdefault("maxiters", recorded["maxiters"] - iteration)
    history = History(path, continues=(run, iteration), **recorded["history"])
    if kind == "point":  # a host method: restart from the point
        warnings.warn(
            f"Resuming run {run} from the point of iteration {iteration}: the library's "
            "internal state (line-search memory, Hessian approximation) cannot be restored, "
            "so it restarts from there.", stacklevel=2,
        )
        return solve(prob.remake(u0=state), alg, history=history, **kw)
    warm = OptimizationSolution(
        u=None, objective=np.nan, retcode=ReturnCode.Terminated, stats=Stats(), state=state,
    )
    return solve(prob, alg, history=history, warm_start=warm, **kw)
