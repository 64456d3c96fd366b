"""solve(): name resolution, keyword validation, capability checks before dispatch."""

import dataclasses

import jax.numpy as jnp
import optax
import pytest

import optiframe as opf
from optiframe.backends import base
from problems import QUADRATIC, quadratic


def quadratic_problem(**kwargs):
    return opf.OptimizationProblem(quadratic, QUADRATIC.u0, QUADRATIC.p, **kwargs)


def test_return_codes():
    assert opf.ReturnCode.Success.successful
    for code in opf.ReturnCode:
        assert code.successful == (code is opf.ReturnCode.Success)
    assert {c.name for c in opf.ReturnCode} == {
        "Success",
        "MaxIters",
        "MaxTime",
        "Terminated",
        "Stalled",
        "Infeasible",
        "Failure",
    }


def test_registered_names_resolve_case_insensitively():
    sol = opf.solve(quadratic_problem(), "Adam", maxiters=3)
    assert isinstance(sol.alg, opf.Optax)
    assert sol.stats.iterations == 3
    assert isinstance(opf.solve(quadratic_problem(), "optax:lbfgs", maxiters=3).alg, opf.Optax)


def test_unknown_name_lists_close_matches():
    with pytest.raises(
        opf.OptiframeError, match=r"Unknown algorithm name 'adma'.*Did you mean 'adam'"
    ):
        opf.solve(quadratic_problem(), "adma", maxiters=3)


def test_non_algorithm_object_is_rejected():
    with pytest.raises(opf.OptiframeError, match=r"int is not an algorithm"):
        opf.solve(quadratic_problem(), 42, maxiters=3)
    with pytest.raises(opf.OptiframeError, match=r"prob must be an opf.OptimizationProblem"):
        opf.solve("problem", optax.adam(1e-3), maxiters=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(maxiters=0), r"maxiters=0.*positive integer"),
        (dict(maxiters=2.5), r"maxiters=2.5.*positive integer"),
        (dict(maxiters=10, abstol=-1.0), r"abstol=-1.0.*>= 0"),
        (dict(maxiters=10, maxtime=0), r"maxtime=0.*number > 0"),
        (dict(maxiters=10, callback=3), r"callback=.*callable"),
        (dict(maxiters=10, warm_start=3), r"warm_start=.*OptimizationSolution"),
        (dict(maxiters=10, progress="yes"), r"progress='yes'.*ProgressBar"),
        (dict(maxiters=10, epochs=2), r"epochs=.*not one"),
    ],
)
def test_bad_keyword_values(kwargs, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.solve(quadratic_problem(), optax.adam(1e-2), **kwargs)


def test_float_maxiters_that_are_integers_are_accepted():
    assert opf.solve(quadratic_problem(), optax.adam(1e-2), maxiters=1e1).stats.iterations == 10


def test_problem_keywords_are_solve_defaults():
    prob = quadratic_problem(maxiters=7)
    assert opf.solve(prob, optax.adam(1e-2)).stats.iterations == 7
    assert opf.solve(prob, optax.adam(1e-2), maxiters=4).stats.iterations == 4


def test_solution_records_problem_alg_and_time():
    prob = quadratic_problem()
    sol = opf.solve(prob, optax.adam(1e-2), maxiters=3)
    assert sol.problem is prob
    assert sol.stats.time > 0
    assert "MaxIters" in repr(sol)


@dataclasses.dataclass(frozen=True)
class ConstrainedDummy(opf.Algorithm):
    """A stand-in for a constrained solver, to test dispatch."""

    @property
    def capabilities(self):
        return opf.Capabilities(bounds=True, constraints=True, keywords=frozenset({"maxiters"}))

    def solve(self, problem, options):
        raise AssertionError("capability checks must run before dispatch")


@pytest.fixture
def dummy_registered(monkeypatch):
    monkeypatch.setitem(base._NAMES, "dummy-slsqp", ("dummy-slsqp", ConstrainedDummy))


def test_unsupported_constraints_name_algorithms_that_can(dummy_registered):
    f = opf.OptimizationFunction(quadratic, cons=lambda u, p: jnp.array([u.sum()]))
    prob = opf.OptimizationProblem(f, QUADRATIC.u0, QUADRATIC.p, lcons=[0.0], ucons=[1.0])
    with pytest.raises(
        opf.UnsupportedFeatureError,
        match=r"does not support constraints \(lcons/ucons\)\. Either remove the constraints, "
        r"or use an algorithm that does \(such as 'COBYLA', 'COBYQA', 'dummy-slsqp'",
    ):
        opf.solve(prob, optax.adam(1e-2), maxiters=3)


def test_unsupported_keyword_is_rejected_before_dispatch(dummy_registered):
    with pytest.raises(
        opf.UnsupportedFeatureError, match=r"does not support the `maxtime` keyword"
    ):
        opf.solve(quadratic_problem(), "dummy-slsqp", maxiters=3, maxtime=1.0)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"does not support a data iterator"):
        opf.solve(
            opf.OptimizationProblem(quadratic, QUADRATIC.u0, opf.DataLoader(jnp.ones((4, 3)), 2)),
            "dummy-slsqp",
            maxiters=3,
        )


def test_a_count_that_is_not_a_number_is_refused():
    with pytest.raises(opf.InvalidProblemError, match=r"maxiters='10'.*positive integer"):
        opf.solve(quadratic_problem(), optax.adam(1e-2), maxiters="10")


def test_a_callback_that_cannot_take_state_and_loss_is_refused_before_the_run():
    def report(state):
        return False

    with pytest.raises(opf.InvalidProblemError, match=r"callback=report.*callback\(state, loss\)"):
        opf.solve(quadratic_problem(), optax.adam(1e-2), maxiters=3, callback=report)


def test_capabilities_are_checked_before_the_keywords():
    # A data loader given to L-BFGS-B without epochs: the capability, not "pass epochs=".
    prob = opf.OptimizationProblem(quadratic, QUADRATIC.u0, opf.DataLoader(jnp.ones((4, 3)), 2))
    with pytest.raises(opf.UnsupportedFeatureError, match=r"data iterator.*such as 'adagrad'"):
        opf.solve(prob, opf.LBFGSB())


def test_suggestions_name_algorithms_as_they_are_spelled():
    with pytest.raises(opf.OptiframeError, match=r"Did you mean .*'L-BFGS-B'"):
        opf.solve(quadratic_problem(), "l-bfgs", maxiters=3)


def test_an_objective_returning_a_python_float_runs():
    sol = opf.solve(opf.OptimizationProblem(lambda u, p: 1.0, QUADRATIC.u0), "adam", maxiters=3)
    assert sol.objective == 1.0 and sol.retcode is opf.ReturnCode.MaxIters
