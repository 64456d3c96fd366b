"""opf.plot: convergence, parameter trajectories and performance/data profiles of recorded
runs; each returns its figure and never shows it."""

import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
import pytest

import optiframe as opf

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    def show(*args, **kwargs):
        raise AssertionError("opf.plot called show()")

    monkeypatch.setattr(plt, "show", show)
    yield
    plt.close("all")


def rosenbrock(u, p):
    x = jnp.concatenate([u["a"], jnp.ravel(u["b"])])
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "runs.sqlite"
    prob = opf.OptimizationProblem(rosenbrock, {"a": jnp.zeros(2), "b": jnp.zeros((1, 2))})
    for alg in (opf.LBFGSB(), opf.NelderMead(), optax.adam(0.05), opf.LBFGSB()):
        opf.solve(prob, alg, maxiters=300, history=path)
    return path


def test_convergence_draws_one_line_per_run_labelled_by_algorithm(history):
    runs = opf.read_history(history)
    fig = opf.plot.convergence(history, x="fevals")
    (ax,) = fig.axes
    assert len(ax.lines) == 4 and ax.get_yscale() == "log" and ax.get_xlabel() == "evaluations"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    lbfgs = repr(opf.LBFGSB())
    assert labels == [f"{lbfgs} (run 1)", repr(opf.NelderMead()), "Optax(chain)",
                      f"{lbfgs} (run 4)"]
    for line, run in zip(ax.lines, runs):
        np.testing.assert_array_equal(line.get_xdata(), run.fevals_trace)
        np.testing.assert_array_equal(line.get_ydata(), run.objective_trace)
    fig = opf.plot.convergence(runs[1], x="time")
    assert fig.axes[0].get_xlabel() == "wall time (s)" and len(fig.axes[0].lines) == 1
    with pytest.raises(opf.InvalidProblemError, match="x must be one of 'iteration'"):
        opf.plot.convergence(runs, x="seconds")


def test_convergence_of_recorded_solutions(tmp_path):
    path = tmp_path / "two.sqlite"
    prob = opf.OptimizationProblem(rosenbrock, {"a": jnp.zeros(2), "b": jnp.zeros((1, 2))})
    sols = [opf.solve(prob, alg, maxiters=200, history=path)
            for alg in (opf.LBFGSB(), optax.adam(0.05))]
    assert [sol.history for sol in sols] == [(str(path), 1), (str(path), 2)]
    fig = opf.plot.convergence(sols)
    runs = opf.read_history(path)
    for line, run in zip(fig.axes[0].lines, runs, strict=True):
        np.testing.assert_array_equal(line.get_ydata(), run.objective_trace)
    with pytest.raises(opf.InvalidProblemError, match="solve with history=... to plot"):
        opf.plot.convergence(opf.solve(prob, opf.LBFGSB()))


def test_params_labels_each_parameter_by_its_leaf(history):
    run = opf.read_history(history)[0]
    fig = opf.plot.params(run)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["['a'][0]", "['a'][1]", "['b'][0, 0]", "['b'][0, 1]"]
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), run.params[:, 3])
    fig = opf.plot.params(run, limit=2)
    assert len(fig.axes[0].lines) == 2 and "first 2 of 4" in fig.axes[0].get_title()
    with pytest.raises(opf.InvalidProblemError, match="must be an opf.Run"):
        opf.plot.params(history)


def fake_run(trace, fevals, n=2):
    """A Run with objective `trace` at evaluation counts `fevals`."""
    m = len(trace)
    return opf.Run(
        id=0, problem="", algorithm="", keywords={}, versions={}, leaves=[["", [n], "float64"]],
        started=0.0, ended=None, retcode=None, message=None, objective=None, fevals=None,
        iteration=np.arange(1, m + 1), time=np.zeros(m), objective_trace=np.asarray(trace, float),
        fevals_trace=np.asarray(fevals), params_iteration=np.arange(0), params=np.zeros((0, n)),
        checkpoints=np.arange(0),
    )


def test_profiles_count_the_cost_to_solve_each_problem():
    # f0 = 1, f* = 0, tol = 1e-3: solved once f <= 1e-3
    runs = {
        ("p1", "A"): fake_run([1, 1e-2, 1e-4], [3, 6, 9]),
        ("p1", "B"): fake_run([1, 1e-4], [5, 30]),
        ("p2", "A"): fake_run([1, 0.5, 0.4], [3, 6, 9]),  # never solved
        ("p2", "B"): fake_run([1, 1e-5], [4, 12]),
    }
    table = opf.plot.profiles(runs, f_star={"p1": 0.0, "p2": 0.0})
    np.testing.assert_array_equal(table.cost, [[9, 30], [np.inf, 12]])
    np.testing.assert_allclose(table.ratio, [[1, 30 / 9], [np.inf, 1]])
    tau = np.array([1.0, 3.0, 4.0])
    np.testing.assert_allclose(table.performance(tau), [[0.5, 0.5], [0.5, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(table.data(np.array([3.0, 10.0])), [[0.5, 0.0], [0.5, 1.0]])
    fig = opf.plot.profile(runs, f_star={"p1": 0.0, "p2": 0.0})
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B"]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2
    fig = opf.plot.profile(runs, kind="data")
    assert fig.axes[0].get_xlabel() == "fevals / (n + 1)"
    with pytest.raises(opf.InvalidProblemError, match="kind must be 'performance' or 'data'"):
        opf.plot.profile(runs, kind="speed")


def test_profile_of_recorded_runs(history):
    runs = opf.read_history(history)[:3]
    fig = opf.plot.profile({("rosenbrock", run.algorithm): run for run in runs})
    shares = [line.get_ydata() for line in fig.axes[0].lines]
    assert all(s[-1] == 1.0 for s in shares)  # each solves its one problem to 1e-3
