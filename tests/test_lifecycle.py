"""One matrix of lifecycle tests over every registered algorithm, filtered by what each
declares it can do: budgets and exact counts, maxtime, callbacks, Ctrl-C, non-finite
values, save_best, progress, seeds and unknown options mean the same everywhere.

Every test solves one objective whose behaviour its `p` sets (where it turns NaN, how slow
it is, how hard), so each algorithm compiles its programs once for the whole module.
"""

import functools
import re
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optiframe as opf
from optiframe.backends.base import registered_algorithms
from optiframe.backends.ode import GradientFlowAlgorithm

TARGET = np.array([1.0, -2.0, 3.0])
WEIGHTS = np.array([1.0, 4.0, 16.0])  # anisotropic: no method converges in one step


def _distinct() -> dict[str, opf.Algorithm]:
    """Every registered algorithm once (a "backend:NAME" alias of a plain name dropped)."""
    out: dict[str, opf.Algorithm] = {}
    by_name = registered_algorithms()
    for name in sorted(by_name, key=lambda name: (":" in name, name)):
        alg = by_name[name]
        if repr(alg) not in {repr(a) for a in out.values()}:
            out[name] = alg
    return out


ALGORITHMS = _distinct()


def algorithms(keyword: str) -> list[str]:
    """The names of the algorithms that take the `solve` keyword `keyword`."""
    return [name for name, alg in ALGORITHMS.items() if keyword in alg.capabilities.keywords]


def is_search(alg) -> bool:
    """A search method: `sol.u` is the best candidate, non-finite values are bad candidates."""
    return isinstance(alg, (opf.EvoSax, opf.Nevergrad)) or alg.capabilities.needs_bounds or (
        isinstance(alg, opf.BasinHopping)
    )


def on_device(alg) -> bool:
    """The loop is optiframe's on-device one: fused without a callback, stepwise with one."""
    return isinstance(alg, (opf.Optax, opf.Optimistix, opf.EvoSax, GradientFlowAlgorithm))


def seeded(alg):
    """`alg` with seed 3 where it takes a seed and has none (None draws a fresh one)."""
    if isinstance(alg, opf.Nevergrad) and alg.seed is None:
        return opf.Nevergrad(alg.name, seed=3, num_workers=alg.num_workers, **alg.options)
    if isinstance(alg, (opf.DifferentialEvolution, opf.DualAnnealing, opf.BasinHopping)):
        return type(alg)(seed=3, **alg.options)
    return alg


def ids(names):
    return [name.replace(":", "-") for name in names]


def with_paths(names, stepwise=None):
    """(name, path) pairs: the device algorithms fused and stepwise (with a callback); with
    `stepwise`, stepwise only those named (the driver is shared, the steps are not)."""
    pairs = []
    for name in names:
        paths = ("fused", "stepwise") if on_device(ALGORITHMS[name]) else ("host",)
        if stepwise is not None and name not in stepwise:
            paths = paths[:1]
        pairs += [pytest.param(name, path, id=f"{name.replace(':', '-')}-{path}")
                  for path in paths]
    return pairs


# A stepwise run of each kind of on-device step (optax, optimistix, evosax, a diffrax flow).
STEPWISE = ("adam", "optimistix:LevenbergMarquardt", "evosax:SNES", "RKChebyshevDescent")


def path_callback(path):
    return (lambda state, loss: None) if path == "stepwise" else None


# --------------------------------------------------------------------------- the objective

CALLS: list[int] = []


def _record(u):
    CALLS.append(u.shape[0] if u.ndim == 2 else 1)  # a vmapped batch of candidates, or one


def _sleep(seconds):
    time.sleep(float(seconds))
    return np.zeros((), seconds.dtype)


def residuals(u, p):
    """sqrt(W) (u - target), NaN where u[0] > barrier, after `sleep` seconds; with
    `count`, every call is recorded in CALLS. (The host callbacks run only when asked
    for: they cost time.)"""
    jax.lax.cond(p["count"] > 0, lambda: jax.debug.callback(_record, u), lambda: None)
    sleep = jax.lax.stop_gradient(p["sleep"])
    delay = jax.lax.cond(
        sleep > 0,
        lambda: jax.pure_callback(_sleep, jax.ShapeDtypeStruct((), u.dtype), sleep,
                                  vmap_method="sequential"),
        lambda: jnp.zeros((), u.dtype),
    )
    r = jnp.sqrt(WEIGHTS) * (u - p["target"])
    return jnp.where(u[0] > p["barrier"], jnp.nan, r + delay)


def quadratic(u, p):
    """‖residuals‖²: the weighted quadratic."""
    return jnp.sum(residuals(u, p) ** 2)


# One function per algorithm (compiled programs belong to a function, a few per kind).
FUNCTIONS = {
    name: opf.OptimizationFunction(
        functools.partial(residuals if alg.capabilities.residuals else quadratic)
    )
    for name, alg in ALGORITHMS.items()
}


def problem(name, *, target=TARGET, barrier=np.inf, sleep=0.0, u0=None, count=False):
    """For algorithm `name`, the weighted quadratic (or its residuals), in the box
    [-5, 5]^3 for box searches."""
    caps = ALGORITHMS[name].capabilities
    p = {name: jnp.asarray(value, jnp.result_type(float)) for name, value in dict(
        target=target, barrier=barrier, sleep=sleep, count=count).items()}
    box = dict(lb=-5.0, ub=5.0) if caps.needs_bounds else {}
    u0 = jnp.zeros(3) if u0 is None else u0
    return opf.OptimizationProblem(FUNCTIONS[name], u0, p, **box)


def objective(alg, u) -> float:
    value = float(WEIGHTS @ (np.asarray(u, float) - TARGET) ** 2)
    return 0.5 * value if alg.capabilities.residuals else value


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_budget_is_never_exceeded_and_every_call_of_fun_is_counted(name):
    alg = ALGORITHMS[name]
    CALLS.clear()
    sol = opf.solve(problem(name, count=True), alg, maxiters=6)
    jax.effects_barrier()
    spent = {"evaluations": sol.stats.fevals, "residual evaluations": getattr(
        sol.original, "nfev", None)}.get(alg.capabilities.budget, sol.stats.iterations)
    assert spent <= 6
    if sol.retcode is opf.ReturnCode.MaxIters or isinstance(alg, opf.Nevergrad):
        assert spent == 6, sol
    assert sol.stats.fevals == sum(CALLS), sol
    assert sol.objective == pytest.approx(objective(alg, sol.u), rel=1e-5, abs=1e-5)


NEED_BUDGET = [name for name, alg in ALGORITHMS.items() if alg.capabilities.needs_budget]


@pytest.mark.parametrize("name", NEED_BUDGET, ids=ids(NEED_BUDGET))
def test_an_algorithm_that_needs_a_budget_says_which(name):
    alg = ALGORITHMS[name]
    match = rf"needs a budget of {alg.capabilities.budget}: pass solve\(\.\.\., maxiters=N\)"
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.solve(problem(name), alg)


# --------------------------------------------------------------------------- maxtime


@pytest.mark.parametrize("name, path", with_paths(algorithms("maxtime"), STEPWISE))
def test_maxtime_ends_the_run_with_maxtime(name, path):
    # 40 ms an evaluation: no algorithm converges in the two or three evaluations 0.1 s has.
    alg = ALGORITHMS[name]
    prob = problem(name, sleep=0.04)
    sol = opf.solve(prob, alg, maxiters=10**6, maxtime=0.1, callback=path_callback(path))
    assert sol.retcode is opf.ReturnCode.MaxTime, sol
    assert "maxtime=0.1 s reached" in sol.message
    assert np.isfinite(sol.objective) and sol.stats.time >= 0.1


# --------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("name", algorithms("callback"), ids=ids(algorithms("callback")))
def test_callback_sees_each_iteration_and_true_terminates(name):
    alg = ALGORITHMS[name]
    states = []
    # SciPy's dual annealing calls back at each new minimum found, here one.
    last = 1 if isinstance(alg, opf.DualAnnealing) else 2

    def callback(state, loss):
        states.append(state)
        assert loss == state.objective
        return state.iter == last

    sol = opf.solve(problem(name), alg, maxiters=50, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated, sol
    assert f"callback returned True at iteration {last}" in sol.message
    assert [s.iter for s in states] == list(range(1, last + 1))
    assert sol.stats.iterations == last
    for s in states:
        assert s.objective == pytest.approx(objective(alg, s.u), rel=1e-5, abs=1e-6)
        if s.grad is not None:
            expected = 2 * WEIGHTS * (np.asarray(s.u) - TARGET)
            np.testing.assert_allclose(s.grad, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s.p["target"], TARGET)


@pytest.mark.parametrize("name", algorithms("callback"), ids=ids(algorithms("callback")))
def test_ctrl_c_returns_the_best_iterate_with_a_true_warning(name):
    alg = ALGORITHMS[name]
    seen = []

    def callback(state, loss):
        seen.append(loss)
        raise KeyboardInterrupt

    with pytest.warns(UserWarning, match=r"interrupted: returning the best"):
        sol = opf.solve(problem(name), alg, maxiters=50, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated and "KeyboardInterrupt" in sol.message
    assert sol.objective <= min(seen) + 1e-9
    assert sol.objective == pytest.approx(objective(alg, sol.u), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- non-finite

BARRIER = 0.005  # the objective is NaN beyond u[0] = BARRIER; every run from u0 = 0 meets it


@pytest.mark.parametrize("name, path", with_paths(list(ALGORITHMS)))
def test_a_nonfinite_objective_mid_run_keeps_the_best_finite_iterate(name, path):
    alg = seeded(ALGORITHMS[name])  # an unseeded search may not reach the barrier
    sol = opf.solve(problem(name, barrier=BARRIER), alg, maxiters=20 if is_search(alg) else 100,
                    callback=path_callback(path))
    assert np.isfinite(sol.objective) and np.all(np.isfinite(np.asarray(sol.u)))
    assert float(np.asarray(sol.u)[0]) <= BARRIER + 1e-8  # rounded to float32, it is above
    assert sol.objective == pytest.approx(objective(alg, sol.u), rel=1e-5, abs=1e-6)
    assert sol.objective <= objective(alg, np.zeros(3))
    if is_search(alg):  # a bad candidate, not the end of the run
        assert sol.retcode is not opf.ReturnCode.Failure and "NaN or inf" in sol.message
    elif isinstance(alg, opf.Optax) and alg.linesearch or isinstance(alg, opf.Optimistix):
        # a line search (optax's, optimistix's) or a trust region (optimistix's) rejects a
        # non-finite trial point: no iterate is non-finite
        assert sol.retcode is not opf.ReturnCode.Success
    else:
        assert sol.retcode is opf.ReturnCode.Failure, sol
        assert "non-finite" in sol.message or "was nan" in sol.message


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_a_nonfinite_objective_at_u0(name):
    alg = ALGORITHMS[name]
    prob = problem(name, target=np.full(3, np.nan), u0=jnp.ones(3))
    if is_search(alg):  # every candidate is bad: Failure, and u0 back
        sol = opf.solve(prob, alg, maxiters=20)
        assert sol.retcode is opf.ReturnCode.Failure and "no evaluation" in sol.message
        np.testing.assert_array_equal(np.asarray(sol.u), np.ones(3))
    else:
        with pytest.raises(opf.ObjectiveError, match=r"is nan at u0; start from a point"):
            opf.solve(prob, alg, maxiters=20)


def test_a_method_s_own_loop_is_replayed_to_its_exact_best_iterate():
    # Euler with dt = 0.5 on -u moves u by 0.5 a step; the objective is NaN past 2.1. The
    # fused run (diffrax's own loop) tracks no best point: it is replayed.
    prob = opf.OptimizationProblem(
        lambda u, p: jnp.sum(jnp.where(u > 2.1, jnp.nan, -u)), jnp.zeros(1)
    )
    for callback in (None, lambda s, loss: None):
        sol = opf.solve(prob, opf.ODEGradientDescent(dt=0.5), maxiters=100, callback=callback)
        assert sol.retcode is opf.ReturnCode.Failure
        assert "non-finite after 5 accepted steps" in sol.message
        np.testing.assert_allclose(sol.u, [2.0])
        assert sol.objective == pytest.approx(-2.0)


# --------------------------------------------------------------------------- save_best


@pytest.mark.parametrize("name", algorithms("save_best"), ids=ids(algorithms("save_best")))
def test_save_best_returns_the_lowest_objective_seen(name):
    alg = seeded(ALGORITHMS[name])
    seen = []
    callback = None
    if "callback" in alg.capabilities.keywords:
        callback = lambda state, loss: seen.append(loss)
    last = opf.solve(problem(name), alg, maxiters=8)
    best = opf.solve(problem(name), alg, maxiters=8, save_best=True, callback=callback)
    assert best.objective <= last.objective + 1e-9
    assert best.objective <= min(seen, default=np.inf) + 1e-9
    assert best.objective == pytest.approx(objective(alg, best.u), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("name, path", with_paths(algorithms("progress"), STEPWISE))
def test_progress_shows_a_bar_with_the_loss(name, path, capsys):
    alg = ALGORITHMS[name]
    opf.solve(problem(name), alg, maxiters=6, progress=True, callback=path_callback(path))
    err = capsys.readouterr().err
    assert "loss=" in err and re.search(r"\d+/\d+", err)


# --------------------------------------------------------------------------- seeds, options


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_the_same_seed_gives_the_same_result(name):
    alg = seeded(ALGORITHMS[name])
    a = opf.solve(problem(name), alg, maxiters=6)
    b = opf.solve(problem(name), alg, maxiters=6)
    np.testing.assert_array_equal(np.asarray(a.u), np.asarray(b.u))
    assert a.objective == b.objective and a.stats.fevals == b.stats.fevals


@pytest.mark.parametrize("name", list(ALGORITHMS), ids=ids(ALGORITHMS))
def test_an_unknown_option_is_an_error_naming_it(name):
    alg = ALGORITHMS[name]
    with pytest.raises(opf.InvalidProblemError, match=r"unknown option\(s\) 'not_an_option'"):
        opf.solve(problem(name), alg, maxiters=3, not_an_option=1)


def test_no_warnings_on_plain_solves():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("adam", "L-BFGS-B", "evosax:SNES", "RKChebyshevDescent"):
            alg = ALGORITHMS[name]
            opf.solve(problem(name), alg, maxiters=3)
