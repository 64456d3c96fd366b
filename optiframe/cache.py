"""JAX's persistent compilation cache, turned on for optiframe's programs."""

from __future__ import annotations

import os
import pathlib

import jax


def default_cache_dir() -> pathlib.Path:
    """`$XDG_CACHE_HOME/optiframe/jax`, or `~/.cache/optiframe/jax` (the user's cache
    folder; never the current directory or a checkout)."""
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "optiframe" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache: a program compiled once (a solve's
    value-and-gradient, a fused optax loop, ...) is written to `path` and read back by the
    next process that compiles the same program, so a script run a second time gets its
    first solve without compiling.

    Every program is cached, however fast it compiled (JAX's default caches only those
    that took a second or more). It is process-wide JAX configuration: call it once, at the
    start of a script, before the first solve. JAX does not cache a program that calls back
    to the host: optiframe's with an `ad="finite"` objective on the device (evosax, optax
    and the gradient flows evaluate it through `jax.pure_callback`), and the gradient
    flows of implicit diffrax solvers (they count gradients on the host).

    Args:
        path: the cache directory (created if missing); default `default_cache_dir()`.

    Returns:
        The directory in use.
    """
    directory = pathlib.Path(path) if path is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory
