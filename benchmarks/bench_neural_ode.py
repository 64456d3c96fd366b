"""The neural-ODE example's quality over seeds, and its L-BFGS phase on two backends.

1. Seeds: the example's default schedule (Adam(1e-3) for 25 epochs of 8-point windows,
   25 iterations of L-BFGS-B on the full data, Adam(5e-3) for 1,500 iterations keeping the
   best iterate) for seeds 0–9; prints the full-data MSE after each phase and how many
   seeds reach the Julia tutorial's 9.25e-3. Target: at least 9 of 10.
2. L-BFGS: 25 iterations from the same Adam result with `optax.lbfgs()` (the whole phase
   on the device) and with SciPy's L-BFGS-B (host round trips, JAX value-and-gradient),
   side by side: the first call (tracing and compiling included) and the median of
   `--repeats` warm calls.

Run: `python benchmarks/bench_neural_ode.py` (a few minutes on two CPU cores), or
`--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time

import optax

import optiframe as opf

JULIA_LOSS = 9.25e-3
_EXAMPLE = (
    pathlib.Path(__file__).resolve().parent.parent / "examples" / "neural_ode_lotka_volterra.py"
)


def load_example():
    spec = importlib.util.spec_from_file_location("neural_ode_lotka_volterra", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def seeds(example, count: int, final_iters: int) -> int:
    print(f"\nDefault schedule, seeds 0-{count - 1} (full-data MSE after each phase)")
    print(f"{'seed':>4} {'Adam':>10} {'L-BFGS-B':>10} {'final':>10} {'seconds':>8}")
    reached = 0
    for seed in range(count):
        tic = time.perf_counter()
        result = example.fit(seed, final_iters=final_iters, verbose=False)
        losses = result["losses"]
        reached += losses["final"] <= JULIA_LOSS
        print(
            f"{seed:>4} {losses['adam']:>10.3e} {losses['lbfgs']:>10.3e} "
            f"{losses['final']:>10.3e} {time.perf_counter() - tic:>8.1f}"
        )
    print(f"{reached}/{count} seeds reach <= {JULIA_LOSS:g} (target: at least 9 of 10)")
    return reached


def lbfgs(example, repeats: int, iters: int) -> dict[str, tuple[float, float, float]]:
    """{backend: (first call s, median warm call s, final loss)}."""
    u, t = example.make_data()
    loader = opf.DataLoader((u, t), batch_size=8)
    prob = opf.OptimizationProblem(
        example.OBJECTIVE, example.init_mlp(example.jax.random.key(0)), loader
    )
    adam = opf.solve(prob, optax.adam(1e-3), epochs=25)
    full = prob.remake(u0=adam.u, p=(u, t))
    out = {}
    for name, make in (("optax.lbfgs", optax.lbfgs), ("SciPy L-BFGS-B", opf.LBFGSB)):
        tic = time.perf_counter()
        sol = opf.solve(full, make(), maxiters=iters)
        first = time.perf_counter() - tic
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            sol = opf.solve(full, make(), maxiters=iters)
            times.append(time.perf_counter() - tic)
        out[name] = (first, statistics.median(times), sol.objective)
    print(f"\nL-BFGS phase: {iters} iterations on the full data, from the same Adam result")
    print(f"{'backend':<16} {'first call s':>12} {'median warm ms':>15} {'loss':>10}")
    for name, (first, warm, loss) in out.items():
        print(f"{name:<16} {first:>12.2f} {1e3 * warm:>15.1f} {loss:>10.3e}")
    return out


def main(argv: list[str] | None = None) -> tuple[int, dict[str, tuple[float, float, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, short phases")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    example = load_example()
    print(f"JAX backend: {example.jax.default_backend()}")
    count, final_iters, repeats, iters = (
        (1, 20, 1, 3) if args.quick else (10, 1500, args.repeats, 25)
    )
    reached = seeds(example, count, final_iters)
    return reached, lbfgs(example, repeats, iters)


if __name__ == "__main__":
    main()
