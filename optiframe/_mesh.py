"""Devices and processes: the mesh a `DataLoader`'s batches are split over, and what the
processes of `jax.distributed` must agree on.

The mesh has two axes: "hosts" (one entry per process) and "data" (each process's local
devices). A loader's arrays are sharded along "hosts" (every device holds its process's
samples) and each batch along both axes. Everything else (parameters, optimizer state,
the run's counts) is replicated, so every process can read it. Under `jax.distributed`
every process runs the same sequence of programs: a choice the host makes between them
(how many iterations the next chunk runs, whether the run goes on) is made by process 0
and broadcast (`agree`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .errors import InvalidProblemError

HOSTS, DATA = "hosts", "data"


def distributed() -> bool:
    """True under `jax.distributed` with more than one process."""
    return jax.process_count() > 1


def lead() -> bool:
    """True on the process that shows progress, calls callbacks and writes histories."""
    return jax.process_index() == 0


def data_mesh(devices: Any, sizes: Sequence[int], samples: int) -> Mesh | None:
    """The mesh a loader's batches of `sizes` (the batch size, the last partial batch's
    or 0) are split over, from `DataLoader(devices=...)`; None for one device.

    Raises:
        InvalidProblemError: `devices` is not one of the accepted forms, a batch does not
            divide evenly over the devices asked for, or (under `jax.distributed`) the
            processes' loaders differ in size.
    """
    local = _local_devices(devices)
    if not distributed():
        if len(local) == 1 or (devices == "auto" and not _divides(sizes, len(local))):
            return None
    else:
        from jax.experimental import multihost_utils

        try:  # on every process, so that all of them raise
            multihost_utils.assert_equal(np.array([samples, *sizes]), "")
        except AssertionError:
            raise InvalidProblemError(
                "`DataLoader` under jax.distributed: every process must give the same "
                "number of samples and the same batch_size (a global batch is one batch of "
                "each process)."
            ) from None
    if not _divides(sizes, len(local)):
        raise InvalidProblemError(
            f"`DataLoader(devices=...)`: batches of {' and '.join(map(str, filter(None, sizes)))} "
            f"samples do not split evenly over {len(local)} devices. Make batch_size and the "
            "number of samples multiples of the device count (or pass drop_last=True), or "
            "pass fewer devices. Batches are not padded: fun(u, batch) sees a batch whole, "
            "so padding would change its value."
        )
    if not distributed():
        return Mesh(np.array(local).reshape(1, -1), (HOSTS, DATA))
    every = _process_devices(len(local))
    return Mesh(np.array(every).reshape(jax.process_count(), len(local)), (HOSTS, DATA))


def _local_devices(devices: Any) -> list[jax.Device]:
    available = jax.local_devices()
    if devices == "auto":
        return available
    if devices is None:
        chosen = available[:1]
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise InvalidProblemError(
                f"`DataLoader(devices={devices})`: this process has {len(available)} "
                f"device(s); pass a count from 1 to {len(available)}."
            )
        chosen = available[:devices]
    elif isinstance(devices, Sequence) and devices and all(
        isinstance(d, jax.Device) for d in devices
    ):
        chosen = list(devices)
        if len(set(chosen)) != len(chosen) or not set(chosen) <= set(available):
            raise InvalidProblemError(
                "`DataLoader(devices=[...])` must list distinct devices of this process "
                "(jax.local_devices())."
            )
    else:
        raise InvalidProblemError(
            f"`DataLoader(devices={devices!r})`: pass 'auto', None (one device), a count, "
            "or a list of jax.local_devices()."
        )
    if distributed() and len(chosen) != len(available):
        raise InvalidProblemError(
            "`DataLoader(devices=...)` under jax.distributed: every process splits its "
            "batches over all its devices; remove devices=, or restrict the devices each "
            "process sees (e.g. CUDA_VISIBLE_DEVICES) before jax.distributed.initialize()."
        )
    return chosen


def _divides(sizes: Sequence[int], count: int) -> bool:
    return all(size % count == 0 for size in sizes)


def _process_devices(count: int) -> list[jax.Device]:
    """Every process's devices, process by process (`count` each)."""
    by_process: dict[int, list[jax.Device]] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [d for index in sorted(by_process) for d in by_process[index][:count]]


def place(arrays: Any, mesh: Mesh | None) -> Any:
    """A loader's arrays on the device, or on `mesh` sharded along "hosts" (under
    `jax.distributed`, this process's arrays become its block of a global array)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, arrays)
    sharding = NamedSharding(mesh, P(HOSTS))
    if not distributed():
        return jax.device_put(jax.tree.map(jnp.asarray, arrays), sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), arrays
    )


def spans_processes(tree: Any) -> bool:
    """True if a leaf of `tree` lives on other processes' devices too."""
    return any(
        isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)
    )


def agree(values: Any) -> np.ndarray:
    """Process 0's `values` (numbers, as one NumPy array) on every process."""
    values = np.asarray(values)
    if not distributed():
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(values))


def local(tree: Any) -> Any:
    """`tree` with each leaf that spans processes (replicated) as a copy on this process's
    default device, so that it mixes with the process's own arrays; other leaves as
    they are."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(np.asarray(x))
        return x

    return jax.tree.map(leaf, tree)
