"""Every example runs, at a small size."""

import numpy as np
import pytest

import optiframe as opf
from scripts import EXAMPLES
from scripts import load as load_script


def load(name):
    return load_script(EXAMPLES / f"{name}.py")


def test_quickstart_runs_and_fits(capsys):
    result = load("quickstart").main(["--quick"])
    assert result["rosenbrock"] < 1e-6  # float32 limits L-BFGS-B here
    assert result["mlp"] < 0.1 * result["mlp_initial"]
    assert "L-BFGS" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_has_a_quick_mode(path):
    assert "--quick" in path.read_text()


def test_neural_ode_example_quick(tmp_path, capsys):
    result = load("neural_ode_lotka_volterra").main(
        ["--quick", "--output", str(tmp_path / "fit.png"), "--cache-dir", str(tmp_path / "jax")]
    )
    losses = result["losses"]
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    assert losses["lbfgs"] < losses["adam"]  # L-BFGS on the full data improves on Adam's fit
    assert np.isfinite(losses["final"]) and losses["final"] <= losses["lbfgs"]
    out = capsys.readouterr().out
    assert "final loss (full-data MSE, best iterate)" in out and "iteration     1" in out


def test_scipy_tutorial(tmp_path):
    out = load("scipy_tutorial").main(["--quick", "--output", str(tmp_path / "beale.png")])
    assert (tmp_path / "beale.png").stat().st_size > 10_000
    for sol in out["beale"].values():
        np.testing.assert_allclose(sol.u, [3.0, 0.5], atol=2e-3)
    for sol in out["portfolio"].values():
        assert float(np.sum(sol.u)) == pytest.approx(1.0, abs=1e-5)
    assert out["named"].u["x"] == pytest.approx(1.0, abs=1e-3)
    assert out["multistart"].retcode is not None and len(out["history"]) > 5


def test_advanced_optimizers(tmp_path):
    out = load("advanced_optimizers").main(["--quick", "--output", str(tmp_path / "o.png")])
    results = out["results"]
    assert len(results) == 13 and (tmp_path / "o.png").stat().st_size > 10_000
    assert all(np.isfinite(final) and len(history) > 0 for history, final in results.values())
    adam, tuned = out["chained"]
    assert tuned < adam


def test_gradient_free(tmp_path):
    out = load("gradient_free").main(["--quick", "--output", str(tmp_path / "gf.png")])
    assert (tmp_path / "gf.png").stat().st_size > 10_000
    np.testing.assert_array_equal(np.asarray(out["integers"].u), [2.0, -2.0, 4.0])
    np.testing.assert_allclose(np.asarray(out["host"].u), [1.0, -2.0], atol=1e-2)
    assert out["batched"].stats.fevals == 300
    assert all(curve[-1] <= curve[0] for curve in out["curves"].values())


def test_many_problems():
    out = load("many_problems").main(["--quick"])
    sweep = out["sweep"]
    assert len(sweep) == 50 and all(code.successful for code in sweep.retcodes)
    for i in (0, 49):  # the objective SciPy's L-BFGS-B reaches on the member alone
        alone = opf.solve(sweep.ensemble.member(i), opf.LBFGSB())
        assert sweep.objective[i] == pytest.approx(alone.objective, abs=1e-4)
    np.testing.assert_allclose(np.asarray(out["fits"].u), out["truth"], atol=0.1)
    assert len(out["multistart"].original) == 32 and out["multistart"].objective < 2.0
    assert out["host"].successful.all()


def test_resume_after_kill(tmp_path, capsys):
    out = load("resume_after_kill").main(
        ["--quick", "--output", str(tmp_path / "h.png"), "--path", str(tmp_path / "fit.sqlite")]
    )
    killed, run, sol = out["killed"], out["run"], out["solution"]
    assert killed.retcode is None and len(killed.checkpoints) >= 2
    assert run.resumed_at == [killed.checkpoints[-1]]
    assert sol.retcode is opf.ReturnCode.MaxIters
    assert run.iteration[-1] == 40_000 and run.retcode is opf.ReturnCode.MaxIters
    np.testing.assert_array_equal(run.iteration, np.arange(1, 40_001))
    assert (tmp_path / "h.png").stat().st_size > 10_000
    assert "resumed from iteration" in capsys.readouterr().out


def test_learned_optimizer(tmp_path, capsys):
    out = load("learned_optimizer").main(["--quick", "--output", str(tmp_path / "l2o.png")])
    lopt = out["lopt"]
    assert isinstance(lopt, opf.LearnedOptimizer) and lopt.rule.horizon == 20
    assert out["adam"].shape == out["learned"].shape == (4, 40)
    assert np.isfinite(out["learned"]).all()
    assert (tmp_path / "l2o.png").stat().st_size > 10_000
    assert "meta-trained: 5 meta-iterations" in capsys.readouterr().out
