r"""Lloyd-Max on a density (Lloyd 1957/1982, Max 1960), and the Lloyd-Max levels of ``tanh(N(0, σ²))``.

Shared by :mod:`vqjax.quantization` (which exports :func:`lloyd_max`, :class:`LloydMaxResult` and
:func:`lloyd_max_levels`) and :mod:`vqjax.quantizers` (which exports :func:`lloyd_max_levels` for
FSQ with Lloyd-Max levels). It lives outside both packages, on top of :mod:`vqjax._densities`, so
that the dependency runs one way: ``vqjax.quantization`` uses ``vqjax.quantizers`` (Voronoi
assignment), and ``vqjax.quantizers`` never imports ``vqjax.quantization``. See
:mod:`vqjax.quantization._scalar` for the theory and the precision and transformation notes.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vqjax._densities import (
    _INV_SQRT2PI,
    _MOMENTS,
    Density,
    PartialMoments,
    _cells,
    _check_density,
    _check_iter_tol,
    _check_num_levels,
    _is_concrete,
    _midpoints,
    _quantile,
    on_interval,
)

__all__ = [
    "LloydMaxResult",
    "lloyd_max",
    "lloyd_max_levels",
]

# --------------------------------------------------------------------------------------------
# Lloyd-Max on a density
# --------------------------------------------------------------------------------------------


class LloydMaxResult(NamedTuple):
    """A scalar quantizer found by Lloyd iteration (:func:`lloyd_max`, :func:`lloyd_1d`)."""

    levels: jax.Array  # [N] increasing reconstruction levels a_j
    thresholds: jax.Array  # [N-1] decision thresholds b_j = (a_j + a_{j+1}) / 2
    mse: jax.Array  # [] mean-square error of (levels, thresholds)
    iterations: jax.Array  # [] int32 Lloyd steps taken
    converged: jax.Array  # [] bool: a further Lloyd step would move no level by more than tol


def _check_init(init: Any, num_levels: int, dtype: Any) -> jax.Array | None:
    if init is None:
        return None
    init = jnp.asarray(init)
    if init.shape != (num_levels,):
        raise ValueError(
            f"`init` must be [num_levels] = [{num_levels}] initial levels; got shape {init.shape}."
        )
    if _is_concrete(init) and not np.all(np.isfinite(np.asarray(init))):
        raise ValueError("`init` must be finite.")
    return jnp.sort(init.astype(dtype))


def _pdf(d: Density, u: jax.Array) -> jax.Array:
    """The density at ``u`` (0 at ``±∞``; the interpolant for a tabulated density)."""
    fin = jnp.isfinite(u)
    us = jnp.where(fin, u, d.mean)
    if d.kind == "gaussian":
        z = (us - d.mean) / d.scale
        f = _INV_SQRT2PI * jnp.exp(-0.5 * z * z) / d.scale
    elif d.kind == "laplace":
        f = jnp.exp(-jnp.abs(us - d.mean) / d.scale) / (2 * d.scale)
    elif d.kind == "uniform":
        f = jnp.where((us >= d.lower) & (us <= d.upper), 1 / d.scale, 0)
    else:
        x, fx, _ = d.table
        f = jnp.interp(us, x, fx, left=0, right=0)
    return jnp.where(fin, f, 0)


def _cell_moments(d: Density, levels: jax.Array) -> tuple[jax.Array, PartialMoments]:
    thresholds = _midpoints(levels)
    lo, hi = _cells(thresholds)
    return thresholds, _MOMENTS[d.kind](d, lo, hi, levels)


def _lloyd_step(d: Density, levels: jax.Array, m: PartialMoments) -> jax.Array:
    """Centroids of the nearest-neighbour cells of ``levels`` (a cell of zero mass stays put)."""
    ok = m.mass > 0
    return jnp.where(ok, levels + m.first / jnp.where(ok, m.mass, 1), levels)


def _newton_step(d: Density, levels: jax.Array, m: PartialMoments) -> jax.Array:
    r"""One Newton step on ``H(a) = a - G(a) = 0``, ``G`` the centroid map; tridiagonal Jacobian.

    With ``G_j = M1_j / P_j`` over ``[b_{j-1}, b_j]`` and ``b_j = (a_j + a_{j+1})/2``:
    ``∂G_j/∂b_j = f(b_j)(b_j - G_j)/P_j`` and ``∂G_j/∂b_{j-1} = f(b_{j-1})(G_j - b_{j-1})/P_j``.
    """
    lo, hi = _cells(_midpoints(levels))
    ok = m.mass > 0
    p = jnp.where(ok, m.mass, 1)
    g = levels + jnp.where(ok, m.first / p, 0)
    dlo = jnp.where(ok & jnp.isfinite(lo), _pdf(d, lo) * (g - jnp.where(jnp.isfinite(lo), lo, 0)), 0)
    dhi = jnp.where(ok & jnp.isfinite(hi), _pdf(d, hi) * (jnp.where(jnp.isfinite(hi), hi, 0) - g), 0)
    dlo, dhi = dlo / p, dhi / p
    diag = 1 - 0.5 * (dlo + dhi)
    sub = (-0.5 * dlo).at[0].set(0)  # row j, column j-1
    sup = (-0.5 * dhi).at[-1].set(0)  # row j, column j+1
    return levels - _thomas_solve(sub, diag, sup, levels - g)


def _thomas_solve(sub: jax.Array, diag: jax.Array, sup: jax.Array, rhs: jax.Array) -> jax.Array:
    """Solve a tridiagonal system (Thomas algorithm, no pivoting: the Jacobian of the centroid
    map of a log-concave density is diagonally dominant; otherwise a non-finite step is rejected).
    """

    def forward(carry, row):
        c_prev, d_prev = carry
        a, b, c, d = row
        den = b - a * c_prev
        cd = (c / den, (d - a * d_prev) / den)
        return cd, cd

    zero = jnp.zeros((), rhs.dtype)
    _, (cp, dp) = lax.scan(forward, (zero, zero), (sub, diag, sup, rhs))

    def backward(x_next, row):
        c, d = row
        x = d - c * x_next
        return x, x

    _, x = lax.scan(backward, zero, (cp, dp), reverse=True)
    return x


def _residual(m: PartialMoments) -> jax.Array:
    """``max_j |a_j - G_j|``: how far the levels are from their cells' centroids."""
    ok = m.mass > 0
    return jnp.max(jnp.abs(jnp.where(ok, m.first / jnp.where(ok, m.mass, 1), 0)))


@functools.partial(jax.jit, static_argnames=("accelerate",))
def _lloyd_max_loop(d: Density, init: jax.Array, tol: jax.Array, max_iter: jax.Array,
                    accelerate: bool):
    def moments(levels):
        return _cell_moments(d, levels)[1]

    def cond(state):
        _, m, it = state
        return (it < max_iter) & (_residual(m) > tol)

    def body(state):
        levels, m, it = state
        lloyd = _lloyd_step(d, levels, m)
        if not accelerate:
            return lloyd, moments(lloyd), it + 1
        # Safeguard: take the Newton point only if it is finite and ordered, its residual
        # |a - G(a)| is below the Lloyd point's and its distortion no larger than here.
        newton = _newton_step(d, levels, m)
        both = moments(jnp.stack([lloyd, newton]))  # one evaluation for the two candidates
        ml = jax.tree_util.tree_map(lambda a: a[0], both)
        mn = jax.tree_util.tree_map(lambda a: a[1], both)
        good = jnp.all(jnp.isfinite(newton)) & jnp.all(newton[1:] > newton[:-1])
        good = good & (_residual(mn) < _residual(ml))
        good = good & (jnp.sum(mn.second) <= jnp.sum(m.second))
        pick = lambda a, b: jnp.where(good, a, b)
        return pick(newton, lloyd), jax.tree_util.tree_map(pick, mn, ml), it + 1

    levels, m, it = lax.while_loop(cond, body, (init, moments(init), jnp.int32(0)))
    return LloydMaxResult(levels, _midpoints(levels), jnp.sum(m.second), it, _residual(m) <= tol)


def lloyd_max(
    density: Density,
    num_levels: int,
    *,
    init: jax.Array | None = None,
    max_iter: int = 10_000,
    tol: float | None = None,
    accelerate: bool = True,
    dtype: Any = None,
) -> LloydMaxResult:
    r"""The Lloyd-Max quantizer of a density (Lloyd 1957/1982, Max 1960).

    From initial levels ``a``, repeat until a step would move no level by more than ``tol``::

        b_j = (a_j + a_{j+1}) / 2                                  (nearest neighbour)
        a_j = E[U | b_{j-1} < U <= b_j] = M1_j / P_j                (centroid)

    with the closed-form partial moments of :func:`partial_moments`, in a ``lax.while_loop``.
    Each step never increases the distortion ``D = Σ_j (M2_j - 2 a_j M1_j + a_j² P_j)``, which is
    returned for the final levels (computed about each level, to avoid cancellation). A cell of
    zero mass keeps its level.

    For log-concave densities (Gaussian, Laplace, uniform, …) the fixed point is unique, so
    Lloyd-Max converges to the global optimum from any start (Fleischer 1964; Trushkin 1982).
    Plain Lloyd converges linearly, slowly for many levels (about 9,000 steps for 64 Gaussian
    levels to 1e-12), and for the Laplace density only sublinearly away from symmetric starts,
    so that a small step no longer means a small error. With ``accelerate`` (the default) each
    step also tries a Newton step on the fixed-point equations ``a = G(a)`` (the Jacobian of the
    centroid map is tridiagonal: ``∂G_j/∂b_j = f(b_j)(b_j - G_j)/P_j``) and takes it when its
    levels stay ordered and its distortion is no larger than the current one; so the distortion
    still never increases, and convergence near the optimum is quadratic.

    Args:
      density: a :class:`Density`.
      num_levels: N >= 1.
      init: ``[N]`` initial levels (sorted here); default the quantiles at ``(j + 1/2)/N``.
      max_iter: most steps (keyword-only).
      tol: stop when ``max_j |a_j - G_j| <= tol`` (``G_j`` the centroid of cell j: the move a
        Lloyd step would make); default ``1e-12 σ`` in float64, ``2e-6 σ`` in float32 (σ the
        density's standard deviation).
      accelerate: try safeguarded Newton steps (``False``: plain Lloyd-Max).
      dtype: computation dtype; default the density's (float64 under ``jax_enable_x64``).

    Returns:
      :class:`LloydMaxResult` with ``levels [N]``, ``thresholds [N-1]``, ``mse``,
      ``iterations``, ``converged``.
    """
    _check_density(density)
    _check_num_levels(num_levels)
    _check_iter_tol(max_iter, tol)
    dt = jnp.dtype(density.dtype if dtype is None else dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"`dtype` must be a floating dtype; got {dtype!r}.")
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("`dtype`=float64 needs 64-bit JAX: wrap the call in jax.enable_x64(True).")
    init = _check_init(init, num_levels, dt)
    return _lloyd_max_jit(
        density,
        jnp.zeros((num_levels,), dt) if init is None else init,
        jnp.asarray(-1.0 if tol is None else tol, dt),
        jnp.int32(max_iter),
        jnp.asarray(init is not None),
        num_levels=num_levels,
        dtype=dt,
        accelerate=bool(accelerate),
    )


@functools.partial(jax.jit, static_argnames=("num_levels", "dtype", "accelerate"))
def _lloyd_max_jit(density, init, tol, max_iter, has_init, *, num_levels, dtype, accelerate):
    d = density.astype(dtype)
    quantiles = _quantile(d, (jnp.arange(num_levels, dtype=dtype) + 0.5) / num_levels)
    init = jnp.where(has_init, init, quantiles)  # default: quantiles at (j + 1/2)/N
    default_tol = (1e-12 if dtype == jnp.float64 else 2e-6) * jnp.sqrt(d.variance)
    tol = jnp.where(tol < 0, default_tol, tol)
    return _lloyd_max_loop(d, init, tol, max_iter, accelerate)


# --------------------------------------------------------------------------------------------
# Lloyd-Max levels for FSQ
# --------------------------------------------------------------------------------------------


def lloyd_max_levels(num_levels: int, *, sigma: float = 1.0) -> jax.Array:
    r"""Lloyd-Max levels for ``u = tanh(z)``, ``z ~ N(0, σ²)``: the MSE-optimal ``L`` levels in ``(-1, 1)``.

    The density of ``u`` is ``p(u) = φ(atanh(u)/σ) / (σ (1 - u²))``; :func:`lloyd_max` on it
    (tabulated on ``[-1, 1]`` by :func:`on_interval`) gives the levels, denser near 0 than FSQ's
    uniform grid.

    Returns:
      ``[L]`` float32 sorted levels, for :func:`vqjax.quantizers.scalar_quantize`.
    """
    if not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"`num_levels` must be an int >= 2; got {num_levels!r}.")
    if not sigma > 0:
        raise ValueError(f"`sigma` must be > 0; got {sigma!r}.")

    def pdf(u):
        inside = jnp.abs(u) < 1.0
        t = jnp.arctanh(jnp.where(inside, u, 0.0)) / sigma
        return jnp.where(inside, jnp.exp(-0.5 * t * t) / (1.0 - jnp.where(inside, u * u, 0.0)), 0.0)

    density = on_interval(pdf, -1.0, 1.0)
    return jnp.asarray(lloyd_max(density, num_levels).levels, jnp.float32)
