"""Data parallelism: `DataLoader(devices=...)` on one device here, four forced CPU devices
in a subprocess (`local_devices.py`), and two processes under `jax.distributed`
(`fit_distributed.py`)."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from fit_distributed import BATCH, EPOCHS, mse, params0, samples

import optiframe as opf

HERE = pathlib.Path(__file__).resolve().parent
TOL = 1e-5  # float32 reduction order, see local_devices.py


def test_one_device_needs_no_mesh():
    x = np.zeros((10, 2))
    assert opf.DataLoader(x, 5).mesh is None and "devices=1" in repr(opf.DataLoader(x, 5))
    assert opf.DataLoader(x, 5, devices=1).mesh is None


@pytest.mark.parametrize("devices, fix", [
    (0, "pass a count from 1 to 1"),
    (2, "pass a count from 1 to 1"),
    ("all", "pass 'auto', None"),
    ([0, 1], "pass 'auto', None"),
    ([jax.devices()[0]] * 2, "distinct devices"),
])
def test_bad_devices_are_refused(devices, fix):
    with pytest.raises(opf.InvalidProblemError, match="DataLoader.devices=") as error:
        opf.DataLoader(np.zeros((10, 2)), 5, devices=devices)
    assert fix in str(error.value)


def test_four_local_devices(tmp_path):
    """local_devices.py's tests, run where JAX sees four CPU devices."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 --xla_dump_to={tmp_path} "
                     "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit__start",
        "OPTIFRAME_HLO_DUMP": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "local_devices.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The results of `fit_distributed.py` in two processes of one JAX runtime."""
    out = tmp_path_factory.mktemp("distributed")
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "fit_distributed.py"), port, str(i), str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    try:
        logs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    results = [dict(np.load(out / f"process{i}.npz")) for i in range(2)]
    for result, log in zip(results, logs):
        result["log"] = log
    return out, results


def _ravel(tree):
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def test_two_processes_end_with_the_same_result(two_processes):
    _, (first, second) = two_processes
    assert list(first["mesh"]) == [2, 2]  # two processes of two devices
    names = ("fused", "fused_plain", "stopped", "resumed", "resume_error", "warm", "full",
             "scipy", "nevergrad", "unequal")
    for name in names:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_two_processes_match_one_process_on_the_concatenated_data(two_processes):
    """A global batch is process 0's batch then process 1's: on one process, the loader
    over the data in that order."""
    _, (first, _) = two_processes
    (x0, y0), (x1, y1) = samples(0), samples(1)
    order = lambda a, b: np.concatenate([a[:BATCH], b[:BATCH], a[BATCH:], b[BATCH:]])
    loader = opf.DataLoader((order(x0, x1), order(y0, y1)), batch_size=2 * BATCH)
    prob = opf.OptimizationProblem(mse, params0(), loader)
    losses = []
    sol = opf.solve(prob, optax.adam(1e-2), epochs=EPOCHS,
                    callback=lambda state, loss: losses.append(loss))
    np.testing.assert_allclose(first["fused"], _ravel(sol.u), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(first["fused_plain"], _ravel(sol.u), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(first["seen"], losses, rtol=TOL)
    full = opf.OptimizationProblem(mse, params0(), (np.concatenate([x0, x1]),
                                                    np.concatenate([y0, y1])))
    sol = opf.solve(full, optax.adam(1e-2), maxiters=20)
    np.testing.assert_allclose(first["full"], _ravel(sol.u), rtol=TOL, atol=TOL)


def test_process_0_alone_calls_back_and_records_and_stops_everyone(two_processes):
    out, (first, second) = two_processes
    iterations = EPOCHS * 2
    assert len(first["seen"]) == iterations and len(second["seen"]) == 0
    assert "optiframe: 100%" in first["log"] and "optiframe:" not in second["log"]  # the bar
    (run,) = opf.read_history(out / "run.sqlite")  # one run: process 0's
    np.testing.assert_array_equal(run.objective_trace, first["seen"])
    assert list(first["stopped"]) == list(second["stopped"]) == ["3", "Terminated"]


def test_processes_with_loaders_of_other_sizes_are_refused(two_processes):
    _, (first, _) = two_processes
    assert "every process must give the same number of samples" in str(first["unequal"])


def test_each_process_resumes_with_its_own_data(two_processes):
    _, (first, _) = two_processes
    assert "each process resumes with its own data" in str(first["resume_error"])
    assert first["resumed_iterations"] == 2 * EPOCHS - 3
    np.testing.assert_allclose(first["resumed"], first["fused"], rtol=TOL, atol=TOL)


def test_host_algorithms_refuse_p_spread_over_processes(two_processes):
    _, (first, _) = two_processes
    for name in ("scipy", "nevergrad"):
        message = str(first[name])
        assert "does not support data spread over the processes of jax.distributed" in message
        assert "give every process all of p" in message and "'adam'" in message
