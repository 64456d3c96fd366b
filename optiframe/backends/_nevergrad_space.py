"""The search space Nevergrad sees: `u0`'s flat vector, split into bounded, integer and free
parts, and the way back from a Nevergrad candidate to a flat vector and to `u0`'s pytree.

Nevergrad's optimizers work on the standardized concatenation of their parametrization's
arrays, so the structure of `u0` does not change what they do; one flat array (or a few,
when `u0` mixes integer and continuous entries or bounded and unbounded ones) keeps ask and
tell as cheap as Nevergrad allows for any pytree, equinox modules included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from ..errors import InvalidProblemError
from ..flat import host_unraveler
from ..problem import OptimizationProblem

BOUNDINGS = ("bouncing", "clipping", "arctan", "tanh", "constraint", "penalty")


@dataclasses.dataclass(frozen=True)
class Group:
    """Entries of the flat vector that one `ng.p.Array` holds.

    Attributes:
        index: their positions in the flat vector, increasing.
        integer: rounded to integers (`set_integer_casting`).
        bounds: "both" (finite lower and upper), "partial" (one side) or "none".
    """

    index: np.ndarray
    integer: bool
    bounds: str


def _flat(tree: Any) -> np.ndarray:
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.asarray(leaf, float).ravel() for leaf in leaves])


class SearchSpace:
    """The flat search space of one problem.

    Entries with `lb == ub` (or an integer entry with one integer in its bounds) are fixed
    and not searched. The others are grouped by (integer, kind of bounds), in that order of
    first appearance; a problem whose searched entries form one group in their natural order
    gets a single `ng.p.Array`, so `candidate.value` is the flat vector itself.

    Args:
        problem: the problem.

    Raises:
        InvalidProblemError: an integer entry whose bounds hold no integer.
    """

    def __init__(self, problem: OptimizationProblem) -> None:
        self.unravel = host_unraveler(problem.u0)
        x0 = _flat(problem.u0)
        n = x0.size
        lb = _flat(problem.lb) if problem.has_bounds else np.full(n, -np.inf)
        ub = _flat(problem.ub) if problem.has_bounds else np.full(n, np.inf)
        integer = (
            _flat(problem.integrality).astype(bool)
            if problem.integrality is not None
            else np.zeros(n, bool)
        )
        lb, ub = lb.copy(), ub.copy()
        lb[integer], ub[integer] = np.ceil(lb[integer]), np.floor(ub[integer])
        empty = integer & (lb > ub)
        if np.any(empty):
            i = int(np.flatnonzero(empty)[0])
            raise InvalidProblemError(
                f"`OptimizationProblem(integrality=...)`: flat entry {i} is an integer "
                f"variable but [lb, ub] = [{_flat(problem.lb)[i]}, {_flat(problem.ub)[i]}] "
                "holds no integer; widen its bounds or make it continuous."
            )
        x0 = np.clip(np.where(integer, np.round(x0), x0), lb, ub)
        self.x0, self.lb, self.ub, self.integer = x0, lb, ub, integer
        self.bounded = problem.has_bounds
        fixed = lb == ub
        kinds = np.where(
            np.isfinite(lb) & np.isfinite(ub),
            "both",
            np.where(np.isfinite(lb) | np.isfinite(ub), "partial", "none"),
        )
        groups: dict[tuple[bool, str], list[int]] = {}
        for i in np.flatnonzero(~fixed):
            groups.setdefault((bool(integer[i]), str(kinds[i])), []).append(int(i))
        self.groups = tuple(
            Group(np.asarray(index), key[0], key[1]) for key, index in groups.items()
        )
        self.dimension = int(np.sum(~fixed))
        self.single = len(self.groups) == 1 and self.dimension == n

    def parametrization(self, ng: Any, bounding: str) -> Any:
        """A fresh Nevergrad parametrization of the space, valued at `u0`.

        Arrays with both bounds use `bounding` and start with Nevergrad's default step for a
        bounded array, `sigma = (ub - lb) / 6`, and sample their initial populations over
        the whole box (`full_range_sampling`); one-sided bounds are always clipped (the only
        method Nevergrad allows for them); unbounded arrays keep Nevergrad's `sigma = 1`.
        With `bounding="penalty"` the arrays carry no bounds: candidates are evaluated at
        their projection onto the box and their distance outside it is told to Nevergrad as
        a constraint violation (`box_violation`).
        """
        arrays = []
        for group in self.groups:
            i = group.index
            array = ng.p.Array(init=self.x0[i])
            if bounding == "penalty":  # no bounds in the parametrization: see `box_violation`
                if group.bounds == "both":
                    array.set_mutation(sigma=(self.ub[i] - self.lb[i]) / 6)
            elif group.bounds == "both":
                array.set_mutation(sigma=(self.ub[i] - self.lb[i]) / 6)
                array.set_bounds(self.lb[i], self.ub[i], method=bounding, full_range_sampling=True)
            elif group.bounds == "partial":
                array.set_bounds(self.lb[i], self.ub[i], method="clipping")
            if group.integer:
                array.set_integer_casting()
            arrays.append(array)
        if not arrays:
            raise InvalidProblemError(
                "`OptimizationProblem(lb=..., ub=...)` fixes every variable (lb == ub "
                "everywhere), so there is nothing to search; widen the bounds."
            )
        return arrays[0] if len(arrays) == 1 else ng.p.Tuple(*arrays)

    def flat(self, value: Any, clip: bool = True) -> np.ndarray:
        """The flat float64 vector of a candidate's `value`, clipped into the bounds: a
        candidate of the "penalty" bounding, or of the "constraint" bounding that Nevergrad
        could not repair, is evaluated at its nearest point inside."""
        if self.single:
            x = np.asarray(value, float)
        else:
            x = self.x0.copy()
            parts = (value,) if len(self.groups) == 1 else value
            for group, part in zip(self.groups, parts):
                x[group.index] = part
        if self.bounded and clip:
            x = np.clip(x, self.lb, self.ub)
        return x

    def box_violation(self, X: np.ndarray) -> np.ndarray:
        """(b,) how far unclipped candidates (rows of `X`) lie outside the box, summed over
        the entries (1-norm): the "penalty" bounding tells it to Nevergrad as one more
        constraint violation."""
        if not self.bounded:
            return np.zeros(X.shape[0])
        return np.sum(np.maximum(self.lb - X, 0.0) + np.maximum(X - self.ub, 0.0), axis=1)

    def tree(self, x: np.ndarray) -> Any:
        """`u0`'s pytree, NumPy float64 leaves, from a flat vector."""
        return self.unravel(x)
