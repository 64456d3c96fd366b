"""JAX code evaluated in float64 for the host backends, whatever JAX's default precision:
the point in float64, and the float arrays of `p` too (`as_float64`); arrays the objective
closes over keep their own dtype.

`float64()` is `jax.enable_x64(True)`, made safe for closed-over NumPy constants. jaxlib's
`canonicalize_value` (jaxlib 0.10, C++) keeps the canonical copy it made of a NumPy array,
keyed on the array alone, for as long as a trace holds that copy: a function closing over
a NumPy array, traced once in float32 (by an optax solve, say), hands the float32 copy to
its later float64 trace, which then fails to lower ("'stablehlo.subtract' op requires
compatible types"). Once per process, before the first float64 trace, NumPy arrays are
given a handler that makes their copy in the precision in force (it keeps no cache; a
trace converts each constant once).

Code written for float32 can fail to trace in float64 (a float32 array it closes over as an
ODE's state, integrated with float64 parameters): the backends then run it in JAX's default
precision, with a warning (`unsupported`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def _canonicalize_by_precision() -> None:
    from jax._src import dtypes, literals

    def handler(x: np.ndarray) -> literals.TypedNdArray:
        return literals.TypedNdArray(np.asarray(x, dtypes.canonicalize_dtype(x.dtype)))

    dtypes.register_canonicalize_value_handler(np.ndarray, handler)


def float64(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A context that traces and runs JAX code with 64-bit types enabled (or, with
    `enabled=False` or JAX_ENABLE_X64 on, changes nothing)."""
    if not enabled or jax.config.jax_enable_x64:
        return contextlib.nullcontext()
    _canonicalize_by_precision()
    return jax.enable_x64(True)


def unsupported(err: Exception) -> None:
    """Warn that the objective failed in float64 with `err` and runs in JAX's default
    precision instead."""
    warnings.warn(
        f"The objective cannot be traced in float64 ({type(err).__name__}: {err}); it runs "
        "in JAX's default precision instead. Make it work in any precision (e.g. build "
        "arrays with u's dtype: y0.astype(u.dtype)), or enable JAX_ENABLE_X64.",
        stacklevel=2,
    )


def as_float64(tree: Any) -> Any:
    """`tree` with its floating-point arrays as float64 JAX arrays (moved to the device once;
    anything else unchanged): the data a float64 evaluation is passed."""

    def leaf(x: Any) -> Any:
        if isinstance(x, (jax.Array, np.ndarray)) and np.issubdtype(x.dtype, np.floating):
            return jnp.asarray(x, jnp.float64)
        return x

    with float64():
        return jax.tree.map(leaf, tree)
