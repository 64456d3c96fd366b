"""A damped second-order Runge–Kutta–Chebyshev solver (RKC) as a `diffrax` solver.

The method of Sommeijer, Shampine and Verwer, "RKC: an explicit solver for parabolic PDEs"
(J. Comput. Appl. Math. 88, 1997; the code `rkc.f`): an explicit `s`-stage method whose
stability interval along the negative real axis grows like `0.65 s²`, so that a stiff
problem is integrated with steps chosen for accuracy rather than stability. docs/ode.md
gives the scheme, and why RKC rather than ROCK2.

This module imports diffrax at import time; optiframe imports it only when a gradient-flow
solve runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from diffrax import RESULTS, AbstractAdaptiveSolver, LocalLinearInterpolation, ODETerm
from optax.tree import norm

__all__ = ["RKC", "rkc_stability_boundary", "rkc_stages"]


def _axpy(*pairs: tuple[Any, Any]) -> Any:
    """Σ coefficient_i * tree_i over (coefficient, tree) pairs."""
    coefficients, trees = zip(*pairs)
    return jax.tree.map(
        lambda *leaves: sum(c * leaf for c, leaf in zip(coefficients, leaves)), *trees
    )


def _recur(w0: Any, c: tuple) -> tuple:
    """One step j -> j + 1 of the Chebyshev recurrences at `w0`:
    (T_j, T_{j-1}, T_j', T_{j-1}', T_j'', T_{j-1}'') -> the same for j + 1."""
    z, zm, dz, dzm, d2z, d2zm = c
    return 2 * w0 * z - zm, z, 2 * w0 * dz - dzm + 2 * z, dz, 2 * w0 * d2z - d2zm + 4 * dz, d2z


def _chebyshev(w0: Any, s: Any) -> tuple[Any, Any, Any]:
    """`T_s(w0), T_s'(w0), T_s''(w0)`: on the host for a Python `s`, else on the device."""
    c = (w0, 1.0, 1.0, 0.0, 0.0, 0.0)  # j = 1
    if isinstance(s, int):
        for _ in range(2, s + 1):
            c = _recur(w0, c)
    else:
        c = tuple(jnp.full_like(w0, x) for x in c)
        c = jax.lax.fori_loop(2, s + 1, lambda _, c: _recur(w0, c), c)
    return c[0], c[2], c[4]


def _once(pred: Any, compute: Callable[[], Any], otherwise: Any) -> Any:
    """`compute()` if `pred` else `otherwise`, as a loop that runs at most once."""
    _, out = jax.lax.while_loop(
        lambda c: c[0], lambda c: (jnp.zeros_like(c[0]), compute()), (jnp.asarray(pred), otherwise)
    )
    return out


def rkc_stages(h_rho: Any) -> jax.Array:
    """The stage count `rkc.f` uses for a step of size `h` with spectral radius `ρ`:
    `1 + ⌊√(1 + 1.54 h ρ)⌋`, at least 2 (stable for `h ρ` up to about `0.65 (s² − 1)`)."""
    return jnp.maximum(2, 1 + jnp.floor(jnp.sqrt(1.0 + 1.54 * h_rho)).astype(jnp.int32))


def rkc_stability_boundary(s: int, damping: float = 2.0 / 13.0) -> float:
    """The length `β(s)` of the real stability interval `[−β, 0]` of the damped s-stage
    RKC method: `(1 + w0) T_s''(w0) / T_s'(w0)` with `w0 = 1 + damping / s²`
    (≈ `0.653 s²` for the default damping)."""
    w0 = 1.0 + damping / s**2
    _, dz, d2z = _chebyshev(w0, s)
    return (1.0 + w0) * d2z / dz


class RKC(AbstractAdaptiveSolver):
    """Damped second-order Runge–Kutta–Chebyshev (Sommeijer, Shampine and Verwer, 1997).

    An explicit, adaptive, FSAL solver for stiff ODEs whose Jacobian has eigenvalues near
    the negative real axis (a gradient flow `u' = −∇f(u)` of a smooth function: the
    Jacobian is `−∇²f`). Each step uses `s` stages, with `s` chosen from the estimated
    spectral radius so that the step is stable; the error estimate of `rkc.f` drives
    an adaptive step size controller such as `diffrax.PIDController`.

    Per accepted step it evaluates the vector field `s` times (`s − 1` stages and once
    at the new point, reused as the next step's first stage), plus the power-method
    evaluations when the spectral radius is refreshed.

    Args:
        damping: ε in `w0 = 1 + ε/s²` (`rkc.f` uses 2/13); more damping shortens the
            stability interval and damps stiff components faster.
        max_stages: the most stages a step may use; a step that would need more is
            rejected (its error estimate is infinite) and the controller shrinks it.
        estimate_every: accepted steps between refreshes of the spectral radius.
        power_iterations: the most nonlinear power iterations per estimate (it stops
            when successive estimates agree to 1%).
        spectral_radius: a known upper bound of the Jacobian's spectral radius; no
            estimation is done then.
        safety: the estimate is multiplied by this (`rkc.f` uses 1.2).

    Example:
        >>> from optiframe.backends._rkc import RKC
        >>> term = diffrax.ODETerm(lambda t, y, args: -args * y)
        >>> sol = diffrax.diffeqsolve(term, RKC(), 0.0, 10.0, None, jnp.ones(3),
        ...     args=jnp.array([1.0, 1e2, 1e4]),
        ...     stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6))
    """

    damping: float = 2.0 / 13.0
    max_stages: int = 500
    estimate_every: int = 25
    power_iterations: int = 20
    spectral_radius: float | None = None
    safety: float = 1.2

    term_structure: ClassVar = ODETerm
    interpolation_cls: ClassVar = LocalLinearInterpolation

    def __check_init__(self) -> None:
        checks = (
            ("damping", self.damping > 0),
            ("max_stages", int(self.max_stages) >= 2),
            ("estimate_every", int(self.estimate_every) >= 1),
            ("power_iterations", int(self.power_iterations) >= 1),
            ("safety", self.safety >= 1),
            ("spectral_radius", self.spectral_radius is None or self.spectral_radius >= 0),
        )
        for name, ok in checks:
            if not ok:
                raise ValueError(f"`RKC({name}={getattr(self, name)!r})` is out of range.")

    def order(self, terms: Any) -> int:
        return 2

    def error_order(self, terms: Any) -> int:
        return 3  # rkc.f's estimate approximates the local error of a second-order method

    def func(self, terms: Any, t0: Any, y0: Any, args: Any) -> Any:
        return terms.vf(t0, y0, args)

    def _estimate(self, terms, t, y, fy, v, args):
        """ρ by the nonlinear power method of rkc.f: differences of the vector field
        along `v`, iterated; returns (safety * ρ, the last direction)."""
        dtype = jnp.result_type(*jax.tree.leaves(y))
        if self.spectral_radius is not None:
            return jnp.asarray(self.spectral_radius, dtype), v
        sqrt_eps = jnp.sqrt(jnp.finfo(dtype).eps)
        ynorm = norm(y)
        delta = jnp.where(ynorm > 0, ynorm * sqrt_eps, sqrt_eps)

        def direction(v):
            vnorm = norm(v)
            ok = (vnorm > 0) & jnp.isfinite(vnorm)
            fallback = jax.tree.map(jnp.ones_like, v)
            scale = jnp.where(ok, delta / jnp.where(ok, vnorm, 1.0), delta / norm(fallback))
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b) * scale, v, fallback)

        def body(carry):
            k, v, _, rho = carry
            fz = terms.vf(t, jax.tree.map(jnp.add, y, direction(v)), args)
            diff = jax.tree.map(jnp.subtract, fz, fy)
            return k + 1, diff, rho, norm(diff) / delta

        def cond(carry):
            k, _, previous, rho = carry
            settled = jnp.abs(rho - previous) <= 0.01 * rho
            return (k < self.power_iterations) & ((k < 2) | ~settled) & jnp.isfinite(rho)

        zero = jnp.zeros((), dtype)
        _, v, _, rho = jax.lax.while_loop(cond, body, (0, v, zero, zero))
        return self.safety * rho, v

    def init(self, terms, t0, t1, y0, args):
        f0 = terms.vf(t0, y0, args)
        rho, v = self._estimate(terms, t0, y0, f0, f0, args)
        return f0, rho, v, jnp.zeros((), jnp.int32)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        f0, rho, v, since = solver_state
        # Loops run at most once where a `lax.cond` would do: a vmapped cond cannot hold
        # the flow's evaluation counter (a JAX state effect), a vmapped loop can.
        if made_jump is not False:
            f0 = _once(made_jump, lambda: terms.vf(t0, y0, args), f0)
        if self.spectral_radius is None:
            rho, v, since = _once(
                since >= self.estimate_every,
                lambda: (*self._estimate(terms, t0, y0, f0, v, args), jnp.zeros_like(since)),
                (rho, v, since),
            )
        h = terms.contr(t0, t1)
        dtype = jnp.result_type(h, rho)
        h, rho = jnp.asarray(h, dtype), jnp.asarray(rho, dtype)
        needed = rkc_stages(jnp.abs(h) * rho)
        s = jnp.minimum(needed, self.max_stages)
        # w0 = 1 + ε/s²; w1 = T_s'(w0) / T_s''(w0) (by the recurrence, so that every
        # coefficient below is consistent with the rounded w0).
        w0 = 1 + self.damping / jnp.square(s.astype(dtype))
        _, dzs, d2zs = _chebyshev(w0, s)
        w1 = dzs / d2zs
        b1 = 1 / jnp.square(2 * w0)  # b_0 = b_1 = b_2 = T_2''/T_2'^2
        mus = w1 * b1
        hf0 = jax.tree.map(lambda f: h * f, f0)
        one, zero = jnp.ones_like(w0), jnp.zeros_like(w0)

        def stage(_, c):
            yjm1, yjm2, cheb, bjm1, bjm2, thjm1, thjm2 = c
            zjm1, cheb = cheb[0], _recur(w0, cheb)
            zj, _, dzj, _, d2zj, _ = cheb
            bj = d2zj / jnp.square(dzj)
            ajm1 = 1 - zjm1 * bjm1
            mu = 2 * w0 * bj / bjm1
            nu = -bj / bjm2
            mus = mu * w1 / w0
            fj = terms.vf(t0 + thjm1 * h, yjm1, args)
            yj = _axpy(
                (1 - mu - nu, y0), (mu, yjm1), (nu, yjm2), (mus * h, fj), (-ajm1 * mus, hf0),
            )
            thj = mu * thjm1 + nu * thjm2 + mus * (1 - ajm1)
            return yj, yjm1, cheb, bj, bjm1, thj, thjm1

        y1 = _axpy((1.0, y0), (mus, hf0))
        cheb = (w0, one, one, zero, zero, zero)
        y1 = jax.lax.fori_loop(2, s + 1, stage, (y1, y0, cheb, b1, b1, mus, zero))[0]
        f1 = terms.vf(t1, y1, args)
        # rkc.f's local error estimate: (12 (y0 - y1) + 6 h (f0 + f1)) / 15, infinite when
        # the step would need more than `max_stages` stages.
        unstable = needed > self.max_stages

        def error(a, b, fa, fb):
            return jnp.where(unstable, jnp.inf, (12 * (a - b) + 6 * h * (fa + fb)) / 15)

        y_error = jax.tree.map(error, y0, y1, f0, f1)
        return y1, y_error, dict(y0=y0, y1=y1), (f1, rho, v, since + 1), RESULTS.successful


RKC.__init__.__doc__ = RKC.__doc__
