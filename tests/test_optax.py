"""The optax backend: the optimizer matrix, counts, stops, bounds, warm starts, robustness."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optiframe as opf
from problems import PYTREE, QUADRATIC, ROSENBROCK, TUTORIAL_OPTIMIZERS, max_error, quadratic


def make(problem, **kwargs):
    return opf.OptimizationProblem(problem.fun, problem.u0, problem.p, **kwargs)


# optax's SM3 indexes a per-axis accumulator that 0-d parameters do not have.
SM3_SCALAR = pytest.mark.xfail(raises=IndexError, strict=True, reason="optax.sm3: 0-d leaves")
MATRIX = [
    pytest.param(
        problem,
        name,
        id=f"{problem.name}-{name}",
        marks=SM3_SCALAR if (problem is PYTREE and name == "SM3") else (),
    )
    for problem in (QUADRATIC, PYTREE)
    for name in sorted(TUTORIAL_OPTIMIZERS)
]


@pytest.mark.parametrize("problem, name", MATRIX)
def test_tutorial_optimizers_reach_the_optimum(problem, name):
    factory, tol = TUTORIAL_OPTIMIZERS[name]
    sol = opf.solve(make(problem), factory(), maxiters=1000)
    assert sol.retcode is opf.ReturnCode.MaxIters
    assert max_error(sol.u, problem.u_star) < tol
    assert abs(sol.objective - problem.f_star) < 10 * tol
    assert jax.tree.structure(sol.u) == jax.tree.structure(problem.u0)


def test_rosenbrock_with_lbfgs_and_abstol_succeeds():
    sol = opf.solve(make(ROSENBROCK), optax.lbfgs(), maxiters=200, abstol=1e-4)
    assert sol.retcode is opf.ReturnCode.Success
    assert sol.retcode.successful
    assert max_error(sol.u, ROSENBROCK.u_star) < 1e-3
    assert "abstol" in sol.message
    assert sol.stats.iterations < 200


def test_exact_evaluation_counts_of_a_first_order_method():
    sol = opf.solve(make(QUADRATIC), optax.adam(0.1), maxiters=100)
    assert (sol.stats.iterations, sol.stats.fevals, sol.stats.gevals) == (100, 101, 100)
    assert sol.stats.hevals == 0


def test_lbfgs_counts_every_line_search_evaluation():
    calls = np.zeros(1, int)

    def fun(u, p):
        jax.debug.callback(lambda: calls.__iadd__(1))
        return quadratic(u, p) + jnp.sum(u**4)

    prob = opf.OptimizationProblem(fun, QUADRATIC.u0, QUADRATIC.p)
    sol = opf.solve(prob, optax.lbfgs(), maxiters=6)
    jax.effects_barrier()
    assert sol.stats.iterations == 6
    assert sol.stats.fevals == int(calls[0])
    assert sol.stats.gevals == sol.stats.fevals - 1  # all but the final value carry a gradient


def test_backtracking_line_search_without_stored_gradient_counts_its_evaluations():
    calls = np.zeros(1, int)

    def fun(u, p):
        jax.debug.callback(lambda: calls.__iadd__(1))
        return quadratic(u, p)

    prob = opf.OptimizationProblem(fun, QUADRATIC.u0, QUADRATIC.p)
    tx = optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(10))
    sol = opf.solve(prob, tx, maxiters=50)
    jax.effects_barrier()
    assert sol.stats.iterations == 50
    assert sol.stats.fevals == int(calls[0])
    assert max_error(sol.u, QUADRATIC.u_star) < 1e-3


def test_reltol_stops_with_success():
    sol = opf.solve(make(QUADRATIC), optax.sgd(0.1), maxiters=10_000, reltol=1e-3)
    assert sol.retcode is opf.ReturnCode.Success
    assert "reltol" in sol.message
    assert 10 < sol.stats.iterations < 200
    assert sol.stats.fevals == sol.stats.iterations + 1 == sol.stats.gevals


def test_pytree_solution_keeps_structure_and_dtypes():
    u0 = {"w": np.zeros(3), "b": [0.0, np.zeros(2, np.float32)]}
    prob = opf.OptimizationProblem(PYTREE.fun, u0, PYTREE.p)
    sol = opf.solve(prob, optax.adam(0.1), maxiters=500)
    assert isinstance(sol.u["w"], np.ndarray) and sol.u["w"].dtype == np.float64
    assert isinstance(sol.u["b"][0], float)
    assert sol.u["b"][1].dtype == np.float32
    assert max_error(sol.u, PYTREE.u_star) < 1e-3


def test_jax_u0_keeps_its_dtype(x64):
    u0 = jnp.full(3, 0.5, dtype=jnp.float32)
    sol = opf.solve(opf.OptimizationProblem(quadratic, u0, QUADRATIC.p), "adam", maxiters=2)
    assert isinstance(sol.u, jax.Array) and sol.u.dtype == jnp.float32
    if x64:
        u0 = jnp.full(3, 0.5, dtype=jnp.float64)
        sol = opf.solve(opf.OptimizationProblem(quadratic, u0, QUADRATIC.p), "adam", maxiters=2)
        assert sol.u.dtype == jnp.float64


def test_bounds_are_honoured_by_projection():
    seen = []
    prob = make(QUADRATIC, lb=0.0, ub=2.0)
    callback = lambda state, loss: seen.append(np.asarray(state.u))
    sol = opf.solve(prob, optax.adam(0.1), maxiters=300, callback=callback)
    np.testing.assert_allclose(sol.u, [1.0, 0.0, 2.0], atol=1e-4)
    assert all(np.all((u >= 0.0) & (u <= 2.0)) for u in seen)
    fused = opf.solve(prob, optax.adam(0.1), maxiters=300)
    np.testing.assert_allclose(fused.u, sol.u, atol=1e-6)


def test_max_sense_maximises_and_reports_fun_itself():
    prob = opf.OptimizationProblem(
        lambda u, p: 5.0 - quadratic(u, p), QUADRATIC.u0, QUADRATIC.p, sense=opf.MaxSense
    )
    states = []
    sol = opf.solve(prob, optax.adam(0.1), maxiters=500, save_best=True)
    assert max_error(sol.u, QUADRATIC.u_star) < 1e-4
    assert sol.objective == pytest.approx(5.0, abs=1e-6)
    opf.solve(prob, optax.adam(0.1), maxiters=2, callback=lambda s, loss: states.append(s))
    expected = 5.0 - float(quadratic(QUADRATIC.u0, QUADRATIC.p))
    assert states[0].objective == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(states[0].grad, -2 * (QUADRATIC.u0 - QUADRATIC.p), rtol=1e-6)


def test_lookahead_returns_the_slow_weights():
    alg = optax.lookahead(optax.sgd(0.1), sync_period=5, slow_step_size=0.5)
    sol = opf.solve(make(QUADRATIC), alg, maxiters=7)
    assert isinstance(sol.state.params, optax.LookaheadParams)
    np.testing.assert_array_equal(sol.u, sol.state.params.slow)
    assert not np.allclose(sol.state.params.slow, sol.state.params.fast)
    assert sol.objective == pytest.approx(float(quadratic(sol.u, QUADRATIC.p)), rel=1e-6)


def test_chains_and_schedules_are_algorithms():
    schedule = optax.exponential_decay(0.2, transition_steps=50, decay_rate=0.5)
    alg = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(schedule),
    )
    sol = opf.solve(make(QUADRATIC), alg, maxiters=400)
    assert max_error(sol.u, QUADRATIC.u_star) < 1e-3
    assert int(sol.state.opt_state[-1].count) == 400  # the schedule's step count


def test_general_constraints_are_unsupported():
    f = opf.OptimizationFunction(quadratic, cons=lambda u, p: jnp.array([u.sum()]))
    prob = opf.OptimizationProblem(f, QUADRATIC.u0, QUADRATIC.p, lcons=[0.0], ucons=[1.0])
    with pytest.raises(
        opf.UnsupportedFeatureError, match=r"Optax\(.*\) does not support constraints"
    ):
        opf.solve(prob, optax.adam(0.1), maxiters=10)


@pytest.mark.parametrize("with_callback", [False, True], ids=["fused", "stepwise"])
def test_warm_start_continues_exactly(with_callback):
    callback = (lambda s, loss: None) if with_callback else None
    prob = make(ROSENBROCK)
    full = opf.solve(prob, optax.adam(1e-2), maxiters=100, callback=callback)
    half = opf.solve(prob, optax.adam(1e-2), maxiters=50, callback=callback)
    rest = opf.solve(prob, optax.adam(1e-2), maxiters=50, warm_start=half, callback=callback)
    np.testing.assert_allclose(rest.u, full.u, rtol=1e-6)
    assert int(optax.tree.get(rest.state.opt_state, "count")) == 100
    assert not np.allclose(half.u, full.u)


def test_warm_start_from_another_optimizer_is_a_clear_error():
    half = opf.solve(make(ROSENBROCK), optax.sgd(1e-3), maxiters=5)
    with pytest.raises(opf.OptiframeError, match=r"warm_start=sol.*remake\(u0=sol.u\)"):
        opf.solve(make(ROSENBROCK), optax.adam(1e-2), maxiters=5, warm_start=half)


def test_save_best_returns_the_lowest_objective_and_keeps_the_last_state():
    # SGD with step 1.05 on u^2 diverges: u_k = (-1.1)^k u0, so u0 is the best iterate.
    prob = opf.OptimizationProblem(lambda u, p: jnp.sum(u**2), jnp.array([1.0]))
    last = opf.solve(prob, optax.sgd(1.05), maxiters=10)
    best = opf.solve(prob, optax.sgd(1.05), maxiters=10, save_best=True)
    np.testing.assert_allclose(last.u, [(-1.1) ** 10], rtol=1e-5)
    np.testing.assert_allclose(best.u, [1.0])
    assert best.objective == pytest.approx(1.0)
    np.testing.assert_allclose(best.state.params, last.u, rtol=1e-6)


def test_callback_sees_each_iteration_and_can_stop():
    states = []

    def callback(state, loss):
        states.append(state)
        assert loss == state.objective
        return state.iter == 5

    sol = opf.solve(make(QUADRATIC), optax.sgd(0.1), maxiters=100, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated
    assert [s.iter for s in states] == [1, 2, 3, 4, 5]
    assert sol.stats.iterations == 5
    first = states[0]
    np.testing.assert_allclose(first.u, QUADRATIC.u0)
    assert first.objective == pytest.approx(float(quadratic(QUADRATIC.u0, QUADRATIC.p)))
    np.testing.assert_allclose(first.grad, 2 * (QUADRATIC.u0 - QUADRATIC.p), rtol=1e-6)
    np.testing.assert_allclose(first.p, QUADRATIC.p)
    assert first.aux is None and first.original is not None
    np.testing.assert_allclose(states[1].u, states[0].u - 0.1 * states[0].grad, atol=1e-6)


def optax_loop(problem, tx, steps, params=None):
    """`steps` iterations of optax's own update on `problem` (the reference)."""
    params = problem.u0 if params is None else params
    state = tx.init(params)
    grad = jax.jit(jax.grad(problem.fun))
    for _ in range(steps):
        updates, state = tx.update(grad(params, problem.p), state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("stop", ["callback", "interrupt"])
def test_a_run_stopped_mid_chunk_ends_on_the_iteration_its_callback_saw(stop):
    # On full data a run with a callback computes up to MAX_CHUNK iterations per call;
    # stopped at iteration 150, deep in a chunk, it ends there: the state and the counts are
    # those of 150 iterations, and a warm start continues as if it had not stopped.
    tx, seen = optax.adam(0.05), []

    def callback(state, loss):
        seen.append(state)
        if state.iter == 150:
            if stop == "interrupt":
                raise KeyboardInterrupt
            return True

    prob = make(PYTREE)
    if stop == "interrupt":
        with pytest.warns(UserWarning, match="interrupted: returning the best iterate"):
            sol = opf.solve(prob, tx, maxiters=300, callback=callback)
    else:
        sol = opf.solve(prob, tx, maxiters=300, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated
    assert [s.iter for s in seen] == list(range(1, 151)) and sol.stats.iterations == 150
    assert sol.stats.gevals >= 150 and sol.stats.fevals == sol.stats.gevals + 1
    # the same updates in another compiled program: equal to float rounding
    assert max_error(sol.state.params, optax_loop(PYTREE, tx, 150)) < 1e-5
    assert max_error(seen[-1].u, optax_loop(PYTREE, tx, 149)) < 1e-5
    rest = opf.solve(prob, tx, maxiters=150, warm_start=sol)
    assert max_error(rest.u, optax_loop(PYTREE, tx, 300)) < 1e-5


def test_callback_sees_the_auxiliary_output():
    f = opf.OptimizationFunction(lambda u, p: (quadratic(u, p), {"u0": u[0]}), has_aux=True)
    seen = []
    opf.solve(
        opf.OptimizationProblem(f, QUADRATIC.u0, QUADRATIC.p),
        optax.sgd(0.1),
        maxiters=3,
        callback=lambda s, loss: seen.append(float(s.aux["u0"])),
    )
    assert seen[0] == pytest.approx(0.5)
    assert seen[1] == pytest.approx(0.5 - 0.1 * 2 * (0.5 - 1.0))


def test_a_second_solve_does_not_retrace():
    traces = []

    def fun(u, p):
        traces.append(1)  # runs only while JAX traces
        return quadratic(u, p)

    prob = opf.OptimizationProblem(fun, QUADRATIC.u0, QUADRATIC.p)
    for callback in (None, lambda s, loss: None):
        opf.solve(prob, optax.adam(0.1), maxiters=5, callback=callback)
        opf.solve(prob, "adam", maxiters=5, callback=callback)
        before = len(traces)
        # A new but equal optimizer, another budget, a remade u0, a registered name.
        opf.solve(prob, optax.adam(0.1), maxiters=8, callback=callback)
        opf.solve(prob.remake(u0=jnp.ones(3)), optax.adam(0.1), maxiters=3, callback=callback)
        opf.solve(prob, "adam", maxiters=5, callback=callback)
        assert len(traces) == before
    opf.solve(prob, optax.adam(0.2), maxiters=5)  # another learning rate is another program
    assert len(traces) > before


def test_progress_bar_object_sets_the_refresh_interval():
    bar = opf.ProgressBar(every=7, desc="fit")
    assert bar.interval(1000) == 7
    assert opf.ProgressBar().interval(1000) == 10


