"""The search space Nevergrad sees: `u0`'s flat vector as one `ng.p.Array` (or a few, when
`u0` mixes integer and continuous or bounded and unbounded entries), which keeps ask and tell
as cheap as Nevergrad allows for any pytree; Nevergrad's optimizers work on the standardized
concatenation of the arrays, so the structure of `u0` does not change what they do.
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
_BOUNDS = ("none", "partial", "both")  # by the number of finite bounds of an entry


@dataclasses.dataclass(frozen=True)
class Group:
    """Entries of the flat vector that one `ng.p.Array` holds: their positions (increasing),
    whether they are integers (`set_integer_casting`), and which of their bounds are finite:
    "both", "partial" (one side) or "none"."""

    index: np.ndarray
    integer: bool
    bounds: str


def _flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.asarray(leaf, float).ravel() for leaf in jax.tree.leaves(tree)])


class SearchSpace:
    """The flat search space of one problem.

    Entries with `lb == ub` (or an integer entry with one integer in its bounds) are fixed
    and not searched. The others are grouped by (integer, kind of bounds), in that order of
    first appearance; a problem whose searched entries form one group in their natural order
    gets a single `ng.p.Array`, so `candidate.value` is the flat vector itself.

    Attributes:
        lb, ub, x0: (n,) float64: the bounds (rounded inwards for integer entries) and `u0`
            rounded and clipped into them.
        tree: a flat vector (n,) -> `u0`'s pytree with NumPy float64 leaves.

    Raises:
        InvalidProblemError: an integer entry whose bounds hold no integer.
    """

    def __init__(self, problem: OptimizationProblem) -> None:
        self.tree = host_unraveler(problem.u0)
        x0 = _flat(problem.u0)
        n = x0.size
        self.bounded = problem.has_bounds
        lb, ub = (_flat(problem.lb), _flat(problem.ub)) if self.bounded else (
            np.full(n, -np.inf), np.full(n, np.inf)
        )
        integer = np.zeros(n, bool) if problem.integrality is None else (
            _flat(problem.integrality).astype(bool))
        self.lb = np.where(integer, np.ceil(lb), lb)
        self.ub = np.where(integer, np.floor(ub), ub)
        empty = np.flatnonzero(integer & (self.lb > self.ub))
        if empty.size:
            i = int(empty[0])
            raise InvalidProblemError(
                f"`OptimizationProblem(integrality=...)`: flat entry {i} is an integer "
                f"variable but [lb, ub] = [{lb[i]}, {ub[i]}] holds no integer; widen its "
                "bounds or make it continuous."
            )
        self.x0 = np.clip(np.where(integer, np.round(x0), x0), self.lb, self.ub)
        finite = np.isfinite(self.lb).astype(int) + np.isfinite(self.ub)
        groups: dict[tuple[bool, str], list[int]] = {}
        for i in np.flatnonzero(self.lb != self.ub):
            groups.setdefault((bool(integer[i]), _BOUNDS[finite[i]]), []).append(int(i))
        self.groups = tuple(Group(np.asarray(i), *key) for key, i in groups.items())
        self.dimension = sum(group.index.size for group in self.groups)
        self.single = len(self.groups) == 1 and self.dimension == n

    def parametrization(self, ng: Any, bounding: str) -> Any:
        """A fresh Nevergrad parametrization of the space, valued at `u0`. Arrays with both
        bounds step `sigma = (ub - lb) / 6` (Nevergrad's default for a bounded array), use
        `bounding` and sample initial populations over the whole box; one-sided bounds are
        clipped (the only method Nevergrad allows). With `bounding="penalty"` the arrays carry
        no bounds: candidates are evaluated at their projection onto the box and told their
        distance outside it (`box_violation`) as a constraint violation."""
        if not self.groups:
            raise InvalidProblemError(
                "`OptimizationProblem(lb=..., ub=...)` fixes every variable (lb == ub "
                "everywhere), so there is nothing to search; widen the bounds."
            )
        arrays = []
        for group in self.groups:
            i, bounded = group.index, bounding != "penalty"
            array = ng.p.Array(init=self.x0[i])
            if group.bounds == "both":
                array.set_mutation(sigma=(self.ub[i] - self.lb[i]) / 6)
                if bounded:
                    array.set_bounds(
                        self.lb[i], self.ub[i], method=bounding, full_range_sampling=True
                    )
            elif group.bounds == "partial" and bounded:
                array.set_bounds(self.lb[i], self.ub[i], method="clipping")
            if group.integer:
                array.set_integer_casting()
            arrays.append(array)
        return arrays[0] if len(arrays) == 1 else ng.p.Tuple(*arrays)

    def flat(self, value: Any, clip: bool = True) -> np.ndarray:
        """The flat float64 vector (n,) of a candidate's `value`, clipped into the bounds: a
        candidate of the "penalty" bounding, or of the "constraint" bounding that Nevergrad
        could not repair, is evaluated at its nearest point inside."""
        if self.single:
            x = np.asarray(value, float)
        else:
            x = self.x0.copy()
            for group, part in zip(self.groups, (value,) if len(self.groups) == 1 else value):
                x[group.index] = part
        return np.clip(x, self.lb, self.ub) if self.bounded and clip else x

    def box_violation(self, X: np.ndarray) -> np.ndarray:
        """(b,) how far unclipped candidates (rows of `X`) lie outside the box, summed over
        the entries (1-norm)."""
        return np.sum(np.maximum(self.lb - X, 0.0) + np.maximum(X - self.ub, 0.0), axis=1)
