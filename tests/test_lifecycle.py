"""One matrix of lifecycle tests over every registered algorithm, filtered by what each
declares it can do: budgets and exact counts, maxtime, callbacks, Ctrl-C, non-finite
values, save_best, progress, seeds and unknown options mean the same everywhere.

The problems share their objectives, so each algorithm compiles its programs once for the
whole module.
"""

import re
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optiframe as opf
from optiframe.backends.base import registered_algorithms

TARGET = np.array([1.0, -2.0, 3.0])
WEIGHTS = np.array([1.0, 4.0, 16.0])  # anisotropic: no method converges in one step


def _distinct() -> dict[str, opf.Algorithm]:
    """Every registered algorithm once (a "backend:NAME" alias of a plain name dropped)."""
    out: dict[str, opf.Algorithm] = {}
    for name, alg in registered_algorithms().items():
        if repr(alg) not in {repr(a) for a in out.values()}:
            out[name] = alg
    return out


ALGORITHMS = _distinct()


def algorithms(keyword: str | None = None, search: bool | None = None) -> list:
    """The names of the algorithms that take `keyword` (and are search methods or not)."""
    names = []
    for name, alg in ALGORITHMS.items():
        if keyword is not None and keyword not in alg.capabilities.keywords:
            continue
        if search is not None and is_search(alg) != search:
            continue
        names.append(name)
    return names


def is_search(alg) -> bool:
    """A search method: `sol.u` is the best candidate, non-finite values are bad candidates."""
    return isinstance(alg, (opf.EvoSax, opf.Nevergrad)) or alg.capabilities.needs_bounds or (
        isinstance(alg, opf.BasinHopping)
    )


CALLS: list[int] = []


def _record(u):
    CALLS.append(u.shape[0] if u.ndim == 2 else 1)  # a vmapped batch of candidates, or one


def counted_quadratic(u, p):
    jax.debug.callback(_record, u)
    return jnp.sum(WEIGHTS * (u - p) ** 2)


def counted_residuals(u, p):
    jax.debug.callback(_record, u)
    return jnp.sqrt(WEIGHTS) * (u - p)


QUADRATIC = opf.OptimizationFunction(counted_quadratic)
RESIDUALS = opf.OptimizationFunction(counted_residuals)


def problem(alg, **kwargs) -> opf.OptimizationProblem:
    """The weighted quadratic (or its residuals), in the box [-5, 5]^3 for box searches."""
    caps = alg.capabilities
    f = RESIDUALS if caps.residuals else QUADRATIC
    box = dict(lb=-5.0, ub=5.0) if caps.needs_bounds else {}
    return opf.OptimizationProblem(f, jnp.zeros(3), jnp.asarray(TARGET), **box, **kwargs)


def objective(alg, u) -> float:
    value = float(WEIGHTS @ (np.asarray(u, float) - TARGET) ** 2)
    return 0.5 * value if alg.capabilities.residuals else value


def seeded(alg):
    """`alg` with seed 3 where it takes a seed and has none (None draws a fresh one)."""
    if isinstance(alg, opf.Nevergrad) and alg.seed is None:
        return opf.Nevergrad(alg.name, seed=3, num_workers=alg.num_workers, **alg.options)
    if isinstance(alg, (opf.DifferentialEvolution, opf.DualAnnealing, opf.BasinHopping)):
        return type(alg)(seed=3, **alg.options)
    return alg


def ids(names):
    return [name.replace(":", "-") for name in names]


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_budget_is_never_exceeded_and_every_call_of_fun_is_counted(name):
    alg = ALGORITHMS[name]
    CALLS.clear()
    sol = opf.solve(problem(alg), alg, maxiters=6)
    jax.effects_barrier()
    spent = {"evaluations": sol.stats.fevals, "residual evaluations": getattr(
        sol.original, "nfev", None)}.get(alg.capabilities.budget, sol.stats.iterations)
    assert spent <= 6
    if sol.retcode is opf.ReturnCode.MaxIters or isinstance(alg, opf.Nevergrad):
        assert spent == 6, sol
    assert sol.stats.fevals == sum(CALLS), sol
    assert sol.objective == pytest.approx(objective(alg, sol.u), rel=1e-5, abs=1e-5)


# --------------------------------------------------------------------------- maxtime


def _slow(x):
    time.sleep(0.01)
    return np.zeros((), x.dtype)


def slow_rosenbrock(u, p):
    """A 4-D Rosenbrock function (coefficient 10, stable for the fixed steps of SGD and
    Euler at 0.01), 10 ms an evaluation: no algorithm converges in 0.1 s."""
    x = jax.lax.stop_gradient(u[0])
    delay = jax.pure_callback(_slow, jax.ShapeDtypeStruct((), u.dtype), x,
                              vmap_method="sequential")
    return delay + jnp.sum(10.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


SLOW = opf.OptimizationFunction(slow_rosenbrock)


@pytest.mark.parametrize("name", algorithms("maxtime"), ids=ids(algorithms("maxtime")))
def test_maxtime_ends_the_run_with_maxtime(name):
    alg = ALGORITHMS[name]
    if alg.capabilities.residuals:
        pytest.skip("a least-squares method takes residuals (its test: test_scipy.py)")
    box = dict(lb=-5.0, ub=5.0) if alg.capabilities.needs_bounds else {}
    prob = opf.OptimizationProblem(SLOW, jnp.array([-1.2, 1.0, -1.2, 1.0]), **box)
    sol = opf.solve(prob, alg, maxiters=10**6, maxtime=0.1)
    assert sol.retcode is opf.ReturnCode.MaxTime, sol
    assert "maxtime=0.1 s reached" in sol.message
    assert np.isfinite(sol.objective) and sol.stats.time >= 0.1


# --------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("name", algorithms("callback"), ids=ids(algorithms("callback")))
def test_callback_sees_each_iteration_and_true_terminates(name):
    alg = ALGORITHMS[name]
    prob = problem(alg)
    states = []
    # SciPy's dual annealing calls back at each new minimum found, here one.
    last = 1 if isinstance(alg, opf.DualAnnealing) else 2

    def callback(state, loss):
        states.append(state)
        assert loss == state.objective
        return state.iter == last

    sol = opf.solve(prob, alg, maxiters=50, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated, sol
    assert f"callback returned True at iteration {last}" in sol.message
    assert [s.iter for s in states] == list(range(1, last + 1))
    assert sol.stats.iterations == last
    for s in states:
        assert s.objective == pytest.approx(objective(alg, s.u), rel=1e-5, abs=1e-6)
        if s.grad is not None:
            expected = 2 * WEIGHTS * (np.asarray(s.u) - TARGET)
            np.testing.assert_allclose(s.grad, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s.p, TARGET)


@pytest.mark.parametrize("name", algorithms("callback"), ids=ids(algorithms("callback")))
def test_ctrl_c_returns_the_best_iterate_with_a_true_warning(name):
    alg = ALGORITHMS[name]
    seen = []

    def callback(state, loss):
        seen.append(loss)
        if state.iter == 1:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match=r"interrupted: returning the best"):
        sol = opf.solve(problem(alg), alg, maxiters=50, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated and "KeyboardInterrupt" in sol.message
    assert sol.objective <= min(seen) + 1e-9
    assert sol.objective == pytest.approx(objective(alg, sol.u), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- non-finite


BARRIER = 0.05  # the objective is NaN beyond u[0] = BARRIER; every run from u0 = 0 meets it


def nan_beyond(u, p):
    """The weighted quadratic, but NaN where u[0] > BARRIER (its minimiser has u[0] = 1)."""
    return jnp.where(u[0] > BARRIER, jnp.nan, jnp.sum(WEIGHTS * (u - p) ** 2))


def nan_residuals(u, p):
    return jnp.where(u[0] > BARRIER, jnp.nan, jnp.sqrt(WEIGHTS) * (u - p))


NAN = opf.OptimizationFunction(nan_beyond)
NAN_RESIDUALS = opf.OptimizationFunction(nan_residuals)


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_a_nonfinite_objective_mid_run_keeps_the_best_finite_iterate(name):
    alg = ALGORITHMS[name]
    caps = alg.capabilities
    f = NAN_RESIDUALS if caps.residuals else NAN
    box = dict(lb=-5.0, ub=5.0) if caps.needs_bounds else {}
    prob = opf.OptimizationProblem(f, jnp.zeros(3), jnp.asarray(TARGET), **box)
    sol = opf.solve(prob, alg, maxiters=100 if is_search(alg) else 1000)
    assert np.isfinite(sol.objective) and np.all(np.isfinite(np.asarray(sol.u)))
    assert float(np.asarray(sol.u)[0]) <= BARRIER + 1e-7  # 0.05 rounded to float32 is above
    assert sol.objective == pytest.approx(objective(alg, sol.u), rel=1e-5, abs=1e-6)
    assert sol.objective <= objective(alg, np.zeros(3))
    if is_search(alg):  # a bad candidate, not the end of the run
        assert sol.retcode is not opf.ReturnCode.Failure and "NaN or inf" in sol.message
    elif isinstance(alg, opf.Optax) and alg.linesearch:
        # optax's line search rejects a non-finite trial point: no iterate is non-finite
        assert sol.retcode is not opf.ReturnCode.Success
    else:
        assert sol.retcode is opf.ReturnCode.Failure, sol
        assert "non-finite" in sol.message or "was nan" in sol.message


# --------------------------------------------------------------------------- save_best


@pytest.mark.parametrize("name", algorithms("save_best"), ids=ids(algorithms("save_best")))
def test_save_best_returns_the_lowest_objective_seen(name):
    alg = seeded(ALGORITHMS[name])
    seen = []
    callback = None
    if "callback" in alg.capabilities.keywords:
        callback = lambda state, loss: seen.append(loss)  # noqa: E731
    last = opf.solve(problem(alg), alg, maxiters=8)
    best = opf.solve(problem(alg), alg, maxiters=8, save_best=True, callback=callback)
    assert best.objective <= last.objective + 1e-9
    assert best.objective <= min(seen, default=np.inf) + 1e-9
    assert best.objective == pytest.approx(objective(alg, best.u), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("name", algorithms("progress"), ids=ids(algorithms("progress")))
def test_progress_shows_a_bar_with_the_loss(name, capsys):
    alg = ALGORITHMS[name]
    opf.solve(problem(alg), alg, maxiters=6, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and re.search(r"\d+/\d+", err)


# --------------------------------------------------------------------------- seeds, options


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_the_same_seed_gives_the_same_result(name):
    alg = seeded(ALGORITHMS[name])
    a = opf.solve(problem(alg), alg, maxiters=6)
    b = opf.solve(problem(alg), alg, maxiters=6)
    np.testing.assert_array_equal(np.asarray(a.u), np.asarray(b.u))
    assert a.objective == b.objective and a.stats.fevals == b.stats.fevals


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_an_unknown_option_is_an_error_naming_it(name):
    alg = ALGORITHMS[name]
    with pytest.raises(opf.InvalidProblemError, match=r"unknown option\(s\) 'not_an_option'"):
        opf.solve(problem(alg), alg, maxiters=3, not_an_option=1)


def test_no_warnings_on_plain_solves():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("adam", "L-BFGS-B", "evosax:SNES", "RKChebyshevDescent"):
            alg = ALGORITHMS[name]
            opf.solve(problem(alg), alg, maxiters=3)
