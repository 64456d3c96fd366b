"""`DataLoader` and the rule that tells a data iterator from parameters."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ._mesh import DATA, HOSTS, data_mesh, place
from .errors import InvalidProblemError


class DataLoader:
    """Minibatches of a pytree of arrays, batched along axis 0.

    Each epoch visits every sample once; with `shuffle=True` epoch `e` uses the
    permutation drawn from `jax.random.fold_in(key, e)`, a new order every epoch and the
    same orders for the same key. The arrays are moved to the device once, so `solve` can
    gather batches by index inside its compiled loop.

    With several devices, each batch is split over them along the mesh axis "data"
    (`loader.mesh`), and `solve` runs data-parallel: parameters and optimizer state
    replicated, gradients all-reduced by XLA. Every device holds a copy of its process's
    arrays and gathers its share of each batch from it. Under `jax.distributed`, `arrays`
    are this process's samples, every process gives the same `batch_size` and number of
    samples, and a global batch is the concatenation of the processes' batches, in
    process order.

    Args:
        arrays: a pytree of arrays sharing their leading dimension N.
        batch_size: samples per batch (the last batch of an epoch holds the remaining
            `N % batch_size` samples unless `drop_last`).
        shuffle: draw a new order every epoch.
        key: the JAX key of the orders (default `jax.random.key(0)`).
        drop_last: drop the last partial batch.
        devices: the local devices a batch is split over: "auto" (all of them when each
            batch divides evenly over them, else one), an int (the first n), a sequence of
            devices, or None (one device). Under `jax.distributed` a batch is split over
            every process, each process's share over its `devices` ("auto": all).

    Raises:
        InvalidProblemError: a batch (the last partial one included) that does not divide
            evenly over the devices asked for. It is refused, not padded: `fun(u, batch)`
            sees the batch whole, so padding would change its value.

    Example:
        >>> loader = DataLoader((x, y), batch_size=32, shuffle=True, key=jax.random.key(1))
        >>> len(loader)          # batches per epoch
    """

    def __init__(
        self,
        arrays: Any,
        batch_size: int,
        shuffle: bool = False,
        key: jax.Array | None = None,
        drop_last: bool = False,
        devices: Any = "auto",
    ) -> None:
        leaves = jax.tree.leaves(arrays)
        if not leaves:
            raise InvalidProblemError("`DataLoader(arrays=...)` holds no arrays.")
        sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if None in sizes or len(sizes) != 1:
            raise InvalidProblemError(
                "`DataLoader(arrays=...)`: every array must have the same leading (sample) "
                f"dimension, got leading sizes {sorted(map(str, sizes))}."
            )
        (n,) = sizes
        if not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size:
            raise InvalidProblemError(
                f"`DataLoader(batch_size={batch_size!r})` must be a positive integer."
            )
        if drop_last and batch_size > n:
            raise InvalidProblemError(
                f"`DataLoader(batch_size={batch_size}, drop_last=True)` over {n} samples "
                "yields no batch; lower batch_size or set drop_last=False."
            )
        self.num_samples = int(n)
        self.batch_size = int(min(batch_size, n))
        self.shuffle = bool(shuffle)
        self.key = jax.random.key(0) if key is None else key
        self.drop_last = bool(drop_last)
        self._passes = 0
        sizes = (self.batch_size, self.last_batch_size)
        self.mesh: Mesh | None = data_mesh(devices, sizes, self.num_samples)
        self.arrays = place(arrays, self.mesh)

    @property
    def num_full_batches(self) -> int:
        return self.num_samples // self.batch_size

    @property
    def last_batch_size(self) -> int:
        """Size of the trailing partial batch (0 if none or dropped)."""
        return 0 if self.drop_last else self.num_samples % self.batch_size

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.num_full_batches + (self.last_batch_size > 0)

    def order(self, epoch: int | jax.Array) -> jax.Array:
        """The sample indices of epoch `epoch`, (N,): a permutation or `arange(N)`."""
        if not self.shuffle:
            return jnp.arange(self.num_samples)
        return _permutation(self.key, epoch, self.num_samples)

    def batch(self, epoch: int, index: int, order: jax.Array | None = None) -> Any:
        """Batch `index` of epoch `epoch` (pass `order(epoch)` to reuse it)."""
        order = self.order(epoch) if order is None else order
        start = index * self.batch_size
        size = min(self.batch_size, self.num_samples - start)
        return _take(self.arrays, order, start, size, self.mesh)

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The batches of epoch `epoch`, in order."""
        order = self.order(epoch)
        for index in range(len(self)):
            yield self.batch(epoch, index, order)

    def __iter__(self) -> Iterator[Any]:
        """One epoch; each new pass over the loader is the next epoch (a new order)."""
        self._passes += 1
        return self.epoch(self._passes - 1)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with this process's arrays and its number of devices (a device does not
        pickle); unpickled onto as many devices of the process that loads it."""
        arrays, devices = self.arrays, None
        if self.mesh is not None:
            arrays = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), arrays)
            devices = self.mesh.shape[DATA]
        args = (arrays, self.batch_size, self.shuffle, self.key, self.drop_last, devices)
        return DataLoader, args, {"_passes": self._passes}

    def __repr__(self) -> str:
        return (
            f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"batches={len(self)}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
            f"devices={1 if self.mesh is None else self.mesh.devices.size})"
        )


@functools.partial(jax.jit, static_argnums=2)
def _permutation(key: jax.Array, epoch: Any, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _take(arrays: Any, order: jax.Array, start: Any, size: int, mesh: Mesh | None) -> Any:
    return gather(arrays, order, start, size, mesh)


def gather(arrays: Any, order: jax.Array, start: Any, size: int, mesh: Mesh | None) -> Any:
    """The batch of samples `order[start : start + size]` of every array (traced).

    With a `mesh`, the batch is split along its axes ("hosts", "data"): each device takes
    its `size // devices` samples from its process's arrays, with no communication. Under
    `jax.distributed` the result is the processes' batches, concatenated.
    """
    take = jax.lax.dynamic_slice_in_dim(order, start, size)
    if mesh is None:
        return jax.tree.map(lambda a: jnp.take(a, take, axis=0), arrays)
    share = size // mesh.shape[DATA]

    def local(arrays: Any, take: jax.Array) -> Any:
        mine = jax.lax.dynamic_slice_in_dim(take, jax.lax.axis_index(DATA) * share, share)
        return jax.tree.map(lambda a: jnp.take(a, mine, axis=0), arrays)

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(HOSTS), P()), out_specs=P((HOSTS, DATA))
    )(arrays, take)


def is_data_iterator(p: Any) -> bool:
    """True for a `DataLoader`, or any iterable that is not an array or a pytree of
    arrays (a generator, a custom re-iterable, a torch loader)."""
    if isinstance(p, (DataLoader, Iterator)):
        return True
    if isinstance(p, (str, bytes, np.ndarray, jax.Array)) or p is None:
        return False
    leaves = jax.tree.leaves(p)
    if len(leaves) == 1 and leaves[0] is p:
        return hasattr(p, "__iter__")
    return False


def batches_per_epoch(p: Any) -> int | None:
    """Number of batches in one pass of `p`, or None when only a pass can tell."""
    try:
        return len(p)
    except TypeError:
        return None


def is_one_shot(p: Any) -> bool:
    """True for an iterator that can be walked once (a generator, `zip(...)`)."""
    return isinstance(p, Iterator)
