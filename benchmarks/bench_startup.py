"""Time to a first result: fresh processes, side by side, each solving one small problem.

Problem: the 5-D Rosenbrock function from u0 = 0 with L-BFGS-B. Every contender runs in a
fresh Python process (`--runs` of each, interleaved; medians reported):

  raw      NumPy objective, `scipy.optimize.minimize(method="L-BFGS-B")` with finite
           differences (the baseline: no compiler anywhere);
  opf      `opf.OptimizationProblem(rosenbrock, np.zeros(5))` and `opf.solve(prob,
           opf.LBFGSB())`, JAX gradients, JAX's persistent cache off;
  cached   the same with `opf.enable_compilation_cache(dir)`, in a process that runs after
           one that filled the cache (the same script run a second time);
  jax      the floor of any JAX frontend, for information: a hand-written
           `jax.jit(jax.value_and_grad(rosenbrock))` (float64) fed to the same `minimize`
           with `jac=True`, cache off;
  jax-c    the same with JAX's persistent cache on, filled by an earlier process.

Reported per process: `import jax` and `import optiframe` (after jax); importing
`scipy.optimize` (both contenders need it; it is timed apart, so that the solve times
compare the work); construction; the first and the second solve. Targets, against raw
SciPy's first solve in the same run: opf's construction plus first solve <= 6x; cached's
<= 2x; `import optiframe` <= 0.1x `import jax`.

Run: `python benchmarks/bench_startup.py` (about half a minute), `--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
kind = sys.argv[1]
out = {}
if kind == "raw":
    import numpy as np
    t1 = time.perf_counter()
    import scipy.optimize
    t2 = time.perf_counter()

    def rosenbrock(u):
        return float(np.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2))

    t3 = time.perf_counter()
    x0 = np.zeros(5)
    t4 = time.perf_counter()
    first = scipy.optimize.minimize(rosenbrock, x0, method="L-BFGS-B")
    t5 = time.perf_counter()
    scipy.optimize.minimize(rosenbrock, x0, method="L-BFGS-B")
    t6 = time.perf_counter()
    out.update(import_numpy=t1 - t0, objective=first.fun)
elif kind in ("jax", "jax-c"):
    import jax
    t1 = time.perf_counter()
    out.update(import_jax=t1 - t0)
    jax.config.update("jax_enable_x64", True)
    if kind == "jax-c":
        jax.config.update("jax_compilation_cache_dir", sys.argv[2])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    t1 = time.perf_counter()
    import numpy as np
    import scipy.optimize
    import jax.numpy as jnp
    t2 = time.perf_counter()

    def rosenbrock(u):
        return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)

    t3 = time.perf_counter()
    value_and_grad = jax.jit(jax.value_and_grad(rosenbrock))
    x0 = np.zeros(5)

    def fun(x):
        f, g = value_and_grad(x)
        return float(f), np.asarray(g)

    t4 = time.perf_counter()
    first = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B")
    t5 = time.perf_counter()
    scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B")
    t6 = time.perf_counter()
    out.update(objective=first.fun)
else:
    import jax
    t1 = time.perf_counter()
    import optiframe as opf
    out.update(import_jax=t1 - t0, import_optiframe=time.perf_counter() - t1)
    if kind == "cached":
        opf.enable_compilation_cache(sys.argv[2])
    t1 = time.perf_counter()
    import numpy as np
    import scipy.optimize
    import jax.numpy as jnp
    t2 = time.perf_counter()

    def rosenbrock(u, p):
        return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)

    t3 = time.perf_counter()
    prob = opf.OptimizationProblem(rosenbrock, np.zeros(5))
    t4 = time.perf_counter()
    first = opf.solve(prob, opf.LBFGSB())
    t5 = time.perf_counter()
    opf.solve(prob, opf.LBFGSB())
    t6 = time.perf_counter()
    out.update(objective=first.objective)
out.update(import_scipy=t2 - t1, construction=t4 - t3, first=t5 - t4, second=t6 - t5)
print(json.dumps(out))
"""


def run_child(kind: str, cache: str = "") -> dict[str, float]:
    args = [sys.executable, "-c", CHILD, kind] + ([cache] if cache else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[tuple[str, float, bool]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each, for a smoke run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    kinds = ("raw", "opf", "cached", "jax", "jax-c")
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as jax_cache:
        caches = {"cached": cache, "jax-c": jax_cache}
        for kind, folder in caches.items():
            run_child(kind, folder)  # fills the cache: the script's first run
        for _ in range(runs):
            for kind in results:
                results[kind].append(run_child(kind, caches.get(kind, "")))
    med = {
        kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for kind, rows in results.items()
    }
    print(f"5-D Rosenbrock, L-BFGS-B, fresh processes, medians of {runs}")
    columns = ("import", "scipy.opt", "construct", "1st solve", "2nd solve")
    header = f"{'':<8} {columns[0]:>9} " + " ".join(f"{c:>10}" for c in columns[1:])
    print(header + "\n" + "-" * len(header))
    for kind, m in med.items():
        imported = m.get("import_optiframe", m.get("import_numpy", m.get("import_jax")))
        print(f"{kind:<8} {1e3 * imported:>7.1f}ms {1e3 * m['import_scipy']:>8.1f}ms "
              f"{1e3 * m['construction']:>8.2f}ms {1e3 * m['first']:>8.1f}ms "
              f"{1e3 * m['second']:>8.2f}ms")
    raw = med["raw"]["construction"] + med["raw"]["first"]
    rows = []
    for name, ratio, target in (
        ("import optiframe / import jax",
         med["opf"]["import_optiframe"] / med["opf"]["import_jax"], 0.1),
        ("opf construction + first solve / raw", (
            med["opf"]["construction"] + med["opf"]["first"]) / raw, 6.0),
        ("cached construction + first solve / raw", (
            med["cached"]["construction"] + med["cached"]["first"]) / raw, 2.0),
    ):
        met = ratio <= target
        rows.append((name, ratio, met))
        print(f"  {name:<42} {ratio:>6.2f}  target <= {target:<4} {'PASS' if met else 'MISS'}")
    for kind in ("jax", "jax-c"):  # what no JAX frontend can go below
        floor = (med[kind]["construction"] + med[kind]["first"]) / raw
        print(f"  {'floor: hand-written ' + kind + ' / raw':<42} {floor:>6.2f}  (information)")
    print(f"\n{sum(ok for _, _, ok in rows)}/{len(rows)} targets met")
    return rows


if __name__ == "__main__":
    main()
