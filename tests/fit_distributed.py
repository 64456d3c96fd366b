"""Fits that test_devices.py runs under `jax.distributed`: one process of a two-process
runtime on 127.0.0.1 with gloo collectives, two forced CPU devices each.

`python fit_distributed.py PORT PROCESS OUT` saves the process's results to
`OUT/process{PROCESS}.npz`. Each process holds its own 64 samples (`samples(process)`).
"""

import os
import sys

import jax

PROCESSES, LOCAL_SAMPLES, BATCH, EPOCHS = 2, 64, 32, 5


def samples(process: int) -> tuple:
    """This process's (x (64, 3), y (64, 1))."""
    import numpy as np

    rng = np.random.default_rng(process)
    x = rng.normal(size=(LOCAL_SAMPLES, 3)).astype(np.float32)
    return x, np.sin(x.sum(1, keepdims=True))


def mse(params, batch):
    import jax.numpy as jnp

    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def params0() -> dict:
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": 0.5 * jax.random.normal(k1, (3, 16)), "b1": jnp.zeros(16),
            "w2": 0.5 * jax.random.normal(k2, (16, 1))}


def main(port: str, process: int, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before JAX starts
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=PROCESSES,
                               process_id=process)
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import optiframe as opf

    loader = opf.DataLoader(samples(process), batch_size=BATCH)
    results = {"mesh": loader.mesh.devices.shape}
    prob = opf.OptimizationProblem(mse, params0(), loader)
    history = os.path.join(out, "run.sqlite")
    seen = []
    sol = opf.solve(prob, optax.adam(1e-2), epochs=EPOCHS, history=history,
                    progress=True, callback=lambda state, loss: seen.append(loss))
    results["fused"] = jax.flatten_util.ravel_pytree(sol.u)[0]
    results["seen"] = np.array(seen)
    sol = opf.solve(prob, optax.adam(1e-2), epochs=EPOCHS)  # fused, no callback
    results["fused_plain"] = jax.flatten_util.ravel_pytree(sol.u)[0]
    results["fused_plain_objective"] = sol.objective
    # the callback of process 0 stops every process; each resumes with its own data
    stopped = os.path.join(out, "stopped.sqlite")
    sol = opf.solve(prob, optax.adam(1e-2), epochs=EPOCHS, history=stopped,
                    callback=lambda state, loss: state.iter == 3)
    results["stopped"] = (sol.stats.iterations, sol.retcode.name)
    try:
        opf.resume(stopped)
    except opf.OptiframeError as error:
        results["resume_error"] = str(error)
    going = lambda state, loss: False
    resumed = opf.resume(stopped, prob, callback=going)
    results["resumed"] = jax.flatten_util.ravel_pytree(resumed.u)[0]
    results["resumed_iterations"] = resumed.stats.iterations
    # warm start from a result
    sol = opf.solve(prob, optax.adam(1e-2), epochs=2, warm_start=sol)
    results["warm"] = jax.flatten_util.ravel_pytree(sol.u)[0]
    # full data: p sharded over both processes, evaluated where it lies
    spread = NamedSharding(loader.mesh, P(("hosts", "data")))
    global_p = jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(spread, a), samples(process)
    )
    full = opf.OptimizationProblem(mse, params0(), global_p)
    sol = opf.solve(full, optax.adam(1e-2), maxiters=20)
    results["full"] = jax.flatten_util.ravel_pytree(sol.u)[0]
    for name, alg in (("scipy", opf.LBFGSB()), ("nevergrad", "nevergrad:OnePlusOne")):
        try:
            opf.solve(full, alg, maxiters=10)
        except opf.UnsupportedFeatureError as error:
            results[name] = str(error)
    try:  # process 1 gives half as many samples: both processes refuse
        opf.DataLoader([a[: LOCAL_SAMPLES - 32 * process] for a in samples(process)], BATCH)
    except opf.InvalidProblemError as error:
        results["unequal"] = str(error)
    np.savez(os.path.join(out, f"process{process}.npz"), **{
        k: np.asarray(v) for k, v in results.items()
    })
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
