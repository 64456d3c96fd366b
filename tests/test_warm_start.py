"""fit_warm_start / WarmStart: the training tasks are solved as one ensemble, the fitted map
predicts starts shaped like u0 (one at a time or batched), the solver always runs after it,
and on held-out tasks it saves L-BFGS-B evaluations without changing the answers."""

import concurrent.futures
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import optiframe as opf
from optiframe.warm_start import WARM_RELTOL

X64 = jax.config.jax_enable_x64
N = 4  # variables of the chained-Rosenbrock family


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """OpenBLAS on one thread while these tests run: L-BFGS-B's BLAS calls are tiny, and on
    two busy cores OpenBLAS's threads made each solve 10-100x slower (a no-op without
    threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def chained(u, p):
    """Σ b_i (u_{i+1} - u_i²)² + Σ (a_i - u_i)²: a minimum near 1 that moves with p."""
    return jnp.sum(p["b"] * (u[1:] - u[:-1] ** 2) ** 2) + jnp.sum((p["a"] - u) ** 2)


def chained_numpy(u, a, b):
    """`chained` and its gradient in NumPy."""
    r = u[1:] - u[:-1] ** 2
    grad = 2 * (u - a)
    grad[1:] += 2 * b * r
    grad[:-1] -= 4 * b * r * u[:-1]
    return np.sum(b * r**2) + np.sum((a - u) ** 2), grad


def sample_p(key):
    ka, kb = jax.random.split(key)
    return {"a": jax.random.uniform(ka, (N,), minval=0.5, maxval=1.5),
            "b": jax.random.uniform(kb, (N - 1,), minval=10.0, maxval=100.0)}


ROSEN = opf.ProblemFamily(
    opf.OptimizationProblem(chained, jnp.zeros(N), {"a": jnp.ones(N), "b": jnp.full(N - 1, 50.0)}),
    sample_p,
)


def quadratic(u, p):
    """Minimum at u["w"] = scale, u["c"] = shift: a map p -> u* the MLP can learn."""
    scale, shift = p
    return jnp.sum((u["w"] - scale) ** 2) + jnp.sum((u["c"] - shift) ** 2)


def sample_quadratic(key):
    ks, kc = jax.random.split(key)
    return (jax.random.uniform(ks, (), minval=-1.0, maxval=1.0),
            jax.random.uniform(kc, (3,), minval=-1.0, maxval=1.0))


# u0: a JAX leaf in the default float dtype and a NumPy float64 leaf; p: a tuple pytree
QUAD = opf.ProblemFamily(
    opf.OptimizationProblem(quadratic, {"w": jnp.zeros((2, 2)), "c": np.zeros(3)},
                            (jnp.asarray(0.0), jnp.zeros(3))),
    sample_quadratic,
)


def slices(ps, n):
    return [jax.tree.map(lambda x, i=i: x[i], ps) for i in range(n)]


def median_fevals(esol):
    return statistics.median(sol.stats.fevals for sol in esol)


@pytest.fixture(scope="module")
def rosen_ws():
    return opf.fit_warm_start(ROSEN, opf.LBFGSB(), n=96, seed=0, hidden=(32, 32), steps=1000)


@pytest.fixture(scope="module")
def quad_ws():
    return opf.fit_warm_start(QUAD, "L-BFGS-B", n=32, seed=0, hidden=(16,), steps=500)


@pytest.fixture(scope="module")
def held_out():
    """24 tasks drawn with another key than any fit's."""
    return ROSEN.draw(jax.random.key(12345), 24)


# ------------------------------------------------------------------------------- training


def test_training_tasks_are_solved_as_one_ensemble_to_scipys_optima(rosen_ws):
    training = rosen_ws.training
    assert isinstance(training, opf.EnsembleSolution) and len(training) == 96
    assert training.u.shape == (96, N) and training.alg == opf.LBFGSB()
    assert np.array_equal(rosen_ws.used, training.successful) and rosen_ws.used.all()
    ps = training.ensemble.ps
    assert np.all((ps["a"] >= 0.5) & (ps["a"] <= 1.5)) and len(np.unique(ps["a"][:, 0])) == 96
    for i in (0, 37, 95):  # raw SciPy on NumPy, float64, with the same tolerance
        a, b = np.asarray(ps["a"][i], np.float64), np.asarray(ps["b"][i], np.float64)
        ref = scipy.optimize.minimize(chained_numpy, np.zeros(N), args=(a, b), jac=True,
                                      method="L-BFGS-B", options={"ftol": WARM_RELTOL})
        assert abs(training.objective[i] - ref.fun) <= 1e-9 * max(abs(ref.fun), 1.0)
        np.testing.assert_allclose(training.u[i], ref.x, atol=1e-4)
    # the MLP was fitted by solve itself, to the standardized solutions of the used tasks
    xs, ys = rosen_ws.fit.problem.p
    assert xs.shape == (96, 2 * N - 1) and ys.shape == (96, N)
    assert rosen_ws.fit.stats.iterations == 1000 and rosen_ws.fit.objective < 1e-3


def test_tasks_that_did_not_succeed_are_left_out_of_the_fit():
    ws = opf.fit_warm_start(ROSEN, opf.LBFGSB(), n=24, seed=1, hidden=(8,), steps=50,
                            maxiters=25)  # about half need more (21-30 iterations)
    codes = {code for code in ws.training.retcodes}
    assert codes == {opf.ReturnCode.Success, opf.ReturnCode.MaxIters}, codes
    assert np.array_equal(ws.used, ws.training.successful)
    assert ws.fit.problem.p[0].shape[0] == ws.used.sum() < 24
    assert ws.solve_kwargs == {"reltol": WARM_RELTOL, "maxiters": 25}
    with pytest.raises(opf.OptiframeError, match=r"0 of 8 training solves.*MaxIters: 8"):
        opf.fit_warm_start(ROSEN, opf.LBFGSB(), n=8, maxiters=1)


def test_a_seed_reproduces_a_warm_start_and_another_differs(quad_ws):
    again = opf.fit_warm_start(QUAD, "L-BFGS-B", n=32, seed=0, hidden=(16,), steps=500)
    for old, new in zip(jax.tree.leaves(quad_ws.weights), jax.tree.leaves(again.weights)):
        np.testing.assert_array_equal(old, new)
    other = opf.fit_warm_start(QUAD, "L-BFGS-B", n=32, seed=1, hidden=(16,), steps=10)
    assert not np.allclose(other.training.ensemble.ps[1], quad_ws.training.ensemble.ps[1])


def test_an_executor_runs_the_training_members(quad_ws):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ws = opf.fit_warm_start(QUAD, "L-BFGS-B", n=32, seed=0, hidden=(16,), steps=500,
                                executor=pool)
    for old, new in zip(jax.tree.leaves(quad_ws.training.u), jax.tree.leaves(ws.training.u)):
        np.testing.assert_array_equal(old, new)


def test_an_on_device_algorithm_solves_the_training_ensemble():
    ws = opf.fit_warm_start(QUAD, optax.adam(0.1), n=16, hidden=(8,), steps=300,
                            maxiters=2000, abstol=1e-4)
    assert ws.solve_kwargs == {"maxiters": 2000, "abstol": 1e-4}  # no L-BFGS-B tolerance
    assert ws.used.all()
    np.testing.assert_allclose(ws.training.u["c"], ws.training.ensemble.ps[1], atol=1e-3)
    sol = ws.solve(QUAD.prob.p)
    assert sol.retcode is opf.ReturnCode.Success and sol.alg is ws.alg


# ----------------------------------------------------------------------------- prediction


def test_predictions_have_u0s_structure_types_and_dtypes(quad_ws):
    ps, _ = QUAD.draw(jax.random.key(7), 5)
    u0 = quad_ws(slices(ps, 1)[0])
    assert jax.tree.structure(u0) == jax.tree.structure(QUAD.prob.u0)
    assert isinstance(u0["w"], jax.Array) and u0["w"].dtype == jnp.result_type(float)
    assert isinstance(u0["c"], np.ndarray) and u0["c"].dtype == np.float64
    assert u0["w"].shape == (2, 2) and u0["c"].shape == (3,)
    u0s = quad_ws.batch(ps)
    assert jax.tree.structure(u0s) == jax.tree.structure(QUAD.prob.u0)
    assert u0s["w"].shape == (5, 2, 2) and u0s["c"].shape == (5, 3)
    assert isinstance(u0s["c"], np.ndarray) and u0s["w"].dtype == u0["w"].dtype
    # a learnable map: the starts are close to the optimum (scale, shift)
    np.testing.assert_allclose(u0s["w"], np.broadcast_to(ps[0][:, None, None], (5, 2, 2)),
                               atol=0.05)  # measured: 0.002 (0.001 in float64)
    np.testing.assert_allclose(u0s["c"], ps[1], atol=0.05)


def test_batch_equals_stacking_single_predictions(rosen_ws, held_out):
    ps, _ = held_out
    stacked = np.stack([rosen_ws(p) for p in slices(ps, 24)])
    rounding = 1e-12 if X64 else 1e-5
    np.testing.assert_allclose(rosen_ws.batch(ps), stacked, rtol=rounding, atol=rounding)


def test_problem_and_ensemble_start_from_the_prediction(rosen_ws, held_out):
    ps, _ = held_out
    p = slices(ps, 1)[0]
    prob = rosen_ws.problem(p)
    np.testing.assert_array_equal(prob.u0, rosen_ws(p))
    np.testing.assert_array_equal(prob.p["b"], p["b"])
    assert prob.f is ROSEN.prob.f
    ens = rosen_ws.ensemble(ps)
    assert isinstance(ens, opf.EnsembleProblem) and len(ens) == 24
    np.testing.assert_array_equal(ens.u0s, rosen_ws.batch(ps))


def test_predictions_stay_inside_the_bounds():
    """Solutions on the bounds (u* = clip(p, -0.3, 0.3)); far outside the training range
    the map predicts ~±20, clipped into the box. (In float32, -0.3 and 0.3 round outwards:
    the clip rounds them inwards.)"""
    box = opf.OptimizationProblem(lambda u, p: jnp.sum((u - p) ** 2), jnp.zeros(2),
                                  jnp.zeros(2), lb=-0.3, ub=0.3)
    family = opf.ProblemFamily(
        box, lambda key: jax.random.uniform(key, (2,), minval=-0.6, maxval=0.6)
    )
    ws = opf.fit_warm_start(family, opf.LBFGSB(), n=24, hidden=(8,), steps=200)
    far = jnp.asarray([[-50.0, 50.0], [50.0, -50.0], [0.1, -0.1]])
    inside = lambda u: np.all(np.abs(np.asarray(u, np.float64)) <= 0.3)  # in float64
    u0s = np.asarray(ws.batch(far))
    assert inside(u0s) and inside(ws(far[0]))
    np.testing.assert_allclose(u0s[:2], [[-0.3, 0.3], [0.3, -0.3]], rtol=1e-6)
    assert len(ws.ensemble(far)) == 3  # (EnsembleProblem checks every start is in the box)
    assert ws.solve(far[1]).retcode is opf.ReturnCode.Success


# ------------------------------------------------------------------------------ solving


def test_solve_runs_the_solver_from_the_prediction(rosen_ws, held_out):
    p = slices(held_out[0], 1)[0]
    sol = rosen_ws.solve(p)
    direct = opf.solve(ROSEN.prob.remake(p=p, u0=rosen_ws(p)), opf.LBFGSB(),
                       reltol=WARM_RELTOL)
    assert sol.retcode is opf.ReturnCode.Success and sol.stats.iterations > 0
    np.testing.assert_array_equal(sol.u, direct.u)
    assert sol.objective == direct.objective
    assert (sol.stats.iterations, sol.stats.fevals) == (
        direct.stats.iterations, direct.stats.fevals
    )
    np.testing.assert_array_equal(sol.problem.u0, rosen_ws(p))
    capped = rosen_ws.solve(p, maxiters=2)  # keywords pass through, and win
    assert capped.retcode is opf.ReturnCode.MaxIters and capped.stats.iterations == 2


def test_warm_start_saves_evaluations_on_held_out_tasks(rosen_ws, held_out):
    ps, zeros = held_out
    cold = opf.solve(opf.EnsembleProblem(ROSEN.prob, ps=ps, u0s=zeros), rosen_ws.alg,
                     **rosen_ws.solve_kwargs)
    warm = opf.solve(rosen_ws.ensemble(ps), rosen_ws.alg, **rosen_ws.solve_kwargs)
    assert cold.successful.all() and warm.successful.all()
    # measured: 17.5 against 31.5 (16 against 31 in float64)
    assert median_fevals(warm) <= 0.75 * median_fevals(cold)
    fstar = cold.objective
    assert np.all(np.abs(warm.objective - fstar) <= 1e-6 * np.maximum(np.abs(fstar), 1.0))
    # and the map learned more than the mean solution
    mean = np.mean(rosen_ws.training.u, axis=0)
    error = np.abs(rosen_ws.batch(ps) - cold.u).mean()
    assert error < 0.25 * np.abs(mean - cold.u).mean()  # measured: 0.08x (0.03x in float64)


def test_lbfgsb_warm_path_tightens_reltol_unless_given(rosen_ws, quad_ws):
    assert rosen_ws.solve_kwargs == {"reltol": WARM_RELTOL} == quad_ws.solve_kwargs
    fit = lambda alg, **kw: opf.fit_warm_start(QUAD, alg, n=4, hidden=(4,), steps=5, **kw)
    assert fit(opf.LBFGSB(), reltol=1e-6).solve_kwargs == {"reltol": 1e-6}
    assert fit(opf.LBFGSB(ftol=1e-8)).solve_kwargs == {}
    assert fit(opf.LBFGSB(), ftol=1e-8).solve_kwargs == {"ftol": 1e-8}
    assert fit(opf.BFGS()).solve_kwargs == {}


def test_repr(rosen_ws):
    assert repr(rosen_ws) == (
        "WarmStart(ScipyMinimize('L-BFGS-B'), linear + MLP 7-32-32-4, fitted to 96 of 96 tasks)"
    )


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), r"fit_warm_start\(n=1\)`: a fit needs at least 2"),
    (dict(n=0), r"fit_warm_start\(n=0\)` must be a positive integer"),
    (dict(n=2.5), r"fit_warm_start\(n=2.5\)` must be a positive integer"),
    (dict(n=8, seed=-1), r"fit_warm_start\(seed=-1\)`"),
    (dict(n=8, hidden=64), r"fit_warm_start\(hidden=64\)` must be a tuple"),
    (dict(n=8, hidden=(0,)), r"fit_warm_start\(hidden=0\)`"),
    (dict(n=8, steps=0), r"fit_warm_start\(steps=0\)`"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.fit_warm_start(QUAD, opf.LBFGSB(), **kwargs)


def test_a_family_and_an_algorithm_are_required():
    with pytest.raises(opf.InvalidProblemError, match=r"must be an opf.ProblemFamily.*"
                       r"OptimizationProblem; wrap the problem"):
        opf.fit_warm_start(QUAD.prob, opf.LBFGSB(), n=8)
    with pytest.raises(opf.OptiframeError, match=r"Unknown algorithm name 'L-BFGS'"):
        opf.fit_warm_start(QUAD, "L-BFGS", n=8)
    no_p = opf.ProblemFamily(opf.OptimizationProblem(lambda u, p: jnp.sum(u**2), jnp.ones(2)),
                             lambda key: None)
    with pytest.raises(opf.InvalidProblemError, match=r"p has no arrays"):
        opf.fit_warm_start(no_p, opf.LBFGSB(), n=8)


def test_parameters_of_the_wrong_shape_are_refused(rosen_ws, held_out):
    ps, _ = held_out
    p = slices(ps, 1)[0]
    with pytest.raises(opf.InvalidProblemError,
                       match=r"WarmStart\(p\)`: p\['a'\] has shape \(3,\).*shape \(4,\)"):
        rosen_ws({"a": jnp.ones(3), "b": p["b"]})
    with pytest.raises(opf.InvalidProblemError, match=r"pytree structure"):
        rosen_ws({"a": p["a"]})
    with pytest.raises(opf.InvalidProblemError, match=r"p\['a'\] has shape \(24, 4\)"):
        rosen_ws(ps)  # a batch given to ws(p)
    with pytest.raises(opf.InvalidProblemError,
                       match=r"WarmStart.batch\(ps\)`.*leading axis of N tasks"):
        rosen_ws.batch(p)  # one task given to ws.batch
    with pytest.raises(opf.InvalidProblemError, match=r"p\['b'\] has shape \(23, 3\)"):
        rosen_ws.batch({"a": ps["a"], "b": ps["b"][:23]})
    with pytest.raises(opf.InvalidProblemError, match=r"ProblemFamily"):
        opf.WarmStart(QUAD.prob, opf.LBFGSB(), [], None)
