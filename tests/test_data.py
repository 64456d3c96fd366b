"""DataLoader, data iterators, epochs, and minibatch training through solve."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optiframe as opf
from optiframe.data import is_data_iterator

N, D = 70, 3
X = np.random.default_rng(0).normal(size=(N, D))
W_TRUE = np.array([1.5, -2.0, 0.5])
Y = X @ W_TRUE
IDS = np.arange(N, dtype=float)


def mse(w, batch):
    x, y = batch[0], batch[1]
    return jnp.mean((x @ w - y) ** 2)


class Batches:
    """A re-iterable of batches that is not a pytree (like a torch DataLoader)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_loader_batches_cover_every_sample_once_per_epoch():
    loader = opf.DataLoader((IDS,), batch_size=16, shuffle=True, key=jax.random.key(3))
    assert len(loader) == 5 and loader.last_batch_size == 6
    epochs = [np.concatenate([np.asarray(b[0]) for b in loader]) for _ in range(3)]
    for ids in epochs:
        np.testing.assert_array_equal(np.sort(ids), IDS)
    assert not np.array_equal(epochs[0], epochs[1])
    again = opf.DataLoader((IDS,), batch_size=16, shuffle=True, key=jax.random.key(3))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in again]), epochs[0])


def test_loader_drop_last_and_order():
    loader = opf.DataLoader({"x": X, "id": IDS}, batch_size=16, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert all(b["x"].shape == (16, D) for b in batches)
    np.testing.assert_array_equal(batches[1]["id"], IDS[16:32])


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(arrays=(X, IDS[:5]), batch_size=4), r"same leading \(sample\) dimension"),
        (dict(arrays=(X,), batch_size=0), r"batch_size=0.*positive integer"),
        (dict(arrays=(X,), batch_size=100, drop_last=True), r"yields no batch"),
        (dict(arrays=(), batch_size=4), r"holds no arrays"),
    ],
)
def test_loader_errors(args, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.DataLoader(**args)


def test_what_counts_as_a_data_iterator():
    assert is_data_iterator(opf.DataLoader((X,), 8))
    assert is_data_iterator(Batches([(X, Y)]))
    assert is_data_iterator(b for b in [(X, Y)])
    for params in (None, 1.0, X, jnp.ones(2), [X, Y], {"x": X}, (X, Y), "name"):
        assert not is_data_iterator(params)


def loader_problem(**loader_kwargs):
    loader = opf.DataLoader((X, Y, IDS), **loader_kwargs)
    return opf.OptimizationProblem(mse, jnp.zeros(D), loader)


def test_every_batch_is_visited_once_per_epoch_including_the_partial_one():
    seen = []
    prob = loader_problem(batch_size=16, shuffle=True, key=jax.random.key(0))
    sol = opf.solve(prob, optax.sgd(0.05), epochs=3, callback=lambda s, loss: seen.append(s.p[2]))
    assert sol.stats.iterations == 15 == len(seen)
    for epoch in range(3):
        ids = np.concatenate([np.asarray(b) for b in seen[5 * epoch : 5 * epoch + 5]])
        np.testing.assert_array_equal(np.sort(ids), IDS)
    assert [len(b) for b in seen[:5]] == [16, 16, 16, 16, 6]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [10, 16])
def test_fused_loader_path_matches_the_stepwise_path(shuffle, batch_size):
    prob = loader_problem(batch_size=batch_size, shuffle=shuffle, key=jax.random.key(1))
    fused = opf.solve(prob, optax.adam(0.05), epochs=4)
    stepwise = opf.solve(prob, optax.adam(0.05), epochs=4, callback=lambda s, loss: None)
    assert fused.stats.iterations == stepwise.stats.iterations == 4 * len(prob.p)
    np.testing.assert_allclose(fused.u, stepwise.u, rtol=1e-5, atol=1e-6)
    assert fused.objective == pytest.approx(stepwise.objective, rel=1e-4)


def test_minibatch_training_recovers_the_weights():
    prob = loader_problem(batch_size=16, shuffle=True, key=jax.random.key(2))
    sol = opf.solve(prob, optax.adam(0.05), epochs=150)
    np.testing.assert_allclose(sol.u, W_TRUE, atol=1e-3)
    assert sol.retcode is opf.ReturnCode.MaxIters


def test_maxiters_alone_walks_the_epochs_it_spans():
    prob = loader_problem(batch_size=16)
    seen = []
    sol = opf.solve(
        prob, optax.sgd(0.01), maxiters=7, callback=lambda s, loss: seen.append(s.p[2][0])
    )
    assert sol.stats.iterations == 7
    assert [float(i) for i in seen] == [0, 16, 32, 48, 64, 0, 16]


def test_inconsistent_maxiters_and_epochs_is_an_error():
    prob = loader_problem(batch_size=16)
    with pytest.raises(opf.InvalidProblemError, match=r"3 epochs of 5 batches are 15 iterations"):
        opf.solve(prob, optax.sgd(0.01), maxiters=10, epochs=3)
    assert opf.solve(prob, optax.sgd(0.01), maxiters=15, epochs=3).stats.iterations == 15
    with pytest.raises(opf.InvalidProblemError, match=r"pass epochs= .*or maxiters="):
        opf.solve(prob, optax.sgd(0.01))


def test_any_reiterable_of_batches_is_walked_each_epoch():
    batches = Batches([(X[i : i + 20], Y[i : i + 20]) for i in range(0, N, 20)])
    seen = []
    prob = opf.OptimizationProblem(mse, jnp.zeros(D), batches)
    sol = opf.solve(
        prob, optax.adam(0.05), epochs=3, callback=lambda s, loss: seen.append(len(s.p[0]))
    )
    assert sol.stats.iterations == 12
    assert seen == [20, 20, 20, 10] * 3
    no_callback = opf.solve(prob, optax.adam(0.05), epochs=3)
    np.testing.assert_allclose(no_callback.u, sol.u, rtol=1e-6)


def test_a_generator_can_be_walked_once_only():
    def gen():
        for i in range(0, N, 20):
            yield X[i : i + 20], Y[i : i + 20]

    prob = opf.OptimizationProblem(mse, jnp.zeros(D), gen())
    with pytest.raises(opf.InvalidProblemError, match=r"one-shot iterator.*epochs=2"):
        opf.solve(prob, optax.sgd(0.01), epochs=2)
    sol = opf.solve(opf.OptimizationProblem(mse, jnp.zeros(D), gen()), optax.sgd(0.01), epochs=1)
    assert sol.stats.iterations == 4


def test_quasi_newton_with_a_line_search_refuses_minibatches():
    with pytest.raises(opf.UnsupportedFeatureError, match=r"data iterator.*full data set as p"):
        opf.solve(loader_problem(batch_size=16), optax.lbfgs(), epochs=1)


def test_warm_start_continues_the_epochs():
    prob = loader_problem(batch_size=16, shuffle=True, key=jax.random.key(4))
    full = opf.solve(prob, optax.adam(0.05), epochs=4)
    half = opf.solve(prob, optax.adam(0.05), epochs=2)
    rest = opf.solve(prob, optax.adam(0.05), epochs=2, warm_start=half)
    np.testing.assert_allclose(rest.u, full.u, rtol=1e-6)
    assert int(rest.state.steps) == 20


def test_solution_objective_is_the_loss_on_the_last_batch():
    prob = loader_problem(batch_size=16)
    sol = opf.solve(prob, optax.adam(0.05), epochs=2)
    last = (X[64:], Y[64:])
    assert sol.objective == pytest.approx(float(mse(jnp.asarray(sol.u), last)), rel=1e-5)
