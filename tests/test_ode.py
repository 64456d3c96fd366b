"""The gradient-flow backend (diffrax): convergence, exact counts, stops, callbacks,
warm starts, robustness, capabilities, and the Runge-Kutta-Chebyshev solver on its own.

Problems are built once per module so that the compiled programs (cached on the
objective) are shared between tests.
"""


import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optiframe as opf
from optiframe.backends._rkc import RKC, rkc_stability_boundary, rkc_stages
from problems import (
    LEAST_SQUARES,
    QUADRATIC,
    ROSENBROCK_FAR,
    STIFF_LAMBDAS,
    STIFF_QUADRATIC,
    max_error,
    quadratic,
)


def make(problem, **kwargs):
    return opf.OptimizationProblem(problem.fun, problem.u0, problem.p, **kwargs)


LSQ = make(LEAST_SQUARES)
ROSEN = make(ROSENBROCK_FAR)
STIFF = make(STIFF_QUADRATIC)
QUAD = make(QUADRATIC)

ALGORITHMS = {
    "ODEGradientDescent": opf.ODEGradientDescent(),
    "RKAccelerated": opf.RKAccelerated(),
    "HighOrderDescent": opf.HighOrderDescent(),
    "RKChebyshevDescent": opf.RKChebyshevDescent(),
    "GradientFlow(Dopri5)": opf.GradientFlow(diffrax.Dopri5()),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_least_squares_of_the_seed_converges_to_u(name):
    sol = opf.solve(LSQ, ALGORITHMS[name], maxiters=20_000, abstol=1e-4)
    assert sol.retcode is opf.ReturnCode.Success, sol.message
    assert "abstol" in sol.message
    assert max_error(sol.u, LEAST_SQUARES.u_star) < 1e-4
    assert sol.objective < 1e-8
    assert 0 < sol.stats.iterations < 20_000


@pytest.mark.parametrize("name", ["RKAccelerated", "HighOrderDescent", "RKChebyshevDescent"])
def test_rosenbrock_from_far_reaches_one_one_with_adaptive_solvers(name):
    sol = opf.solve(ROSEN, ALGORITHMS[name], maxiters=20_000, abstol=1e-3)
    assert sol.retcode is opf.ReturnCode.Success, sol.message
    np.testing.assert_allclose(sol.u, [1.0, 1.0], atol=1e-2)
    assert sol.objective < 1e-5


def test_chebyshev_takes_far_fewer_steps_than_euler_on_a_stiff_quadratic():
    # Euler is stable for dt < 2 / 1000; both stop at the same gradient norm.
    euler = opf.solve(STIFF, opf.ODEGradientDescent(dt=1.9e-3), maxiters=50_000, abstol=1e-3)
    rkc = opf.solve(STIFF, opf.RKChebyshevDescent(), maxiters=50_000, abstol=1e-3)
    for sol in (euler, rkc):
        assert sol.retcode is opf.ReturnCode.Success, sol.message
        assert max_error(sol.u, STIFF_QUADRATIC.u_star) < 1e-3
    assert rkc.stats.iterations * 10 < euler.stats.iterations
    assert rkc.stats.gevals < euler.stats.gevals / 2
    # With a step beyond 2/λ_max, explicit Euler diverges: Failure, best finite iterate.
    unstable = opf.solve(STIFF, opf.ODEGradientDescent(dt=2.5e-3), maxiters=50_000)
    assert unstable.retcode is opf.ReturnCode.Failure
    assert "non-finite" in unstable.message
    assert np.all(np.isfinite(unstable.u))
    assert unstable.objective <= float(STIFF_QUADRATIC.fun(STIFF_QUADRATIC.u0, STIFF.p))


# -- counts


def counting(fun):
    calls = np.zeros(1, int)

    def counted(u, p):
        jax.debug.callback(lambda: calls.__iadd__(1))
        return fun(u, p)

    return counted, calls


ROSEN_COUNTED_FUN, ROSEN_CALLS = counting(ROSENBROCK_FAR.fun)
ROSEN_COUNTED = opf.OptimizationProblem(ROSEN_COUNTED_FUN, ROSENBROCK_FAR.u0, ROSENBROCK_FAR.p)


@pytest.mark.parametrize("name", ["RKAccelerated", "RKChebyshevDescent"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"abstol": 1e-3}, {"abstol": 1e-3, "callback": lambda s, loss: None}],
    ids=["budget", "event", "callback"],
)
def test_gradient_evaluations_are_counted_exactly(name, kwargs):
    ROSEN_CALLS[:] = 0
    sol = opf.solve(ROSEN_COUNTED, ALGORITHMS[name], maxiters=200, **kwargs)
    jax.effects_barrier()
    assert sol.stats.gevals == int(ROSEN_CALLS[0])
    assert sol.stats.fevals == sol.stats.gevals
    assert sol.stats.hevals == 0


def test_euler_is_gradient_descent_with_one_gradient_per_step():
    seen = []
    alg = opf.ODEGradientDescent(dt=0.1)
    sol = opf.solve(QUAD, alg, maxiters=5, callback=lambda s, loss: seen.append(s))
    u = np.asarray(QUADRATIC.u0)
    for state in seen:
        u = u - 0.1 * 2 * (u - np.asarray(QUADRATIC.p))
        np.testing.assert_allclose(state.u, u, rtol=1e-6, atol=1e-7)
        assert state.objective == pytest.approx(float(quadratic(u, QUADRATIC.p)), rel=1e-5)
        np.testing.assert_allclose(state.grad, 2 * (u - QUADRATIC.p), rtol=1e-5, atol=1e-7)
    assert [s.iter for s in seen] == [1, 2, 3, 4, 5]
    fused = opf.solve(QUAD, alg, maxiters=5)
    np.testing.assert_allclose(fused.u, sol.u, rtol=1e-6)
    # 5 steps and the final objective; no stopping test, so no more.
    assert (fused.stats.iterations, fused.stats.gevals) == (5, 6)
    assert fused.retcode is opf.ReturnCode.MaxIters


# -- stops and return codes


def test_maxiters_counts_accepted_steps_and_returns_maxiters():
    sol = opf.solve(ROSEN, opf.RKAccelerated(), maxiters=40)
    assert sol.retcode is opf.ReturnCode.MaxIters
    assert sol.stats.iterations == 40
    assert "maxiters=40" in sol.message
    assert isinstance(sol.original, diffrax.Solution)
    assert int(sol.original.stats["num_accepted_steps"]) == 40


def test_reltol_is_the_relative_steady_state_test():
    sol = opf.solve(LSQ, opf.RKChebyshevDescent(), maxiters=5_000, reltol=1e-4)
    assert sol.retcode is opf.ReturnCode.Success
    assert "reltol" in sol.message
    grad = jax.grad(LEAST_SQUARES.fun)(jnp.asarray(sol.u), LSQ.p)
    assert float(jnp.linalg.norm(grad)) <= 1e-4 * float(jnp.linalg.norm(sol.u))


def test_a_converged_start_takes_no_step():
    prob = LSQ.remake(u0=jnp.asarray(LEAST_SQUARES.u_star, LSQ.u0.dtype))
    for callback in (None, lambda s, loss: None):
        sol = opf.solve(prob, opf.RKChebyshevDescent(), maxiters=100, abstol=1e-3,
                        callback=callback)
        assert sol.retcode is opf.ReturnCode.Success
        assert sol.stats.iterations == 0


def test_fused_and_stepwise_runs_take_the_same_steps():
    for name in ("RKAccelerated", "RKChebyshevDescent"):
        fused = opf.solve(ROSEN, ALGORITHMS[name], maxiters=30)
        stepwise = opf.solve(ROSEN, ALGORITHMS[name], maxiters=30, callback=lambda s, loss: None)
        np.testing.assert_allclose(stepwise.u, fused.u, rtol=1e-5)
        assert stepwise.stats.iterations == fused.stats.iterations == 30


def test_callback_sees_each_accepted_step_and_can_stop():
    states = []

    def callback(state, loss):
        states.append(state)
        assert loss == state.objective
        return state.iter == 4

    sol = opf.solve(ROSEN, opf.RKAccelerated(), maxiters=100, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated
    assert [s.iter for s in states] == [1, 2, 3, 4]
    assert sol.stats.iterations == 4
    last = states[-1]
    np.testing.assert_allclose(sol.u, last.u)
    assert last.objective == pytest.approx(float(ROSENBROCK_FAR.fun(last.u, ROSEN.p)), rel=1e-5)
    np.testing.assert_allclose(
        last.grad, jax.grad(ROSENBROCK_FAR.fun)(last.u, ROSEN.p), rtol=1e-4
    )
    assert isinstance(last.original, opf.GradientFlowState)
    assert float(last.original.t) > float(states[0].original.t) > 0
    np.testing.assert_allclose(last.p, ROSEN.p)


# -- robustness


def test_max_sense_maximises_and_reports_fun_itself():
    prob = opf.OptimizationProblem(
        lambda u, p: 5.0 - quadratic(u, p), QUADRATIC.u0, QUADRATIC.p, sense=opf.MaxSense
    )
    sol = opf.solve(prob, opf.RKChebyshevDescent(), maxiters=1_000, abstol=1e-4)
    assert sol.retcode is opf.ReturnCode.Success
    assert max_error(sol.u, QUADRATIC.u_star) < 1e-4
    assert sol.objective == pytest.approx(5.0, abs=1e-6)


def test_pytree_u0_keeps_its_structure_and_dtypes():
    u0 = {"w": np.zeros(3), "b": [0.0, np.zeros(2, np.float32)]}

    def fun(u, p):
        return jnp.sum((u["w"] - p) ** 2) + (u["b"][0] - 1.0) ** 2 + jnp.sum((u["b"][1] + 2) ** 2)

    prob = opf.OptimizationProblem(fun, u0, QUADRATIC.p)
    sol = opf.solve(prob, opf.RKChebyshevDescent(), maxiters=1_000, abstol=1e-4)
    assert sol.retcode is opf.ReturnCode.Success
    assert isinstance(sol.u["w"], np.ndarray) and sol.u["w"].dtype == np.float64
    assert isinstance(sol.u["b"][0], float)
    assert sol.u["b"][1].dtype == np.float32
    np.testing.assert_allclose(sol.u["w"], QUADRATIC.p, atol=1e-4)
    np.testing.assert_allclose(sol.u["b"][1], [-2.0, -2.0], atol=1e-4)


# -- warm starts, compiled code, names


@pytest.mark.parametrize("alg", [opf.RKAccelerated(), opf.ODEGradientDescent(dt=1e-3)])
def test_warm_start_continues_the_flow(alg):  # Euler has no solver state: t says it all
    full = opf.solve(ROSEN, alg, maxiters=60)
    half = opf.solve(ROSEN, alg, maxiters=30)
    rest = opf.solve(ROSEN, alg, maxiters=30, warm_start=half)
    assert rest.stats.iterations == 30
    np.testing.assert_allclose(rest.u, full.u, rtol=1e-5)
    assert float(rest.state.t) == pytest.approx(float(full.state.t), rel=1e-5)
    assert not np.allclose(half.u, full.u)
    with pytest.raises(opf.OptiframeError, match=r"warm_start=sol.*remake\(u0=sol.u\)"):
        opf.solve(ROSEN, opf.HighOrderDescent(), maxiters=5, warm_start=half)


def test_a_second_solve_does_not_retrace():
    traces = []

    def fun(u, p):
        traces.append(1)  # runs only while JAX traces
        return quadratic(u, p)

    prob = opf.OptimizationProblem(fun, QUADRATIC.u0, QUADRATIC.p)
    opf.solve(prob, opf.RKAccelerated(), maxiters=5, abstol=1e-6)
    before = len(traces)
    # An equal algorithm built anew, another budget and tolerance, a remade u0, a name.
    opf.solve(prob, opf.RKAccelerated(), maxiters=9, abstol=1e-3)
    opf.solve(prob.remake(u0=jnp.ones(3)), opf.RKAccelerated(), maxiters=3, abstol=1e-6)
    opf.solve(prob, "RKAccelerated", maxiters=4, abstol=1e-6)
    assert len(traces) == before
    opf.solve(prob, opf.RKAccelerated(rtol=1e-4), maxiters=5, abstol=1e-6)
    assert len(traces) > before  # other tolerances are another program


def test_registered_names():
    for name in ("RKChebyshevDescent", "rkchebyshevdescent", "ode:RKChebyshevDescent"):
        sol = opf.solve(QUAD, name, maxiters=3, abstol=1e-6)
        assert sol.alg == opf.RKChebyshevDescent()
        assert sol.stats.iterations == 3
    for name in ("ODEGradientDescent", "RKAccelerated", "HighOrderDescent"):
        assert isinstance(opf.backends.base.resolve(name), getattr(opf, name))


def test_generic_gradient_flow_with_fixed_steps():
    alg = opf.GradientFlow(diffrax.Heun(), diffrax.ConstantStepSize(), dt0=0.1)
    sol = opf.solve(QUAD, alg, maxiters=200, abstol=1e-5)
    assert sol.retcode is opf.ReturnCode.Success
    assert max_error(sol.u, QUADRATIC.u_star) < 1e-5
    assert repr(alg) == "GradientFlow(Heun(), ConstantStepSize(...))"


def test_generic_gradient_flow_with_an_implicit_solver():
    # Implicit solvers are counted by a host callback per gradient evaluation.
    counted, calls = counting(STIFF_QUADRATIC.fun)
    prob = opf.OptimizationProblem(counted, STIFF_QUADRATIC.u0, STIFF_QUADRATIC.p)
    alg = opf.GradientFlow(diffrax.Kvaerno3(), diffrax.PIDController(rtol=1e-3, atol=1e-6))
    sol = opf.solve(prob, alg, maxiters=500, abstol=1e-3)
    jax.effects_barrier()
    assert sol.retcode is opf.ReturnCode.Success
    assert sol.stats.gevals == int(calls[0])
    assert max_error(sol.u, STIFF_QUADRATIC.u_star) < 1e-3


# -- capabilities and errors


def test_bounds_constraints_and_data_are_unsupported():
    alg = opf.RKAccelerated()
    with pytest.raises(opf.UnsupportedFeatureError, match=r"RKAccelerated.*does not support box"):
        opf.solve(make(QUADRATIC, lb=0.0, ub=2.0), alg, maxiters=10)
    f = opf.OptimizationFunction(quadratic, cons=lambda u, p: jnp.array([u.sum()]))
    prob = opf.OptimizationProblem(f, QUADRATIC.u0, QUADRATIC.p, lcons=[0.0], ucons=[1.0])
    with pytest.raises(opf.UnsupportedFeatureError, match=r"does not support constraints"):
        opf.solve(prob, alg, maxiters=10)
    loader = opf.DataLoader(jnp.ones((8, 3)), batch_size=4)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"does not support a data iterator"):
        opf.solve(opf.OptimizationProblem(quadratic, QUADRATIC.u0, loader), alg, epochs=1)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: opf.ODEGradientDescent(dt=0.0), r"ODEGradientDescent\(dt=0.0\).*> 0"),
        (lambda: opf.RKAccelerated(rtol=-1.0), r"RKAccelerated\(rtol=-1.0\)"),
        (lambda: opf.RKChebyshevDescent(max_stages=1), r"max_stages=1.*>= 2"),
        (lambda: opf.GradientFlow("tsit5"), r"GradientFlow\(solver=...\).*diffrax solver"),
        (lambda: opf.GradientFlow(diffrax.Euler()), r"no error estimate.*dt0="),
        (
            lambda: opf.GradientFlow(diffrax.Euler(), diffrax.PIDController(rtol=1e-3, atol=1e-6)),
            r"Euler has no error estimate.*ConstantStepSize",
        ),
        (
            lambda: opf.GradientFlow(diffrax.Tsit5(), diffrax.ConstantStepSize()),
            r"ConstantStepSize\(\)\)` needs the step: pass dt0",
        ),
        (lambda: opf.GradientFlow(diffrax.Tsit5(), "pid"), r"step size controller"),
        (lambda: opf.GradientFlow(diffrax.SemiImplicitEuler(), dt0=0.1), r"one ODE term"),
    ],
)
def test_algorithm_arguments_are_validated(build, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        build()


# -- the Runge-Kutta-Chebyshev solver on its own


def test_rkc_stability_interval_grows_like_s_squared():
    for s in (5, 20, 100):
        assert 0.62 * s**2 < rkc_stability_boundary(s) < 0.66 * s**2
    # The stage count chosen for h * rho is stable for it.
    for h_rho in (1.0, 50.0, 1e3, 1e5):
        s = int(rkc_stages(jnp.asarray(h_rho)))
        assert rkc_stability_boundary(s) >= h_rho


def test_rkc_is_a_diffrax_solver_that_integrates_a_stiff_linear_ode():
    lam = jnp.asarray(STIFF_LAMBDAS)
    term = diffrax.ODETerm(lambda t, y, args: -args * y)
    controller = diffrax.PIDController(rtol=1e-3, atol=1e-6)
    sol = diffrax.diffeqsolve(
        term, RKC(), 0.0, 10.0, None, jnp.ones(10), args=lam, stepsize_controller=controller,
        max_steps=10_000,
    )
    np.testing.assert_allclose(sol.ys[-1], jnp.exp(-10.0 * lam), atol=1e-5)
    assert int(sol.stats["num_steps"]) < 250  # Euler needs 5000 steps for stability alone
    fixed = diffrax.diffeqsolve(
        term, RKC(spectral_radius=1e3), 0.0, 2.0, 0.05, jnp.ones(10), args=lam,
    )
    # Fixed steps of 0.05 (h rho = 50): stable, and accurate for the slow modes.
    assert np.all(np.abs(np.asarray(fixed.ys[-1])) <= 1.0)
    np.testing.assert_allclose(fixed.ys[-1][0], np.exp(-2.0), rtol=1e-3)
    with pytest.raises(ValueError, match=r"RKC\(damping=0.0\)"):
        RKC(damping=0.0)
