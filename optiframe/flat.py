"""Pytree <-> flat vector, and restoring a result to `u0`'s structure and dtypes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def to_device(u0: Any) -> Any:
    """`u0` as a pytree of strongly typed JAX arrays (float64 leaves become float32 unless
    JAX_ENABLE_X64 is set), so equal shapes and dtypes always hit the same compiled code."""

    def leaf(x):
        dtype = jax.dtypes.canonicalize_dtype(x.dtype if hasattr(x, "dtype") else np.result_type(x))
        if isinstance(x, jax.Array):
            return x if x.dtype == dtype and not x.weak_type else x.astype(dtype)
        return jax.device_put(np.asarray(x, dtype))  # converted on the host: compiles nothing

    return jax.tree.map(leaf, u0)


def device_shapes(u0: Any) -> Any:
    """The shapes and dtypes `to_device(u0)` would have, without moving anything."""

    def leaf(x):
        dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
        return jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(dtype))

    return jax.tree.map(leaf, u0)


def ravel(u: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """The leaves of `u` concatenated into one vector (n,), and the inverse map."""
    return ravel_pytree(u)


def unraveler(u0: Any, dtype: Any = None) -> Callable[[jax.Array], Any]:
    """The inverse of `ravel` for `u0`'s structure, made from its shapes alone (it runs and
    compiles nothing until traced): leaves in `dtype`, or in `to_device(u0)`'s dtypes."""
    leaves, treedef = jax.tree.flatten(device_shapes(u0))
    ends = np.cumsum([int(np.prod(leaf.shape)) for leaf in leaves])[:-1].tolist()

    def unravel(x: jax.Array) -> Any:
        parts = jnp.split(x, ends)
        return jax.tree.unflatten(treedef, [
            part.reshape(leaf.shape).astype(dtype or leaf.dtype)
            for part, leaf in zip(parts, leaves)
        ])

    return unravel


def restore_like(u: Any, u0: Any) -> Any:
    """`u` with the leaf types and dtypes of `u0`: NumPy leaves stay NumPy, JAX leaves
    stay JAX, Python floats stay floats."""

    def leaf(x, ref):
        if isinstance(ref, jax.Array):
            same = isinstance(x, jax.Array) and x.dtype == ref.dtype
            return x if same else jnp.asarray(x, ref.dtype)
        if isinstance(ref, (np.ndarray, np.generic)):
            return np.asarray(x, dtype=ref.dtype)
        return float(np.asarray(x))

    return jax.tree.map(leaf, u, u0)


def host_unraveler(u: Any) -> Callable[[np.ndarray], Any]:
    """A NumPy-only inverse of `ravel` for `u`'s structure, for use on the host (inside
    callbacks, where JAX must not be called)."""
    leaves, treedef = jax.tree.flatten(u)
    shapes = [np.shape(leaf) for leaf in leaves]
    splits = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
    if treedef == jax.tree.structure(0):  # `u` is one array: skip split and unflatten
        return lambda x: np.asarray(x).reshape(shapes[0])

    def unravel(x: np.ndarray) -> Any:
        parts = np.split(np.asarray(x), splits)
        return jax.tree.unflatten(treedef, [p.reshape(s) for p, s in zip(parts, shapes)])

    return unravel
