"""Time to a first result: a first solve compiles only its algorithm's programs (counted
with JAX's own monitoring, in a fresh process), building a problem compiles nothing, and
with the persistent cache a second process compiles nothing at all."""

import json
import subprocess
import sys

# XLA compilations of a first solve of a 5-D Rosenbrock from a NumPy u0, per algorithm: the
# algorithm's own programs (one fused value-and-gradient for a host method; `init` and the
# fused loop in one program on the device), and what the wrapped library compiles eagerly
# while it is traced (optimistix: 1, diffrax: 2). A count may go down, never up.
FIRST_SOLVE_COMPILES = {
    "LBFGSB": 1, "SLSQP": 1, "NelderMead": 1, "nevergrad:CMA": 1, "adam": 1,
    "optimistix:BFGS": 2, "RKAccelerated": 3,
}

SCRIPT = """
import json, sys
import jax, numpy as np, jax.numpy as jnp
import optiframe as opf
if len(sys.argv) > 2:
    opf.enable_compilation_cache(sys.argv[2])
events = []
jax.monitoring.register_event_duration_secs_listener(lambda name, *a, **k: events.append(name))
jax.monitoring.register_event_listener(lambda name, *a, **k: events.append(name))
count = lambda name: events.count(name)
COMPILE = "/jax/core/compile/backend_compile_duration"

def rosenbrock(u, p):
    return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)

out = {}
before = count(COMPILE)
prob = opf.OptimizationProblem(rosenbrock, np.zeros(5), lb=-2.0, ub=2.0)
free = opf.OptimizationProblem(rosenbrock, np.zeros(5))
out["construction"] = count(COMPILE) - before
for name in sys.argv[1].split(","):
    alg = getattr(opf, name, name)  # a class or factory (opf.LBFGSB), or a registered name
    alg = alg() if callable(alg) else alg
    needs_box = name.startswith("nevergrad")
    before = count(COMPILE), count("/jax/compilation_cache/cache_hits")
    opf.solve(prob if needs_box else free, alg, maxiters=30)
    out[name] = (count(COMPILE) - before[0], count("/jax/compilation_cache/cache_hits") - before[1])
print(json.dumps(out))
"""


def first_solves(names, cache=None):
    args = [sys.executable, "-c", SCRIPT, ",".join(names)] + ([str(cache)] if cache else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_first_solve_compiles_only_its_algorithm_s_programs():
    counts = first_solves(FIRST_SOLVE_COMPILES)
    assert counts.pop("construction") == 0
    for name, (compiles, hits) in counts.items():
        assert compiles <= FIRST_SOLVE_COMPILES[name], (name, compiles)
        assert hits == 0


def test_a_second_process_reads_every_program_from_the_persistent_cache(tmp_path):
    names = ["LBFGSB", "adam"]
    first = first_solves(names, tmp_path)
    second = first_solves(names, tmp_path)
    for name in names:
        compiled, _ = first[name]
        assert second[name][1] == compiled >= 1, (name, first, second)  # every one a hit
