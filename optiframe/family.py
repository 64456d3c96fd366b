"""`ProblemFamily`: tasks that share a problem's structure, for learning to optimize (a
learned optimizer, `meta_train`; a learned warm start, `fit_warm_start`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .errors import InvalidProblemError
from .problem import OptimizationProblem


@dataclasses.dataclass(frozen=True)
class ProblemFamily:
    """Problems like `prob` that differ in `p` (and, optionally, in `u0`).

    Args:
        prob: the family's shared problem: its `fun`, and a `p` and `u0` whose shapes every
            task keeps.
        sample_p: `sample_p(key) -> p`, a task's parameters, shaped like `prob.p` (traced
            by JAX: `vmap` draws many at once).
        sample_u0: `sample_u0(key) -> u0`, a task's start, shaped like `prob.u0`; None: every
            task starts from `prob.u0`.

    Example:
        >>> family = opf.ProblemFamily(prob, lambda key: jax.random.uniform(key, (3,)))
        >>> task = family.sample(jax.random.key(0))  # an OptimizationProblem
    """

    prob: OptimizationProblem
    sample_p: Callable[[jax.Array], Any]
    sample_u0: Callable[[jax.Array], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prob, OptimizationProblem):
            raise InvalidProblemError(
                f"`ProblemFamily(prob=...)` must be an opf.OptimizationProblem, got "
                f"{type(self.prob).__name__}."
            )
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        for name, sample, like in (("sample_p", self.sample_p, self.prob.p),
                                   ("sample_u0", self.sample_u0, self.prob.u0)):
            if sample is None and name == "sample_u0":
                continue
            if not callable(sample):
                raise InvalidProblemError(f"`ProblemFamily({name}=...)` must be callable.")
            try:
                drawn = jax.eval_shape(sample, key)
            except Exception as error:
                raise InvalidProblemError(
                    f"`ProblemFamily({name}=...)`: calling it on a JAX key failed ({error}); "
                    f"{name}(key) must draw with jax.random from that key."
                ) from error
            if _shapes(drawn) != _shapes(like):
                what = "p" if name == "sample_p" else "u0"
                raise InvalidProblemError(
                    f"`ProblemFamily({name}=...)` draws {_shapes(drawn)}, but prob.{what} is "
                    f"{_shapes(like)}; every task must keep the problem's shapes."
                )

    def draw(self, key: jax.Array, n: int) -> tuple[Any, Any]:
        """(ps, u0s): `n` tasks' parameters and starts, each leaf with a leading axis `n`
        (u0s repeats `prob.u0` without `sample_u0`)."""
        keys = jax.random.split(key, (n, 2))
        ps = jax.vmap(self.sample_p)(keys[:, 0])
        if self.sample_u0 is None:
            u0s = jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), self.prob.u0)
        else:
            u0s = jax.vmap(self.sample_u0)(keys[:, 1])
        return ps, u0s

    def sample(self, key: jax.Array) -> OptimizationProblem:
        """One task, an `OptimizationProblem` (the same task as `draw(key, 1)`'s)."""
        ps, u0s = self.draw(key, 1)
        first = lambda tree: jax.tree.map(lambda x: x[0], tree)
        return self.prob.remake(p=first(ps), u0=first(u0s))


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: tuple(np.shape(x)), tree)
