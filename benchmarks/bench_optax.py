"""Throughput of `opf.solve` with optax against hand-written JAX training loops.

Two workloads, both a 2-32-32-2 tanh MLP in float32 trained with Adam(1e-3) on an MSE loss
over synthetic data drawn from fixed PRNG keys:

1. Full batch (256 samples), `--steps` Adam steps (default 2000):
   A  a jitted `lax.scan` over the steps, carrying (params, opt_state);
   B  a jitted `lax.while_loop` with a step counter and a loss-change test (`|dloss| <= 0`,
      which never fires), i.e. what a fused loop with a stopping rule must do;
   C  a Python loop around a jitted step, synchronising once at the end;
   D  the same loop pulling the loss to the host every step (`float(loss)`), as a
      per-step callback needs;
   D2 (for information, no target) as D, but the loss of step k is read after step k + 1
      has been dispatched (the overlap optiframe's stepwise driver uses on batches);
   opf.solve fused    `opf.solve(prob, adam, maxiters=steps)`, compared with A (target
      0.96x);
   opf.solve callback `opf.solve(..., callback=lambda state, loss: False)`, compared with D
      (target 1.5x): on full data optiframe computes chunks of iterations ahead in one
      call and shows them to the callback one by one while the next chunk runs.

2. Minibatches: an `opf.DataLoader` over 8,192 samples, batch 256, shuffled, `--epochs`
   epochs (default 10, i.e. 320 steps):
   E  a jitted `lax.scan` over epochs that draws
      `jax.random.permutation(jax.random.fold_in(key, epoch), N)` each epoch and gathers
      every batch by index inside the compiled loop (the loader's own order);
   opf.solve loader   `opf.solve(prob_loader, adam, epochs=epochs)`, compared with E (target
      0.96x).

Every contender is called twice before timing (the first call compiles), so compile time
is excluded everywhere; what is timed is the whole call (for optiframe the whole
`opf.solve`, with all its per-call work) up to `block_until_ready` on the result. The
optimizer object (`optax.adam(...)`) is built once and passed to every solve (an equal,
freshly built one would reuse the same compiled code: programs are keyed by the
transform's structure). The
contenders are timed in interleaved rounds, and each one reports the median steps per
second over `--repeats` rounds; a round of the minibatch workload runs `--inner` calls
back to back so that it lasts long enough to time. The optiframe results are checked
against the baselines' (same data, same init, same updates).

Run: `python benchmarks/bench_optax.py` (about a minute on two CPU cores), or with
`--quick` for a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optiframe as opf

SIZES = (2, 32, 32, 2)
LEARNING_RATE = 1e-3
FULL_BATCH = 256
NUM_SAMPLES = 8192
BATCH_SIZE = 256


# --------------------------------------------------------------------------- the model


def init_mlp(key: jax.Array, sizes: tuple[int, ...] = SIZES) -> list[dict[str, jax.Array]]:
    """Glorot-normal weights and zero biases, float32."""
    params = []
    for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:])):
        scale = jnp.sqrt(2.0 / (fan_in + fan_out))
        w = scale * jax.random.normal(k, (fan_in, fan_out), jnp.float32)
        params.append({"w": w, "b": jnp.zeros(fan_out, jnp.float32)})
    return params


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def mse(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return jnp.mean((mlp(params, x) - y) ** 2)


def make_data(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Inputs ~ N(0, 1) in 2-D, a smooth 2-D target plus a little noise, float32."""
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n, 2), jnp.float32)
    y = jnp.stack([jnp.sin(2 * x[:, 0]) * jnp.cos(x[:, 1]), 0.5 * x[:, 0] * x[:, 1]], axis=1)
    return x, y + 0.05 * jax.random.normal(ke, y.shape, jnp.float32)


def adam_step(opt: optax.GradientTransformation) -> Callable[..., Any]:
    """(params, opt_state, batch) -> (params, opt_state, loss at the old params)."""

    def step(params, opt_state, batch):
        loss, grad = jax.value_and_grad(mse)(params, batch)
        updates, opt_state = opt.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Contender:
    """A workload runner: `run()` does `steps` optimizer steps and blocks on the result."""

    name: str
    run: Callable[[], Any]
    steps: int  # optimizer steps per call of `run`
    baseline: str | None = None  # name of the contender to compare with
    target: float | None = None  # minimum ratio of steps/s to the baseline's
    seconds: list[float] = dataclasses.field(default_factory=list)  # per call, each round

    @property
    def rates(self) -> list[float]:
        return [self.steps / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return self.steps / statistics.median(self.seconds)


def measure(contenders: list[Contender], repeats: int, inner: int) -> None:
    """Warm up (compile) every contender, then time `repeats` interleaved rounds of
    `inner` calls each; stores seconds per call in `Contender.seconds`."""
    for c in contenders:
        c.run()  # compiles
        c.run()  # first call on warm caches
    for _ in range(repeats):
        for c in contenders:
            tic = time.perf_counter()
            for _ in range(inner):
                c.run()
            c.seconds.append((time.perf_counter() - tic) / inner)


def print_table(title: str, contenders: list[Contender]) -> list[tuple[str, float, bool]]:
    """Print one table; return (name, ratio, passed) of every contender with a target."""
    by_name = {c.name: c for c in contenders}
    print(f"\n{title}")
    header = (
        f"{'contender':<34} {'steps/s':>10} {'min-max steps/s':>19} {'ms/call':>8} "
        f"{'vs':>3} {'ratio':>6} {'target':>7}  result"
    )
    print(header)
    print("-" * len(header))
    results = []
    for c in contenders:
        rates = c.rates
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        line = (
            f"{c.name:<34} {c.median_rate:>10,.0f} {spread:>19} "
            f"{1e3 * statistics.median(c.seconds):>8.2f}"
        )
        if c.baseline is not None:
            base = by_name[c.baseline]
            ratio = c.median_rate / base.median_rate
            passed = ratio >= c.target
            tag = base.name.split()[0]
            line += f" {tag:>3} {ratio:>6.3f} {c.target:>7.2f}  {'PASS' if passed else 'MISS'}"
            results.append((c.name, ratio, passed))
        print(line)
    return results


def _block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _max_diff(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# --------------------------------------------------------------------------- workloads


def full_batch_contenders(steps: int) -> list[Contender]:
    kdata, kinit = jax.random.split(jax.random.key(0))
    batch = make_data(kdata, FULL_BATCH)
    params0 = init_mlp(kinit)
    opt = optax.adam(LEARNING_RATE)
    step = adam_step(opt)

    @jax.jit
    def scan_run(params, batch):
        def body(carry, _):
            params, opt_state, _ = step(*carry, batch)
            return (params, opt_state), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return params, mse(params, batch)

    @jax.jit
    def while_run(params, batch):
        def cond(carry):
            i, _, _, prev, loss = carry
            return (i < steps) & ~(jnp.abs(loss - prev) <= 0.0)

        def body(carry):
            i, params, opt_state, _, prev_loss = carry
            params, opt_state, loss = step(params, opt_state, batch)
            return i + 1, params, opt_state, prev_loss, loss

        inf = jnp.asarray(jnp.inf, jnp.float32)
        init = (jnp.int32(0), params, opt.init(params), -inf, inf)
        i, params, _, _, _ = jax.lax.while_loop(cond, body, init)
        return i, params, mse(params, batch)

    init_state = jax.jit(opt.init)
    jit_step = jax.jit(step)

    def python_loop(sync: str):
        """sync: "end" (once), "step" (float(loss) each step), or "pipelined" (float(loss)
        of step k after step k + 1 is dispatched, as optiframe's stepwise driver does)."""

        def run():
            params, opt_state = params0, init_state(params0)
            pending = None
            for _ in range(steps):
                params, opt_state, loss = jit_step(params, opt_state, batch)
                if sync == "step":
                    float(loss)
                elif sync == "pipelined":
                    if pending is not None:
                        float(pending)
                    pending = loss
            if pending is not None:
                float(pending)
            return _block(params)

        return run

    prob = opf.OptimizationProblem(mse, params0, batch)
    no_callback = lambda state, loss: False

    def check() -> None:
        base_params, _ = _block(scan_run(params0, batch))
        i, while_params, _ = while_run(params0, batch)
        assert int(i) == steps, f"while_loop baseline stopped after {int(i)} of {steps} steps"
        for label, kw in (("fused", {}), ("callback", {"callback": no_callback})):
            sol = opf.solve(prob, opt, maxiters=steps, **kw)
            assert sol.stats.iterations == steps, (label, sol.stats.iterations)
            diff = _max_diff(sol.u, base_params)
            assert diff < 1e-4, f"opf.solve {label} differs from the scan baseline by {diff}"
        assert _max_diff(while_params, base_params) < 1e-4

    check()
    return [
        Contender("A  jitted lax.scan", lambda: _block(scan_run(params0, batch)), steps),
        Contender(
            "B  jitted lax.while_loop + tol", lambda: _block(while_run(params0, batch)), steps
        ),
        Contender("C  Python loop, jitted step", python_loop("end"), steps),
        Contender("D  Python loop + float(loss)", python_loop("step"), steps),
        Contender("D2 as D, pipelined one step", python_loop("pipelined"), steps),
        Contender(
            "opf.solve fused",
            lambda: _block(opf.solve(prob, opt, maxiters=steps).u),
            steps,
            baseline="A  jitted lax.scan",
            target=0.96,
        ),
        Contender(
            "opf.solve callback",
            lambda: _block(opf.solve(prob, opt, maxiters=steps, callback=no_callback).u),
            steps,
            baseline="D  Python loop + float(loss)",
            target=1.5,
        ),
    ]


def minibatch_contenders(epochs: int) -> list[Contender]:
    kdata, kinit = jax.random.split(jax.random.key(0))
    arrays = make_data(kdata, NUM_SAMPLES)
    params0 = init_mlp(kinit)
    shuffle_key = jax.random.key(1)
    opt = optax.adam(LEARNING_RATE)
    step = adam_step(opt)
    per_epoch = NUM_SAMPLES // BATCH_SIZE

    @jax.jit
    def epoch_scan(params, arrays, key):
        def epoch_body(carry, epoch):
            order = jax.random.permutation(jax.random.fold_in(key, epoch), NUM_SAMPLES)

            def batch_body(carry, take):
                batch = jax.tree.map(lambda a: jnp.take(a, take, axis=0), arrays)
                params, opt_state, _ = step(*carry, batch)
                return (params, opt_state), None

            carry, _ = jax.lax.scan(batch_body, carry, order.reshape(per_epoch, BATCH_SIZE))
            return carry, None

        carry = (params, opt.init(params))
        (params, _), _ = jax.lax.scan(epoch_body, carry, jnp.arange(epochs))
        return params

    loader = opf.DataLoader(arrays, batch_size=BATCH_SIZE, shuffle=True, key=shuffle_key)
    prob = opf.OptimizationProblem(mse, params0, loader)
    steps = epochs * per_epoch

    base_params = _block(epoch_scan(params0, arrays, shuffle_key))
    sol = opf.solve(prob, opt, epochs=epochs)
    assert sol.stats.iterations == steps, sol.stats.iterations
    diff = _max_diff(sol.u, base_params)
    assert diff < 1e-4, f"opf.solve (loader) differs from the epoch-scan baseline by {diff}"

    return [
        Contender(
            "E  jitted scan over epochs",
            lambda: _block(epoch_scan(params0, arrays, shuffle_key)),
            steps,
        ),
        Contender(
            "opf.solve loader (fused)",
            lambda: _block(opf.solve(prob, opt, epochs=epochs).u),
            steps,
            baseline="E  jitted scan over epochs",
            target=0.96,
        ),
    ]


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    """Run both workloads and print their tables; returns (name, ratio, passed) rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps")
    parser.add_argument("--epochs", type=int, default=10, help="minibatch epochs per solve")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median taken)")
    parser.add_argument("--inner", type=int, default=10, help="minibatch solves per timed round")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.epochs, args.repeats, args.inner = 50, 1, 2, 1

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"devices {jax.devices()}"
    )
    results = []

    full = full_batch_contenders(args.steps)
    measure(full, args.repeats, inner=1)
    results += print_table(
        f"MLP {'-'.join(map(str, SIZES))} tanh float32, full batch {FULL_BATCH}, "
        f"Adam({LEARNING_RATE:g}), {args.steps} steps/call; median of {args.repeats} rounds",
        full,
    )

    mini = minibatch_contenders(args.epochs)
    measure(mini, args.repeats, inner=args.inner)
    results += print_table(
        f"Minibatch: DataLoader N={NUM_SAMPLES}, batch {BATCH_SIZE}, shuffled, {args.epochs} "
        f"epochs = {mini[0].steps} steps/call; median of {args.repeats} rounds of "
        f"{args.inner} calls",
        mini,
    )
    missed = [name for name, _, passed in results if not passed]
    print(
        f"\n{len(results) - len(missed)}/{len(results)} targets met"
        + (f" (missed: {', '.join(missed)})" if missed else "")
    )
    return results


if __name__ == "__main__":
    main()
