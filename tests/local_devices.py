"""Data-parallel runs on four local devices. `test_devices.py` runs this file in a pytest
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4` (the device count is
fixed when JAX starts) and `--xla_dump_to=$OPTIFRAME_HLO_DUMP` (the compiled programs).

The sharded run is compared with the one-device run to TOL: the devices sum their shares
of each batch's loss and gradient in another order than one device does, which changes
float32 results by a few ulps a step (1e-7 here after 40 steps; 1e-8 in float64); Adam
carries those differences on, so the bound leaves a factor of ~100.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optiframe as opf

pytestmark = pytest.mark.skipif(
    jax.local_device_count() != 4, reason="runs on four local devices (see test_devices.py)"
)
TOL = 1e-5


def mse(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def data(n=256):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (n, 4))
    params = {"w1": 0.5 * jax.random.normal(k2, (4, 16)), "b1": jnp.zeros(16),
              "w2": 0.5 * jax.random.normal(k3, (16, 1))}
    return (x, jnp.sin(x.sum(1, keepdims=True))), params


def fit(devices, tmp_path, **keywords):
    arrays, params = data()
    loader = opf.DataLoader(arrays, 64, shuffle=True, key=jax.random.key(1), devices=devices)
    prob = opf.OptimizationProblem(mse, params, loader)
    path = tmp_path / f"{devices}.sqlite"
    sol = opf.solve(prob, optax.adam(1e-2), epochs=10, history=path, **keywords)
    (run,) = opf.read_history(path)
    return loader, sol, run.objective_trace


def close(a, b, tol=TOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_batches_split_over_the_devices_and_the_run_matches_one_device(tmp_path):
    loader, sol, losses = fit("auto", tmp_path)
    assert loader.mesh.devices.size == 4 and "devices=4" in repr(loader)
    single_loader, single, single_losses = fit(None, tmp_path)
    assert single_loader.mesh is None
    assert len(losses) == 40 and sol.stats.iterations == 40
    close(losses, single_losses)
    close(sol.u, single.u)
    # parameters and optimizer state replicated on every device
    for leaf in jax.tree.leaves((sol.u, sol.state)):
        if isinstance(leaf, jax.Array) and leaf.ndim:
            assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    batch = loader.batch(0, 0)
    assert batch[0].shape == (64, 4)
    assert sorted(s.index[0].start for s in batch[0].addressable_shards) == [0, 16, 32, 48]


def test_a_callback_sees_the_same_run(tmp_path):
    seen = {}
    for devices in ("auto", None):
        losses = seen[devices] = []
        fit(devices, tmp_path, callback=lambda state, loss, losses=losses: losses.append(loss))
    assert len(seen["auto"]) == 40
    close(seen["auto"], seen[None])


def test_the_second_solve_compiles_nothing():
    traces = []

    def counted(params, batch):
        traces.append(1)  # runs only while JAX traces
        return mse(params, batch)

    arrays, params = data()
    loader = opf.DataLoader(arrays, 64)
    prob = opf.OptimizationProblem(counted, params, loader)
    opf.solve(prob, optax.adam(1e-2), epochs=2)
    before = len(traces)
    sol = opf.solve(prob.remake(u0=jax.tree.map(lambda x: x + 0.1, params)), optax.adam(1e-2),
                    epochs=2)
    assert len(traces) == before and sol.stats.iterations == 8


def test_a_batch_that_does_not_divide_runs_on_one_device_or_is_refused():
    arrays, _ = data(250)  # the last batch of an epoch holds 250 - 3 * 64 = 58 samples
    assert opf.DataLoader(arrays, 64).mesh is None  # "auto": one device
    assert opf.DataLoader(arrays, 64, drop_last=True).mesh.devices.size == 4
    with pytest.raises(opf.InvalidProblemError, match="58 samples do not split evenly over 4"):
        opf.DataLoader(arrays, 64, devices=4)
    assert opf.DataLoader(arrays, 50, devices=2).mesh.devices.size == 2
    devices = jax.local_devices()[2:]
    assert list(opf.DataLoader(arrays, 50, devices=devices).mesh.devices.flat) == devices


def test_p_sharded_by_the_user_is_evaluated_where_it_lies():
    """The compiled run all-reduces the loss and gradient over the shards of p and never
    gathers p."""
    arrays, params = data()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    p = jax.device_put(arrays, NamedSharding(mesh, P("batch")))
    dump = pathlib.Path(os.environ["OPTIFRAME_HLO_DUMP"])
    before = set(dump.glob("*jit__start*after_optimizations.txt"))
    sol = opf.solve(opf.OptimizationProblem(mse, params, p), optax.adam(1e-2), maxiters=30)
    (program,) = set(dump.glob("*jit__start*after_optimizations.txt")) - before
    text = program.read_text()
    assert "all-reduce" in text and "all-gather" not in text
    assert sol.u["w1"].sharding.is_fully_replicated
    reference = opf.solve(opf.OptimizationProblem(mse, params, arrays), optax.adam(1e-2),
                          maxiters=30)
    close(sol.u, reference.u)


def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The history pickles the loader with its arrays and device count, and the resumed
    run continues on four devices, bit for bit (every run here steps one iteration per
    call, as a callback makes it: a fused loop may sum in another order)."""
    going = lambda state, loss: False
    _, whole, _ = fit("auto", tmp_path, callback=going)
    path = tmp_path / "stopped.sqlite"
    arrays, params = data()
    loader = opf.DataLoader(arrays, 64, shuffle=True, key=jax.random.key(1))
    prob = opf.OptimizationProblem(mse, params, loader)
    history = opf.History(path, checkpoint_every=10)  # and one where the run stops
    stopped = opf.solve(prob, optax.adam(1e-2), epochs=10, history=history,
                        callback=lambda state, loss: state.iter == 15)
    assert stopped.retcode is opf.ReturnCode.Terminated
    resumed = opf.resume(path, callback=going)
    assert resumed.stats.iterations == 40 - 15  # from the stopped run's last checkpoint
    for x, y in zip(jax.tree.leaves(resumed.u), jax.tree.leaves(whole.u)):
        np.testing.assert_array_equal(x, y)
    assert len(jax.tree.leaves(resumed.u)[0].sharding.device_set) == 4
