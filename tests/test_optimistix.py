"""The optimistix backend against optimistix itself: the same steps and answers as
`optx.minimise` / `optx.least_squares`, the common keywords mapped to its own, and clear
errors for what it cannot do. (Budgets, callbacks, Ctrl-C, NaN and the rest: test_lifecycle.)"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest

import optiframe as opf
from optiframe.backends.optimistix import RESULT_CODES
from problems import PYTREE, max_error

X64 = jax.config.jax_enable_x64
# Two runs of the same optimistix steps in different compiled programs (optiframe's loop,
# optimistix's) agree to rounding: float64 to 1e-12, float32 to a few ulps of each step,
# compounded over the run.
RTOL = 1e-12 if X64 else 1e-4


def chained_rosenbrock(u, p):
    """Σ b (u[i+1] - u[i]²)² + (a - u[i])² with p = (a, b): minimum 0 at u = 1 for
    a = 1, elsewhere a compromise between the terms."""
    return jnp.sum(p[1] * (u[1:] - u[:-1] ** 2) ** 2 + (p[0] - u[:-1]) ** 2)


ROSEN_P = jnp.array([1.0, 100.0])


def decay_residuals(theta, data):
    """A neural-ODE-style fit: y' = -k y + c integrated by diffrax from y(0) = 2, minus the
    observed trajectory at 20 times in [0, 3]."""
    import diffrax

    times, observed = data
    term = diffrax.ODETerm(lambda t, y, th: -th[0] * y + th[1])
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), 0.0, 3.0, 0.05, jnp.asarray(2.0, theta.dtype), args=theta,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
    )
    return sol.ys - observed


def decay_data():
    times = jnp.linspace(0.0, 3.0, 20)
    k, c = 1.3, 0.4
    observed = c / k + (2.0 - c / k) * jnp.exp(-k * times)  # the exact solution
    return times, observed


def test_bfgs_takes_optimistix_s_steps_to_the_rosenbrock_minimum():
    solver = optx.BFGS(rtol=1e-8, atol=1e-8)
    u0 = jnp.zeros(10)
    prob = opf.OptimizationProblem(chained_rosenbrock, u0, ROSEN_P)
    sol = opf.solve(prob, opf.Optimistix(solver), maxiters=1000)
    ref = optx.minimise(chained_rosenbrock, solver, u0, ROSEN_P, max_steps=1000)
    assert sol.retcode is opf.ReturnCode.Success and "rtol=1e-08" in sol.message
    assert sol.stats.iterations == int(ref.stats["num_steps"])
    # one evaluation (value and gradient) a step, and one at the point returned
    assert (sol.stats.fevals, sol.stats.gevals) == (sol.stats.iterations + 1, sol.stats.iterations)
    np.testing.assert_allclose(sol.u, ref.value, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(sol.u, np.ones(10), atol=1e-3)
    assert sol.objective == pytest.approx(float(chained_rosenbrock(ref.value, ROSEN_P)), abs=1e-6)


@pytest.mark.parametrize("name", ["LevenbergMarquardt", "Dogleg"])
def test_least_squares_solvers_fit_an_ode_as_optimistix_does(name):
    data = decay_data()
    theta0 = jnp.array([0.5, 0.0])
    prob = opf.OptimizationProblem(decay_residuals, theta0, data)
    solver = getattr(optx, name)(rtol=1e-8, atol=1e-8)
    # diffrax differentiates its solve in reverse mode only: optimistix's `jac` option
    sol = opf.solve(prob, opf.Optimistix(solver), maxiters=100, jac="bwd")
    ref = optx.least_squares(decay_residuals, solver, theta0, data, max_steps=100,
                             options={"jac": "bwd"})
    assert sol.retcode is opf.ReturnCode.Success
    assert sol.stats.iterations == int(ref.stats["num_steps"])
    np.testing.assert_allclose(sol.u, ref.value, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(sol.u, [1.3, 0.4], rtol=1e-3)
    residuals = np.asarray(decay_residuals(sol.u, data), np.float64)
    assert sol.objective == pytest.approx(0.5 * np.sum(residuals**2), abs=1e-7)


def test_pytree_parameters_keep_their_structure_and_dtypes():
    prob = opf.OptimizationProblem(PYTREE.fun, PYTREE.u0, PYTREE.p)
    sol = opf.solve(prob, "optimistix:BFGS")
    assert sol.retcode is opf.ReturnCode.Success
    assert jax.tree.structure(sol.u) == jax.tree.structure(PYTREE.u0)
    assert [x.dtype for x in jax.tree.leaves(sol.u)] == [
        x.dtype for x in jax.tree.leaves(PYTREE.u0)
    ]
    assert max_error(sol.u, PYTREE.u_star) < 1e-4


def test_max_sense_and_aux():
    def fun(u, p):
        return -jnp.sum((u - p) ** 2), {"norm": jnp.linalg.norm(u)}

    seen = []
    prob = opf.OptimizationProblem(
        opf.OptimizationFunction(fun, has_aux=True), jnp.zeros(3), jnp.array([1.0, -2.0, 3.0]),
        sense=opf.MaxSense,
    )
    sol = opf.solve(prob, "optimistix:NonlinearCG",
                    callback=lambda state, loss: seen.append((state, loss)))
    np.testing.assert_allclose(sol.u, [1.0, -2.0, 3.0], atol=1e-4)
    assert sol.objective == pytest.approx(0.0, abs=1e-8) and sol.objective <= 0.0
    assert len(seen) == sol.stats.iterations
    state, loss = seen[-1]
    assert loss == state.objective <= 0.0  # fun itself, not its negation
    assert float(state.aux["norm"]) == pytest.approx(float(jnp.linalg.norm(state.u)), rel=1e-6)
    assert seen[0][0].u.shape == (3,) and float(seen[0][1]) == pytest.approx(-14.0)


def test_keywords_map_to_optimistix_tolerances_and_max_steps():
    prob = opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(10), ROSEN_P)
    loose = opf.solve(prob, "optimistix:BFGS", reltol=1e-2, abstol=1e-2)
    tight = opf.solve(prob, "optimistix:BFGS", reltol=1e-10, abstol=1e-10)
    ref = optx.minimise(chained_rosenbrock, optx.BFGS(rtol=1e-2, atol=1e-2), jnp.zeros(10),
                        ROSEN_P)
    assert loose.stats.iterations == int(ref.stats["num_steps"]) < tight.stats.iterations
    assert "rtol=0.01, atol=0.01" in loose.message
    capped = opf.solve(prob, "optimistix:BFGS", maxiters=7)
    assert capped.retcode is opf.ReturnCode.MaxIters and capped.stats.iterations == 7
    # without maxiters: optimistix's default max_steps, 256
    slow = opf.solve(prob, opf.Optimistix(optx.GradientDescent(1e-4, rtol=1e-12, atol=1e-12)))
    assert slow.retcode is opf.ReturnCode.MaxIters and slow.stats.iterations == 256


def test_warm_start_continues_the_solver_state():
    prob = opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(10), ROSEN_P)
    alg = opf.Optimistix(optx.BFGS(rtol=1e-8, atol=1e-8))
    whole = opf.solve(prob, alg, maxiters=30)
    first = opf.solve(prob, alg, maxiters=12)
    rest = opf.solve(prob, alg, maxiters=18, warm_start=first)
    np.testing.assert_array_equal(rest.u, whole.u)
    assert rest.objective == whole.objective
    assert isinstance(rest.state, opf.OptimistixState) and int(rest.state.steps) == 30
    with pytest.raises(opf.InvalidProblemError, match=r"remake\(u0=sol.u\)"):
        opf.solve(prob, "optimistix:LBFGS", warm_start=first)


def test_a_second_solve_does_not_retrace():
    traces = []

    def fun(u, p):
        traces.append(1)  # runs only while JAX traces
        return jnp.sum((u - p) ** 2)

    prob = opf.OptimizationProblem(fun, jnp.zeros(3), jnp.array([1.0, -2.0, 3.0]))
    opf.solve(prob, "optimistix:BFGS")
    opf.solve(prob, opf.Optimistix(optx.BFGS(rtol=1e-6, atol=1e-6)))
    before = len(traces)
    # a new but equal solver, other tolerances, a registered name, a remade problem
    opf.solve(prob, opf.Optimistix(optx.BFGS(rtol=1e-3, atol=1e-5)), maxiters=9)
    opf.solve(prob.remake(u0=jnp.ones(3)), "optimistix:BFGS", reltol=1e-9)
    assert len(traces) == before
    opf.solve(prob, "optimistix:DFP")
    assert len(traces) > before


def test_every_optimistix_result_has_a_return_code():
    assert set(RESULT_CODES) == set(optx.RESULTS._name_to_item)
    assert RESULT_CODES["successful"] is opf.ReturnCode.Success
    assert RESULT_CODES["nonlinear_divergence"] is opf.ReturnCode.Failure
    assert RESULT_CODES["nonfinite"] is opf.ReturnCode.Failure


def test_bounds_constraints_and_data_are_refused_naming_who_can():
    bounded = opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(3), ROSEN_P, lb=-1, ub=2)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"box bounds.*'L-BFGS-B'"):
        opf.solve(bounded, "optimistix:BFGS")
    constrained = opf.OptimizationProblem(
        opf.OptimizationFunction(chained_rosenbrock, cons=lambda u, p: u[:1]), jnp.zeros(3),
        ROSEN_P, lcons=[0.0], ucons=[1.0],
    )
    with pytest.raises(opf.UnsupportedFeatureError, match=r"constraints.*'SLSQP'"):
        opf.solve(constrained, "optimistix:BFGS")
    loader = opf.DataLoader(jnp.ones((8, 2)), batch_size=4)
    with pytest.raises(opf.UnsupportedFeatureError, match="data iterator"):
        opf.solve(opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(3), loader),
                  "optimistix:BFGS", epochs=1)


def test_bad_solvers_names_options_and_objectives():
    with pytest.raises(opf.OptiframeError, match=r"Did you mean 'BFGS'"):
        opf.solve(opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(3), ROSEN_P),
                  "optimistix:BFSG")
    with pytest.raises(opf.OptiframeError, match="optimistix minimiser or least-squares"):
        opf.Optimistix(optx.Bisection(rtol=1e-6, atol=1e-6))
    with pytest.raises(opf.UnsupportedFeatureError, match=r"opf.NelderMead\(\)"):
        opf.Optimistix(optx.NelderMead(rtol=1e-6, atol=1e-6))
    prob = opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(3), ROSEN_P)
    with pytest.raises(opf.InvalidProblemError, match=r"'autodif_mode'.*autodiff_mode"):
        opf.solve(prob, "optimistix:BFGS", autodif_mode="fwd")
    fwd = opf.solve(prob, "optimistix:BFGS", autodiff_mode="fwd")
    np.testing.assert_allclose(fwd.u, np.ones(3), atol=1e-3)
    finite = prob.remake(f=opf.OptimizationFunction(chained_rosenbrock, ad="finite"))
    with pytest.raises(opf.UnsupportedFeatureError, match="ad='jax'"):
        opf.solve(finite, "optimistix:BFGS")
    residuals = opf.OptimizationProblem(decay_residuals, jnp.ones(2), decay_data(),
                                        sense=opf.MaxSense)
    with pytest.raises(opf.UnsupportedFeatureError, match="MaxSense"):
        opf.solve(residuals, "optimistix:LevenbergMarquardt")


def test_names_build_nothing_until_solved(monkeypatch):
    monkeypatch.setitem(sys.modules, "optimistix", None)
    alg = opf.Optimistix("LevenbergMarquardt")
    assert repr(alg) == "Optimistix(LevenbergMarquardt)" and alg.capabilities.residuals
    assert not opf.Optimistix("BFGS").capabilities.residuals
    prob = opf.OptimizationProblem(chained_rosenbrock, jnp.zeros(3), ROSEN_P)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"optiframe\[optimistix\]"):
        opf.solve(prob, opf.Optimistix("BFGS"))


@pytest.mark.parametrize("solver", [
    optx.GradientDescent(learning_rate=0.05, rtol=1e-7, atol=1e-7),
    optx.OptaxMinimiser(optax.adam(0.05), rtol=1e-7, atol=1e-7),
], ids=["GradientDescent", "OptaxMinimiser"])
def test_first_order_minimisers_take_optimistix_s_steps(solver):
    def quadratic(u, p):
        return jnp.sum(p * (u - 1.0) ** 2)

    weights = jnp.array([1.0, 2.0, 4.0])
    prob = opf.OptimizationProblem(quadratic, jnp.zeros(3), weights)
    sol = opf.solve(prob, opf.Optimistix(solver), maxiters=2000)
    ref = optx.minimise(quadratic, solver, jnp.zeros(3), weights, max_steps=2000)
    assert sol.retcode is opf.ReturnCode.Success
    assert sol.stats.iterations == int(ref.stats["num_steps"])
    assert (sol.stats.fevals, sol.stats.gevals) == (sol.stats.iterations + 1, sol.stats.iterations)
    np.testing.assert_allclose(sol.u, ref.value, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(sol.u, np.ones(3), atol=1e-3)
