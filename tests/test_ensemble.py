"""EnsembleProblem: every member solved as `solve(prob.remake(p=ps[i], u0=u0s[i]), alg)`
would solve it, on the device as one vmapped program (each member stopping on its own
test, with its own counts and return code), on the host one member at a time."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest

import optiframe as opf

X64 = jax.config.jax_enable_x64
N = 6


def rosenbrock(u, p):
    """Σ b (u[i+1] - u[i]²)² + (a - u[i])² with p = (a, b): minimum 0 at u = 1 for
    a = 1, elsewhere a compromise between the terms."""
    return jnp.sum(p[1] * (u[1:] - u[:-1] ** 2) ** 2 + (p[0] - u[:-1]) ** 2)


def weighted(u, p):
    """Σ p_i (u_i - 1)²: conditioning set by p, minimum 0 at u = 1."""
    return jnp.sum(p * (u - 1.0) ** 2)


PS = np.stack([np.linspace(0.6, 1.4, N), np.linspace(40.0, 160.0, N)], axis=1)
U0S = np.random.default_rng(0).uniform(-1.0, 1.0, (N, 4))
ROSEN = opf.OptimizationProblem(rosenbrock, jnp.zeros(4), jnp.array([1.0, 100.0]))
WEIGHTS = np.linspace(1.0, 8.0, N)[:, None] * np.array([1.0, 2.0, 4.0])
QUAD = opf.OptimizationProblem(weighted, jnp.zeros(3), jnp.ones(3))


def ensemble(prob=ROSEN, ps=PS, u0s=U0S):
    dtype = jnp.result_type(float)
    cast = lambda x: None if x is None else jnp.asarray(x, dtype)
    return opf.EnsembleProblem(prob, ps=cast(ps), u0s=cast(u0s))


def alone(ens, i, alg, **keywords):
    return opf.solve(ens.member(i), alg, **keywords)


def assert_members_match(esol, ens, alg, *, exact, **keywords):
    """Every member's u, objective, counts and code as its own solve's: bit for bit
    (`exact`), else to rounding (a vmapped program sums in another order)."""
    # float32: the rounding of values of order one, compounded over the run
    rounding = dict(rtol=1e-12, atol=1e-12) if X64 else dict(rtol=1e-4, atol=1e-6)
    tol = dict(rtol=0, atol=0) if exact else rounding
    for i in range(len(ens)):
        sol, member = alone(ens, i, alg, **keywords), esol[i]
        np.testing.assert_allclose(member.u, sol.u, **tol)
        np.testing.assert_allclose(esol.u[i], sol.u, **tol)
        np.testing.assert_allclose(member.objective, sol.objective, **tol)
        assert member.retcode is sol.retcode and esol.retcodes[i] is sol.retcode
        if exact or X64:  # (in float32, rounding can move a count: RKC's stage choice)
            assert (member.stats.iterations, member.stats.fevals, member.stats.gevals) == (
                sol.stats.iterations, sol.stats.fevals, sol.stats.gevals
            ), i
        if exact:
            assert member.message == sol.message


# --------------------------------------------------------------------------- on the device


def test_optax_members_are_their_own_solves_bit_for_bit():
    ens = ensemble()
    alg = optax.adam(0.02)
    esol = opf.solve(ens, alg, maxiters=150)
    assert len(esol) == N and esol.u.shape == (N, 4) and esol.objective.dtype == np.float64
    assert_members_match(esol, ens, alg, exact=True, maxiters=150)
    assert esol.stats.iterations == N * 150 and esol.stats.fevals == N * 151


@pytest.mark.skipif(not X64, reason="float64: a vmapped program rounds as the single one to 1e-12")
def test_optimistix_members_match_their_own_solves_to_1e_12():
    ens = ensemble()
    alg = opf.Optimistix(optx.BFGS(rtol=1e-10, atol=1e-10))
    # before convergence (a converging run's last steps amplify rounding)
    esol = opf.solve(ens, alg, maxiters=25)
    assert_members_match(esol, ens, alg, exact=False, maxiters=25)


def test_each_member_stops_on_its_own_test_and_its_counts_say_so():
    ens = opf.EnsembleProblem(QUAD, ps=jnp.asarray(WEIGHTS, jnp.result_type(float)))
    alg = optax.sgd(0.02)
    esol = opf.solve(ens, alg, maxiters=400, abstol=1e-3)
    iterations = [esol[i].stats.iterations for i in range(N)]
    # better-conditioned members (larger weights, larger steps) converge sooner
    assert iterations == sorted(iterations, reverse=True) and len(set(iterations)) == N
    assert all(code is opf.ReturnCode.Success for code in esol.retcodes)
    assert esol.successful.all()
    assert_members_match(esol, ens, alg, exact=True, maxiters=400, abstol=1e-3)


@pytest.mark.parametrize("alg", [opf.ODEGradientDescent(dt=0.02), opf.RKChebyshevDescent()],
                         ids=repr)
def test_gradient_flow_members_count_their_own_gradients(alg):
    ens = opf.EnsembleProblem(QUAD, ps=jnp.asarray(WEIGHTS, jnp.result_type(float)))
    esol = opf.solve(ens, alg, maxiters=500, abstol=1e-4)
    assert len({esol[i].stats.iterations for i in range(N)}) > 1
    assert_members_match(esol, ens, alg, exact=False, maxiters=500, abstol=1e-4)


def test_evosax_members_with_the_same_seed_match_their_own_solves():
    ens = ensemble(u0s=None)
    bounded = ens.prob.remake(lb=-2.0, ub=2.0)
    ens = opf.EnsembleProblem(bounded, ps=ens.ps)
    alg = opf.EvoSax("SNES", population_size=8, seed=3)
    esol = opf.solve(ens, alg, maxiters=20)
    assert_members_match(esol, ens, alg, exact=False, maxiters=20)


@pytest.mark.parametrize("abstol", [1e-4, None], ids=["tested", "in-step"])
def test_a_member_that_turns_nan_fails_alone_and_the_others_do_not(abstol):
    def log_barrier(u, p):
        return jnp.sum((u - p) ** 2) - jnp.log(u[0])  # NaN for u[0] < 0

    targets = np.array([[1.0, 1.0], [2.0, -1.0], [-30.0, 0.5]])  # the last pulls u[0] below 0
    prob = opf.OptimizationProblem(log_barrier, jnp.ones(2), jnp.ones(2))
    ens = opf.EnsembleProblem(prob, ps=jnp.asarray(targets, jnp.result_type(float)))
    alg = optax.sgd(0.1)
    esol = opf.solve(ens, alg, maxiters=300, abstol=abstol)
    code = opf.ReturnCode.MaxIters if abstol is None else opf.ReturnCode.Success
    assert esol.retcodes[:2] == (code,) * 2
    assert esol.retcodes[2] is opf.ReturnCode.Failure and "non-finite" in esol[2].message
    assert np.all(np.isfinite(esol.u)) and np.all(np.isfinite(esol.objective))
    single = alone(ens, 2, alg, maxiters=300, abstol=abstol)
    np.testing.assert_array_equal(esol[2].u, single.u)
    assert esol[2].objective == single.objective
    assert esol[2].stats.fevals > single.stats.fevals  # the ensemble's calls counted too


def test_callback_sees_every_member_stacked_and_true_stops_the_running_ones():
    ens = opf.EnsembleProblem(QUAD, ps=jnp.asarray(WEIGHTS, jnp.result_type(float)))
    seen = []

    def callback(state, loss):
        seen.append((state.iter, np.asarray(state.u).shape, np.shape(loss), loss.copy()))
        return state.iter == 40

    esol = opf.solve(ens, optax.sgd(0.02), maxiters=400, abstol=1e-3, callback=callback)
    assert [s[0] for s in seen] == list(range(1, 41))
    assert all(shape == (N, 3) and lshape == (N,) for _, shape, lshape, _ in seen)
    fused = opf.solve(ens, optax.sgd(0.02), maxiters=400, abstol=1e-3)
    # (a member that passes its test at the 41st step has 40 iterations)
    stopped = [i for i in range(N) if fused[i].stats.iterations < 40]
    assert stopped  # some members converged before the callback's stop
    for i in range(N):
        expected = fused.retcodes[i] if i in stopped else opf.ReturnCode.Terminated
        assert esol.retcodes[i] is expected, i
    np.testing.assert_array_equal(np.asarray(esol.u)[stopped], np.asarray(fused.u)[stopped])
    # the first state shows each member's start objective
    np.testing.assert_allclose(seen[0][3], np.sum(WEIGHTS, axis=1), rtol=1e-6)


def test_max_sense_pytree_u0_and_a_shared_p():
    def peak(u, p):
        return -jnp.sum((u["x"] - 2.0) ** 2) - (u["y"] + 1.0) ** 2

    prob = opf.OptimizationProblem(peak, {"x": jnp.zeros(2), "y": jnp.zeros(())},
                                   sense=opf.MaxSense)
    u0s = {"x": jnp.asarray(U0S[:, :2], jnp.result_type(float)),
           "y": jnp.asarray(U0S[:, 2], jnp.result_type(float))}
    esol = opf.solve(opf.EnsembleProblem(prob, u0s=u0s), "optimistix:BFGS")
    assert jax.tree.structure(esol.u) == jax.tree.structure(u0s)
    np.testing.assert_allclose(esol.u["x"], 2.0, atol=1e-4)
    np.testing.assert_allclose(esol.u["y"], -1.0, atol=1e-4)
    assert np.all(esol.objective <= 0) and np.all(esol.objective > -1e-7)
    assert esol[0].u["x"].shape == (2,) and esol[0].problem.u0["y"].shape == ()


def test_multistart_on_the_device_is_one_ensemble():
    def rastrigin(u, p):
        return 10 * u.size + jnp.sum(u**2 - 10 * jnp.cos(2 * jnp.pi * u))

    prob = opf.OptimizationProblem(rastrigin, jnp.full(2, 2.0), lb=-5.12, ub=5.12)
    alg = opf.MultiStart(optax.adam(0.05), 32, seed=1)
    sol = opf.solve(prob, alg, maxiters=300)
    esol = sol.original
    assert isinstance(esol, opf.EnsembleSolution) and len(esol) == 32
    assert sol.objective == esol.objective.min() and sol.stats.iterations == 32 * 300
    starts = alg.starts(prob)
    for i in (0, 31):
        np.testing.assert_array_equal(esol[i].problem.u0, starts[i])
    assert sol.objective < 2.0  # f(u0) = 8: a start in a basin next to the global one


# --------------------------------------------------------------------------- on the host


def test_host_members_serially_and_on_an_executor():
    ens = ensemble()
    serial = opf.solve(ens, opf.LBFGSB(), maxiters=200)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threaded = opf.solve(ens, opf.LBFGSB(), maxiters=200, executor=pool)
    for i in range(N):
        sol = alone(ens, i, opf.LBFGSB(), maxiters=200)
        np.testing.assert_array_equal(serial[i].u, sol.u)
        np.testing.assert_array_equal(threaded[i].u, sol.u)
        assert serial[i].stats.fevals == sol.stats.fevals
    assert serial.u.shape == (N, 4) and serial.stats.fevals == sum(
        serial[i].stats.fevals for i in range(N))


def test_host_members_on_a_dask_cluster():
    distributed = pytest.importorskip("distributed")

    def shifted(u, p):  # defined here: pickled by value for the dask workers
        return jnp.sum((u - p[0]) ** 2) + p[1] * jnp.sum(u[1:] * u[:-1])

    ens = opf.EnsembleProblem(opf.OptimizationProblem(shifted, np.zeros(4), np.ones(2)),
                              ps=PS / np.array([1.0, 400.0]))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=40,
    ) as cluster, distributed.Client(cluster) as client:
        esol = opf.solve(ens, opf.LBFGSB(), maxiters=200, executor=client.get_executor())
    for i in range(N):
        np.testing.assert_array_equal(esol[i].u, alone(ens, i, opf.LBFGSB(), maxiters=200).u)


# --------------------------------------------------------------------------- the API


def test_solution_indexing_and_repr():
    esol = opf.solve(ensemble(), optax.adam(0.02), maxiters=5)
    assert len(list(esol)) == N and esol[-1].objective == esol.objective[-1]
    assert esol[np.int64(2)].problem.p.tolist() == pytest.approx(PS[2].tolist())
    with pytest.raises(IndexError, match="6 members"):
        esol[6]
    assert repr(esol).startswith("EnsembleSolution(6 members; MaxIters: 6;")
    assert repr(ensemble()) == "EnsembleProblem(6 members, varying ps and u0s)"


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "needs ps= .* and/or u0s="),
    (dict(ps=np.ones((3, 2)), u0s=np.zeros((4, 4))), "ps holds 3 members but u0s holds 4"),
    (dict(ps=np.ones((3, 3))), r"`ps` has shape \(3, 3\), but p has shape \(2,\)"),
    (dict(ps={"a": np.ones((3, 2))}), r"ps=...\)` has pytree structure"),
    (dict(ps=np.ones((0, 2))), "the ensemble is empty"),
    (dict(u0s=np.full((2, 4), np.nan)), r"member 0's start `u0s\[0\]` is not finite"),
])
def test_bad_ensembles(kwargs, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.EnsembleProblem(ROSEN, **kwargs)


def test_bad_ensembles_of_pytrees_and_boxes():
    tree = opf.OptimizationProblem(lambda u, p: u["a"] @ p["w"], {"a": jnp.zeros(2)},
                                   {"w": jnp.ones(2), "c": jnp.ones(())})
    with pytest.raises(opf.InvalidProblemError, match=r"leading axes disagree \(4 and 3"):
        opf.EnsembleProblem(tree, ps={"c": np.ones(4), "w": np.ones((3, 2))})
    boxed = ROSEN.remake(lb=-1.0, ub=1.0)
    with pytest.raises(opf.InvalidProblemError, match=r"member 1's start .* inside \[lb, ub\]"):
        opf.EnsembleProblem(boxed, u0s=np.array([np.zeros(4), np.full(4, 2.0)]))
    loader = opf.DataLoader(jnp.ones((8, 2)), batch_size=4)
    with pytest.raises(opf.InvalidProblemError, match="data iterator"):
        opf.EnsembleProblem(ROSEN.remake(p=loader), u0s=np.zeros((2, 4)))
    with pytest.raises(opf.InvalidProblemError, match="must be an opf.OptimizationProblem"):
        opf.EnsembleProblem(rosenbrock, ps=PS)


def test_keywords_an_ensemble_refuses():
    ens = ensemble()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(opf.InvalidProblemError, match="executor= is for host algorithms"):
            opf.solve(ens, optax.adam(0.1), maxiters=3, executor=pool)
        with pytest.raises(opf.InvalidProblemError, match="runs the members of an opf.Ensemble"):
            opf.solve(ROSEN, opf.LBFGSB(), executor=pool)
    with pytest.raises(opf.UnsupportedFeatureError, match="no callback can see them stacked"):
        opf.solve(ens, opf.LBFGSB(), callback=lambda s, loss: None)
    first = opf.solve(ens.member(0), optax.adam(0.1), maxiters=3)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"u0s=esol.u"):
        opf.solve(ens, optax.adam(0.1), maxiters=3, warm_start=first)


def test_maxtime_and_progress():
    ens = opf.EnsembleProblem(QUAD, ps=jnp.asarray(WEIGHTS, jnp.result_type(float)))
    sol = opf.solve(ens, optax.sgd(1e-7), maxiters=10**7, maxtime=0.3)
    assert set(sol.retcodes) == {opf.ReturnCode.MaxTime}
    assert 0 < sol[0].stats.iterations < 10**7
    bar = opf.solve(ens, optax.sgd(0.02), maxiters=50, progress=True)
    assert bar.stats.iterations == N * 50
