"""What data parallelism costs: `opf.solve` on a `DataLoader` split over 1, 2 and 4 devices.

Workload: `bench_optax.py`'s 2-32-32-2 tanh MLP in float32, Adam(1e-3) on an MSE loss,
65,536 synthetic samples (its `make_data`), batch 4,096 (16 steps per epoch), shuffled,
`--epochs` epochs per call (default 6, i.e. 96 steps). The process forces four CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set below before JAX starts)
and times, side by side:

  H          a hand-written jitted loop on one device: a `lax.scan` over epochs that draws
             `jax.random.permutation(jax.random.fold_in(key, epoch), N)` and gathers each
             batch by index (`bench_optax.py`'s contender E);
  opf 1/2/4  `opf.solve(prob, adam, epochs=epochs)` on `DataLoader(..., devices=d)`: each
             batch split over d devices, parameters and optimizer state replicated,
             gradients all-reduced by XLA;
  H4         H on four devices, as JAX's sharding tutorial writes it: the arrays
             replicated, each batch constrained to be split over the devices
             (`with_sharding_constraint`), XLA partitioning the rest.

Every contender is called twice first (compiling it); what is timed is the whole call up
to `block_until_ready` on the parameters, in `--repeats` interleaved rounds; the table
gives the median steps per second and its ratios to H and to opf on one device. The 2- and
4-device parameters are checked against the 1-device ones (and those against H's).

There is no speed target: the forced devices share this machine's CPU cores (two here),
so the work cannot go faster with more of them; what the table shows is the overhead of
the sharded program (splitting each batch, the all-reduce, the devices' synchronisation).

Run: `python benchmarks/bench_data_parallel.py` (about 20 seconds on two CPU cores), or
with `--quick` for a smoke run of a few seconds.
"""

from __future__ import annotations

import os

# Four CPU devices; the count is fixed when JAX starts, so this comes before importing it.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=4"])
)

import argparse  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from bench_optax import (  # noqa: E402
    LEARNING_RATE,
    SIZES,
    Contender,
    _block,
    _max_diff,
    adam_step,
    init_mlp,
    make_data,
    measure,
    mse,
)
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optiframe as opf  # noqa: E402

BATCH_SIZE = 4096
DEVICES = (1, 2, 4)
# The devices sum their shares of each batch's loss and gradient in another order than one
# device does: a few float32 ulps a step, which Adam carries on (its steps are bounded by
# the learning rate; 1e-7 to 1e-6 here after 100 to 1,000 steps), hence a margin of ~100.
TOL = 1e-4


def hand_loop(
    arrays: tuple[jax.Array, jax.Array], epochs: int, devices: int = 1
) -> Callable[..., Any]:
    """The hand-written loop over `arrays` ((N, 2), (N, 2)): a jitted (params, key) ->
    params after `epochs` epochs. On several devices, as JAX's sharding tutorial writes
    it: the arrays replicated, each gathered batch constrained to be split over the
    devices, XLA partitioning the rest."""
    n = arrays[0].shape[0]
    opt = optax.adam(LEARNING_RATE)
    step = adam_step(opt)
    split = lambda batch: batch
    if devices > 1:
        mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        arrays = jax.device_put(arrays, NamedSharding(mesh, P()))
        split = lambda batch: jax.lax.with_sharding_constraint(
            batch, NamedSharding(mesh, P("data"))
        )

    @jax.jit
    def run(params, key):
        def epoch_body(carry, epoch):
            order = jax.random.permutation(jax.random.fold_in(key, epoch), n)

            def batch_body(carry, take):
                batch = split(jax.tree.map(lambda a: jnp.take(a, take, axis=0), arrays))
                params, opt_state, _ = step(*carry, batch)
                return (params, opt_state), None

            carry, _ = jax.lax.scan(batch_body, carry, order.reshape(-1, BATCH_SIZE))
            return carry, None

        (params, _), _ = jax.lax.scan(epoch_body, (params, opt.init(params)), jnp.arange(epochs))
        return params

    return run


def contenders(n: int, epochs: int) -> list[Contender]:
    """H and opf on each of DEVICES, after checking that their parameters agree."""
    kdata, kinit = jax.random.split(jax.random.key(0))
    arrays = make_data(kdata, n)
    params0 = init_mlp(kinit)
    key = jax.random.key(1)
    opt = optax.adam(LEARNING_RATE)
    steps = epochs * (n // BATCH_SIZE)
    hand = hand_loop(arrays, epochs)
    hand_run = lambda: _block(hand(params0, key))
    hand_split = hand_loop(arrays, epochs, max(DEVICES))
    hand_split_run = lambda: _block(hand_split(params0, key))

    def opf_run(devices: int) -> Callable[[], Any]:
        loader = opf.DataLoader(arrays, BATCH_SIZE, shuffle=True, key=key, devices=devices)
        assert (loader.mesh is None) == (devices == 1), loader
        prob = opf.OptimizationProblem(mse, params0, loader)
        return lambda: _block(opf.solve(prob, opt, epochs=epochs).u)

    runs = {d: opf_run(d) for d in DEVICES}
    result = {d: run() for d, run in runs.items()}
    diff = _max_diff(result[1], hand_run())
    print(f"max |params| difference, opf 1 device vs H: {diff:.1e}")
    assert diff < TOL, diff
    diffs = [_max_diff(result[d], result[1]) for d in DEVICES[1:]]
    print(
        "max |params| difference vs opf on 1 device: "
        + ", ".join(f"{d} devices {x:.1e}" for d, x in zip(DEVICES[1:], diffs))
        + f" (tolerance {TOL:g}): {'agree' if max(diffs) < TOL else 'DISAGREE'}"
    )
    assert max(diffs) < TOL, diffs
    assert _max_diff(hand_split_run(), result[max(DEVICES)]) < TOL
    return [Contender("H  hand-written loop, 1 device", hand_run, steps)] + [
        Contender(f"opf.solve, {d} device{'s' * (d > 1)}", runs[d], steps) for d in DEVICES
    ] + [Contender(f"H{max(DEVICES)} hand-written, {max(DEVICES)} devices", hand_split_run,
                   steps)]


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    """Time the contenders and print the table; returns (name, ratio to H, ratio to opf on
    1 device) of each opf row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--samples", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per solve")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median taken)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.epochs, args.repeats = 8192, 2, 1
    if jax.local_device_count() < max(DEVICES):
        raise SystemExit("JAX started before XLA_FLAGS was set: run this file as a script.")

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, {jax.local_device_count()} "
        f"{jax.default_backend()} devices, {os.cpu_count()} CPU cores"
    )
    runs = contenders(args.samples, args.epochs)
    measure(runs, args.repeats, inner=1)
    hand, one = runs[0], runs[1]
    print(
        f"\nMLP {'-'.join(map(str, SIZES))} tanh float32, Adam({LEARNING_RATE:g}), "
        f"N={args.samples}, batch {BATCH_SIZE}, shuffled, {args.epochs} epochs = "
        f"{hand.steps} steps/call; median of {args.repeats} rounds"
    )
    header = (
        f"{'contender':<32} {'steps/s':>9} {'min-max steps/s':>17} {'ms/call':>8} "
        f"{'vs H':>6} {'vs opf 1':>8}"
    )
    print(header + "\n" + "-" * len(header))
    rows = []
    for c in runs:
        rates = c.rates
        to_hand, to_one = c.median_rate / hand.median_rate, c.median_rate / one.median_rate
        print(
            f"{c.name:<32} {c.median_rate:>9,.0f} {f'{min(rates):,.0f}-{max(rates):,.0f}':>17} "
            f"{1e3 * statistics.median(c.seconds):>8.1f} {to_hand:>6.3f} {to_one:>8.3f}"
        )
        if c.name.startswith("opf"):
            rows.append((c.name, to_hand, to_one))
    split = runs[-1]
    print(f"\nopf.solve on {max(DEVICES)} devices / the hand-written loop on as many: "
          f"{runs[-2].median_rate / split.median_rate:.3f}")
    return rows


if __name__ == "__main__":
    main()
