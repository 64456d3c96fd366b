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


# Derivatives reach the user's callables weakly (the cache dies with `fun`): the functions
# built by `derivs_of` are kept alive here while the tests use their derivatives.
_ALIVE = []


def derivs_of(fun, sense=opf.MinSense, **kwargs):
    _ALIVE.append(opf.OptimizationFunction(fun, **kwargs))
    return derivatives(_ALIVE[-1], sense)


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
    assert d.fevals_per("value_and_grad", 2) == 5
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


# ------------------------------------------------------------- the function answers


def test_the_function_answers_with_derived_derivatives():
    A = jnp.array([[1.0, 2.0], [3.0, -1.0]])
    f = opf.OptimizationFunction(rosenbrock, cons=lambda u, p: A @ u)
    H = rosenbrock_hess(U)
    np.testing.assert_allclose(f.grad(U, P), rosenbrock_grad(U), rtol=1e-5)
    value, grad = f.value_and_grad(U, P)
    np.testing.assert_allclose(value, rosenbrock(U, P), rtol=1e-6)
    np.testing.assert_allclose(grad, rosenbrock_grad(U), rtol=1e-5)
    np.testing.assert_allclose(f.hess(U, P), H, rtol=1e-5)
    v = jnp.array([1.0, -2.0])
    np.testing.assert_allclose(f.hvp(U, P, v), H @ np.asarray(v), rtol=1e-5)
    np.testing.assert_allclose(f.cons_jac(U, P), A)
    np.testing.assert_allclose(f.cons_hess(U, P), np.zeros((2, 2, 2)))
    g = opf.OptimizationFunction(rosenbrock, cons=lambda u, p: jnp.stack([u @ u, u[0] * u[1]]))
    np.testing.assert_allclose(g.cons_hess(U, P), [2 * np.eye(2), [[0.0, 1.0], [1.0, 0.0]]])


def test_max_sense_does_not_change_the_answers():
    f = opf.OptimizationFunction(rosenbrock)
    derivatives(f, opf.MaxSense)  # cached next to the answers, negated
    np.testing.assert_allclose(f.grad(U, P), rosenbrock_grad(U), rtol=1e-5)
    np.testing.assert_allclose(f.hess(U, P), rosenbrock_hess(U), rtol=1e-5)


def test_supplied_derivatives_win_in_the_answers():
    grads = []

    def grad(u, p):
        grads.append(1)
        return 2.0 * u

    f = opf.OptimizationFunction(
        lambda u, p: jnp.sum(u**2), grad=grad, hess=lambda u, p: 7.0 * jnp.eye(2),
        cons=lambda u, p: u, cons_jac=lambda u, p: 5.0 * jnp.eye(2),
    )
    np.testing.assert_allclose(f.grad(U, None), 2.0 * np.asarray(U))
    np.testing.assert_allclose(f.value_and_grad(U, None)[1], 2.0 * np.asarray(U))
    assert grads
    np.testing.assert_allclose(f.hess(U, None), 7.0 * np.eye(2))
    np.testing.assert_allclose(f.hvp(U, None, jnp.array([1.0, 2.0])), [7.0, 14.0])
    np.testing.assert_allclose(f.cons_jac(U, None), 5.0 * np.eye(2))
    # The supplied hvp keeps its convention hvp(u, v, p); the answer is f.hvp(u, p, v).
    g = opf.OptimizationFunction(rosenbrock, hvp=lambda u, v, p: p[0] * v + u)
    np.testing.assert_allclose(g.hvp(U, P, jnp.ones(2)), 1.0 + np.asarray(U))


def test_finite_differences_answer_and_a_supplied_gradient_wins():
    f = opf.OptimizationFunction(numpy_rosenbrock, ad="finite")
    np.testing.assert_allclose(f.grad(U, np.asarray(P)), rosenbrock_grad(U), rtol=1e-3)
    value, _ = f.value_and_grad(U, np.asarray(P))
    np.testing.assert_allclose(value, rosenbrock(U, P), rtol=1e-5)
    np.testing.assert_allclose(f.hess(U, np.asarray(P)), rosenbrock_hess(U), rtol=2e-2)
    exact = lambda u, p: jnp.array(rosenbrock_grad(np.zeros(2)))
    g = opf.OptimizationFunction(numpy_rosenbrock, ad="finite", grad=exact)
    np.testing.assert_allclose(g.grad(U, np.asarray(P)), rosenbrock_grad(np.zeros(2)))
    assert derivatives(g, opf.MinSense).fevals_per("value_and_grad", 2) == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f: f.grad(U, P), r"ad=None\) has no gradient; pass .*grad=\.\.\..*ad='jax'"),
        (lambda f: f.value_and_grad(U, P), r"has no gradient; pass .*grad="),
        (lambda f: f.hess(U, P), r"has no Hessian; pass .*hess=.*ad='jax'"),
        (lambda f: f.hvp(U, P, U), r"Hessian-vector product; pass .*hvp=\.\.\. or hess=\.\.\."),
        (lambda f: f.cons_jac(U, P), r"has no constraints; pass .*cons=\.\.\."),
    ],
)
def test_missing_derivatives_raise_naming_the_fix(call, match):
    with pytest.raises(opf.UnsupportedFeatureError, match=match):
        call(opf.OptimizationFunction(rosenbrock, ad=None))


def test_missing_constraint_derivatives_raise_naming_the_fix():
    f = opf.OptimizationFunction(rosenbrock, ad=None, cons=lambda u, p: u)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"constraint Jacobian; pass .*cons_jac="):
        f.cons_jac(U, P)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"constraint Hessians; .*cons_hess="):
        f.cons_hess(U, P)


def test_answers_for_a_pytree_and_with_aux():
    fun = lambda u, p: u["a"] ** 2 * u["b"][0] + jnp.sum(u["b"] ** 3)
    u = {"a": jnp.array(2.0), "b": jnp.array([1.0, 3.0])}
    f = opf.OptimizationFunction(lambda u, p: (fun(u, p), {"b": u["b"]}), has_aux=True)
    g = f.grad(u, None)
    np.testing.assert_allclose(g["a"], 4.0)
    np.testing.assert_allclose(g["b"], [7.0, 27.0])
    value, _ = f.value_and_grad(u, None)  # the loss alone, no aux
    np.testing.assert_allclose(value, 4.0 + 1.0 + 27.0)
    H = np.array([[2.0, 4.0, 0.0], [4.0, 6.0, 0.0], [0.0, 0.0, 18.0]])  # order: a, b0, b1
    np.testing.assert_allclose(f.hess(u, None), H)
    hv = f.hvp(u, None, {"a": jnp.array(1.0), "b": jnp.array([0.0, 1.0])})
    np.testing.assert_allclose(hv["a"], 2.0)
    np.testing.assert_allclose(hv["b"], [4.0, 18.0])


def test_answers_are_jitted_once_per_function():
    traces = []

    def fun(u, p):
        traces.append(1)  # runs only while JAX traces
        return rosenbrock(u, p)

    f = opf.OptimizationFunction(fun)
    f.grad(U, P)
    f.grad(2 * U, P)
    assert len(traces) == 1
    assert opf.OptimizationFunction(fun).grad is not f.grad  # a new wrapper ...
    opf.OptimizationFunction(fun).grad(-U, P)  # ... reuses the compiled answer
    assert len(traces) == 1


def test_an_objective_returning_a_python_float():
    f = opf.OptimizationFunction(lambda u, p: 1.0)
    d = derivatives(f, opf.MinSense)
    assert d.value(U, None).astype(jnp.float32) == 1.0
    (loss, _), grad = d.value_and_grad(U, None)
    assert loss.astype(jnp.float32) == 1.0
    np.testing.assert_array_equal(grad, [0.0, 0.0])
    value, grad = f.value_and_grad(U, None)
    assert value == 1.0
    np.testing.assert_array_equal(grad, [0.0, 0.0])
    sol = opf.solve(opf.OptimizationProblem(f, U), optax.adam(1e-2), maxiters=3)
    assert sol.objective == 1.0
    np.testing.assert_allclose(sol.u, U)
