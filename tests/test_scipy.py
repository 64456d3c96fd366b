"""The SciPy backend: local methods, constraints, global methods, least squares,
composites, and every unsupported combination."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import optiframe as opf
from optiframe.backends.scipy import METHODS
from problems import (
    COVARIANCE,
    EXPECTED_RETURNS,
    HS71_MIN,
    QUADRATIC,
    ROSENBROCK,
    beale,
    hs71_problem,
    max_error,
    portfolio_problem,
    quadratic,
    rastrigin,
)

ALL_METHODS = [spec.name for spec in METHODS.values()]
GRADIENT_METHODS = [spec.name for spec in METHODS.values() if spec.grad]


def make(problem, **kwargs):
    return opf.OptimizationProblem(problem.fun, problem.u0, problem.p, **kwargs)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_solves_a_convex_quadratic(method):
    sol = opf.solve(make(QUADRATIC), opf.ScipyMinimize(method), maxiters=1000)
    assert sol.retcode is opf.ReturnCode.Success, sol.message
    assert max_error(sol.u, QUADRATIC.u_star) < 2e-3
    assert isinstance(sol.original, scipy.optimize.OptimizeResult)
    assert sol.u.dtype == QUADRATIC.u0.dtype


@pytest.mark.parametrize(
    "method", [m for m in GRADIENT_METHODS if m not in ("dogleg", "CG")] + ["Nelder-Mead"]
)
def test_rosenbrock(method):
    sol = opf.solve(make(ROSENBROCK), method, maxiters=5000)
    assert sol.retcode is opf.ReturnCode.Success, sol.message
    assert max_error(sol.u, ROSENBROCK.u_star) < 1e-3


def test_dogleg_needs_a_positive_definite_hessian():
    sol = opf.solve(make(ROSENBROCK), opf.Dogleg(), maxiters=100)
    assert sol.retcode is opf.ReturnCode.Failure
    assert "non-psd Hessian" in sol.message and "SciPy status 3" in sol.message


def test_shortcuts_and_names():
    assert opf.LBFGSB() == opf.ScipyMinimize("L-BFGS-B") == opf.ScipyMinimize("l-bfgs-b")
    assert opf.TrustConstr(verbose=0) == opf.ScipyMinimize("trust-constr", verbose=0)
    for name in ("L-BFGS-B", "scipy:SLSQP", "scipy:trust-krylov", "nelder-mead"):
        assert isinstance(opf.solve(make(QUADRATIC), name, maxiters=5).alg, opf.ScipyMinimize)
    with pytest.raises(opf.OptiframeError, match=r"'LBGFS-B'.*Did you mean 'L-BFGS-B'"):
        opf.ScipyMinimize("LBGFS-B")
    with pytest.raises(opf.OptiframeError, match=r"Did you mean 'SLSQP'"):
        opf.solve(make(QUADRATIC), "scipy:SLSQQP")


def test_the_gradient_comes_from_one_fused_call(monkeypatch):
    seen = {}
    real = scipy.optimize.minimize

    def spy(fun, x0, **kwargs):
        seen.update(kwargs)
        out = fun(x0)
        assert isinstance(out, tuple) and len(out) == 2 and out[1].dtype == np.float64
        return real(fun, x0, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    sol = opf.solve(make(ROSENBROCK), opf.LBFGSB(), maxiters=200)
    assert seen["jac"] is True and "hess" not in seen
    assert sol.stats.fevals == sol.stats.gevals == sol.original.nfev + 1  # + the spy's call


def test_counts_are_scipys():
    sol = opf.solve(make(ROSENBROCK), opf.BFGS(), maxiters=200)
    assert sol.stats.iterations == sol.original.nit
    assert sol.stats.fevals == sol.original.nfev == sol.original.njev == sol.stats.gevals
    newton = opf.solve(make(ROSENBROCK), opf.NewtonCG(), maxiters=200)
    assert newton.stats.hevals == newton.original.nhev > 0
    exact = opf.solve(make(ROSENBROCK), opf.TrustExact(), maxiters=200)
    assert exact.stats.hevals == exact.original.nhev > 0


def test_lbfgsb_uses_no_more_evaluations_than_raw_scipy():
    fun = jax.jit(jax.value_and_grad(lambda x: beale(x, None)))
    x0 = np.array([1.0, 1.0])
    raw = scipy.optimize.minimize(
        lambda x: tuple(np.asarray(v, float) for v in fun(x)),
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-4.5, 4.5)] * 2,
    )
    prob = opf.OptimizationProblem(beale, jnp.asarray(x0), lb=-4.5, ub=4.5)
    sol = opf.solve(prob, opf.LBFGSB())
    assert sol.original.nfev <= raw.nfev
    np.testing.assert_allclose(sol.u, [3.0, 0.5], atol=1e-4)


@pytest.mark.parametrize("alg", [opf.LBFGSB(), opf.SLSQP(), opf.Powell()], ids=repr)
def test_beale_from_inside_its_bounds(alg):
    # (Powell from (1, 1) ends at (-2.04, 1.37), f = 1.10, in raw SciPy as well.)
    prob = opf.OptimizationProblem(beale, jnp.array([0.5, 0.5]), lb=-4.5, ub=4.5)
    sol = opf.solve(prob, alg)
    assert sol.retcode is opf.ReturnCode.Success
    np.testing.assert_allclose(sol.u, [3.0, 0.5], atol=2e-3)


@pytest.mark.parametrize(
    "method", ["L-BFGS-B", "TNC", "Powell", "Nelder-Mead", "SLSQP", "trust-constr"]
)
def test_bounds_hold_the_solution_on_the_box(method):
    sol = opf.solve(make(QUADRATIC, lb=0.0, ub=2.0), opf.ScipyMinimize(method), maxiters=2000)
    np.testing.assert_allclose(sol.u, [1.0, 0.0, 2.0], atol=2e-3)
    assert np.all((np.asarray(sol.u) >= 0.0) & (np.asarray(sol.u) <= 2.0))


def test_named_parameters_with_dict_bounds():
    def named_rosenbrock(u, p):
        return (1.0 - u["x"]) ** 2 + 100.0 * (u["y"] - u["x"] ** 2) ** 2

    prob = opf.OptimizationProblem(
        named_rosenbrock,
        {"x": 0.0, "y": 0.0},
        lb={"x": -2.0, "y": -1.0},
        ub={"x": 2.0, "y": 3.0},
    )
    sol = opf.solve(prob, "L-BFGS-B")
    assert set(sol.u) == {"x", "y"} and isinstance(sol.u["x"], float)
    assert sol.u["x"] == pytest.approx(1.0, abs=1e-4) and sol.u["y"] == pytest.approx(1.0, abs=1e-4)


def test_mlp_regression_with_bounds():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(160, 3))
    y = X @ np.array([2.0, -1.5, 0.8]) + 0.1 * rng.normal(size=160)

    def loss(u, p):
        h = jax.nn.relu(X @ u["W1"] + u["b1"])
        pred = (h @ u["W2"] + u["b2"]).ravel()
        return jnp.mean((pred - y) ** 2) + 0.01 * (jnp.sum(u["W1"] ** 2) + jnp.sum(u["W2"] ** 2))

    keys = jax.random.split(jax.random.key(0), 2)
    u0 = {
        "W1": 0.5 * jax.random.normal(keys[0], (3, 5)),
        "b1": jnp.zeros(5),
        "W2": 0.5 * jax.random.normal(keys[1], (5, 1)),
        "b2": jnp.zeros(1),
    }
    assert sum(x.size for x in jax.tree.leaves(u0)) == 26
    lb = {"W1": -2.0, "b1": -1.0, "W2": -2.0, "b2": -1.0}
    ub = {"W1": 2.0, "b1": 1.0, "W2": 2.0, "b2": 1.0}
    prob = opf.OptimizationProblem(loss, u0, lb=lb, ub=ub)
    sol = opf.solve(prob, opf.LBFGSB(), maxiters=1000)
    assert sol.retcode is opf.ReturnCode.Success
    assert sol.objective < 0.15  # the tutorial reached 0.0957; the noise floor is 0.01
    assert all(np.all(np.abs(np.asarray(sol.u[k])) <= 2.0) for k in ("W1", "W2"))


@pytest.mark.parametrize("method", ["SLSQP", "trust-constr"])
def test_hock_schittkowski_71(method):
    sol = opf.solve(hs71_problem(opf), opf.ScipyMinimize(method), maxiters=1000)
    assert sol.retcode is opf.ReturnCode.Success, sol.message
    assert sol.objective == pytest.approx(HS71_MIN, abs=1e-4)
    u = np.asarray(sol.u, float)
    assert u.prod() >= 25 - 1e-4 and np.sum(u**2) == pytest.approx(40, abs=1e-4)


def raw_hs71(method: str) -> scipy.optimize.OptimizeResult:
    """SciPy on NumPy alone, float64: HS71 with the same start, bounds and constraints."""

    def fun(x):
        return x[0] * x[3] * (x[0] + x[1] + x[2]) + x[2]

    cons = scipy.optimize.NonlinearConstraint(
        lambda x: np.array([x[0] * x[1] * x[2] * x[3], np.sum(x**2)]), [25.0, 40.0],
        [np.inf, 40.0],
    )
    return scipy.optimize.minimize(
        fun, np.array([1.0, 5.0, 5.0, 1.0]), method=method, bounds=[(1.0, 5.0)] * 4,
        constraints=[cons], options={"maxiter": 1000},
    )


def test_hock_schittkowski_71_with_cobyqa_ends_where_raw_scipy_does():
    # COBYQA ends 4e-4 outside the constraints here, in raw SciPy too (its default
    # feasibility tolerance is sqrt(eps) absolute): optiframe reports it, in either
    # precision, as SciPy computes it in float64.
    raw = raw_hs71("COBYQA")
    sol = opf.solve(hs71_problem(opf), opf.COBYQA(), maxiters=1000)
    # COBYQA's path turns on rounding (an order of operations apart, it ends 2e-5 away):
    # the same end to 1e-4, short of the optimum 17.0140173 and infeasible, as raw SciPy.
    np.testing.assert_allclose(np.asarray(sol.u, float), raw.x, rtol=1e-4)
    assert sol.objective == pytest.approx(raw.fun, rel=1e-6) and raw.fun < HS71_MIN
    assert not raw.success and sol.retcode is opf.ReturnCode.Infeasible


@pytest.mark.parametrize("method", ["SLSQP", "trust-constr"])
def test_portfolio_is_solved_to_a_feasible_optimum(method):
    sol = opf.solve(portfolio_problem(opf), opf.ScipyMinimize(method), maxiters=500)
    w = np.asarray(sol.u, float)
    assert sol.retcode is opf.ReturnCode.Success, sol.message
    assert w.sum() == pytest.approx(1.0, abs=1e-6)  # the tutorial's wrapper returned 1.19
    assert w @ EXPECTED_RETURNS >= 0.10 - 1e-6
    assert np.all(w >= -1e-8) and np.all(w <= 1 + 1e-8)
    # The optimum: the constrained minimiser of w' C w (checked against SLSQP in float64).
    assert sol.objective == pytest.approx(0.0289340, abs=2e-6)
    assert w @ COVARIANCE @ w == pytest.approx(sol.objective, rel=1e-6)


def test_infeasible_constraints_are_reported():
    f = opf.OptimizationFunction(quadratic, cons=lambda u, p: jnp.array([u.sum(), u.sum()]))
    prob = opf.OptimizationProblem(
        f, QUADRATIC.u0, QUADRATIC.p, lcons=[1.0, -jnp.inf], ucons=[jnp.inf, 0.0]
    )
    sol = opf.solve(prob, opf.SLSQP(), maxiters=100)
    assert sol.retcode is opf.ReturnCode.Infeasible
    assert "violated by" in sol.message


@pytest.mark.parametrize(
    "alg, match",
    [
        (opf.LBFGSB(), r"does not support constraints.*'COBYLA', 'COBYQA'"),
        (opf.BFGS(), r"does not support constraints"),
    ],
    ids=["L-BFGS-B", "BFGS"],
)
def test_constraints_to_a_method_without_them(alg, match):
    f = opf.OptimizationFunction(quadratic, cons=lambda u, p: jnp.array([u.sum()]))
    prob = opf.OptimizationProblem(f, QUADRATIC.u0, QUADRATIC.p, lcons=[0.0], ucons=[1.0])
    with pytest.raises(opf.UnsupportedFeatureError, match=match):
        opf.solve(prob, alg)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if not METHODS[m.lower()].bounds])
def test_bounds_to_a_method_without_them(method):
    with pytest.raises(opf.UnsupportedFeatureError, match=r"box bounds.*'L-BFGS-B'"):
        opf.solve(make(QUADRATIC, lb=0.0, ub=2.0), opf.ScipyMinimize(method))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_a_data_iterator_to_any_method(method):
    prob = opf.OptimizationProblem(quadratic, QUADRATIC.u0, opf.DataLoader(jnp.ones((4, 3)), 2))
    with pytest.raises(opf.UnsupportedFeatureError, match=r"data iterator.*full data set as p"):
        opf.solve(prob, opf.ScipyMinimize(method), epochs=1)


@pytest.mark.parametrize(
    "method, keyword", [("Powell", "abstol"), ("Nelder-Mead", "reltol"), ("SLSQP", "reltol")]
)
def test_a_tolerance_a_method_lacks_is_refused(method, keyword):
    with pytest.raises(opf.UnsupportedFeatureError, match=rf"`{keyword}` keyword"):
        opf.solve(make(QUADRATIC), opf.ScipyMinimize(method), **{keyword: 1e-6})


@pytest.fixture
def seen(monkeypatch):
    """The `options=` that `scipy.optimize.minimize` receives, updated at every call."""
    options = {}
    real = scipy.optimize.minimize

    def spy(*args, **kwargs):
        options.update(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    return options


def test_tolerances_reach_scipys_options(seen):
    opf.solve(make(QUADRATIC), opf.LBFGSB(maxcor=5), maxiters=7, abstol=1e-3, reltol=1e-4)
    assert seen == {"maxcor": 5, "maxiter": 7, "gtol": 1e-3, "ftol": 1e-4}
    opf.solve(make(QUADRATIC), opf.TNC(), maxiters=9)
    assert seen["maxfun"] == 9


def test_the_callback_does_not_evaluate_again():
    quiet = opf.solve(make(ROSENBROCK), opf.LBFGSB(), maxiters=100)
    watched = opf.solve(make(ROSENBROCK), opf.LBFGSB(), maxiters=100, callback=lambda s, loss: None)
    assert watched.stats.fevals == quiet.stats.fevals


def test_max_sense():
    prob = opf.OptimizationProblem(
        lambda u, p: 5.0 - quadratic(u, p), QUADRATIC.u0, QUADRATIC.p, sense=opf.MaxSense
    )
    sol = opf.solve(prob, opf.LBFGSB())
    assert sol.objective == pytest.approx(5.0)
    assert max_error(sol.u, QUADRATIC.u_star) < 1e-4


# --------------------------------------------------------------------------- global


RASTRIGIN = opf.OptimizationProblem(rastrigin, jnp.full(2, 2.5), lb=-5.12, ub=5.12)


@pytest.mark.parametrize(
    "alg, budget",
    [
        (opf.DifferentialEvolution(seed=1), 200),
        (opf.DualAnnealing(seed=1), 200),
        (opf.SHGO(), 3),
        (opf.Direct(), 200),
        (opf.BasinHopping(seed=1), 50),
    ],
    ids=lambda a: type(a).__name__ if not isinstance(a, int) else str(a),
)
def test_global_methods_find_rastrigins_global_minimum(alg, budget):
    sol = opf.solve(RASTRIGIN, alg, maxiters=budget)
    assert sol.objective < 1e-6
    np.testing.assert_allclose(sol.u, [0.0, 0.0], atol=1e-4)
    assert sol.stats.fevals > 0
    assert sol.objective <= float(sol.original.fun) + 1e-12  # the best point evaluated


@pytest.mark.parametrize(
    "alg", [opf.DifferentialEvolution(), opf.DualAnnealing(), opf.SHGO(), opf.Direct()], ids=repr
)
def test_global_methods_need_finite_bounds(alg):
    with pytest.raises(opf.UnsupportedFeatureError, match=r"needs finite bounds.*lb=\.\.\., ub="):
        opf.solve(opf.OptimizationProblem(rastrigin, jnp.ones(2)), alg, maxiters=5)
    with pytest.raises(opf.UnsupportedFeatureError, match="finite bounds"):
        opf.solve(opf.OptimizationProblem(rastrigin, jnp.ones(2), lb=-jnp.inf, ub=1.0), alg)


def test_basinhopping_without_bounds_uses_jax_gradients():
    sol = opf.solve(make(ROSENBROCK), opf.BasinHopping(seed=0), maxiters=5)
    assert sol.stats.gevals == sol.stats.fevals > 0
    assert max_error(sol.u, ROSENBROCK.u_star) < 1e-4


# --------------------------------------------------------------------------- least squares

T = jnp.linspace(0.0, 1.0, 20)


def residuals(u, p):
    return u[0] * jnp.exp(-u[1] * T) - 2.0 * jnp.exp(-1.5 * T)


@pytest.mark.parametrize("method", ["trf", "dogbox", "lm"])
def test_least_squares_on_residuals(method):
    prob = opf.OptimizationProblem(residuals, jnp.ones(2))
    sol = opf.solve(prob, opf.ScipyLeastSquares(method))
    assert sol.retcode is opf.ReturnCode.Success
    np.testing.assert_allclose(sol.u, [2.0, 1.5], atol=1e-5)
    assert sol.objective == pytest.approx(float(sol.original.cost), rel=1e-6)
    if method != "lm":  # MINPACK counts its own Jacobian calls among the evaluations
        # a Jacobian runs the residuals once more (JAX): counted among the calls of fun
        assert sol.stats.fevals == sol.original.nfev + sol.original.njev


def test_least_squares_errors():
    with pytest.raises(opf.OptiframeError, match=r"'trf', 'dogbox' or 'lm'"):
        opf.ScipyLeastSquares("gauss-newton")
    with pytest.raises(opf.UnsupportedFeatureError, match="box bounds"):
        opf.solve(
            opf.OptimizationProblem(residuals, jnp.ones(2), lb=0.0, ub=3.0),
            opf.ScipyLeastSquares("lm"),
        )
    with pytest.raises(opf.ObjectiveError, match=r"must return a scalar"):
        opf.solve(opf.OptimizationProblem(residuals, jnp.ones(2)), opf.LBFGSB())
    bounded = opf.OptimizationProblem(residuals, jnp.ones(2), lb=0.0, ub=jnp.array([1.8, 3.0]))
    sol = opf.solve(bounded, opf.ScipyLeastSquares("trf"))
    assert float(sol.u[0]) == pytest.approx(1.8, abs=1e-6)


# --------------------------------------------------------------------------- composites


@pytest.mark.parametrize("sampler", ["sobol", "random"])
def test_multistart_returns_the_best_run(sampler):
    alg = opf.MultiStart(opf.LBFGSB(), 12, sampler=sampler, seed=2)
    sol = opf.solve(RASTRIGIN, alg)
    assert len(sol.original) == 12
    assert sol.objective == min(run.objective for run in sol.original)
    assert sol.stats.fevals == sum(run.stats.fevals for run in sol.original)
    starts = alg.starts(RASTRIGIN)
    assert all(np.all(np.abs(np.asarray(s)) <= 5.12) for s in starts)
    assert len({tuple(np.asarray(s)) for s in starts}) == 12


def test_multistart_in_parallel_matches_serial():
    serial = opf.solve(RASTRIGIN, opf.MultiStart(opf.LBFGSB(), 6, seed=0))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        parallel = opf.solve(RASTRIGIN, opf.MultiStart(opf.LBFGSB(), 6, seed=0, executor=pool))
    np.testing.assert_allclose(parallel.u, serial.u)
    assert [r.objective for r in parallel.original] == [r.objective for r in serial.original]


def test_multistart_errors():
    with pytest.raises(opf.UnsupportedFeatureError, match="finite bounds"):
        opf.solve(make(QUADRATIC), opf.MultiStart(opf.LBFGSB()))
    with pytest.raises(opf.OptiframeError, match=r"sampler='halton'"):
        opf.MultiStart(opf.LBFGSB(), sampler="halton")


def test_polyopt_runs_adam_then_lbfgs():
    sol = opf.solve(make(ROSENBROCK), opf.PolyOpt(), maxiters=400)
    adam, lbfgs = sol.original  # the budget is shared: 200 each at most
    assert adam.stats.iterations == 200 and isinstance(adam.alg, opf.Optax)
    assert sol.stats.iterations <= 400
    assert lbfgs.alg == opf.LBFGSB()
    np.testing.assert_allclose(lbfgs.problem.u0, adam.u)
    assert max_error(sol.u, ROSENBROCK.u_star) < 1e-4
    assert sol.stats.iterations == adam.stats.iterations + lbfgs.stats.iterations
    assert opf.solve(make(ROSENBROCK), "PolyOpt").original[0].stats.iterations == 300


def test_polyopt_with_bounds_or_data():
    bounded = opf.solve(make(QUADRATIC, lb=0.0, ub=2.0), opf.PolyOpt())
    assert len(bounded.original) == 1 and bounded.original[0].alg == opf.LBFGSB()
    loader = opf.DataLoader((jnp.ones((8, 3)) * QUADRATIC.p,), 4)
    prob = opf.OptimizationProblem(lambda u, b: quadratic(u, b[0][0]), QUADRATIC.u0, loader)
    data = opf.solve(prob, opf.PolyOpt(), epochs=3)
    assert len(data.original) == 1 and data.stats.iterations == 6


def test_the_docs_table_matches_the_method_table():
    import pathlib

    docs = (pathlib.Path(__file__).parent.parent / "docs" / "scipy.md").read_text()
    for spec in METHODS.values():
        cells = [
            c.strip()
            for c in next(line for line in docs.splitlines() if line.startswith(f"| {spec.name} |"))
            .strip("|")
            .split("|")
        ]
        fmt = lambda option: f"`{option}`" if option else "—"
        assert cells[2] == ("yes" if spec.bounds else "—"), spec.name
        assert cells[3] == ("yes" if spec.constraints else "—"), spec.name
        assert cells[4:] == [fmt(spec.maxiter), fmt(spec.abstol), fmt(spec.reltol)], spec.name




# --------------------------------------------------------------------------- the host boundary


def numpy_rosenbrock(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


def numpy_rosenbrock_grad(x):
    return scipy.optimize.rosen_der(x)


def jax_rosenbrock(u, p):
    return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


def test_scipy_sees_float64_and_ends_where_raw_scipy_on_numpy_does(monkeypatch):
    # In float32 mode as in float64: SciPy gets float64 values and gradients, computed in
    # float64, so the run is raw SciPy's to rounding.
    x0 = np.tile([-1.25, 1.0], 3)  # float32 holds it exactly
    raw = scipy.optimize.minimize(
        lambda x: (numpy_rosenbrock(x), numpy_rosenbrock_grad(x)), x0, jac=True,
        method="L-BFGS-B",
    )
    seen = []
    real = scipy.optimize.minimize

    def spy(fun, x, **kwargs):
        seen.append(fun(x))
        return real(fun, x, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    sol = opf.solve(opf.OptimizationProblem(jax_rosenbrock, jnp.asarray(x0)), opf.LBFGSB())
    value, grad = seen[0]
    assert isinstance(value, float) and grad.dtype == np.float64
    assert value == numpy_rosenbrock(x0)
    np.testing.assert_allclose(grad, numpy_rosenbrock_grad(x0), rtol=1e-14)
    assert sol.original.nfev == raw.nfev
    np.testing.assert_allclose(sol.original.x, raw.x, rtol=1e-10)
    assert sol.u.dtype == jnp.asarray(x0).dtype  # u0's dtype, whatever SciPy computed in


def test_closed_over_float32_data_keeps_its_precision_and_p_is_float64():
    data = jnp.linspace(0.0, 1.0, 5, dtype=jnp.float32)
    dtypes = {}

    def fun(u, p):
        dtypes["u"], dtypes["p"] = u.dtype, p.dtype
        return jnp.sum((u - data) ** 2) + jnp.sum((u - p) ** 2)

    opf.solve(opf.OptimizationProblem(fun, jnp.zeros(5), data), opf.BFGS(), maxiters=3)
    assert dtypes == {"u": jnp.float64, "p": jnp.float64}
    assert data.dtype == jnp.float32


def test_a_nonfinite_objective_in_a_line_search_is_a_failure_with_the_best_point():
    # log(u0) is NaN for u0 < 0: L-BFGS-B's first step goes there. It used to end at
    # u0 ~ 2e7 with f = 21.5 and Success, although f(1, 1) = 1.
    fun = lambda u, p: jnp.log(u[0]) + jnp.sum(u[1:] ** 2)
    sol = opf.solve(opf.OptimizationProblem(fun, jnp.ones(2)), opf.LBFGSB())
    assert sol.retcode is opf.ReturnCode.Failure
    assert "nan" in sol.message and "best finite point" in sol.message
    assert np.isfinite(sol.objective) and sol.objective <= 1.0
    assert float(sol.u[0]) > 0


def test_finite_differences_are_counted_and_run_in_float64():
    calls, dtypes = [], set()

    def host(u, p):
        calls.append(1)
        dtypes.add(np.asarray(u).dtype)
        return float(np.sum((np.asarray(u) - 1.0) ** 2))

    prob = opf.OptimizationProblem(opf.OptimizationFunction(host, ad="finite"), np.zeros(2))
    sol = opf.solve(prob, opf.LBFGSB())
    assert sol.stats.fevals == len(calls) == sol.stats.gevals * (1 + 2 * 2)
    assert dtypes == {np.dtype(np.float64)}
    np.testing.assert_allclose(sol.u, [1.0, 1.0], atol=1e-6)


class Boom(Exception):
    pass


@pytest.mark.parametrize("alg", [opf.LBFGSB(), opf.Optax(__import__("optax").sgd(0.1))],
                         ids=["L-BFGS-B", "optax"])
def test_an_exception_inside_a_finite_difference_objective_reaches_the_user(alg):
    def host(u, p):
        if float(np.asarray(u)[0]) > 0.5:
            raise Boom("the simulator crashed")
        return float(np.sum((np.asarray(u) - 1.0) ** 2))

    prob = opf.OptimizationProblem(opf.OptimizationFunction(host, ad="finite"), np.zeros(2))
    with pytest.raises(Boom, match="the simulator crashed"):
        opf.solve(prob, alg, maxiters=100)


@pytest.mark.parametrize("alg", [opf.LBFGSB(), opf.Optax(__import__("optax").sgd(0.1))],
                         ids=["L-BFGS-B", "optax"])
def test_ctrl_c_inside_a_finite_difference_objective_returns_the_best_iterate(alg):
    def host(u, p):
        if float(np.asarray(u)[0]) > 0.5:
            raise KeyboardInterrupt
        return float(np.sum((np.asarray(u) - 1.0) ** 2))

    prob = opf.OptimizationProblem(opf.OptimizationFunction(host, ad="finite"), np.zeros(2))
    with pytest.warns(UserWarning, match="interrupted: returning the best"):
        sol = opf.solve(prob, alg, maxiters=100)
    assert sol.retcode is opf.ReturnCode.Terminated
    assert np.isfinite(sol.objective) and sol.objective <= 2.0  # f(u0) = 2
    assert float(np.asarray(sol.u)[0]) <= 0.5 + 1e-6


# --------------------------------------------------------------------------- options


def test_solver_options_take_effect_and_unknown_ones_are_errors(seen):
    opf.solve(make(ROSENBROCK), opf.LBFGSB(), ftol=0.5, gtol=1e-3, maxcor=4)
    assert seen == {"ftol": 0.5, "gtol": 1e-3, "maxcor": 4}
    with pytest.raises(opf.InvalidProblemError, match=r"unknown option\(s\) 'foo'"):
        opf.solve(make(ROSENBROCK), opf.LBFGSB(), ftol=0.5, foo=1)
    with pytest.raises(opf.InvalidProblemError, match=r"'maxcr' \(did you mean 'maxcor'\?\)"):
        opf.LBFGSB(maxcr=3)
    with pytest.raises(opf.InvalidProblemError, match=r"reltol=.*sets L-BFGS-B's `ftol`.*one"):
        opf.solve(make(ROSENBROCK), opf.LBFGSB(), reltol=1e-3, ftol=1e-4)


def test_nelder_mead_defaults_find_the_optimum(seen):
    prob = opf.OptimizationProblem(jax_rosenbrock, jnp.zeros(4))
    sol = opf.solve(prob, opf.NelderMead())
    assert seen == {"maxiter": 10**6, "maxfev": 10**6, "xatol": 1e-8, "fatol": 1e-8}
    assert sol.retcode is opf.ReturnCode.Success and sol.objective < 1e-12
    opf.solve(prob, opf.NelderMead(xatol=1e-3), maxiters=50)
    assert seen["maxiter"] == 50 and seen["xatol"] == 1e-3
