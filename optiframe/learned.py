"""`LearnedOptimizer`: an optax transform whose update is a small network applied to every
parameter (in the style of google/learned_optimization's per-parameter MLP optimizers).

For each parameter element the network sees 15 features: the gradient, the parameter,
momenta of the gradient at four decays, the gradient and a momentum divided by a running
RMS of the gradient (each of these 8 normalised by its RMS over the parameter's array),
and 7 features of the step count t (`tanh(t / timescale)`). Its outputs:

- `adam_residual(learning_rate)`: a log-magnitude m, and `update = -lr * a * exp(0.1 m)`,
  `a` Adam's direction (`optax.scale_by_adam`): Adam with a learned per-element step
  size. The network's last layer starts at zero, so the optimizer starts out equal to
  `optax.adam(lr)`, bit for bit.
- `mlp(step)`: from scratch, a direction d and a log-magnitude m, `update = -step * d *
  exp(m)`.

Past the horizon it was meta-trained on, a learned optimizer sees the step count as the
horizon: it goes on as it ended its training runs, instead of meeting step counts it
never saw (on the sine family of `examples/learned_optimizer.py` this kept it at 0.75x
Adam's loss at three times its horizon, where handing over to plain Adam gave 1.25x).

The network's weights `theta` live in the optimizer's state, so the update is a pure
function of the state: `meta_train` differentiates through it, and a warm start carries
them on.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import InvalidProblemError

DECAYS = (0.5, 0.9, 0.99, 0.999)  # of the gradient momenta
RMS_DECAY = 0.999  # of the running mean of the squared gradient
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # steps
FEATURES = 8 + len(TIMESCALES)
HIDDEN = (32, 32)
OUTPUTS = {"adam_residual": 1, "mlp": 2}  # (m,) or (d, m)
MAGNITUDE = 0.1  # adam_residual's step-size factor is exp(MAGNITUDE * m)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a learned optimizer computes from its network's output.

    Attributes:
        kind: "adam_residual" or "mlp".
        learning_rate: Adam's learning rate (adam_residual) or the step scale (mlp).
        horizon: steps it was meta-trained for; past them the network sees the step count
            as `horizon` (None: the true count).
    """

    kind: str
    learning_rate: float
    horizon: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTPUTS:
            raise InvalidProblemError(
                f"`LearnedOptimizer` kind must be one of {tuple(OUTPUTS)}."
            )
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidProblemError(
                f"`LearnedOptimizer(learning_rate={self.learning_rate!r})` must be a positive "
                "number."
            )
        if self.horizon is not None and not (
            isinstance(self.horizon, (int, np.integer)) and self.horizon >= 1
        ):
            raise InvalidProblemError(
                f"`LearnedOptimizer(horizon={self.horizon!r})` must be a positive integer or "
                "None."
            )


class LearnedState(NamedTuple):
    """A learned optimizer's state.

    Attributes:
        theta: the network's weights.
        count: int32, the steps taken.
        momenta: per decay of `DECAYS`, a pytree like the params.
        rms: the running mean of the squared gradient, like the params.
        adam: `optax.scale_by_adam`'s state (adam_residual), else None.
    """

    theta: Any
    count: jax.Array
    momenta: tuple[Any, ...]
    rms: Any
    adam: Any


def init_theta(key: jax.Array, kind: str) -> dict[str, jax.Array]:
    """The network's first weights: LeCun-normal layers; the last layer zero for
    adam_residual (it starts as Adam), small for mlp."""
    sizes = (FEATURES, *HIDDEN, OUTPUTS[kind])
    keys = jax.random.split(key, len(sizes) - 1)
    theta = {}
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        scale = (0.0 if kind == "adam_residual" else 1e-2) if last else 1 / np.sqrt(n_in)
        theta[f"w{i}"] = scale * jax.random.normal(k, (n_in, n_out), jnp.float32)
        theta[f"b{i}"] = jnp.zeros(n_out, jnp.float32)
    return theta


def _network(theta: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """(..., FEATURES) -> (..., outputs), a ReLU MLP."""
    layers = len(theta) // 2
    for i in range(layers):
        x = x @ theta[f"w{i}"] + theta[f"b{i}"]
        if i < layers - 1:
            x = jax.nn.relu(x)
    return x


def _normalised(x: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x)) + 1e-12)


def _features(g, p, momenta, rms, t) -> jax.Array:
    """(*g.shape, FEATURES) for one parameter array."""
    scale = jax.lax.rsqrt(rms + 1e-12)
    own = [g, p, *momenta, g * scale, momenta[1] * scale]
    own = [_normalised(x.astype(jnp.float32)) for x in own]
    clock = jnp.tanh(t.astype(jnp.float32) / jnp.asarray(TIMESCALES, jnp.float32))
    clock = jnp.broadcast_to(clock, (*g.shape, len(TIMESCALES)))
    return jnp.concatenate([jnp.stack(own, axis=-1), clock], axis=-1)


def _init(rule: Rule, theta: Any, params: Any) -> LearnedState:
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    adam = optax.scale_by_adam().init(params) if rule.kind == "adam_residual" else None
    return LearnedState(
        theta=theta, count=jnp.zeros((), jnp.int32),
        momenta=tuple(zeros() for _ in DECAYS), rms=zeros(), adam=adam,
    )


def _update(rule: Rule, grads: Any, state: LearnedState, params: Any = None, **extra: Any
            ) -> tuple[Any, LearnedState]:
    if params is None:
        raise InvalidProblemError("A LearnedOptimizer's update needs the params.")
    momenta = tuple(
        jax.tree.map(lambda m, g, b=b: b * m + (1 - b) * g, ms, grads)
        for b, ms in zip(DECAYS, state.momenta)
    )
    rms = jax.tree.map(lambda v, g: RMS_DECAY * v + (1 - RMS_DECAY) * g * g, state.rms, grads)
    t = state.count if rule.horizon is None else jnp.minimum(state.count, rule.horizon)
    adam, adam_state = None, None
    if rule.kind == "adam_residual":
        adam, adam_state = optax.scale_by_adam().update(grads, state.adam, params)

    # every element's features in one (N, FEATURES) matrix: one call of the network
    leaves, tree = jax.tree.flatten(grads)
    columns = [jax.tree.leaves(x) for x in (params, *momenta, rms)]
    features = [
        _features(g, p, ms, v, t).reshape(-1, FEATURES)
        for g, p, *ms, v in zip(leaves, *columns)
    ]
    out = _network(state.theta, jnp.concatenate(features))
    ends = np.cumsum([g.size for g in leaves])[:-1]
    adams = jax.tree.leaves(adam) if adam is not None else [None] * len(leaves)
    updates = []
    for g, a, o in zip(leaves, adams, jnp.split(out, ends)):
        o = o.reshape(*g.shape, -1).astype(g.dtype)
        if a is None:
            updates.append((-rule.learning_rate) * o[..., 0] * jnp.exp(o[..., 1]))
        else:  # Adam's update, as optax computes it, plus a correction that is 0 at m = 0
            correction = a * jnp.expm1(MAGNITUDE * o[..., 0])
            updates.append((-rule.learning_rate) * a + (-rule.learning_rate) * correction)
    count = state.count + 1
    return tree.unflatten(updates), LearnedState(state.theta, count, momenta, rms, adam_state)


class LearnedOptimizer(optax.GradientTransformationExtraArgs):
    """An optax transform whose update is a small per-parameter network (see the module's
    doc); an algorithm for `solve` like any optax transform.

    Build one with `LearnedOptimizer.adam_residual(learning_rate)` (starts equal to Adam)
    or `LearnedOptimizer.mlp()` (from scratch), train it with `opf.meta_train`, and keep it
    with `save(path)` / `LearnedOptimizer.load(path)`.

    Attributes:
        theta: the network's weights, a dict of float32 arrays.
        rule: `Rule` (kind, learning rate, horizon).
        training: what `meta_train` measured (`MetaTraining`), or None.
    """

    theta: Any
    rule: Rule
    training: Any

    def __new__(cls, theta: Any, rule: Rule, training: Any = None) -> LearnedOptimizer:
        expected = jax.tree.map(np.shape, init_theta(jax.random.key(0), rule.kind))
        if jax.tree.map(np.shape, theta) != expected:
            raise InvalidProblemError(
                "`LearnedOptimizer(theta=...)`: the network's weights must have the shapes "
                f"{expected}; build one with LearnedOptimizer.adam_residual(...) or .mlp()."
            )
        theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)
        self = super().__new__(
            cls, functools.partial(_init, rule, theta), functools.partial(_update, rule)
        )
        self.theta, self.rule, self.training = theta, rule, training
        return self

    @classmethod
    def adam_residual(cls, learning_rate: float = 1e-3, *, seed: int = 0) -> LearnedOptimizer:
        """Adam with a learned per-element step size; equal to `optax.adam(learning_rate)`
        until meta-trained."""
        rule = Rule("adam_residual", float(learning_rate))
        return cls(init_theta(jax.random.key(seed), rule.kind), rule)

    @classmethod
    def mlp(cls, step: float = 1e-3, *, seed: int = 0) -> LearnedOptimizer:
        """A learned optimizer from scratch: `update = -step * d * exp(m)`; no safety net
        (it is only as good as its meta-training)."""
        rule = Rule("mlp", float(step))
        return cls(init_theta(jax.random.key(seed), rule.kind), rule)

    def replace(self, **changes: Any) -> LearnedOptimizer:
        """A copy with `theta`, `training` or any `Rule` field (`horizon`, ...) replaced."""
        rule_changes = {k: v for k, v in changes.items() if k in ("kind", "learning_rate",
                                                                   "horizon")}
        rule = dataclasses.replace(self.rule, **rule_changes)
        return LearnedOptimizer(
            changes.get("theta", self.theta), rule, changes.get("training", self.training)
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the weights and the rule to one `.npz` file."""
        horizon = -1 if self.rule.horizon is None else self.rule.horizon
        np.savez(
            path, kind=self.rule.kind, learning_rate=self.rule.learning_rate,
            horizon=horizon, **{k: np.asarray(v) for k, v in self.theta.items()},
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LearnedOptimizer:
        """Read a learned optimizer `save` wrote."""
        try:
            with np.load(path) as data:
                fields = {k: data[k] for k in data.files}
            horizon = int(fields.pop("horizon"))
            rule = Rule(
                str(fields.pop("kind")), float(fields.pop("learning_rate")),
                None if horizon < 0 else horizon,
            )
        except (OSError, KeyError, ValueError) as error:
            raise InvalidProblemError(
                f"`LearnedOptimizer.load({os.fspath(path)!r})`: not a file "
                f"LearnedOptimizer.save wrote ({error})."
            ) from error
        return cls(fields, rule)

    def __repr__(self) -> str:
        horizon = "" if self.rule.horizon is None else f", horizon={self.rule.horizon}"
        trained = "" if self.training is None else f", meta-trained {self.training.iterations}"
        return (
            f"LearnedOptimizer.{self.rule.kind}({self.rule.learning_rate:g}{horizon}{trained})"
        )
