"""The benchmark scripts run (at a smoke size) and their results agree with their baselines."""

import sys

from scripts import BENCHMARKS
from scripts import load as load_script


def load(name):
    return load_script(BENCHMARKS / f"{name}.py")


def test_optax_benchmark_smoke_run(capsys):
    rows = load("bench_optax").main(["--quick"])
    assert [name for name, _, _ in rows] == [
        "opf.solve fused",
        "opf.solve callback",
        "opf.solve loader (fused)",
    ]
    assert all(ratio > 0 for _, ratio, _ in rows)
    assert "targets met" in capsys.readouterr().out


def quick_run(name):
    """The output of `python benchmarks/NAME.py --quick`, in a subprocess: the benchmarks
    that turn on float64 do it for their whole process."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_scipy_benchmark_smoke_run():
    assert quick_run("bench_scipy").count("nfev identical: True") == 2


def test_neural_ode_benchmark_smoke_run(capsys):
    reached, lbfgs = load("bench_neural_ode").main(["--quick"])
    assert reached in (0, 1)
    assert set(lbfgs) == {"optax.lbfgs", "SciPy L-BFGS-B"}
    assert "seeds reach" in capsys.readouterr().out


def test_gradient_flow_benchmark_smoke_run(capsys):
    rows = load("bench_ode").main(["--quick"])
    by_method = {row.method: row for row in rows}
    assert {"Euler (dt=0.01)", "RKC (rtol=1e-3)", "L-BFGS-B (SciPy)"} <= set(by_method)
    for method in ("Euler (dt=0.01)", "Tsit5 (rtol=1e-6)", "RKC (rtol=1e-3)", "L-BFGS-B (SciPy)"):
        row = by_method[method]
        assert row.reached and row.best <= 1e-6 * 1.01 and row.gevals >= row.iterations
    assert "f - f* <= 1e-06" in capsys.readouterr().out


def test_nevergrad_benchmark_smoke_run(capsys):
    rows = load("bench_nevergrad").main(["--quick"])
    assert [name for name, _, _ in rows] == [
        "overhead CMA", "batching MLP 10k k=8", "batching MLP 10k, chunk=8 k=8"
    ]
    assert all(ratio > 0 for _, ratio, _ in rows)
    out = capsys.readouterr().out
    assert "ask/tell limit" in out and "targets met" in out


def test_ensemble_benchmark_smoke_run():
    out = quick_run("bench_ensemble")  # (its process pool starts workers that import it)
    for row in ("B / A (warm throughput)", "B vs L (warm)", "E / S (warm throughput)",
                "pool / serial"):
        assert row in out
    assert "targets met" in out


def test_history_benchmark_smoke_run():
    out = quick_run("bench_history")
    assert "with history" in out and "optimagic" in out and "targets met" in out


def test_startup_benchmark_smoke_run():
    out = quick_run("bench_startup")
    assert "import optiframe / import jax" in out and "targets met" in out
    assert "floor: hand-written jax / raw" in out and "floor: hand-written jax-c / raw" in out


def test_data_parallel_benchmark_smoke_run():
    out = quick_run("bench_data_parallel")  # (it forces four CPU devices before JAX starts)
    for name in ("H  hand-written loop", "opf.solve, 1 device", "opf.solve, 2 devices",
                 "opf.solve, 4 devices"):
        assert name in out
    assert "(tolerance 0.0001): agree" in out


def test_l2o_benchmark_smoke_run():
    out = quick_run("bench_l2o")  # float64 for SciPy: its own process
    assert "meta-trained 3 meta-iterations" in out and "a step of one task" in out
    assert "SciPy defaults: evaluations" in out and "targets met" in out
