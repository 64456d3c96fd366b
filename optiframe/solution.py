"""What `solve` returns: `OptimizationSolution`, `ReturnCode`, `Stats`, and the
`OptimizationState` a callback receives."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class ReturnCode(enum.Enum):
    """Why a run stopped. Only `Success` means a convergence test passed."""

    Success = "Success"
    MaxIters = "MaxIters"
    MaxTime = "MaxTime"
    Terminated = "Terminated"
    Stalled = "Stalled"
    Infeasible = "Infeasible"
    Failure = "Failure"

    @property
    def successful(self) -> bool:
        """True for `Success` only."""
        return self is ReturnCode.Success

    def __repr__(self) -> str:
        return f"ReturnCode.{self.value}"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class Stats:
    """Counts of one run.

    Attributes:
        iterations: iterations (optimizer steps) taken.
        fevals: evaluations of the objective, line searches and finite differences included.
        gevals: gradient evaluations.
        hevals: Hessian or Hessian-vector-product evaluations.
        time: wall time of the run in seconds, compilation included.
    """

    iterations: int = 0
    fevals: int = 0
    gevals: int = 0
    hevals: int = 0
    time: float = 0.0


@dataclasses.dataclass(frozen=True)
class OptimizationState:
    """What a callback sees once per iteration.

    Attributes:
        iter: 1-based number of the iteration.
        u: the iterate at which `objective` and `grad` were evaluated, in `u0`'s structure.
        objective: the value of the user's `fun` at `u` (not negated under `MaxSense`).
        grad: the gradient of `fun` at `u`, or None where the method has none.
        p: the parameters, or the current data batch when `p` is a data iterator.
        aux: the auxiliary output of `fun` when `has_aux=True`, else None.
        original: the backend's own state (e.g. the optax optimizer state).
    """

    iter: int
    u: Any
    objective: float
    grad: Any = None
    p: Any = None
    aux: Any = None
    original: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class OptimizationSolution:
    """The result of `solve`.

    Attributes:
        u: the solution, with `u0`'s pytree structure and dtypes: the last iterate, or with
            `save_best=True` the iterate with the lowest objective seen; for search methods
            the best candidate evaluated.
        objective: the value of `fun` at `u` (a float).
        retcode: why the run stopped.
        stats: iteration and evaluation counts and wall time.
        original: the backend's own result object.
        state: what `solve(..., warm_start=sol)` needs to continue the run.
        problem: the problem that was solved.
        alg: the algorithm that solved it.
        message: a human-readable account of the stop.
        history: (path, run id) where `solve(..., history=...)` recorded the run, else
            None; `opf.plot.convergence(sol)` reads it from there.
    """

    u: Any
    objective: float
    retcode: ReturnCode
    stats: Stats
    original: Any = None
    state: Any = None
    problem: Any = None
    alg: Any = None
    message: str = ""
    history: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return (
            f"OptimizationSolution(retcode={self.retcode}, objective={self.objective:.6g}, "
            f"stats={self.stats}, message={self.message!r})"
        )
