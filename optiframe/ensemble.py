"""Many problems at once: `EnsembleProblem` (one problem, N parameter sets and/or N
starting points) and `EnsembleSolution` (N solutions, stacked)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .data import is_data_iterator
from .errors import InvalidProblemError
from .problem import OptimizationProblem
from .solution import OptimizationSolution, ReturnCode, Stats


def member(tree: Any, i: int) -> Any:
    """Member `i` of a stacked pytree (leading axis N)."""
    return jax.tree.map(lambda x: x[i], tree)


def stacked_like(x: np.ndarray, ref: Any) -> Any:
    """A stack of members as `ref` (one member's leaf) is: JAX stays JAX, in its dtype."""
    if isinstance(ref, jax.Array):
        return jnp.asarray(x, ref.dtype)
    return np.asarray(x, np.result_type(ref))


def _members(stack: Any, like: Any, arg: str) -> int:
    """N, the leading axis of every leaf of `stack`, each shaped (N,) + `like`'s leaf."""
    base = "p" if arg == "ps" else "u0"
    stack_def, like_def = jax.tree.structure(stack), jax.tree.structure(like)
    if stack_def != like_def:
        raise InvalidProblemError(
            f"`EnsembleProblem({arg}=...)` has pytree structure {stack_def}, but the "
            f"problem's {base} has {like_def}; pass {base}'s structure with a leading axis "
            "of N members on every leaf."
        )
    n = None
    for (path, leaf), ref in zip(jax.tree_util.tree_flatten_with_path(stack)[0],
                                 jax.tree.leaves(like)):
        shape, want = np.shape(leaf), np.shape(ref)
        where = f"`{arg}{jax.tree_util.keystr(path)}`"
        if len(shape) != len(want) + 1 or shape[1:] != want:
            raise InvalidProblemError(
                f"`EnsembleProblem({arg}=...)`: {where} has shape {shape}, but {base} has "
                f"shape {want} there; stack N members along a new leading axis, shape "
                f"(N, *{want})."
            )
        if n is not None and shape[0] != n:
            raise InvalidProblemError(
                f"`EnsembleProblem({arg}=...)`: leading axes disagree ({n} and {shape[0]} at "
                f"{where}); every leaf needs the same number of members N."
            )
        n = shape[0]
    return n


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleProblem:
    """N problems that differ only in `p` and/or `u0`, solved together.

    `solve(EnsembleProblem(prob, ps=ps), alg)` solves `prob.remake(p=ps[i], u0=u0s[i])` for
    every member i: on-device algorithms (optax, optimistix, evosax, gradient flows) as one
    vmapped compiled program, host algorithms (SciPy, Nevergrad) one member at a time, on
    `solve(..., executor=...)` if given.

    Args:
        prob: the problem every member shares (its function, bounds, sense, keywords).
        ps: a pytree like `prob.p` with a leading axis of N parameter sets, or None (every
            member uses `prob.p`).
        u0s: a pytree like `prob.u0` with a leading axis of N starting points, or None
            (every member starts at `prob.u0`).

    Raises:
        InvalidProblemError: neither `ps` nor `u0s`, structures that differ from `p`'s or
            `u0`'s, leading axes that disagree, an empty ensemble, a starting point that is
            not finite or not inside the bounds, or a data iterator as `p`.

    Example:
        >>> ens = opf.EnsembleProblem(prob, ps=jnp.stack([jnp.array([1.0, a]) for a in As]))
        >>> esol = opf.solve(ens, opf.Optimistix(optx.BFGS(rtol=1e-8, atol=1e-8)))
    """

    prob: OptimizationProblem
    ps: Any = None
    u0s: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.prob, OptimizationProblem):
            raise InvalidProblemError(
                f"`EnsembleProblem(prob=...)` must be an opf.OptimizationProblem, got "
                f"{type(self.prob).__name__}."
            )
        if self.ps is None and self.u0s is None:
            raise InvalidProblemError(
                "`EnsembleProblem(prob)` needs ps= (N parameter sets) and/or u0s= (N "
                "starting points), each with a leading axis of N members."
            )
        if is_data_iterator(self.prob.p):
            raise InvalidProblemError(
                "`EnsembleProblem(prob=...)`: prob.p is a data iterator; an ensemble varies "
                "p itself: pass the data as an array (or pytree) p and its variants as ps."
            )
        sizes = {}
        if self.ps is not None:
            sizes["ps"] = _members(self.ps, self.prob.p, "ps")
        if self.u0s is not None:
            sizes["u0s"] = _members(self.u0s, self.prob.u0, "u0s")
            self._check_starts()
        if len(set(sizes.values())) > 1:
            raise InvalidProblemError(
                f"`EnsembleProblem(ps=..., u0s=...)`: ps holds {sizes['ps']} members but u0s "
                f"holds {sizes['u0s']}; pass the same number N of each."
            )
        if next(iter(sizes.values())) == 0:
            raise InvalidProblemError(
                "`EnsembleProblem`: the ensemble is empty (a leading axis of 0); pass at "
                "least one member."
            )

    def _check_starts(self) -> None:
        """Every starting point finite and inside the bounds."""
        starts = jax.tree_util.tree_flatten_with_path(self.u0s)[0]
        unbounded = [None] * len(starts)
        lbs = jax.tree.leaves(self.prob.lb) if self.prob.has_bounds else unbounded
        ubs = jax.tree.leaves(self.prob.ub) if self.prob.has_bounds else unbounded
        for (path, x), lb, ub in zip(starts, lbs, ubs):
            x = np.asarray(x)
            bad = ~np.isfinite(x)
            if lb is not None:
                bad |= (x < lb) | (x > ub)
            if np.any(bad):
                i = int(np.argwhere(bad)[0][0])
                raise InvalidProblemError(
                    f"`EnsembleProblem(u0s=...)`: member {i}'s start "
                    f"`u0s{jax.tree_util.keystr(path)}[{i}]` is not finite or not inside "
                    "[lb, ub]; every starting point must be a finite point of the box."
                )

    def __len__(self) -> int:
        stack = self.ps if self.ps is not None else self.u0s
        return int(np.shape(jax.tree.leaves(stack)[0])[0])

    def member(self, i: int) -> OptimizationProblem:
        """Member i as a problem of its own: `prob.remake(p=ps[i], u0=u0s[i])`."""
        changes = {}
        if self.ps is not None:
            changes["p"] = member(self.ps, i)
        if self.u0s is not None:
            changes["u0"] = member(self.u0s, i)
        return self.prob.remake(**changes)

    def __repr__(self) -> str:
        varied = [name for name in ("ps", "u0s") if getattr(self, name) is not None]
        return f"EnsembleProblem({len(self)} members, varying {' and '.join(varied)})"


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleSolution:
    """The solutions of an `EnsembleProblem`'s members, stacked.

    Attributes:
        u: the members' solutions, a pytree like `u0` with a leading axis of N.
        objective: (N,) float64, the value of `fun` at each member's `u`.
        retcodes: N `ReturnCode`s, one per member.
        stats: the members' counts added up; `time` is the wall time of the whole solve.
        ensemble: the ensemble that was solved.
        alg: the algorithm that solved it.

    `len(esol)` is N, `esol[i]` member i's `OptimizationSolution` (built on demand), and
    iterating yields them in order.
    """

    u: Any
    objective: np.ndarray
    retcodes: tuple[ReturnCode, ...]
    stats: Stats
    ensemble: EnsembleProblem | None = None
    alg: Any = None
    solution: Callable[[int], OptimizationSolution] = dataclasses.field(
        default=None, repr=False
    )

    def __len__(self) -> int:
        return len(self.retcodes)

    def __getitem__(self, i: int) -> OptimizationSolution:
        if not isinstance(i, (int, np.integer)) or not -len(self) <= i < len(self):
            raise IndexError(f"EnsembleSolution index {i!r}: there are {len(self)} members.")
        i = int(i) % len(self)
        sol = self.solution(i)
        problem = self.ensemble.member(i) if self.ensemble is not None else None
        return dataclasses.replace(sol, problem=problem, alg=self.alg)

    def __iter__(self) -> Iterator[OptimizationSolution]:
        return (self[i] for i in range(len(self)))

    @property
    def successful(self) -> np.ndarray:
        """(N,) bool: which members returned `Success`."""
        return np.array([code.successful for code in self.retcodes])

    def __repr__(self) -> str:
        codes: dict[str, int] = {}
        for code in self.retcodes:
            codes[code.value] = codes.get(code.value, 0) + 1
        shown = ", ".join(f"{name}: {n}" for name, n in codes.items())
        return f"EnsembleSolution({len(self)} members; {shown}; stats={self.stats})"


def solve_members(
    ensemble: EnsembleProblem, solve: Callable[..., OptimizationSolution], alg: Any,
    keywords: dict[str, Any], executor: concurrent.futures.Executor | None,
) -> EnsembleSolution:
    """Each member as one `solve(member, alg, **keywords)`, on `executor` if given (a
    process pool needs the problem and the algorithm to pickle). Serially, `maxtime` is the
    budget of the whole ensemble (a member started after it is spent stops at its first
    iteration); on an executor, each member's."""
    start, maxtime = time.perf_counter(), keywords.get("maxtime")

    def run(i: int) -> OptimizationSolution:
        left = {} if maxtime is None else {
            "maxtime": max(maxtime - (time.perf_counter() - start), 1e-9)
        }
        return solve(ensemble.member(i), alg, **{**keywords, **left})

    indices = range(len(ensemble))
    if executor is None:
        sols = [run(i) for i in indices]
    else:
        futures = [executor.submit(solve, ensemble.member(i), alg, **keywords) for i in indices]
        sols = [future.result() for future in futures]
    stats = Stats(**{
        name: sum(getattr(sol.stats, name) for sol in sols)
        for name in ("iterations", "fevals", "gevals", "hevals")
    })
    u = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]),
                     *[sol.u for sol in sols])
    u = jax.tree.map(stacked_like, u, ensemble.prob.u0)
    return EnsembleSolution(
        u=u, objective=np.array([sol.objective for sol in sols], np.float64),
        retcodes=tuple(sol.retcode for sol in sols), stats=stats, ensemble=ensemble,
        solution=sols.__getitem__,
    )


