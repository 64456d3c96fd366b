"""The evosax backend: the algorithm matrix on the shifted sphere and Rastrigin, a
Lotka-Volterra fit, generations and counts, stall tests, bounds, non-finite fitness,
pytrees, seeds and warm starts, compiled-code reuse, and the error paths.

Compilation dominates the cost here, so the tests share a few objectives (one
`OptimizationFunction` keeps its compiled programs) and algorithm configurations.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optiframe as opf
from optiframe.backends._device import MAX_CHUNK
from optiframe.backends.evosax import resolve_algorithm
from problems import SHIFT_10, shifted_rastrigin

SEARCH = opf.OptimizationFunction(shifted_rastrigin)
BOX = dict(lb=-5.12, ub=5.12)


def sphere(**kwargs):
    """The shifted sphere in [-5.12, 5.12]^10 from the origin (minimum 0 at SHIFT_10)."""
    p = (jnp.asarray(SHIFT_10), jnp.asarray(0.0))
    return opf.OptimizationProblem(SEARCH, jnp.zeros(10), p, **{**BOX, **kwargs})


def rastrigin(**kwargs):
    """Rastrigin in [-5.12, 5.12]^10 from u0 = 2 (a local minimum, f = 40; the global one is
    0 at the origin)."""
    p = (jnp.zeros(10), jnp.asarray(1.0))
    return opf.OptimizationProblem(SEARCH, jnp.full(10, 2.0), p, **{**BOX, **kwargs})


# A small problem for the name, option and error tests (one objective: shared programs).
SQUARES = opf.OptimizationFunction(lambda u, p: jnp.sum(u**2))


def squares():
    return opf.OptimizationProblem(SQUARES, jnp.ones(3))


def value(prob, u):
    return float(shifted_rastrigin(jnp.asarray(u), prob.p))


# --------------------------------------------------------------------------- the matrix

# (algorithm, generations): the configurations of the matrix, reused by the other tests so
# that their compiled programs are shared.
MATRIX = {
    "CMA_ES": (opf.EvoSax("CMA_ES", population_size=256, std_init=2.0), 200),
    "SNES": (opf.EvoSax("SNES", population_size=128, std_init=2.0), 300),
    "PSO": (opf.EvoSax("PSO", population_size=1024, inertia_coeff=0.72, cognitive_coeff=1.49,
                       social_coeff=1.49), 300),
    "DifferentialEvolution": (opf.EvoSax("DifferentialEvolution", population_size=64,
                                         crossover_rate=0.1), 400),
}
# Over seeds 0-2. Measured on Rastrigin over seeds 0-4 (float32 / float64): CMA-ES ends at 0
# or in a neighbouring minimum at 0.99; SNES and DE below 1e-9 / 1e-10; PSO (global-best
# topology) converges early: 0 for one seed, local minima between 8 and 29 for the others
# (median 12 / 11), still better than u0 (40).
SPHERE_TOLERANCE = 1e-6
RASTRIGIN_TOLERANCE = {  # (median, max) over the seeds
    "CMA_ES": (1e-3, 1.5),
    "SNES": (1e-6, 1e-6),
    "PSO": (20.0, 40.0),
    "DifferentialEvolution": (1e-6, 1e-6),
}


def with_seed(alg, seed):
    return opf.EvoSax(alg.name, population_size=alg.population_size, seed=seed, **alg.options)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_algorithms_reach_the_shifted_sphere_and_rastrigin(name, x64):
    alg, generations = MATRIX[name]
    cancellation = 1e-10 if x64 else 1e-4  # 10 - 10 cos(2 pi z) near z = 0 in float32
    size = alg.population_size
    for prob, label in ((sphere(), "sphere"), (rastrigin(), "rastrigin")):
        values = []
        for seed in range(3):
            sol = opf.solve(prob, with_seed(alg, seed), maxiters=generations)
            assert sol.retcode is opf.ReturnCode.MaxIters
            assert (sol.stats.iterations, sol.stats.fevals) == (generations, generations * size)
            assert sol.objective == pytest.approx(value(prob, sol.u), rel=1e-5, abs=cancellation)
            values.append(sol.objective)
        if label == "sphere":
            assert max(values) < SPHERE_TOLERANCE, (name, values)
        else:
            median, worst = RASTRIGIN_TOLERANCE[name]
            assert np.median(values) < median and max(values) < worst, (name, values)


def lotka_volterra():
    import diffrax

    ts = jnp.linspace(0.0, 10.0, 50)

    def trajectory(theta):
        def field(t, y, args):
            x, z = y[0], y[1]
            return jnp.stack([theta[0] * x - theta[1] * x * z, -theta[2] * z + theta[3] * x * z])

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 10.0, 0.1, jnp.ones(2, theta.dtype),
            saveat=diffrax.SaveAt(ts=ts.astype(theta.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
            max_steps=4096, throw=False,
        )
        return sol.ys

    def loss(theta, data):
        return jnp.mean((trajectory(theta) - data) ** 2)

    data = trajectory(jnp.array([1.5, 1.0, 3.0, 1.0]))
    return opf.OptimizationProblem(loss, jnp.ones(4), data, lb=0.1, ub=5.0)


def test_lotka_volterra_fit_recovers_the_parameters_within_one_percent():
    sol = opf.solve(lotka_volterra(), opf.EvoSax("CMA_ES", population_size=16, std_init=0.5),
                    maxiters=100)
    truth = np.array([1.5, 1.0, 3.0, 1.0])
    assert np.max(np.abs(np.asarray(sol.u) - truth) / truth) < 0.01, sol.u
    assert sol.stats.fevals == 1600


# --------------------------------------------------------------------------- generations


def test_callback_once_per_generation_exact_counts_and_termination():
    alg, _ = MATRIX["PSO"]
    states = []

    def callback(state, loss):
        states.append(state)
        return state.iter == 7

    size = alg.population_size
    sol = opf.solve(sphere(), alg, maxiters=50, callback=callback)
    assert sol.retcode is opf.ReturnCode.Terminated
    assert [s.iter for s in states] == list(range(1, 8))
    # The first generation is PSO's init; the generations computed ahead while the callback
    # ran (one at first, then chunks of up to MAX_CHUNK) are discarded, but their
    # evaluations were made and are counted.
    assert sol.stats.iterations == 7
    ahead, rest = divmod(sol.stats.fevals - 8 * size, size)
    assert rest == 0 and 0 <= ahead <= 2 * MAX_CHUNK
    best = [s.original.best_objective for s in states]
    assert best == sorted(best, reverse=True) and sol.objective == best[-1]
    for s in states:
        objectives = s.original.objectives
        assert objectives.shape == (size,) and s.objective == np.min(objectives)
        assert s.original.population.shape == (size, 10)
        assert s.objective == pytest.approx(value(sphere(), s.u), rel=1e-5)


def stall_generation(best, tol, patience):
    """The first generation (1-based) where the best objective improved by at most `tol(b)`
    over the last `patience` generations."""
    for i in range(patience, len(best)):
        if best[i - patience] - best[i] <= tol(best[i]):
            return i + 1
    return None


@pytest.mark.parametrize("keyword", ["abstol", "reltol"])
def test_stall_tests_stop_with_success_at_the_documented_generation(keyword):
    alg, _ = MATRIX["SNES"]
    tol = 1e-2 if keyword == "abstol" else 0.5
    rule = (lambda b: tol) if keyword == "abstol" else (lambda b: tol * abs(b))
    best = []
    callback = lambda s, loss: best.append(s.original.best_objective)
    stepwise = opf.solve(rastrigin(), alg, maxiters=200, callback=callback, **{keyword: tol})
    fused = opf.solve(rastrigin(), alg, maxiters=200, **{keyword: tol})
    for sol in (stepwise, fused):
        assert sol.retcode is opf.ReturnCode.Success, sol.message
        assert keyword in sol.message and "last 10 generations" in sol.message
        assert sol.stats.iterations == stall_generation(best, rule, 10) == len(best) < 200
        assert sol.objective == best[-1]


def test_same_seed_same_result_other_seed_other_result_and_warm_start():
    for name in ("CMA_ES", "PSO"):
        alg, _ = MATRIX[name]
        a, b = (opf.solve(rastrigin(), alg, maxiters=100) for _ in range(2))
        assert np.array_equal(a.u, b.u) and a.objective == b.objective
        other = opf.solve(rastrigin(), with_seed(alg, 1), maxiters=100)
        assert not np.array_equal(a.u, other.u)
        half = opf.solve(rastrigin(), alg, maxiters=50)
        rest = opf.solve(rastrigin(), alg, maxiters=50, warm_start=half)
        assert np.array_equal(rest.u, a.u) and rest.objective == a.objective, name
        assert rest.stats.iterations == 50 and rest.stats.fevals == 50 * alg.population_size
        leaves = zip(jax.tree.leaves(rest.original.state), jax.tree.leaves(a.original.state))
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in leaves)


def test_a_second_solve_does_not_retrace():
    traces = []

    def fun(u, p):
        traces.append(1)  # runs only while JAX traces
        return jnp.sum((u - p) ** 2)

    prob = opf.OptimizationProblem(fun, jnp.zeros(3), jnp.array([1.0, -2.0, 3.0]))
    for callback in (None, lambda s, loss: None):
        opf.solve(prob, opf.EvoSax("SNES", population_size=8), maxiters=5, callback=callback)
        opf.solve(prob, "evosax:SNES", maxiters=5, callback=callback)
        before = len(traces)
        # A new but equal algorithm, another seed and budget, a remade u0, a registered name.
        for alg in (opf.EvoSax("SNES", population_size=8, seed=3), "evosax:SNES"):
            opf.solve(prob, alg, maxiters=9, callback=callback)
            opf.solve(prob.remake(u0=jnp.ones(3)), alg, maxiters=3, callback=callback)
        tuned = opf.EvoSax("SNES", population_size=8, std_init=0.3, lr_std_init=0.5)
        opf.solve(prob, tuned, maxiters=5, callback=callback)  # params are arguments
        assert len(traces) == before
    opf.solve(prob, opf.EvoSax("SNES", population_size=16), maxiters=5)  # another program
    assert len(traces) > before


# --------------------------------------------------------------------------- problems


def test_no_evaluated_candidate_leaves_the_box():
    # The optimum (7, ...) lies outside [-5.12, 5.12] in the first coordinate.
    shift = jnp.asarray(SHIFT_10).at[0].set(7.0)
    prob = opf.OptimizationProblem(SEARCH, jnp.zeros(10), (shift, jnp.asarray(0.0)), **BOX)
    low = high = 0.0
    bounds = jnp.full(10, -5.12, jnp.result_type(float)), jnp.full(10, 5.12, jnp.result_type(float))

    def callback(state, loss):
        nonlocal low, high
        x = np.asarray(state.original.population)
        assert np.all(x >= np.asarray(bounds[0])) and np.all(x <= np.asarray(bounds[1]))
        low, high = min(low, x.min()), max(high, x.max())

    alg, _ = MATRIX["SNES"]
    sol = opf.solve(prob, alg, maxiters=100, callback=callback)
    assert low == pytest.approx(-5.12) and high == pytest.approx(5.12)  # pressed against it
    assert float(sol.u[0]) == pytest.approx(5.12, abs=1e-3)
    assert sol.objective == pytest.approx((7.0 - 5.12) ** 2, abs=1e-3)


def test_nonfinite_fitness_is_the_worst_and_does_not_poison_the_search():
    def fun(u, p):  # NaN for u[0] > 1.5 (the minimiser has u[0] = 1), inf below -1
        value = shifted_rastrigin(u, p)
        return jnp.where(u[0] > 1.5, jnp.nan, jnp.where(u[0] < -1.0, jnp.inf, value))

    p = (jnp.asarray(SHIFT_10), jnp.asarray(0.0))
    prob = opf.OptimizationProblem(fun, jnp.zeros(10), p, **BOX)
    for name in ("CMA_ES", "PSO"):
        alg, generations = MATRIX[name]
        sol = opf.solve(prob, alg, maxiters=generations)
        assert sol.objective < 1e-6 and np.all(np.isfinite(sol.u)), (name, sol.objective)
        assert sol.original.nonfinite > 0 and "NaN or inf" in sol.message
        assert sol.retcode is opf.ReturnCode.MaxIters


def test_pytree_parameters_keep_structure_and_dtypes_and_aux_follows_the_best():
    def fun(u, p):
        loss = jnp.sum((u["w"] - p) ** 2) + (u["b"][0].astype(p.dtype) - 1.0) ** 2
        return loss, {"twice": 2 * loss}

    u0 = {"w": np.zeros(3), "b": [jnp.zeros((), jnp.float32)]}
    f = opf.OptimizationFunction(fun, has_aux=True)
    prob = opf.OptimizationProblem(f, u0, jnp.array([1.0, -2.0, 3.0]))
    seen = []
    sol = opf.solve(prob, opf.EvoSax("SNES", population_size=16, std_init=1.0), maxiters=150,
                    callback=lambda s, loss: seen.append(s))
    assert jax.tree.structure(sol.u) == jax.tree.structure(u0)
    assert isinstance(sol.u["w"], np.ndarray) and sol.u["w"].dtype == np.float64
    assert sol.u["b"][0].dtype == jnp.float32
    np.testing.assert_allclose(sol.u["w"], [1.0, -2.0, 3.0], atol=1e-3)
    assert float(sol.u["b"][0]) == pytest.approx(1.0, abs=1e-3)
    for s in seen:
        assert float(s.aux["twice"]) == pytest.approx(2 * s.objective, rel=1e-5)
        assert jax.tree.structure(s.u) == jax.tree.structure(u0)


def test_max_sense_reports_fun_itself():
    prob = opf.OptimizationProblem(
        lambda u, p: -jnp.sum((u - 1.0) ** 2), jnp.zeros(2), sense=opf.MaxSense
    )
    seen = []
    sol = opf.solve(prob, opf.EvoSax("SNES", population_size=8), maxiters=100,
                    callback=lambda s, loss: seen.append((s.objective, loss)))
    assert -1e-6 < sol.objective <= 0.0
    assert sol.objective == pytest.approx(-float(jnp.sum((jnp.asarray(sol.u) - 1.0) ** 2)))
    assert all(objective == loss <= 0 for objective, loss in seen)
    assert sol.objective == max(objective for objective, _ in seen)


# --------------------------------------------------------------------------- names, options


def test_string_names_options_through_solve_and_constructor_arguments():
    prob = squares()
    a = opf.solve(prob, "evosax:CMA_ES", maxiters=20)
    b = opf.solve(prob, "evosax:cma_es", maxiters=20)
    assert np.array_equal(a.u, b.u) and repr(a.alg) == "EvoSax('CMA_ES')"
    assert a.stats.fevals == 20 * 8  # the default population for 3 variables
    c = opf.solve(prob, opf.EvoSax("CMA_ES", std_init=0.1), maxiters=20)
    d = opf.solve(prob, "evosax:CMA_ES", maxiters=20, std_init=0.1)
    assert np.array_equal(c.u, d.u) and float(c.original.params.std_init) == pytest.approx(0.1)
    # A constructor argument reaches evosax's constructor (which refuses this combination).
    with pytest.raises(opf.InvalidProblemError, match=r"GESMR_GA.*num_groups=.*evosax refused"):
        opf.solve(prob, opf.EvoSax("GESMR_GA", population_size=8, num_groups=3), maxiters=2)
    assert resolve_algorithm("DiscoveredES") == resolve_algorithm("des")[:1] + ("DiscoveredES",)


@pytest.mark.parametrize(
    "name, options, per_generation",
    [
        # Stein variational: num_populations populations of population_size side by side.
        ("SV_CMA_ES", dict(population_size=4, num_populations=2), 8),
        # Its init leaves the step size in float32, its tell returns float64 under x64.
        ("CMAAnchoredLES", dict(population_size=8), 8),
    ],
)
def test_algorithms_with_their_own_shapes_and_dtypes(name, options, per_generation, x64):
    if name == "CMAAnchoredLES" and not x64:
        pytest.skip("the dtypes differ under JAX_ENABLE_X64 only")
    sol = opf.solve(squares(), opf.EvoSax(name, **options), maxiters=3)
    assert sol.retcode is opf.ReturnCode.MaxIters and np.all(np.isfinite(sol.u))
    assert sol.stats.fevals == 3 * per_generation
    assert sol.objective == pytest.approx(float(jnp.sum(jnp.asarray(sol.u) ** 2)), rel=1e-5)


def test_unknown_names_and_options_list_close_matches():
    prob = squares()
    with pytest.raises(opf.InvalidProblemError, match=r"'CMAES'.*Did you mean 'CMA_ES'"):
        opf.solve(prob, opf.EvoSax("CMAES"), maxiters=5)
    with pytest.raises(opf.InvalidProblemError, match=r"Did you mean.*'Sep_CMA_ES'"):
        opf.solve(prob, "evosax:SepCMA_ES", maxiters=5)
    with pytest.raises(opf.InvalidProblemError, match=r"'std_int' \(did you mean 'std_init'\?\)"):
        opf.solve(prob, opf.EvoSax("CMA_ES", std_int=0.5), maxiters=5)
    with pytest.raises(opf.InvalidProblemError, match=r"'learning_rate'"):
        opf.solve(prob, "evosax:PSO", maxiters=5, learning_rate=0.1)
    with pytest.raises(opf.InvalidProblemError, match=r"init_std=.*std_init=..."):
        opf.solve(prob, "evosax:CMA_ES", maxiters=5, init_std=0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(population_size=0), r"population_size=0.*positive integer"),
        (dict(seed=-1), r"seed=-1"),
        (dict(patience=0), r"patience=0"),
        (dict(init_std=-1.0), r"init_std=-1.0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(opf.InvalidProblemError, match=match):
        opf.EvoSax("CMA_ES", **kwargs)


def test_unsupported_problems_and_keywords():
    prob = squares()
    f = opf.OptimizationFunction(lambda u, p: jnp.sum(u**2), cons=lambda u, p: u[:1])
    constrained = opf.OptimizationProblem(f, jnp.ones(3), lcons=[0.5], ucons=[1.0])
    with pytest.raises(opf.UnsupportedFeatureError, match=r"constraints.*'nevergrad:"):
        opf.solve(constrained, "evosax:CMA_ES", maxiters=5)
    integers = opf.OptimizationProblem(lambda u, p: jnp.sum(u**2), jnp.ones(3), lb=-2, ub=2,
                                       integrality=True)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"integer variables"):
        opf.solve(integers, opf.EvoSax(), maxiters=5)
    loader = opf.DataLoader(jnp.zeros((8, 3)), batch_size=4)
    with pytest.raises(opf.UnsupportedFeatureError, match=r"does not support a data iterator"):
        opf.solve(opf.OptimizationProblem(lambda u, p: jnp.sum(u**2), jnp.ones(3), loader),
                  opf.EvoSax(), maxiters=5)
    with pytest.raises(opf.InvalidProblemError, match=r"needs a budget of generations"):
        opf.solve(prob, opf.EvoSax())
    with pytest.raises(opf.InvalidProblemError, match=r"evosax refused.*even"):
        opf.solve(prob, opf.EvoSax("Open_ES", population_size=7), maxiters=5)
    other = opf.solve(prob, "evosax:CMA_ES", maxiters=5)  # population 8
    with pytest.raises(opf.InvalidProblemError, match=r"warm_start=sol.*does not come from"):
        opf.solve(prob, opf.EvoSax("SNES", population_size=8), maxiters=5, warm_start=other)


def test_host_objectives_are_refused_with_a_pointer_to_nevergrad():
    def host(u, p):
        return float(np.sum(np.asarray(u) ** 2))

    for ad, error in (("finite", opf.UnsupportedFeatureError), (None, opf.ObjectiveError)):
        prob = opf.OptimizationProblem(opf.OptimizationFunction(host, ad=ad), np.ones(3))
        with pytest.raises(error, match=r"opf.Nevergrad|cannot be traced"):
            opf.solve(prob, opf.EvoSax(), maxiters=5)


def test_missing_evosax_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "evosax", None)
    prob = squares()
    with pytest.raises(opf.UnsupportedFeatureError, match=r"pip install 'optiframe\[evosax\]'"):
        opf.solve(prob, opf.EvoSax(), maxiters=5)


def test_repr_capabilities_and_the_constructor_imports_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "evosax", None)
    alg = opf.EvoSax("PSO", population_size=64, seed=2, patience=3)
    assert repr(alg) == "EvoSax('PSO', population_size=64, seed=2, patience=3)"
    caps = alg.capabilities
    assert caps.bounds and not (caps.constraints or caps.integrality or caps.data)
    assert {"abstol", "reltol", "warm_start", "callback"} <= caps.keywords


def test_benchmark_smoke_run(capsys):
    from scripts import BENCHMARKS, load

    rows = load(BENCHMARKS / "bench_evosax.py").main(["--quick"])
    assert [name for name, _, _ in rows] == ["MLP 500 samples A/B", "MLP 500 samples A/C"]
    assert all(ratio > 0 for _, ratio, _ in rows)
    assert "targets met" in capsys.readouterr().out
