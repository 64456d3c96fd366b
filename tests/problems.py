"""Problems with known optima, and the algorithms expected to solve them.

Tests cross these tables (see test_optax.py): a problem x algorithm matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    fun: Callable[..., Any]
    u0: Any
    p: Any
    u_star: Any  # the minimiser
    f_star: float  # the minimum


def quadratic(u, p):
    return jnp.sum((u - p) ** 2)


def rosenbrock(u, p):
    return (p[0] - u[0]) ** 2 + p[1] * (u[1] - u[0] ** 2) ** 2


def pytree_quadratic(u, p):
    return jnp.sum((u["w"] - p) ** 2) + (u["b"][0] - 1.0) ** 2 + jnp.sum((u["b"][1] + 2.0) ** 2)


TARGET = np.array([1.0, -2.0, 3.0])

QUADRATIC = Problem("quadratic", quadratic, jnp.full(3, 0.5), jnp.asarray(TARGET), TARGET, 0.0)
ROSENBROCK = Problem(
    "rosenbrock", rosenbrock, jnp.zeros(2), jnp.array([1.0, 100.0]), np.ones(2), 0.0
)
PYTREE = Problem(
    "pytree",
    pytree_quadratic,
    {"w": jnp.zeros(3), "b": [jnp.zeros(()), jnp.zeros(2)]},
    jnp.asarray(TARGET),
    {"w": TARGET, "b": [np.array(1.0), np.full(2, -2.0)]},
    0.0,
)


def _decay(lr: float) -> optax.Schedule:
    return optax.cosine_decay_schedule(lr, 1000)


# Every optimizer of the braintools advanced-optimizers tutorial, configured to reach the
# quadratic's minimiser in 1000 steps; the tolerance is on max |u - u*|.
TUTORIAL_OPTIMIZERS: dict[str, tuple[Callable[[], optax.GradientTransformation], float]] = {
    "Adam": (lambda: optax.adam(0.1), 1e-4),
    "AdamW": (lambda: optax.adamw(0.1, weight_decay=0.0), 1e-4),
    "Lion": (lambda: optax.lion(_decay(0.05)), 1e-4),
    # With its default relative steps (lr * RMS(u)), Adafactor circles the optimum of this
    # 3-vector at a radius near 0.1 in float64; absolute steps converge.
    "Adafactor": (lambda: optax.adafactor(0.1, multiply_by_parameter_scale=False), 1e-4),
    "Lookahead": (lambda: optax.lookahead(optax.sgd(0.1, momentum=0.9), 5, 0.5), 1e-4),
    "RAdam": (lambda: optax.radam(0.1), 1e-4),
    "LAMB": (lambda: optax.lamb(_decay(0.1)), 1e-3),
    "LARS": (lambda: optax.lars(_decay(0.05), weight_decay=0.0, trust_coefficient=0.1), 1e-3),
    "SM3": (lambda: optax.sm3(0.5), 1e-4),
    "L-BFGS": (lambda: optax.lbfgs(), 1e-4),
    "Rprop": (lambda: optax.rprop(0.1), 1e-4),
    "Yogi": (lambda: optax.yogi(0.1), 1e-4),
    "SGD with momentum": (lambda: optax.sgd(0.05, momentum=0.9), 1e-4),
}


def max_error(u: Any, u_star: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_star))
    )


# --------------------------------------------------------------------------- constrained


def hs71(x, p):
    """Hock–Schittkowski problem 71: minimum 17.0140173 at (1, 4.743, 3.8211, 1.3794)."""
    return x[0] * x[3] * (x[0] + x[1] + x[2]) + x[2]


def hs71_constraints(x, p):
    return jnp.array([x[0] * x[1] * x[2] * x[3], jnp.sum(x**2)])


HS71_MIN = 17.0140173


def hs71_problem(opf):
    f = opf.OptimizationFunction(hs71, cons=hs71_constraints)
    return opf.OptimizationProblem(
        f, jnp.array([1.0, 5.0, 5.0, 1.0]), lb=1.0, ub=5.0, lcons=[25.0, 40.0],
        ucons=[jnp.inf, 40.0],
    )


# The portfolio of the braintools SciPy tutorial: minimise the variance subject to weights
# summing to 1, an expected return of at least 10%, and 0 <= w <= 1.
COVARIANCE = np.array([[0.04, 0.01, 0.005], [0.01, 0.09, 0.02], [0.005, 0.02, 0.16]])
EXPECTED_RETURNS = np.array([0.08, 0.12, 0.15])


def portfolio_problem(opf):
    f = opf.OptimizationFunction(
        lambda w, p: w @ COVARIANCE @ w,
        cons=lambda w, p: jnp.array([jnp.sum(w), w @ EXPECTED_RETURNS]),
    )
    return opf.OptimizationProblem(
        f, jnp.full(3, 1 / 3), lb=0.0, ub=1.0, lcons=[1.0, 0.10], ucons=[1.0, jnp.inf]
    )


def beale(u, p):
    x, y = u[0], u[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def rastrigin(u, p):
    return 10 * u.size + jnp.sum(u**2 - 10 * jnp.cos(2 * jnp.pi * u))


# Gradient-flow problems (test_ode.py, benchmarks/bench_ode.py).
# The least-squares problem of the Discourse thread "optimization as if solving an ODE":
# A is 50x5, U is 5x2, B = A U; minimise 1/2 ||A X - B||^2 over X (5x2); the minimiser is U.
_SEED = np.random.default_rng(0)
LSQ_A = _SEED.random((50, 5))
LSQ_U = _SEED.random((5, 2))
LSQ_B = LSQ_A @ LSQ_U
LSQ_U0 = _SEED.random((5, 2))


def least_squares(u, p):
    a, b = p
    return 0.5 * jnp.sum((a @ u - b) ** 2)


LEAST_SQUARES = Problem(
    "least-squares", least_squares, jnp.asarray(LSQ_U0),
    (jnp.asarray(LSQ_A), jnp.asarray(LSQ_B)), LSQ_U, 0.0,
)
ROSENBROCK_FAR = Problem(
    "rosenbrock-(1.5,2)", rosenbrock, jnp.array([1.5, 2.0]), jnp.array([1.0, 100.0]),
    np.ones(2), 0.0,
)
# A quadratic 1/2 sum(lambda_i u_i^2) with a stiff spectrum: curvatures log-spaced from 1 to
# 1e3 (condition number 1e3); explicit Euler is stable only for dt < 2e-3.
STIFF_LAMBDAS = np.logspace(0.0, 3.0, 10)


def stiff_quadratic(u, p):
    return 0.5 * jnp.sum(p * u**2)


STIFF_QUADRATIC = Problem(
    "stiff-quadratic", stiff_quadratic, jnp.ones(10), jnp.asarray(STIFF_LAMBDAS),
    np.zeros(10), 0.0,
)


# Search problems for gradient-free methods (test_nevergrad.py, with rastrigin and hs71 above).

SPHERE_SHIFT = np.array([1.0, -2.0, 0.5, 3.0])


def shifted_sphere(u, p):
    return jnp.sum((u - p) ** 2)


HS71_U_STAR = np.array([1.0, 4.7429994, 3.8211503, 1.3794082])


# Search problems for population methods on the device (test_evosax.py). One objective for
# both: amplitude 0 is the shifted sphere, amplitude 1 with shift 0 is Rastrigin (10-D).
SHIFT_10 = np.array([1.0, -2.0, 0.5, 3.0, -1.5, 2.5, -0.5, 1.5, -3.0, 0.25])


def shifted_rastrigin(u, p):
    shift, amplitude = p
    z = u - shift
    return jnp.sum(z**2 + amplitude * (10.0 - 10.0 * jnp.cos(2.0 * jnp.pi * z)))
