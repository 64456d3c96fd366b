"""Derived, finite-difference and user-supplied derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optiframe as opf
from optiframe.derivatives import derivatives
from problems import rosenbrock

P = jnp.array([1.0, 100.0])
U = jnp.array([0.3, -0.4])


def rosenbrock_grad(u):
    a, b = 1.0, 100.0
    x, y = np.asarray(u, float)
    return np.array([-2 * (a - x) - 4 * b * x * (y - x**2), 2 * b * (y - x**2)])


def rosenbrock_hess(u):
    x, y = np.asarray(u, float)
    return np.array([[2 - 400 * (y - x**2) + 800 * x**2, -400 * x], [-400 * x, 200.0]])


def derivs_of(fun, sense=opf.MinSense, **kwargs):
    return derivatives(opf.OptimizationFunction(fun, **kwargs), sense)


def test_value_and_grad_is_one_fused_call_with_aux():
    d = derivs_of(lambda u, p: (rosenbrock(u, p), {"x0": u[0]}), has_aux=True)
    (loss, aux), grad = jax.jit(d.value_and_grad)(U, P)
    np.testing.assert_allclose(loss, rosenbrock(U, P), rtol=1e-6)
    np.testing.assert_allclose(aux["x0"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(grad, rosenbrock_grad(U), rtol=1e-5)


def test_hessian_hvp_and_constraint_jacobian():
    cons = lambda u, p: jnp.array([u[0] ** 2 + u[1] ** 2, u[0] * u[1]])
    d = derivs_of(rosenbrock, cons=cons)
    H = rosenbrock_hess(U)
    np.testing.assert_allclose(jax.jit(d.hess)(U, P), H, rtol=1e-5)
    v = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(jax.jit(d.hvp)(U, v, P), H @ np.asarray(v), rtol=1e-5)
    J = np.array([[2 * 0.3, 2 * -0.4], [-0.4, 0.3]])
    np.testing.assert_allclose(jax.jit(d.cons_jac)(U, P), J, rtol=1e-5)


def test_pytree_derivatives_use_the_flat_order():
    fun = lambda u, p: u["a"] ** 2 * u["b"][0] + jnp.sum(u["b"] ** 3)
    u = {"a": jnp.array(2.0), "b": jnp.array([1.0, 3.0])}
    d = derivs_of(fun)
    (_, _), g = d.value_and_grad(u, None)
    np.testing.assert_allclose(g["a"], 4.0)
    np.testing.assert_allclose(g["b"], [4.0 + 3.0, 27.0])
    H = d.hess(u, None)  # order: a, b0, b1
    np.testing.assert_allclose(H, [[2.0, 4.0, 0.0], [4.0, 6.0, 0.0], [0.0, 0.0, 18.0]])


def test_max_sense_negates_every_derivative():
    d = derivs_of(rosenbrock, sense=opf.MaxSense)
    (loss, _), grad = d.value_and_grad(U, P)
    np.testing.assert_allclose(loss, -rosenbrock(U, P), rtol=1e-6)
    np.testing.assert_allclose(grad, -rosenbrock_grad(U), rtol=1e-5)
    np.testing.assert_allclose(d.hess(U, P), -rosenbrock_hess(U), rtol=1e-5)


def numpy_rosenbrock(u, p):
    """Not traceable: converts to NumPy and branches on values."""
    x, y = np.asarray(u, float)
    return float((p[0] - x) ** 2 + p[1] * (y - x**2) ** 2) if x > -10 else 0.0


def test_finite_differences_for_objectives_jax_cannot_trace():
    d = derivs_of(numpy_rosenbrock, ad="finite")
    assert d.fevals_per_grad(2) == 5
    (loss, aux), grad = jax.jit(d.value_and_grad)(U, np.asarray(P))
    assert aux is None
    np.testing.assert_allclose(loss, rosenbrock(U, P), rtol=1e-5)
    np.testing.assert_allclose(grad, rosenbrock_grad(U), rtol=1e-3)
    np.testing.assert_allclose(d.hess(U, np.asarray(P)), rosenbrock_hess(U), rtol=2e-2)
    v = jnp.array([1.0, -2.0])
    hv = d.hvp(U, v, np.asarray(P))
    np.testing.assert_allclose(hv, rosenbrock_hess(U) @ np.asarray(v), rtol=2e-2)


def test_finite_differences_through_solve_count_every_call():
    calls = []

    def fun(u, p):
        calls.append(1)
        return numpy_rosenbrock(u, p)

    prob = opf.OptimizationProblem(
        opf.OptimizationFunction(fun, ad="finite"), jnp.zeros(2), np.array([1.0, 100.0])
    )
    sol = opf.solve(prob, optax.adam(1e-2), maxiters=30)
    assert sol.stats.iterations == 30
    # 30 value-and-gradients of 1 + 2n calls each, and the final value.
    assert sol.stats.fevals == 30 * 5 + 1 == len(calls)
    assert sol.objective < 1.0


def test_user_supplied_derivatives_override_the_derived_ones():
    grads, hessians = [], []

    def grad(u, p):
        grads.append(1)
        return jnp.asarray(2.0 * u)

    def hess(u, p):
        hessians.append(1)
        return 7.0 * jnp.eye(2)

    d = derivs_of(lambda u, p: jnp.sum(u**2), grad=grad, hess=hess)
    _, g = d.value_and_grad(jnp.array([1.0, 2.0]), None)
    np.testing.assert_allclose(g, [2.0, 4.0])
    np.testing.assert_allclose(d.hess(U, None), 7.0 * np.eye(2))
    np.testing.assert_allclose(d.hvp(U, jnp.array([1.0, 1.0]), None), [7.0, 7.0])
    assert grads and hessians
    custom_hvp = derivs_of(rosenbrock, hvp=lambda u, v, p: 3.0 * v)
    np.testing.assert_allclose(custom_hvp.hvp(U, jnp.ones(2), P), [3.0, 3.0])
    jac = derivs_of(rosenbrock, cons=lambda u, p: u, cons_jac=lambda u, p: 5 * jnp.eye(2))
    np.testing.assert_allclose(jac.cons_jac(U, P), 5 * np.eye(2))


def test_ad_none_has_only_what_the_user_gives():
    d = derivs_of(rosenbrock, ad=None)
    assert d.value_and_grad is None and d.hess is None and d.hvp is None
    with pytest.raises(opf.UnsupportedFeatureError, match=r"needs the objective's grad.*grad="):
        opf.solve(
            opf.OptimizationProblem(opf.OptimizationFunction(rosenbrock, ad=None), U, P),
            optax.adam(1e-2),
            maxiters=5,
        )


def test_non_scalar_objective_is_an_objective_error():
    prob = opf.OptimizationProblem(lambda u, p: u**2, jnp.zeros(3))
    with pytest.raises(opf.ObjectiveError, match=r"must return a scalar, got shape \(3,\)"):
        opf.solve(prob, optax.adam(1e-2), maxiters=5)


def test_untraceable_objective_suggests_finite_differences():
    prob = opf.OptimizationProblem(numpy_rosenbrock, jnp.zeros(2), np.array([1.0, 100.0]))
    with pytest.raises(opf.ObjectiveError, match=r"cannot be traced by JAX.*ad='finite'"):
        opf.solve(prob, optax.adam(1e-2), maxiters=5)


def test_has_aux_must_return_a_pair():
    prob = opf.OptimizationProblem(
        opf.OptimizationFunction(lambda u, p: jnp.sum(u), has_aux=True), jnp.zeros(2)
    )
    with pytest.raises(opf.ObjectiveError, match=r"return \(loss, aux\)"):
        opf.solve(prob, optax.adam(1e-2), maxiters=5)
