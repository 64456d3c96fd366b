"""What `fun` receives as `p` in each iteration of an on-device run: the problem's `p`, or
the next batch of a data iterator.

A fused run walks an `opf.DataLoader` inside its compiled loop, gathering each batch by
index from the arrays on the device (`fused`); the stepwise run takes batches on the host
(`Feed.batches`), from a `DataLoader` or any other iterator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from ..data import DataLoader, gather, is_data_iterator
from ..errors import InvalidProblemError

# (samples, batch size, size of the last partial batch, the mesh batches are split over)
LoaderShape = tuple[int, int, int, Mesh | None]


class Feed:
    """The `p` of a run.

    Args:
        p: the problem's `p`.
        epochs: passes over a data iterator that is not a `DataLoader` (None: as many as
            the budget takes).
    """

    def __init__(self, p: Any, epochs: int | None) -> None:
        self.p, self.epochs = p, epochs
        self.loader = p if isinstance(p, DataLoader) else None
        self.iterator = is_data_iterator(p) and self.loader is None

    @property
    def shape(self) -> LoaderShape | None:
        """What a fused loop over the loader compiles for (None without a loader)."""
        if self.loader is None:
            return None
        loader = self.loader
        return loader.num_samples, loader.batch_size, loader.last_batch_size, loader.mesh

    def fused_args(self) -> tuple[Any, Any]:
        """(p or the loader's arrays, the loader's shuffling key or None) for `fused`."""
        if self.loader is None:
            return self.p, None
        return self.loader.arrays, self.loader.key if self.loader.shuffle else None

    def batch(self, step: int) -> Any:
        """The `p` of the iteration at `step` (0-based, over a warm-start chain)."""
        if self.loader is None:
            return self.p
        epoch, index = divmod(step, len(self.loader))
        return self.loader.batch(epoch, index)

    def batches(self, step: int, total: int | None) -> Iterator[Any]:
        """The `p` of each of `total` iterations from `step` on (None: until the data
        iterator's epochs are walked)."""
        if not self.iterator:
            loader, order = self.loader, None
            for k in range(step, step + total):
                if loader is None:
                    yield self.p
                    continue
                epoch, index = divmod(k, len(loader))
                if index == 0 or order is None:
                    order = loader.order(epoch)
                yield loader.batch(epoch, index, order)
            return
        taken, epoch = 0, 0
        while self.epochs is None or epoch < self.epochs:
            empty = True
            for batch in self.p:
                if total is not None and taken >= total:
                    return
                empty, taken = False, taken + 1
                yield batch
            if empty:
                raise InvalidProblemError("`p` is a data iterator that yielded no batch.")
            epoch += 1


Body = Callable[[Any, Any], Any]  # (carry, p) -> carry


def fused(
    shape: LoaderShape | None,
    carry: Any,
    p: Any,
    key: Any,
    iterate: Body,
    finish: Body,
    going: Callable[[Any], Any],
    position: Callable[[Any], Any],
) -> Any:
    """Iterations while `going(carry)`, as one `lax.while_loop`, then `finish(carry, p)` on
    the `p` of the last iteration (traced).

    Without a loader every iteration gets `p`. With one, `p` is its arrays: an outer loop
    over epochs draws each epoch's order once (`fold_in(key, epoch)`, or in order without
    a key), an inner loop takes the epoch's batches from `position(carry)` on (a run may
    start mid-epoch), and a trailing partial batch is the other branch of a `lax.cond`,
    since its shape differs. Batches are split over the loader's mesh, if it has one.
    """
    if shape is None:
        carry = jax.lax.while_loop(going, lambda c: iterate(c, p), carry)
        return finish(carry, p)
    n, size, last, mesh = shape
    full = n // size
    per_epoch = full + (last > 0)

    def on_batch(order: Any, index: Any, body: Body, c: Any) -> Any:
        take = lambda start, count: gather(p, order, start, count, mesh)
        if not last:
            return body(c, take(index * size, size))
        return jax.lax.cond(
            index < full,
            lambda c: body(c, take(index * size, size)),
            lambda c: body(c, take(full * size, last)),
            c,
        )

    def epoch_body(c):
        epoch = position(c) // per_epoch
        end = (epoch + 1) * per_epoch
        order = (
            jnp.arange(n) if key is None
            else jax.random.permutation(jax.random.fold_in(key, epoch), n)
        )
        c = jax.lax.while_loop(
            lambda c: going(c) & (position(c) < end),
            lambda c: on_batch(order, position(c) % per_epoch, iterate, c),
            c,
        )
        return on_batch(order, (position(c) - 1) % per_epoch, finish, c)

    return jax.lax.while_loop(going, epoch_body, carry)
