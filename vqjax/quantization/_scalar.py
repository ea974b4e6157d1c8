r"""Scalar quantizer design, pure JAX: Lloyd-Max on densities, 1-D k-means, the DP optimum.

A scalar quantizer with ``N`` levels ``a_0 < … < a_{N-1}`` and thresholds ``b_0 < … < b_{N-2}``
maps ``u ∈ (b_{j-1}, b_j]`` to ``a_j`` (``b_{-1} = -∞``, ``b_{N-1} = +∞``). Its mean-square error
for a density ``f`` is::

    D = Σ_j ∫_{b_{j-1}}^{b_j} (u - a_j)² f(u) du = Σ_j (M2_j - 2 a_j M1_j + a_j² P_j)

with the partial moments ``P_j = ∫ f``, ``M1_j = ∫ u f``, ``M2_j = ∫ u² f`` over cell ``j``. The two
necessary conditions for a minimum (Lloyd 1957/1982; Max 1960) are

- nearest neighbour: ``b_j = (a_j + a_{j+1}) / 2``;
- centroid: ``a_j = E[U | U ∈ (b_{j-1}, b_j]] = M1_j / P_j``.

:func:`lloyd_max` (in :mod:`vqjax._lloyd_max`, shared with :mod:`vqjax.quantizers`) alternates
them on a :class:`Density`; :func:`lloyd_1d` (here) does the same on samples (1-D k-means);
``optimal_scalar_quantizer`` (in ``_dp``) finds the exact global optimum on samples or on a
weighted grid by dynamic programming (Sharma 1978; Wu 1991; Wang & Song 2011).

Precision: every function computes in float64 when ``jax_enable_x64`` is on (``jax.enable_x64``),
in float32 otherwise. Sample statistics are centred on the (weighted) mean before prefix sums, so
float32 loses only the digits that the spread of the data itself costs; float32 prefix sums of
unit weights are exact up to 2²⁴ samples. With many levels the optimum is flat along some
directions (it fixes the levels only to about ``eps / λ_min``, ``λ_min ~ 1/N²`` for the Gaussian,
and to ``eps^{1/3}`` along a common shift for the Laplace, whose optimum is flat to third order
there): use float64 when the levels themselves, not only the MSE, matter.

Transformations: all functions work under ``jax.jit`` and ``jax.vmap`` (hyperparameters such as
``num_levels`` are static). :func:`partial_moments` and the closed forms are differentiable; the
design functions are fixed-point iterations, sorts and discrete searches (``while_loop``), not
meant for ``jax.grad``. Value checks (finite samples, non-negative weights, enough distinct
samples, a normalisable pdf) run on concrete inputs and are skipped under tracing.

References:
  S. P. Lloyd, "Least squares quantization in PCM", Bell Labs memo 1957; IEEE Trans. IT-28, 1982.
  J. Max, "Quantizing for minimum distortion", IRE Trans. IT-6, 1960.
  P. E. Fleischer, "Sufficient conditions for achieving minimum distortion in a quantizer",
  IEEE Int. Conv. Rec., 1964.
  A. V. Trushkin, "Sufficient conditions for uniqueness of a locally optimal quantizer for a
  class of convex error weighting functions", IEEE Trans. IT-28, 1982.
  D. K. Sharma, "Design of absolutely optimal quantizers for a wide class of distortion
  measures", IEEE Trans. IT-24, 1978.
  X. Wu, "Optimal quantization by matrix searching", J. Algorithms 12, 1991.
  H. Wang and M. Song, "Ckmeans.1d.dp: optimal k-means clustering in one dimension by dynamic
  programming", The R Journal 3(2), 2011.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vqjax._densities import (
    _check_iter_tol,
    _check_num_levels,
    _default_float,
    _is_concrete,
    _midpoints,
)
from vqjax._lloyd_max import LloydMaxResult, _check_init

__all__ = [
    "lloyd_1d",
]

# --------------------------------------------------------------------------------------------
# Samples: sorting, prefix sums
# --------------------------------------------------------------------------------------------


def _check_samples(x: Any, weights: Any) -> tuple[jax.Array, jax.Array | None]:
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"`x` must be [S] samples (flatten with x.reshape(-1)); got {x.shape}.")
    if x.shape[0] < 1:
        raise ValueError("`x` must hold at least one sample; got an empty array.")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"`x` must be real numbers; got dtype {x.dtype}.")
    if _is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("`x` must be finite; got NaN or inf values.")
    if weights is None:
        return x, None
    w = jnp.asarray(weights)
    if w.shape != x.shape:
        raise ValueError(f"`weights` must have the shape of `x` {x.shape}; got {w.shape}.")
    if _is_concrete(w):
        wn = np.asarray(w)
        if not np.all(np.isfinite(wn)):
            raise ValueError("`weights` must be finite; got NaN or inf values.")
        if np.any(wn < 0):
            raise ValueError(f"`weights` must be >= 0; got a minimum of {wn.min()}.")
        if not wn.sum() > 0:
            raise ValueError("`weights` must have a positive sum; got all zeros.")
    return x, w


def _check_distinct(x: jax.Array, w: jax.Array | None, num_levels: int) -> None:
    """ValueError if fewer distinct samples (of positive weight) than levels (concrete inputs)."""
    if not _is_concrete(x, w):
        return
    xn = np.asarray(x)
    if w is not None:
        xn = xn[np.asarray(w) > 0]
    if num_levels > xn.size or num_levels > np.unique(xn).size:
        raise ValueError(
            f"`num_levels`={num_levels} exceeds the number of distinct samples"
            f"{' of positive weight' if w is not None else ''} ({np.unique(xn).size})."
        )


def _sort_key(x: jax.Array) -> tuple[jax.Array, Any]:
    """An integer key with the order of the floats ``x`` (integer sorts are much faster on CPU)."""
    it = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    i = lax.bitcast_convert_type(x, it)
    bits = 63 if it == jnp.int64 else 31
    return i ^ ((i >> bits) & jnp.asarray(np.iinfo(it).max, it)), it


def _from_key(k: jax.Array, it: Any, dtype: Any) -> jax.Array:
    bits = 63 if it == jnp.int64 else 31
    return lax.bitcast_convert_type(k ^ ((k >> bits) & jnp.asarray(np.iinfo(it).max, it)), dtype)


def _sort_samples(x: jax.Array, w: jax.Array | None, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Samples sorted ascending, in ``dtype``, with their weights (ones if ``w`` is None)."""
    x = x.astype(dtype)
    x = jnp.where(x == 0, jnp.zeros_like(x), x)  # -0.0 and 0.0 get one key
    key, it = _sort_key(x)
    if w is None:
        return _from_key(jnp.sort(key), it, dtype), jnp.ones_like(x)
    w = w.astype(dtype)

    def sort_pairs():
        k, ws = lax.sort((key, w), num_keys=1, is_stable=False)
        return _from_key(k, it, dtype), ws

    return lax.cond(jnp.all(x[1:] >= x[:-1]), lambda: (x, w), sort_pairs)


def _prefix(a: jax.Array, length: int) -> jax.Array:
    """``[0, a_0, a_0 + a_1, …]`` padded with the total to ``length``."""
    c = jnp.concatenate([jnp.zeros((1,), a.dtype), jnp.cumsum(a)])
    if length > c.shape[0]:
        c = jnp.concatenate([c, jnp.broadcast_to(c[-1], (length - c.shape[0],))])
    return c


def _out_dtype(x: jax.Array) -> Any:
    """Results come back in the input's float dtype (at least float32; ints: the default float)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return _default_float()
    return x.dtype if jnp.dtype(x.dtype).itemsize >= 4 else jnp.dtype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Lloyd on samples (1-D k-means)
# --------------------------------------------------------------------------------------------


def _lloyd_sorted(xc, W, S1, levels0, tol, max_iter):
    """Lloyd steps on sorted samples ``xc [n]`` with prefix sums ``W, S1 [n+1]`` of ``w, w x``."""
    n = xc.shape[0]

    def step(levels):
        t = _midpoints(levels)
        idx = jnp.searchsorted(xc, t, side="right").astype(jnp.int32)  # samples <= t go left
        a = jnp.concatenate([jnp.zeros((1,), jnp.int32), idx])
        b = jnp.concatenate([idx, jnp.full((1,), n, jnp.int32)])
        wc = W[b] - W[a]
        ok = wc > 0
        return jnp.where(ok, (S1[b] - S1[a]) / jnp.where(ok, wc, 1), levels)

    def cond(state):
        _, it, delta = state
        return (it < max_iter) & (delta > tol)

    def body(state):
        levels, it, _ = state
        new = step(levels)
        return new, it + 1, jnp.max(jnp.abs(new - levels))

    inf = jnp.asarray(jnp.inf, levels0.dtype)
    return lax.while_loop(cond, body, (levels0, jnp.int32(0), inf))


@functools.partial(jax.jit, static_argnames=("num_levels", "weighted", "has_init"))
def _lloyd_1d_core(x, w, init, tol, max_iter, *, num_levels, weighted, has_init):
    dt = _default_float()
    xs, ws = _sort_samples(x, w if weighted else None, dt)
    n = xs.shape[0]
    wsum = jnp.sum(ws)
    mean = jnp.sum(ws * xs) / wsum
    xc = xs - mean  # centred: prefix sums lose less in float32
    W = _prefix(ws, n + 1)
    S1 = _prefix(ws * xc, n + 1)
    if has_init:
        levels0 = init.astype(dt) - mean
    else:  # weighted quantiles at (j + 1/2)/N
        q = (jnp.arange(num_levels, dtype=dt) + 0.5) / num_levels * wsum
        idx = jnp.clip(jnp.searchsorted(W[1:], q, side="left"), 0, n - 1)
        levels0 = xc[idx]

    levels, it, delta = _lloyd_sorted(xc, W, S1, levels0, tol, max_iter)
    t = _midpoints(levels)
    cell = jnp.searchsorted(t, xc, side="left")  # x <= t_j -> cell j, as in the steps
    err = xc - levels[cell]
    mse = jnp.sum(ws * err * err) / wsum
    return LloydMaxResult(levels + mean, t + mean, mse, it, delta <= tol)


def lloyd_1d(
    x: jax.Array,
    num_levels: int,
    *,
    weights: jax.Array | None = None,
    init: jax.Array | None = None,
    max_iter: int = 1000,
    tol: float = 0.0,
) -> LloydMaxResult:
    r"""Lloyd's algorithm on samples: 1-D k-means with the nearest-neighbour and centroid rules.

    The samples are sorted once, with prefix sums ``W_i = Σ_{k<i} w_k`` and
    ``S_i = Σ_{k<i} w_k x_k``. Each step finds the thresholds' positions with
    ``jnp.searchsorted`` and the cells' weights and sums as prefix-sum differences, so a step
    costs ``O(N log S)`` rather than ``O(S)``::

        b_j = (a_j + a_{j+1}) / 2,    a_j = (S_{i_j} - S_{i_{j-1}}) / (W_{i_j} - W_{i_{j-1}})

    A cell that holds no sample keeps its previous level (no NaN). On samples Lloyd reaches an
    exact fixed point (the partition stops changing) in finitely many steps, so the default
    ``tol = 0`` stops there. It finds a local optimum; :func:`optimal_scalar_quantizer` finds the
    global one.

    Args:
      x: ``[S]`` samples.
      num_levels: N >= 1.
      weights: ``[S]`` non-negative sample weights (keyword-only; default all 1).
      init: ``[N]`` initial levels; default the weighted sample quantiles at ``(j + 1/2)/N``.
      max_iter: most steps.
      tol: stop when ``max_j |Δa_j| <= tol``.

    Returns:
      :class:`LloydMaxResult`; ``mse`` is the weighted mean squared error
      ``Σ w_k (x_k - Q(x_k))² / Σ w_k``, computed in one final pass over the samples.
    """
    _check_num_levels(num_levels)
    _check_iter_tol(max_iter, tol)
    x, w = _check_samples(x, weights)
    _check_distinct(x, w, num_levels)
    out = _out_dtype(x)
    init = _check_init(init, num_levels, out)
    dummy = jnp.zeros((), x.dtype)
    r = _lloyd_1d_core(
        x,
        dummy if w is None else w,
        dummy if init is None else init,
        jnp.asarray(tol, _default_float()),
        jnp.int32(max_iter),
        num_levels=num_levels,
        weighted=w is not None,
        has_init=init is not None,
    )
    return r._replace(levels=r.levels.astype(out), thresholds=r.thresholds.astype(out),
                      mse=r.mse.astype(out))
