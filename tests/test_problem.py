"""OptimizationFunction / OptimizationProblem construction, validation and remake."""

import gc
import inspect
import pickle
import weakref

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optiframe as opf
from optiframe.derivatives import derivatives
from optiframe.problem import _CACHES
from problems import quadratic, rosenbrock


def test_plain_callable_is_wrapped_with_jax_ad():
    prob = opf.OptimizationProblem(quadratic, jnp.zeros(2), 1.0)
    assert isinstance(prob.f, opf.OptimizationFunction)
    assert prob.f.ad == "jax"
    assert prob.sense is opf.MinSense


def test_invalid_problem_error_is_a_value_error():
    assert issubclass(opf.InvalidProblemError, ValueError)
    assert issubclass(opf.InvalidProblemError, opf.OptiframeError)
    assert issubclass(opf.UnsupportedFeatureError, opf.OptiframeError)
    assert issubclass(opf.ObjectiveError, opf.OptiframeError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ad="autodiff"), r"ad='autodiff'.*not one of"),
        (dict(grad=3), r"grad=.*must be callable"),
        (dict(has_aux=True, ad="finite"), r"has_aux=True.*ad='jax'"),
    ],
)
def test_bad_function_arguments(kwargs, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.OptimizationFunction(quadratic, **kwargs)


def test_fun_must_be_callable():
    with pytest.raises(opf.InvalidProblemError, match=r"OptimizationProblem\(f=\.\.\.\)"):
        opf.OptimizationProblem("not a function", jnp.zeros(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(u0=jnp.array([0.0, jnp.nan])), r"`u0`.*non-finite value \(nan\) at flat index 1"),
        (dict(u0={"a": jnp.array([jnp.inf])}), r"`u0\['a'\]`.*non-finite"),
        (dict(u0=jnp.array([1, 2])), r"leaf `u0` has dtype int\d+.*float array"),
        (dict(u0={}), r"no array leaves"),
        (
            dict(lb=jnp.zeros(2)),
            r"`OptimizationProblem\(lb=\.\.\.\)` was given without `ub`; pass both",
        ),
        (dict(ub=jnp.zeros(2)), r"\(ub=\.\.\.\)` was given without `lb`"),
        (dict(lb=jnp.ones(2), ub=jnp.zeros(2)), r"lb > ub at `lb` flat index 0 \(1.0 > 0.0\)"),
        (dict(lb=jnp.zeros(3), ub=jnp.ones(3)), r"`lb` has shape \(3,\) but u0 has shape \(2,\)"),
        (dict(lb=0.5, ub=1.0), r"`u0`.*outside \[0.5, 1.0\]; start inside the bounds"),
        (dict(lb={"x": 0.0}, ub=1.0), r"lb=\.\.\.\)` has pytree structure"),
        (dict(lcons=jnp.zeros(1)), r"\(lcons=\.\.\.\)` was given without `ucons`"),
        (dict(lcons=jnp.zeros(1), ucons=jnp.ones(1)), r"the function has none.*cons="),
        (dict(integrality=[True]), r"integrality=.*pytree of bools"),
        (dict(sense="max"), r"opf.MinSense or opf.MaxSense"),
    ],
)
def test_validation_errors_name_the_argument_and_the_fix(kwargs, match):
    args = dict(u0=jnp.zeros(2))
    args.update(kwargs)
    u0 = args.pop("u0")
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.OptimizationProblem(quadratic, u0, 1.0, **args)


def test_constraint_validation():
    f = opf.OptimizationFunction(quadratic, cons=lambda u, p: jnp.array([u.sum()]))
    with pytest.raises(opf.InvalidProblemError, match="has no `lcons`/`ucons`"):
        opf.OptimizationProblem(f, jnp.zeros(2))
    with pytest.raises(opf.InvalidProblemError, match=r"lcons\[0\] = 2.0 > ucons\[0\] = 1.0"):
        opf.OptimizationProblem(f, jnp.zeros(2), lcons=[2.0], ucons=[1.0])
    with pytest.raises(opf.InvalidProblemError, match="1-D arrays of one length"):
        opf.OptimizationProblem(f, jnp.zeros(2), lcons=[0.0], ucons=[1.0, 2.0])
    prob = opf.OptimizationProblem(f, jnp.zeros(2), lcons=0.0, ucons=jnp.inf)
    assert prob.has_constraints
    np.testing.assert_array_equal(prob.lcons, [0.0])


def test_pytree_bounds_broadcast_scalars_and_dicts():
    u0 = {"a": jnp.zeros(2), "b": [jnp.zeros(()), jnp.ones(3)]}
    prob = opf.OptimizationProblem(lambda u, p: 0.0, u0, lb=-1.0, ub={"a": 1.0, "b": [2.0, 3.0]})
    assert prob.has_bounds
    np.testing.assert_array_equal(prob.lb["b"][1], -np.ones(3))
    np.testing.assert_array_equal(prob.ub["b"][1], np.full(3, 3.0))
    np.testing.assert_array_equal(prob.ub["a"], np.ones(2))


def test_integrality_broadcasts_a_bool():
    prob = opf.OptimizationProblem(quadratic, jnp.zeros(2), integrality=True)
    assert prob.has_integrality
    np.testing.assert_array_equal(prob.integrality, [True, True])
    assert not opf.OptimizationProblem(quadratic, jnp.zeros(2), integrality=False).has_integrality


def test_remake_returns_a_new_validated_problem():
    prob = opf.OptimizationProblem(quadratic, jnp.zeros(2), 1.0, lb=-5.0, ub=5.0, maxiters=10)
    new = prob.remake(u0=jnp.ones(2), p=2.0)
    assert new is not prob
    np.testing.assert_array_equal(prob.u0, jnp.zeros(2))
    np.testing.assert_array_equal(new.u0, jnp.ones(2))
    assert new.p == 2.0 and prob.p == 1.0
    assert new.f is prob.f and new.kwargs == {"maxiters": 10}
    assert opf.remake(prob, maxiters=20).kwargs == {"maxiters": 20}
    with pytest.raises(opf.InvalidProblemError, match="outside"):
        prob.remake(u0=jnp.full(2, 9.0))
    assert prob.remake(lb=None, ub=None).has_bounds is False


def test_problems_are_immutable():
    prob = opf.OptimizationProblem(quadratic, jnp.zeros(2))
    with pytest.raises(AttributeError, match=r"immutable; use prob.remake\(u0=\.\.\.\)"):
        prob.u0 = jnp.ones(2)


def test_function_keeps_its_signature_and_is_immutable():
    params = inspect.signature(opf.OptimizationFunction).parameters
    assert list(params) == [
        "fun", "ad", "grad", "hess", "hvp", "cons", "cons_jac", "cons_hess", "has_aux",
    ]
    assert [p.kind for p in params.values()][:2] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
    grad, cons = (lambda u, p: u), (lambda u, p: u)
    f = opf.OptimizationFunction(quadratic, "finite", grad=grad, cons=cons)
    assert (f.fun, f.ad, f.cons, f.has_aux) == (quadratic, "finite", cons, False)
    assert f.supplied.grad is grad and f.supplied.hess is None
    with pytest.raises(AttributeError, match="immutable"):
        f.fun = rosenbrock
    with pytest.raises(AttributeError, match="immutable"):
        del f.ad


def test_compiled_code_belongs_to_the_users_function():
    traces = []

    def fun(u, p):
        traces.append(1)  # runs only while JAX traces
        return quadratic(u, p)

    u0 = jnp.zeros(2)
    first = opf.OptimizationProblem(fun, u0, 1.0)
    first.f.grad(u0, 1.0)
    first.f.value_and_grad(u0, 1.0)
    opf.solve(first, optax.adam(0.1), maxiters=5)
    before = len(traces)
    again = opf.OptimizationProblem(fun, u0, 1.0)
    remade = first.remake(u0=jnp.ones(2))
    wrapped = [opf.OptimizationFunction(fun), opf.OptimizationFunction(fun)]
    for f in [again.f, remade.f, *wrapped]:
        assert f._cache is first.f._cache
        assert derivatives(f, opf.MinSense) is derivatives(first.f, opf.MinSense)
        np.testing.assert_allclose(f.grad(u0 + 0.5, 1.0), [-1.0, -1.0])
        np.testing.assert_allclose(f.value_and_grad(u0, 1.0)[0], 2.0)
    opf.solve(again, optax.adam(0.1), maxiters=5)
    assert len(traces) == before
    # Other settings or other callables are other programs.
    grad = lambda u, p: 2 * (u - p)
    for other in (
        opf.OptimizationFunction(fun, ad=None),
        opf.OptimizationFunction(fun, grad=grad),
        opf.OptimizationFunction(lambda u, p: fun(u, p)),
    ):
        assert other._cache is not first.f._cache
    assert opf.OptimizationFunction(fun, grad=grad)._cache is (
        opf.OptimizationFunction(fun, grad=grad)._cache
    )


def test_the_cache_dies_with_the_function():
    def make():
        weights = jnp.arange(3.0)  # what a real objective closes over
        return lambda u, p: jnp.sum(weights * u**2)

    fun = make()
    prob = opf.OptimizationProblem(opf.OptimizationFunction(fun, cons=lambda u, p: u[:1]),
                                   jnp.ones(3), lcons=[0.0], ucons=[1.0])
    prob.f.grad(jnp.ones(3), None)
    prob.f.cons_jac(jnp.ones(3), None)
    d = derivatives(prob.f, opf.MinSense)
    plain = opf.OptimizationProblem(fun, jnp.ones(3))
    sols = [opf.solve(plain, alg, maxiters=3) for alg in (optax.adam(0.1), opf.LBFGSB())]
    assert fun in _CACHES
    alive, entries = weakref.ref(fun), len(_CACHES)
    del fun, prob, plain, sols
    gc.collect()
    assert alive() is None and len(_CACHES) < entries
    with pytest.raises(ReferenceError, match="keep the OptimizationFunction"):
        d.value(jnp.ones(3), None)


class Model:
    def __init__(self, target):
        self.target = target

    def loss(self, u, p):
        return jnp.sum((u - self.target) ** 2)


class ByValue:
    """A callable equal to every other one: it cannot share compiled code by identity."""

    def __eq__(self, other):
        return isinstance(other, ByValue)

    __hash__ = object.__hash__

    def __call__(self, u, p):
        return jnp.sum(u**2)


def test_bound_methods_share_and_other_callables_fall_back_to_their_own_cache():
    model = Model(1.0)
    f = opf.OptimizationFunction(model.loss)
    f.grad(jnp.zeros(2), None)
    assert opf.OptimizationFunction(model.loss)._cache is f._cache
    assert opf.OptimizationFunction(Model(1.0).loss)._cache is not f._cache
    del f  # the entry lives as long as the object, not the first bound method
    gc.collect()
    g = opf.OptimizationFunction(model.loss)
    assert ("answer", "grad") in g._cache
    np.testing.assert_allclose(g.grad(jnp.ones(2), None), [0.0, 0.0])
    owned = opf.OptimizationFunction(ByValue())
    assert owned._cache is not opf.OptimizationFunction(ByValue())._cache
    np.testing.assert_allclose(owned.grad(jnp.ones(2), None), [2.0, 2.0])
    builtin = opf.OptimizationFunction(quadratic, cons=np.cos)  # no weak reference to a ufunc
    assert builtin._cache is not opf.OptimizationFunction(quadratic, cons=np.cos)._cache


def test_a_function_pickles_and_shares_the_compiled_code():
    f = opf.OptimizationFunction(quadratic, grad=rosenbrock, has_aux=False)
    g = pickle.loads(pickle.dumps(f))
    assert (g.fun, g.ad, g.supplied.grad) == (quadratic, "jax", rosenbrock)
    assert g._cache is f._cache
