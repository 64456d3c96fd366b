"""The compiled programs of an on-device method, shaped like optimistix's `_iterate.py`.

A `DeviceMethod` (the optax, optimistix, evosax and gradient-flow adapters) describes its
iteration as pure functions of JAX values: `init`, `step`, `point`, `final`, and optionally
its own loop (`run`: diffrax integrates in its own). A `Program` wraps them in what every
run shares, the `Carry`: counts, the status, the last, best and final losses and the best
point, and jits one iteration (`step`), a fused `lax.while_loop` of them (`run`), the
start and the final evaluation. `_device.DeviceRun` drives one problem's programs,
`_ensemble.EnsembleRun` the same programs vmapped over many.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..solution import ReturnCode
from ._feed import LoaderShape, fused
from .base import SolveOptions

# Status codes: the loop's own; a method numbers its stopping tests from FIRST_STOP on.
RUNNING, NONFINITE, FIRST_STOP = 0, 1, 2
# Slots of `Carry.counts` (int32) and `Carry.losses` (the widest float JAX allows).
STEPS, ITERATIONS, FEVALS, GEVALS, STATUS = range(5)
LAST, BEST, FINAL = range(3)


def loss_dtype() -> Any:
    return jnp.result_type(float)


def counts(iterations: Any, fevals: Any, gevals: Any) -> jax.Array:
    """int32[3]: what an evaluation adds to the run's iterations, fevals and gevals."""
    return jnp.stack([jnp.asarray(c, jnp.int32) for c in (iterations, fevals, gevals)])


class Evaluation(NamedTuple):
    """What one iteration evaluated.

    Attributes:
        u: the point evaluated, in `u0`'s structure and device dtypes.
        loss: the signed loss there (`sign * fun`), a scalar of `loss_dtype()`.
        grad: the signed gradient there, or None.
        aux: `fun`'s auxiliary output there, or None.
        counts: int32[3], the iterations, fevals and gevals it adds (`counts(...)`).
        status: int32, RUNNING or one of the method's stop codes.
        at_state: bool, `u` is the point of the state the iteration leaves.
        extra: what the method shows its callback besides (a population, ...), or None.
    """

    u: Any
    loss: Any
    grad: Any
    aux: Any
    counts: Any
    status: Any
    at_state: Any
    extra: Any = None


class Carry(NamedTuple):
    """The loop's state.

    Attributes:
        state: the method's state.
        counts: int32[5]: iterations over a warm-start chain (they position a data loader),
            iterations, fevals and gevals of this solve, and the status.
        losses: [3]: the signed loss of the last evaluation, the best finite one (when
            tracked; else inf), and the one at the state's point (inf while unknown).
        best_u: the evaluated point of the best loss, when tracked, else None.
        log: for a recorded history, the last `size` iterations' signed losses (size,),
            fevals (size,) int32 and every `every`-th evaluated point (size // every, ...),
            iteration i at row (i - 1) % size; else None.
    """

    state: Any
    counts: jax.Array
    losses: jax.Array
    best_u: Any
    log: Any = None


class DeviceMethod:
    """An iterative method on the device, as `DeviceRun` runs it (see the module's doc).

    Attributes:
        search: a search method: `sol.u` is the best point evaluated, and a non-finite
            value is a bad candidate, not the end of the run.
        evaluates_start: `init` evaluates the objective (it is given `p`; else None).
        stops: the method's status codes -> (ReturnCode, message); the message may name
            `{options.abstol}`, `{method....}`.
    """

    search: ClassVar[bool] = False
    evaluates_start: ClassVar[bool] = False
    stops: ClassVar[dict[int, tuple[ReturnCode, str]]] = {}
    run: Callable[..., Any] | None = None

    def init(self, u: Any, p: Any, consts: Any) -> tuple[Any, Evaluation | None]:
        raise NotImplementedError

    def step(self, state: Any, p: Any, consts: Any) -> tuple[Any, Evaluation]:
        raise NotImplementedError

    def point(self, state: Any) -> Any:
        """The point `state` stands at, in `u0`'s structure."""
        raise NotImplementedError

    def steady(self, state: Any) -> jax.Array | None:
        """int32[3]: the iterations, fevals and gevals every iteration adds, if they never
        vary (no line search) and the method has no stopping test; else None."""
        return None

    def final(self, state: Any, p: Any, consts: Any) -> tuple[Any, jax.Array]:
        """(signed loss at `point(state)`, `counts(...)` of computing it)."""
        raise NotImplementedError

    def evaluated(self, before: Any, after: Any) -> Any:
        """The point the iteration from state `before` to `after` evaluated, if the states
        hold it (on the device and on the host), else None. The stepwise program then does
        not return it again, which would copy every leaf at every step."""
        return None

    # -- on the host

    def export(self, state: Any, steps: Any, best: tuple[Any, Any]) -> Any:
        """`sol.state` (what `warm_start` continues) from the state, the iterations over
        the warm-start chain and (best point or None, best loss)."""
        return state

    def restore(self, public: Any) -> tuple[Any, Any, tuple[Any, Any] | None]:
        """(state, steps, (best point, best loss) or None) from `export`'s result."""
        return public, 0, None

    def accepts(self, public: Any, fresh: Callable[[], Any]) -> bool:
        """Whether `public` (a solution's state) can continue a run whose fresh state
        exports to `fresh()` (shapes): same type, tree, and leaf shapes and dtypes."""
        return _same_kind(public, fresh())

    def host_evaluations(self) -> tuple[int, int]:
        """(fevals, gevals) counted on the host (by callbacks) since the last call."""
        return 0, 0

    def original(self, before: Any, after: Any, evaluation: Evaluation) -> Any:
        """A callback's `state.original` for the iteration from `before` to `after`."""
        return after

    def result(self, state: Any, consts: Any, extra: Any) -> Any:
        """`sol.original` from the final state, the constants and `run`'s extra output."""
        return state

    def note(self, state: Any) -> str:
        """Something the solution's message should add (e.g. how many values were NaN)."""
        return ""

    def verdict(self, status: int, state: Any, options: SolveOptions) -> tuple[ReturnCode, str]:
        """The return code and message of one of the method's status codes."""
        code, message = self.stops[status]
        return code, message.format(options=options, method=self)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a program compiles for besides the method and the shapes.

    Attributes:
        track_best: keep the best evaluated point in the carry.
        feed: the shape of a `DataLoader` walked inside the fused loop, or None.
        log: (size, every) of the carry's log of iterations, for a history; or None.
    """

    track_best: bool
    feed: LoaderShape | None
    log: tuple[int, int] | None = None


class Program:
    """The jitted functions of one (method, spec), built once per user function.

    - `init(u, p, consts, steps)`, `resume(state, steps, best)`: the first carry;
    - `step(carry, p, consts) -> (carry, evaluation, news)`: one iteration, the evaluation
      in the user's sign (`fun`, not `sign * fun`) without its loss, and `news`, all the
      host reads per step in one transfer: [objective, iterations added, status] (XLA
      copies a value returned twice, tens of µs a step);
    - `run(carry, limit, total, p, key, consts) -> (carry, extra)`: iterations until
      `limit` or a stop, then, at `total`, the loss at the final point; for a `DataLoader`,
      `p` is its arrays and `key` its key (or None);
    - `chunk(carry, n, p, consts, size)`: up to `n <= size` iterations of `step` on the same
      `p` (a run with a callback on its full data), stopping early at a stop; every
      iteration's carry, evaluation and news stacked along a leading axis of `size` (rows
      past the stop are left as zeros), and the last carry;
    - `row(rows, i)`: row `i` of `chunk`'s stacked carries, on the device;
    - `start(u, start_p, limit, total, p, key, consts)`: `init` and `run` in one program
      (a fresh fused run compiles one program, not two);
    - `final(carry, p, consts) -> carry`: the loss at the final point, recorded.
    """

    def __init__(self, method: DeviceMethod, spec: Spec, sign: float) -> None:
        self.method, self.spec, self.sign = method, spec, sign
        self.per_step: float | None = None  # seconds per iteration its last chunked run took
        self.init = jax.jit(self._init)
        self.resume = jax.jit(self._resume)
        self.step = jax.jit(self._step)
        self.chunk = jax.jit(self._chunk, static_argnames="size")
        self.row = jax.jit(lambda rows, i: jax.tree.map(lambda a: a[i], rows))
        self.run = jax.jit(self._run)
        self.start = jax.jit(self._start)
        self.final = jax.jit(self._final)

    def _resume(self, state: Any, steps: Any, best: tuple[Any, Any] | None = None) -> Carry:
        losses, best_u = jnp.full(3, jnp.inf, loss_dtype()), None
        if self.spec.track_best or self.method.search:
            best_u = jax.tree.map(jnp.zeros_like, self.method.point(state))
            if best is not None:
                best_u, losses = best[0], losses.at[BEST].set(best[1])
        log = None
        if self.spec.log is not None:
            size, every = self.spec.log
            log = (
                jnp.zeros(size, loss_dtype()), jnp.zeros(size, jnp.int32),
                jax.tree.map(lambda x: jnp.zeros((size // every, *x.shape), x.dtype),
                             self.method.point(state)),
            )
        counts = jnp.zeros(5, jnp.int32).at[STEPS].set(steps)
        return Carry(state, counts, losses, best_u, log)

    def _init(self, u: Any, p: Any, consts: Any, steps: Any) -> tuple[Carry, Evaluation | None]:
        state, evaluation = self.method.init(u, p, consts)
        carry = self._resume(state, steps)
        if evaluation is None:
            return carry, None
        return self._record(carry, evaluation), self._users(evaluation)

    def _record(self, carry: Carry, ev: Evaluation) -> Carry:
        """Count `ev`, keep it if it is the best, and set the status (whole arrays built
        at once: in-place updates of `counts` and `losses` cost time every iteration)."""
        loss = ev.loss.astype(loss_dtype())
        finite = jnp.isfinite(loss)
        status = ev.status if self.method.search else jnp.where(finite, ev.status, NONFINITE)
        step = ev.counts
        counts = carry.counts + jnp.stack([step[0], *step, jnp.zeros((), jnp.int32)])
        counts = jnp.where(jnp.arange(5) == STATUS, status, counts)
        best_u, best = carry.best_u, carry.losses[BEST]
        if best_u is not None:
            better = finite & (loss < best)
            best_u = jax.tree.map(lambda new, old: jnp.where(better, new, old), ev.u, best_u)
            best = jnp.where(better, loss, best)
        losses = jnp.stack([loss, best, jnp.where(ev.at_state, loss, jnp.inf)])
        return carry._replace(counts=counts, losses=losses, best_u=best_u)

    def _iterate(self, carry: Carry, p: Any, consts: Any) -> tuple[Carry, Evaluation]:
        state, ev = self.method.step(carry.state, p, consts)
        carry = self._record(carry._replace(state=state), ev)
        if carry.log is not None:
            carry = carry._replace(log=self._log(carry, ev))
        return carry, ev

    def _log(self, carry: Carry, ev: Evaluation) -> Any:
        """`carry.log` with the iteration just recorded."""
        (size, every), (losses, fevals, points) = self.spec.log, carry.log
        done = carry.counts[ITERATIONS]
        row = (done - 1) % size

        def keep(points):
            def put(rows, x):
                x = x.astype(rows.dtype)
                return jax.lax.dynamic_update_index_in_dim(rows, x, row // every, 0)

            return jax.tree.map(put, points, ev.u)

        points = jax.lax.cond(done % every == 0, keep, lambda points: points, points)
        return (losses.at[row].set(carry.losses[LAST]), fevals.at[row].set(carry.counts[FEVALS]),
                points)

    def _users(self, ev: Evaluation) -> Evaluation:
        sign = self.sign
        grad = None if ev.grad is None else jax.tree.map(lambda g: sign * g, ev.grad)
        return ev._replace(loss=sign * ev.loss, grad=grad)

    def _step(self, carry: Carry, p: Any, consts: Any) -> tuple[Carry, Evaluation, jax.Array]:
        after, ev = self._iterate(carry, p, consts)
        added = after.counts[ITERATIONS] - carry.counts[ITERATIONS]
        news = jnp.stack([self.sign * ev.loss, added, after.counts[STATUS]]).astype(loss_dtype())
        ev = self._users(ev)._replace(loss=None, counts=None, status=None, at_state=None)
        if self.method.evaluated(carry.state, after.state) is not None:  # read on the host
            ev = ev._replace(u=None)
        return after, ev, news

    def _chunk(self, carry: Carry, n: Any, p: Any, consts: Any, size: int) -> tuple[Any, Carry]:
        step = lambda c: self._step(c, p, consts)
        shapes = jax.eval_shape(step, carry)
        idle = lambda c: (c, *jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1:]))

        def body(c: Carry, i: Any) -> tuple[Carry, Any]:
            going = (i < n) & (c.counts[STATUS] == RUNNING)
            out = jax.lax.cond(going, step, idle, c)
            return out[0], out

        if jax.tree.structure(shapes[0]) == jax.tree.structure(carry):
            last, rows = jax.lax.scan(body, carry, jnp.arange(size))
            return rows, last
        # A fresh state its first iteration fills in (a gradient flow's solver state): that
        # iteration runs first (a chunk from a running carry makes at least one).
        first = step(carry)
        last, rows = jax.lax.scan(body, first[0], jnp.arange(1, size))
        stack = lambda a, b: jnp.concatenate([jnp.asarray(a)[None], b])
        return jax.tree.map(stack, first, rows), last

    def _final(self, carry: Carry, p: Any, consts: Any) -> Carry:
        loss, step = self.method.final(carry.state, p, consts)
        counts = carry.counts.at[FEVALS].add(step[1]).at[GEVALS].add(step[2])
        return carry._replace(counts=counts, losses=carry.losses.at[FINAL].set(loss))

    def _finish(self, carry: Carry, p: Any, consts: Any, total: Any) -> Carry:
        """Record the loss at the final point, unknown yet, once `total` iterations are done
        or a stopping test passed (not at the end of a chunk, or at a non-finite value)."""
        if self.method.search:
            return carry
        c = carry.counts
        ended = (c[STATUS] >= FIRST_STOP) | ((c[STATUS] == RUNNING) & (c[ITERATIONS] >= total))
        due = ended & ~jnp.isfinite(carry.losses[FINAL])
        return jax.lax.cond(due, lambda c: self._final(c, p, consts), lambda c: c, carry)

    def _start(self, u, start_p, limit, total, p, key, consts) -> tuple[Carry, Any]:
        """`init` (with `start_p`), then `run`: a fresh run in one program."""
        carry = self._init(u, start_p, consts, 0)[0]
        return self._run(carry, limit, total, p, key, consts)

    def _run(self, carry, limit, total, p, key, consts) -> tuple[Carry, Any]:
        if self.method.run is not None:  # the method's own loop
            n = limit - carry.counts[ITERATIONS]
            state, ev, extra = self.method.run(carry.state, p, consts, n)
            return self._record(carry._replace(state=state), ev), extra

        def going(c):
            return (c.counts[STATUS] == RUNNING) & (c.counts[ITERATIONS] < limit)

        carry = fused(
            self.spec.feed, carry, p, key,
            iterate=lambda c, b: self._iterate(c, b, consts)[0],
            finish=lambda c, b: self._finish(c, b, consts, total),
            going=going,
            position=lambda c: c.counts[STEPS],
        )
        return carry, None


def _same_kind(given: Any, fresh: Any) -> bool:
    """`given` has `fresh`'s type, tree structure, and leaf shapes and dtypes (arrays) or
    values (anything else)."""
    if type(given) is not type(fresh):
        return False
    a, tree_a = jax.tree.flatten(given)
    b, tree_b = jax.tree.flatten(fresh)
    if tree_a != tree_b:
        return False
    for x, y in zip(a, b):
        if hasattr(y, "shape") and hasattr(y, "dtype"):
            if np.shape(x) != tuple(y.shape) or jnp.result_type(x) != y.dtype:
                return False
        elif x != y:
            return False
    return True
