"""Learned optimizers: `ProblemFamily`, `LearnedOptimizer` and `meta_train`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optiframe as opf
from optiframe.meta import _Program


def quadratic(u, p):
    """A scaled quadratic per task: p = (scales (4,), centre (4,))."""
    return jnp.sum(p[0] * (u["x"] - p[1]) ** 2) + jnp.sum(u["y"] ** 2)


def sample_p(key):
    k1, k2 = jax.random.split(key)
    return jnp.stack([jax.random.uniform(k1, (4,), minval=0.5, maxval=2.0),
                      jax.random.normal(k2, (4,))])


U0 = {"x": jnp.zeros(4), "y": jnp.ones(2)}
FAMILY = opf.ProblemFamily(opf.OptimizationProblem(quadratic, U0, sample_p(jax.random.key(0))),
                           sample_p)


def train(**keywords):
    keywords = {"horizon": 20, "truncation": 5, "n_tasks": 4, "maxiters": 6, **keywords}
    return opf.meta_train(FAMILY, opf.LearnedOptimizer.adam_residual(0.05), **keywords)


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- the family


def test_a_family_draws_tasks_with_the_problems_shapes():
    task = FAMILY.sample(jax.random.key(1))
    assert isinstance(task, opf.OptimizationProblem) and task.p.shape == (2, 4)
    ps, u0s = FAMILY.draw(jax.random.key(1), 5)
    assert ps.shape == (5, 2, 4) and u0s["x"].shape == (5, 4)
    np.testing.assert_array_equal(ps[0], task.p)  # sample(key) is draw(key, 1)'s task


def test_a_family_refuses_samplers_of_other_shapes():
    with pytest.raises(opf.InvalidProblemError, match=r"sample_p=.*draws \(3,\).*prob.p is"):
        opf.ProblemFamily(FAMILY.prob, lambda key: jax.random.normal(key, (3,)))
    with pytest.raises(opf.InvalidProblemError, match=r"sample_u0=\.\.\.\)` must be callable"):
        opf.ProblemFamily(FAMILY.prob, sample_p, sample_u0=3)


# --------------------------------------------------------------------------- the optimizer


def test_adam_residual_starts_equal_to_adam_bit_for_bit():
    """Its update, step by step, is `optax.adam`'s (the network's last layer is zero)."""
    lopt, adam = opf.LearnedOptimizer.adam_residual(1e-2), optax.adam(1e-2)
    params = {"w": jax.random.normal(jax.random.key(0), (3, 5)), "b": jnp.ones(5)}
    ours, theirs = lopt.init(params), adam.init(params)
    for i in range(10):
        grads = jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)), params)
        a, ours = jax.jit(lopt.update)(grads, ours, params)
        b, theirs = jax.jit(adam.update)(grads, theirs, params)
        assert same(a, b), i
        params = optax.apply_updates(params, a)


def test_it_solves_like_adam_through_solve_with_warm_starts():
    """Through `solve`, to float32 rounding: XLA fuses the two compiled loops differently."""
    prob = FAMILY.sample(jax.random.key(2))
    lopt = opf.LearnedOptimizer.adam_residual(0.05)
    sol, ref = opf.solve(prob, lopt, maxiters=60), opf.solve(prob, optax.adam(0.05), maxiters=60)
    for x, y in zip(jax.tree.leaves(sol.u), jax.tree.leaves(ref.u)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    half = opf.solve(prob, lopt, maxiters=30)
    rest = opf.solve(prob, lopt, maxiters=30, warm_start=half)
    assert int(rest.state.opt_state.count) == 60
    for x, y in zip(jax.tree.leaves(rest.u), jax.tree.leaves(sol.u)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_past_its_horizon_it_sees_the_step_count_as_the_horizon():
    """Two copies with horizons 5 and 1,000 update alike up to step 5, and differ after:
    the first's clock stops at 5."""
    lopt = opf.LearnedOptimizer.adam_residual(1e-2)
    theta = jax.tree.map(lambda x: x + 0.1, lopt.theta)  # a correction everywhere
    short, long = lopt.replace(theta=theta, horizon=5), lopt.replace(theta=theta, horizon=1000)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    a_state, b_state = short.init(params), long.init(params)
    for i in range(9):
        grads = {"w": jnp.cos(params["w"] * (i + 1))}
        a, a_state = short.update(grads, a_state, params)
        b, b_state = long.update(grads, b_state, params)
        assert same(a, b) == (i <= 5), i
        params = optax.apply_updates(params, b)


def test_a_learned_optimizer_from_scratch_runs_through_solve():
    prob = FAMILY.sample(jax.random.key(3))
    sol = opf.solve(prob, opf.LearnedOptimizer.mlp(), maxiters=20)
    assert sol.stats.iterations == 20 and not same(sol.u, prob.u0)


def test_save_and_load_round_trip(tmp_path):
    lopt = train(maxiters=2)
    lopt.save(tmp_path / "lopt.npz")
    back = opf.LearnedOptimizer.load(tmp_path / "lopt.npz")
    assert same(back.theta, lopt.theta) and back.rule == lopt.rule and back.rule.horizon == 20
    prob = FAMILY.sample(jax.random.key(4))
    assert same(opf.solve(prob, back, maxiters=10).u, opf.solve(prob, lopt, maxiters=10).u)
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(opf.InvalidProblemError, match="not a file LearnedOptimizer.save wrote"):
        opf.LearnedOptimizer.load(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- meta-training


def test_meta_training_is_reproducible_and_reports_its_losses():
    a, b = train(), train()
    assert same(a.theta, b.theta) and not same(a.theta, opf.LearnedOptimizer.adam_residual(
        0.05).theta)
    assert a.training.iterations == 6 and a.training.meta_losses.shape == (6,)
    assert a.training.retcode is opf.ReturnCode.MaxIters and a.training.skipped == 0
    assert a.rule.horizon == 20
    assert not same(train(seed=1).theta, a.theta)


def test_the_gradient_through_the_unroll_lowers_the_meta_loss():
    """40 meta-iterations at a meta learning rate of 1e-2 on the quadratics: the last
    unrolls score well below the first ones."""
    lopt = train(maxiters=40, meta_optimizer=optax.adam(1e-2))
    losses = lopt.training.meta_losses
    assert losses[-5:].mean() < losses[:5].mean() - 0.5, losses


def test_antithetic_es_estimates_the_meta_gradient():
    """One step of each estimator from the same tasks, through SGD(1): ES's step points
    along the gradient through the unroll (a random direction in these 1,634 dimensions
    would have a cosine of about +-0.025 with it)."""
    lopt = opf.LearnedOptimizer.adam_residual(0.05).replace(horizon=20)
    lopt = lopt.replace(theta=jax.tree.map(lambda x: x + 0.05, lopt.theta))
    steps = []
    for estimator in ("unroll", "es"):
        program = _Program(FAMILY, lopt, 20, 5, estimator, 0.01, optax.sgd(1.0))
        states, ps = program.start(256, lopt.theta, jax.random.key(0))
        theta = program.iterate(lopt.theta, optax.sgd(1.0).init(lopt.theta), states, ps,
                                jax.random.key(1))[0]
        steps.append(jax.flatten_util.ravel_pytree(theta)[0]
                     - jax.flatten_util.ravel_pytree(lopt.theta)[0])
    unroll, es = steps
    cosine = jnp.dot(unroll, es) / (jnp.linalg.norm(unroll) * jnp.linalg.norm(es))
    assert cosine > 0.1, cosine


def test_tasks_start_staggered_over_the_horizon():
    lopt = opf.LearnedOptimizer.adam_residual(0.05).replace(horizon=20)
    program = _Program(FAMILY, lopt, 20, 5, "unroll", 0.01, optax.adam(1e-3))
    states, _ = program.start(8, lopt.theta, jax.random.key(0))
    np.testing.assert_array_equal(states[1].count, [0, 0, 5, 5, 10, 10, 15, 15])


def test_a_callback_sees_the_meta_loss_and_can_stop():
    seen = []

    def callback(state, meta_loss):
        seen.append((state.iter, meta_loss))
        return state.iter == 3

    lopt = train(callback=callback)
    assert [i for i, _ in seen] == [1, 2, 3]
    assert lopt.training.retcode is opf.ReturnCode.Terminated
    np.testing.assert_array_equal([m for _, m in seen], lopt.training.meta_losses)


def test_a_progress_bar_counts_the_meta_iterations(capsys):
    train(progress=True)
    assert "6/6" in capsys.readouterr().err


def test_maxtime_bounds_meta_training():
    lopt = train(maxiters=None, maxtime=0.5)
    assert lopt.training.retcode is opf.ReturnCode.MaxTime and lopt.training.iterations >= 1


def test_non_finite_meta_gradients_are_skipped_and_counted():
    nan_family = opf.ProblemFamily(FAMILY.prob, lambda key: sample_p(key) * jnp.nan)
    lopt = opf.meta_train(nan_family, opf.LearnedOptimizer.adam_residual(0.05), horizon=10,
                          truncation=5, n_tasks=2, maxiters=3)
    assert lopt.training.skipped == 3
    assert same(lopt.theta, opf.LearnedOptimizer.adam_residual(0.05).theta)  # untouched


@pytest.mark.parametrize("keywords, match", [
    ({"horizon": 22}, "horizon must be a multiple of truncation"),
    ({"estimator": "pes"}, "estimator='pes'"),
    ({"maxiters": None}, "needs a budget"),
    ({"n_tasks": 0}, "n_tasks=0"),
])
def test_bad_meta_training_arguments_are_refused(keywords, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        train(**keywords)
