"""The Nevergrad backend: the optimizer matrix, budgets and counts, batches, executors,
constraints, integers, pytrees, seeds, errors, and the NumPy 2.4 metamodel regression."""

import concurrent.futures
import dataclasses
import math
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optiframe as opf
from optiframe.backends import _nevergrad_patches as patches
from optiframe.backends import nevergrad as ngb
from problems import (
    HS71_MIN,
    HS71_U_STAR,
    PYTREE,
    SPHERE_SHIFT,
    hs71_problem,
    max_error,
    rastrigin,
    shifted_sphere,
)


def sphere_problem(**kwargs):
    return opf.OptimizationProblem(
        shifted_sphere, jnp.zeros(4), jnp.asarray(SPHERE_SHIFT), lb=-5.0, ub=5.0, **kwargs
    )


def numpy_sphere(u, p):
    """Host code JAX cannot trace (float() of the argument)."""
    return float(np.sum((np.asarray(u) - p) ** 2))


def host_sphere_problem(**kwargs):
    f = opf.OptimizationFunction(numpy_sphere, ad=None)
    return opf.OptimizationProblem(f, np.zeros(4), SPHERE_SHIFT, lb=-5.0, ub=5.0, **kwargs)


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("name", ["NGOpt", "CMA", "TwoPointsDE", "PSO"])
def test_search_methods_reach_the_shifted_sphere_for_every_seed(name):
    prob = sphere_problem()
    for seed in range(5):
        sol = opf.solve(prob, opf.Nevergrad(name, seed=seed), maxiters=1500)
        assert sol.objective < 0.05, (name, seed, sol.objective)
        assert sol.retcode is opf.ReturnCode.MaxIters
        assert sol.stats.fevals == 1500  # the recommendation takes the last evaluation
        assert sol.stats.iterations in (1499, 1500)  # 1500 told, or 1499 and the recommendation
        # sol.u is in u0's float32 (the objective is at the float64 point, 1e-6 away)
        value = float(shifted_sphere(sol.u, SPHERE_SHIFT))
        assert sol.objective == pytest.approx(value, rel=1e-5, abs=1e-6)


# Rastrigin in [-5.12, 5.12]^2 from u0 = (2, 2) (a local minimum with f = 8; the global one is
# 0 at the origin, the nearest others at f ~ 1), 1000 evaluations, seeds 0-4: every run ends
# below 5.5 and the median below the tolerance. CMA (and NGOpt, which picks CMA here) starts
# from u0 and can settle in a nearby local minimum; DE and PSO sample the whole box.
RASTRIGIN_MEDIAN_TOLERANCE = {"NGOpt": 5.0, "CMA": 5.0, "TwoPointsDE": 0.2, "PSO": 0.2}


@pytest.mark.parametrize("name", sorted(RASTRIGIN_MEDIAN_TOLERANCE))
def test_search_methods_on_rastrigin(name):
    prob = opf.OptimizationProblem(rastrigin, jnp.full(2, 2.0), lb=-5.12, ub=5.12)
    values = [
        opf.solve(prob, opf.Nevergrad(name, seed=seed), maxiters=1000).objective
        for seed in range(5)
    ]
    assert max(values) < 5.5, values
    assert np.median(values) < RASTRIGIN_MEDIAN_TOLERANCE[name], values


def test_sol_u_is_the_best_point_evaluated_the_recommendation_included():
    prob = sphere_problem()
    seen = []
    callback = lambda state, loss: seen.extend(state.original.objectives)
    sol = opf.solve(prob, opf.Nevergrad("CMA", seed=1), maxiters=1500, callback=callback)
    # CMA recommends the mean of its search distribution, never evaluated: the budget's
    # last evaluation goes to it
    assert len(seen) == 1499 and sol.stats.fevals == 1500
    result = sol.original
    assert isinstance(result, opf.NevergradResult)
    recommended = float(shifted_sphere(jnp.asarray(result.recommended_u), SPHERE_SHIFT))
    assert result.recommended_objective == pytest.approx(recommended, rel=1e-5, abs=1e-12)
    assert sol.objective == min(min(seen), result.recommended_objective)
    assert result.recommendation.value.shape == (4,)
    assert result.selected == "CMA"


def test_an_unevaluated_recommendation_that_is_better_is_returned():
    from nevergrad.optimization import recaster

    class Oracle(recaster.SequentialRecastOptimizer):
        """A library loop that evaluates three points and returns the optimum."""

        def get_optimization_function(self):
            def run(objective):
                for k in range(3):
                    objective(np.full(4, 0.1 * k))
                return np.asarray(SPHERE_SHIFT)  # u0 = 0 and sigma = 1: data == value

            return run

    count = []
    f = opf.OptimizationFunction(lambda u, p: count.append(1) or numpy_sphere(u, p), ad=None)
    prob = opf.OptimizationProblem(f, np.zeros(4), SPHERE_SHIFT)
    sol = opf.solve(prob, opf.Nevergrad(Oracle, seed=0), maxiters=50)
    assert sol.retcode is opf.ReturnCode.Success
    assert len(count) == sol.stats.fevals == 4
    assert sol.objective == sol.original.recommended_objective == 0.0
    np.testing.assert_array_equal(sol.u, SPHERE_SHIFT)
    assert "the best point is Nevergrad's recommendation, the budget's last" in sol.message


def test_a_recommendation_that_is_the_best_candidate_costs_no_evaluation():
    count = []
    f = opf.OptimizationFunction(lambda u, p: count.append(1) or numpy_sphere(u, p), ad=None)
    prob = opf.OptimizationProblem(f, np.zeros(4), SPHERE_SHIFT, lb=-5.0, ub=5.0)
    sol = opf.solve(prob, opf.Nevergrad("TwoPointsDE", seed=0), maxiters=300)
    assert len(count) == sol.stats.fevals == 300
    assert sol.original.recommended_objective == sol.objective
    np.testing.assert_array_equal(sol.u, sol.original.recommended_u)


# --------------------------------------------------------------------------- NumPy 2.4


def test_numpy_24_metamodel_regression_ngopt_on_small_problems(monkeypatch):
    # With NumPy >= 2.4, nevergrad 1.0.12's metamodel called float() on a one-element
    # array and NGOpt died with "only 0-dimensional arrays can be converted to Python
    # scalars"; optiframe gives that module NumPy < 2.4's conversion.
    converted = []
    lenient = patches._lenient_float

    def counting(x=0.0):
        if isinstance(x, np.ndarray) and x.ndim > 0:
            converted.append(x.shape)
        return lenient(x)

    monkeypatch.setattr(patches, "_lenient_float", counting)
    prob = opf.OptimizationProblem(shifted_sphere, jnp.zeros(3), jnp.asarray(SPHERE_SHIFT[:3]))
    sol = opf.solve(prob, opf.Nevergrad("NGOpt", seed=0), maxiters=300)
    assert "MetaModel" in sol.original.selected
    assert converted and set(converted) == {(1,)}  # the metamodel ran, on (1,) arrays
    assert sol.objective < 1e-6
    from nevergrad.optimization import metamodel

    monkeypatch.undo()
    opf.solve(prob, opf.Nevergrad("NGOpt", seed=0), maxiters=10)
    assert metamodel.float is patches._lenient_float


def test_lenient_float_converts_like_numpy_before_2_4():
    assert patches._lenient_float(np.array([2.5])) == 2.5
    assert patches._lenient_float(np.array([[3.0]])) == 3.0
    assert patches._lenient_float(np.float32(1.5)) == 1.5
    assert patches._lenient_float("4") == 4.0
    with pytest.raises(TypeError):
        patches._lenient_float(np.array([1.0, 2.0]))


# --------------------------------------------------------------------------- keywords


def test_callback_once_per_batch_exact_counts_and_termination():
    calls = []

    def callback(state, loss):
        calls.append(state)
        assert loss == state.objective == min(state.original.objectives)
        return state.iter == 3

    sol = opf.solve(
        sphere_problem(), opf.Nevergrad("TwoPointsDE", seed=1, num_workers=8), maxiters=500,
        callback=callback,
    )
    assert sol.retcode is opf.ReturnCode.Terminated
    assert "callback" in sol.message
    assert [s.iter for s in calls] == [1, 2, 3]
    assert (sol.stats.iterations, sol.stats.fevals) == (3, 24)
    step = calls[0].original
    assert isinstance(step, opf.NevergradStep)
    assert len(step.candidates) == len(step.us) == 8 and step.objectives.shape == (8,)
    assert step.optimizer.num_tell == 24
    assert calls[0].grad is None
    np.testing.assert_allclose(calls[0].p, SPHERE_SHIFT)


def test_budget_is_evaluations_and_a_partial_last_batch():
    count = []
    f = opf.OptimizationFunction(lambda u, p: count.append(1) or numpy_sphere(u, p), ad=None)
    prob = opf.OptimizationProblem(f, np.zeros(4), SPHERE_SHIFT, lb=-5.0, ub=5.0)
    sol = opf.solve(prob, opf.Nevergrad("PSO", seed=0, num_workers=8), maxiters=100)
    assert len(count) == sol.stats.fevals == 100
    # 99 candidates in batches of 8 (the last of 3), then PSO's recommendation is its best
    # candidate, so the last evaluation goes to one more candidate
    assert sol.stats.iterations == math.ceil(99 / 8) + 1
    assert sol.original.optimizer.num_tell == 100


def test_same_seed_same_result_other_seed_other_result():
    prob = sphere_problem()
    for name in ("NGOpt", "TwoPointsDE"):
        a = opf.solve(prob, opf.Nevergrad(name, seed=3, num_workers=4), maxiters=200)
        b = opf.solve(prob, opf.Nevergrad(name, seed=3, num_workers=4), maxiters=200)
        c = opf.solve(prob, opf.Nevergrad(name, seed=4, num_workers=4), maxiters=200)
        np.testing.assert_array_equal(a.u, b.u)
        assert a.objective == b.objective
        # (both may round to the same float32 u: the float64 objectives tell them apart)
        assert a.objective != c.objective


def test_cmafmin2_reproduces_by_seed():
    # Nevergrad's CmaFmin2 (which NGOpt picks for some problems) calls cma.fmin without a
    # seed, and cma seeds itself from the clock; optiframe passes one drawn from `seed`.
    prob = opf.OptimizationProblem(rastrigin, jnp.full(4, 2.0), lb=-5.12, ub=5.12)
    a, b, c = (opf.solve(prob, opf.Nevergrad("CmaFmin2", seed=s), maxiters=300)
               for s in (0, 0, 1))
    np.testing.assert_array_equal(a.u, b.u)
    assert not np.array_equal(a.u, c.u)


def test_string_names_and_case():
    prob = sphere_problem()
    for alg in ("nevergrad:CMA", "nevergrad:cma", "Nevergrad:TwoPointsDE", "nevergrad:DiagonalCMA"):
        sol = opf.solve(prob, alg, maxiters=20)
        assert isinstance(sol.alg, opf.Nevergrad)
        assert sol.stats.fevals == 20 and sol.stats.iterations in (19, 20)


def test_optimizer_classes_and_configured_optimizers():
    import nevergrad as ng

    prob = sphere_problem()
    sol = opf.solve(prob, opf.Nevergrad(ng.families.ParametrizedCMA(popsize=12), seed=0,
                                        num_workers=12), maxiters=600)
    assert sol.objective < 0.05
    assert sol.stats.iterations in (50, 51)  # 599 candidates in batches of 12, and the last
    sol = opf.solve(prob, opf.Nevergrad(ng.optimizers.registry["NGOpt"], seed=0), maxiters=50)
    assert sol.stats.fevals == 50


def test_max_sense_reports_fun_itself():
    prob = opf.OptimizationProblem(
        lambda u, p: 5.0 - shifted_sphere(u, p), jnp.zeros(4), jnp.asarray(SPHERE_SHIFT),
        lb=-5.0, ub=5.0, sense=opf.MaxSense,
    )
    sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0), maxiters=1000)
    assert sol.objective == pytest.approx(5.0, abs=1e-3)
    assert max_error(sol.u, SPHERE_SHIFT) < 0.05


# --------------------------------------------------------------------------- batches


def test_batches_are_one_vmapped_call_and_a_second_solve_does_not_retrace():
    traces = []

    def fun(u, p):
        traces.append(u.shape)  # runs only while JAX traces
        return shifted_sphere(u, p)

    prob = opf.OptimizationProblem(fun, jnp.zeros(4), jnp.asarray(SPHERE_SHIFT), lb=-5.0, ub=5.0)
    alg = opf.Nevergrad("TwoPointsDE", seed=0, num_workers=16)
    first = opf.solve(prob, alg, maxiters=100)  # 99 candidates: 7 batches, the last of 3
    assert first.stats.iterations in (7, 8)  # padded to 16; then the budget's last evaluation
    before = len(traces)
    opf.solve(prob, alg, maxiters=200)
    opf.solve(prob.remake(u0=jnp.ones(4), p=jnp.zeros(4)), alg, maxiters=50)
    assert len(traces) == before
    assert (4,) in traces  # traced per candidate inside vmap


def test_batched_and_host_evaluation_agree():
    jax_sol = opf.solve(sphere_problem(), opf.Nevergrad("PSO", seed=2, num_workers=8),
                        maxiters=400)
    host_sol = opf.solve(host_sphere_problem(), opf.Nevergrad("PSO", seed=2, num_workers=8),
                         maxiters=400)
    np.testing.assert_allclose(np.asarray(jax_sol.u), host_sol.u, atol=1e-3)
    assert isinstance(host_sol.u, np.ndarray) and host_sol.u.dtype == np.float64


def test_chunk_loops_inside_one_call_per_batch_with_the_vmap_result(monkeypatch):
    calls = []
    start = ngb.JaxEvaluator.start
    monkeypatch.setattr(
        ngb.JaxEvaluator, "start", lambda self, X: calls.append(len(X)) or start(self, X)
    )
    chunked = opf.solve(sphere_problem(), opf.Nevergrad("TwoPointsDE", seed=0, num_workers=16,
                                                        chunk=6), maxiters=40)
    # one call per batch, the last one partial; DE's recommendation is its best candidate,
    # so the budget's last evaluation goes to one more candidate
    assert calls == [16, 16, 7, 1]
    monkeypatch.undo()
    whole = opf.solve(sphere_problem(), opf.Nevergrad("TwoPointsDE", seed=0, num_workers=16),
                      maxiters=40)
    np.testing.assert_allclose(np.asarray(chunked.u), np.asarray(whole.u), rtol=1e-6)
    assert chunked.objective == pytest.approx(whole.objective, rel=1e-5, abs=1e-9)
    assert chunked.stats == dataclasses.replace(whole.stats, time=chunked.stats.time)


def test_executor_evaluations_start_as_soon_as_asked(monkeypatch):
    events = []
    ask = ngb._NevergradRun._ask
    monkeypatch.setattr(
        ngb._NevergradRun, "_ask", lambda self, opt: events.append("ask") or ask(self, opt)
    )

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, *args):
            events.append("submit")
            return super().submit(fn, *args)

    with Recording(2) as pool:
        opf.solve(host_sphere_problem(), opf.Nevergrad("TwoPointsDE", seed=0, num_workers=4,
                                                       executor=pool), maxiters=8)
    assert events == ["ask", "submit"] * 8


def test_thread_pool_executor_batch_mode_reproduces_the_sequential_run():
    alg = dict(seed=5, num_workers=4)
    sequential = opf.solve(host_sphere_problem(), opf.Nevergrad("TwoPointsDE", **alg), maxiters=200)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pooled = opf.solve(
            host_sphere_problem(), opf.Nevergrad("TwoPointsDE", executor=pool, **alg), maxiters=200
        )
        steady = opf.solve(
            host_sphere_problem(),
            opf.Nevergrad("TwoPointsDE", executor=pool, batch_mode=False, **alg),
            maxiters=200,
        )
    np.testing.assert_array_equal(pooled.u, sequential.u)
    assert steady.stats.fevals == 200 and steady.objective < 5.0  # f(u0) = 14.25


def test_dask_local_cluster_evaluates_in_worker_processes():
    distributed = pytest.importorskip("distributed")  # the test extra installs it

    def fun(u, p):  # defined here, so cloudpickle ships it by value
        return float(np.sum((np.asarray(u) - p) ** 2)), os.getpid()

    pids = set()
    f = opf.OptimizationFunction(fun, ad=None, has_aux=True)
    prob = opf.OptimizationProblem(f, np.zeros(4), SPHERE_SHIFT, lb=-5.0, ub=5.0)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=40,
    ) as cluster, distributed.Client(cluster) as client:
        alg = opf.Nevergrad("TwoPointsDE", seed=0, num_workers=8, executor=client.get_executor())
        sol = opf.solve(prob, alg, maxiters=160, callback=lambda s, loss: pids.add(s.aux))
    local = opf.solve(prob, opf.Nevergrad("TwoPointsDE", seed=0, num_workers=8), maxiters=160)
    assert sol.stats.fevals == 160
    assert pids and os.getpid() not in pids
    np.testing.assert_array_equal(sol.u, local.u)


# --------------------------------------------------------------------------- constraints


def test_hs71_within_one_percent_with_penalties():
    sol = opf.solve(hs71_problem(opf), opf.Nevergrad("CMA", seed=0), maxiters=3000)
    assert sol.retcode is opf.ReturnCode.MaxIters
    assert abs(sol.objective - HS71_MIN) / HS71_MIN < 0.01
    u = np.asarray(sol.u, float)
    assert np.prod(u) >= 25.0 - 1e-4 and abs(u @ u - 40.0) < 1e-4
    assert np.all((u >= 1.0) & (u <= 5.0))
    assert max_error(u, HS71_U_STAR) < 0.05


def test_inequality_constraints_cheap_and_penalty():
    f = opf.OptimizationFunction(
        lambda u, p: jnp.sum((u - 2.0) ** 2), cons=lambda u, p: jnp.array([u[0] + u[1]])
    )
    prob = opf.OptimizationProblem(f, jnp.zeros(2), lb=-3.0, ub=3.0, lcons=[-jnp.inf],
                                   ucons=[2.0])
    for mode in ("penalty", "cheap"):
        seen: list[float] = []
        sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0, constraints=mode), maxiters=600,
                        callback=lambda s, loss, seen=seen: seen.extend(s.original.violations))
        assert sol.objective == pytest.approx(2.0, abs=0.05), mode
        assert float(jnp.sum(sol.u)) <= 2.0 + 1e-6
        if mode == "cheap":  # candidates are resampled until they satisfy the constraint
            assert np.mean(np.asarray(seen) > 1e-6) < 0.05


def test_infeasible_constraints_return_infeasible():
    f = opf.OptimizationFunction(lambda u, p: jnp.sum(u**2), cons=lambda u, p: u[:1])
    prob = opf.OptimizationProblem(f, jnp.zeros(2), lb=-1.0, ub=1.0, lcons=[2.0], ucons=[3.0])
    sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0), maxiters=200)
    assert sol.retcode is opf.ReturnCode.Infeasible
    assert "no candidate met the constraints" in sol.message
    assert float(sol.u[0]) == pytest.approx(1.0)  # the least violating point


# --------------------------------------------------------------------------- the space


def test_integer_variables_land_on_integers():
    target = jnp.array([1.3, -2.7, 4.2])
    prob = opf.OptimizationProblem(
        lambda u, p: jnp.sum((u - p) ** 2), jnp.zeros(3), target, lb=-10.0, ub=10.0,
        integrality=np.array([True, True, False]),
    )
    seen = []
    sol = opf.solve(prob, opf.Nevergrad("NGOpt", seed=0), maxiters=600,
                    callback=lambda s, loss: seen.extend(s.original.us))
    u = np.asarray(sol.u)
    np.testing.assert_array_equal(u[:2], [1.0, -3.0])
    assert u[2] == pytest.approx(4.2, abs=0.1)
    assert all(np.all(x[:2] == np.round(x[:2])) for x in seen)


def test_pytree_parameters_keep_structure_and_dtypes():
    u0 = {"w": np.zeros(3), "b": [0.0, np.zeros(2, np.float32)]}
    prob = opf.OptimizationProblem(PYTREE.fun, u0, PYTREE.p, lb=-5.0, ub=5.0)
    sol = opf.solve(prob, opf.Nevergrad("CMA", seed=0, num_workers=8), maxiters=2000)
    assert jax.tree.structure(sol.u) == jax.tree.structure(u0)
    assert isinstance(sol.u["w"], np.ndarray) and sol.u["w"].dtype == np.float64
    assert isinstance(sol.u["b"][0], float)
    assert sol.u["b"][1].dtype == np.float32
    assert max_error(sol.u, PYTREE.u_star) < 0.01


def test_u0_is_the_starting_point_and_fixed_entries_stay_fixed():
    firsts = []
    prob = opf.OptimizationProblem(
        shifted_sphere, jnp.array([0.5, -1.0, 2.0, 3.0]), jnp.asarray(SPHERE_SHIFT),
        lb=jnp.array([-5.0, -5.0, -5.0, 3.0]), ub=jnp.array([5.0, 5.0, 5.0, 3.0]),
    )
    sol = opf.solve(prob, opf.Nevergrad("OnePlusOne", seed=0), maxiters=300,
                    callback=lambda s, loss: firsts.append(s.original.us[0]))
    np.testing.assert_allclose(firsts[0], [0.5, -1.0, 2.0, 3.0])  # OnePlusOne starts at u0
    assert all(x[3] == 3.0 for x in firsts)
    assert sol.original.optimizer.dimension == 3


@pytest.mark.parametrize("bounding", ["bouncing", "clipping", "arctan", "tanh", "constraint",
                                      "penalty"])
def test_every_bounding_keeps_evaluations_inside_the_bounds(bounding):
    seen = []
    prob = opf.OptimizationProblem(shifted_sphere, jnp.zeros(4), jnp.full(4, 3.0), lb=-1.0,
                                   ub=1.0)
    sol = opf.solve(prob, opf.Nevergrad("PSO", seed=0, num_workers=10, bounding=bounding),
                    maxiters=100, callback=lambda s, loss: seen.extend(s.original.us))
    assert len(seen) in (99, 100) and np.all(np.abs(np.asarray(seen)) <= 1.0)
    assert 16.0 <= sol.objective < 36.0  # f(u0) = 36; the optimum in the box, (1, 1, 1, 1), 16


def test_default_bounding_per_family():
    import nevergrad as ng

    r = ng.optimizers.registry
    families = {n: ngb.family(r[n]) for n in ("CMA", "DiagonalCMA", "TwoPointsDE", "PSO",
                                               "OnePlusOne", "NGOpt", "Cobyla", "RandomSearch")}
    assert families == {
        "CMA": "CMA", "DiagonalCMA": "CMA", "TwoPointsDE": "DE", "PSO": "PSO",
        "OnePlusOne": "OnePlusOne", "NGOpt": "NGOpt", "Cobyla": "recast",
        "RandomSearch": "other",
    }
    assert set(ngb.DEFAULT_BOUNDING) == set(families.values())


# --------------------------------------------------------------------------- robustness


def test_nonfinite_candidates_are_bad_values_not_the_end():
    fun = lambda u, p: jnp.where(u[0] > 0.0, jnp.nan, shifted_sphere(u, p))
    prob = opf.OptimizationProblem(fun, jnp.full(4, -1.0), jnp.asarray(-SPHERE_SHIFT), lb=-5.0,
                                   ub=5.0)
    sol = opf.solve(prob, opf.Nevergrad("TwoPointsDE", seed=0, num_workers=10), maxiters=500)
    assert sol.retcode is opf.ReturnCode.MaxIters
    assert np.isfinite(sol.objective) and float(sol.u[0]) <= 0.0
    assert sol.original.nonfinite > 0 and "NaN or inf" in sol.message


def test_recast_optimizer_that_converges_stops_with_success_and_threads_end():
    from nevergrad.optimization import recaster

    class ThreeSteps(recaster.SequentialRecastOptimizer):
        """A library loop that converges after three evaluations."""

        def get_optimization_function(self):
            dim = self.dimension

            def run(objective):
                for k in range(3):
                    objective(np.full(dim, 0.1 * k))
                return np.zeros(dim)

            return run

    before = threading.active_count()
    prob = opf.OptimizationProblem(shifted_sphere, jnp.zeros(4), jnp.asarray(SPHERE_SHIFT))
    sol = opf.solve(prob, opf.Nevergrad(ThreeSteps, seed=0), maxiters=50)
    assert sol.retcode is opf.ReturnCode.Success
    assert "stopping rule" in sol.message
    assert sol.stats.fevals == 4  # its output, u0, is not the best candidate: evaluated again
    short = opf.solve(prob, opf.Nevergrad("Cobyla", seed=0), maxiters=10)  # stopped mid-run
    assert short.retcode is opf.ReturnCode.MaxIters
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.01)
    assert threading.active_count() <= before


def test_noisy_objective_returns_the_recommendation():
    prob = sphere_problem()
    sol = opf.solve(prob, opf.Nevergrad("NGOpt", seed=0, noisy=True), maxiters=200)
    np.testing.assert_allclose(sol.u, sol.original.recommended_u)
    assert sol.stats.fevals == 200


def test_host_objective_errors_are_objective_errors():
    f = opf.OptimizationFunction(lambda u, p: np.asarray(u), ad=None)
    with pytest.raises(opf.ObjectiveError, match="must return a scalar"):
        opf.solve(opf.OptimizationProblem(f, np.zeros(2)), opf.Nevergrad("CMA"), maxiters=5)
    g = opf.OptimizationFunction(lambda u, p: 1 / 0, ad=None)
    with pytest.raises(opf.ObjectiveError, match="ZeroDivisionError"):
        opf.solve(opf.OptimizationProblem(g, np.zeros(2)), opf.Nevergrad("CMA"), maxiters=5)


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_close_matches():
    with pytest.raises(opf.InvalidProblemError, match=r"'CMAA'.*Did you mean 'CMA'"):
        opf.solve(sphere_problem(), opf.Nevergrad("CMAA"), maxiters=5)
    with pytest.raises(opf.InvalidProblemError, match=r"Did you mean.*'TwoPointsDE'"):
        opf.solve(sphere_problem(), "nevergrad:TwoPointDE", maxiters=5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_workers=0), r"num_workers=0.*positive integer"),
        (dict(seed=-1), r"seed=-1"),
        (dict(executor=object()), r"executor=.*submit"),
        (dict(bounding="clip"), r"bounding='clip'.*'clipping'"),
        (dict(constraint="cheap"), r"'constraint' \(did you mean 'constraints'\?\)"),
        (dict(constraints="hard"), r"constraints='hard'"),
        (dict(penalty_style=(1, 2)), r"penalty_style=.*6 numbers"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.Nevergrad("CMA", **kwargs)


def test_unsupported_combinations():
    prob = sphere_problem()
    cases = [
        (dict(alg=opf.Nevergrad("Cobyla", num_workers=4), maxiters=5),
         opf.UnsupportedFeatureError, r"Cobyla evaluates one candidate at a time"),
        (dict(alg=opf.Nevergrad("CMA", batch_mode=False), maxiters=5),
         opf.UnsupportedFeatureError, r"batch_mode=False.*needs an executor"),
        (dict(alg=opf.Nevergrad("CMA"), maxiters=5, abstol=1e-3),
         opf.UnsupportedFeatureError, r"does not support the `abstol` keyword"),

    ]
    for kwargs, error, match in cases:
        alg = kwargs.pop("alg")
        with pytest.raises(error, match=match):
            opf.solve(prob, alg, **kwargs)
    loader = opf.DataLoader(jnp.zeros((8, 4)), batch_size=4)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"does not support a data iterator"):
        opf.solve(opf.OptimizationProblem(shifted_sphere, jnp.zeros(4), loader),
                  opf.Nevergrad("CMA"), maxiters=5)
    warm = opf.solve(prob, opf.Nevergrad("CMA"), maxiters=5)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"`warm_start` keyword"):
        opf.solve(prob, opf.Nevergrad("CMA"), maxiters=5, warm_start=warm)
    f = opf.OptimizationFunction(lambda u, p: jnp.sum(u**2), cons=lambda u, p: u[:1])
    eq = opf.OptimizationProblem(f, jnp.zeros(2), lcons=[0.5], ucons=[0.5])
    with pytest.raises(opf.UnsupportedFeatureError, match=r"constraints='cheap'.*equality"):
        opf.solve(eq, opf.Nevergrad("CMA", constraints="cheap"), maxiters=5)
    with pytest.raises(opf.InvalidProblemError, match=r"optimizer instance"):
        import nevergrad as ng

        opf.solve(prob, opf.Nevergrad(ng.optimizers.CMA(4, budget=5)), maxiters=5)


def test_repr_and_constructor_is_cheap():
    alg = opf.Nevergrad("CMA", seed=1, num_workers=8, bounding="clipping")
    assert repr(alg) == "Nevergrad('CMA', seed=1, num_workers=8, bounding='clipping')"
    assert alg.capabilities.bounds and alg.capabilities.constraints
    assert alg.capabilities.integrality and not alg.capabilities.data
