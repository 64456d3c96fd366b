"""Patches Nevergrad needs to work, reproducibly, with the libraries beside it: NumPy >= 2.4
in its metamodel, and seeds for `cma.fmin`. `patch` applies them (each once) when the
Nevergrad backend first imports Nevergrad.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

# Seeds for `cma.fmin` calls made while a seeded run is in progress (innermost run last),
# and the source each thread that called `cma.fmin` drew its first seed from.
_CMA_SEEDS: list[np.random.RandomState] = []
_CMA_THREAD_SEEDS: weakref.WeakKeyDictionary[threading.Thread, np.random.RandomState] = (
    weakref.WeakKeyDictionary()
)


def _lenient_float(x: Any = 0.0) -> float:
    """`float` as NumPy < 2.4 had it: a one-element array of any shape converts to its
    element (NumPy 2.4 raises TypeError for arrays with ndim > 0)."""
    if isinstance(x, np.ndarray) and x.ndim > 0 and x.size == 1:
        return float(x.reshape(()))
    return float(x)


def _patch_metamodel() -> None:
    """Give `nevergrad.optimization.metamodel` NumPy < 2.4's `float`: `learn_on_k_best`
    converts a one-element array with `float(...)`, a TypeError since NumPy 2.4 (nevergrad
    1.0.12, issue #1612) that kills every optimizer consulting a metamodel (NGOpt on small
    continuous problems). Nevergrad's choices stay exactly as they were."""
    from nevergrad.optimization import metamodel

    metamodel.float = _lenient_float  # module global; shadows the builtin there only


@contextlib.contextmanager
def seeded_cma(seed: int | None) -> Iterator[None]:
    """Give every `cma.fmin` call without a seed, while the block runs, one drawn from
    `seed` (nothing changes for `seed=None`): Nevergrad's `CmaFmin2` (which NGOpt selects
    for some problems) calls it without one, and `cma` then seeds itself, and NumPy's global
    random state, from the clock. A thread keeps drawing from the run it first called
    `cma.fmin` in (its restarts too)."""
    if seed is None:
        yield
        return
    _CMA_SEEDS.append(np.random.RandomState(seed))
    try:
        yield
    finally:
        _CMA_SEEDS.pop()


def _patch_cma() -> None:
    """Route `cma.fmin` through `seeded_cma`'s seeds."""
    import cma

    if getattr(cma.fmin, "_optiframe_seeded", False):
        return
    fmin = cma.fmin

    @functools.wraps(fmin)
    def seeded_fmin(*args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        source = _CMA_THREAD_SEEDS.get(thread)
        if source is None and _CMA_SEEDS:
            source = _CMA_SEEDS[-1]
            if thread is not threading.main_thread():  # a recast optimizer's thread
                _CMA_THREAD_SEEDS[thread] = source
        if source is not None and "options" in kwargs:
            options = dict(kwargs["options"] or {})
            options.setdefault("seed", int(source.randint(1, 2**31)))
            kwargs["options"] = options
        return fmin(*args, **kwargs)

    seeded_fmin._optiframe_seeded = True  # type: ignore[attr-defined]
    cma.fmin = seeded_fmin


def patch() -> None:
    """Apply the patches (each applies itself once)."""
    _patch_metamodel()
    _patch_cma()
