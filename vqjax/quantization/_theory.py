r"""Reference formulas of quantization theory, pure JAX: high-resolution and rate-distortion.

- Panter-Dite: for ``N`` levels and a smooth density ``f``, the optimal MSE behaves as
  ``D ≈ (∫ f^{1/3})³ / (12 N²)`` (Panter & Dite 1951; Bennett 1948).
- Shannon's distortion-rate function of a Gaussian source: ``D(R) = σ² 2^{-2R}``.
- The best *uniform* quantizer (equal steps, symmetric about the mean), as tabulated by Max
  (1960), and the entropy of a quantizer's output.

References:
  P. F. Panter and W. Dite, "Quantization distortion in pulse-count modulation with nonuniform
  spacing of levels", Proc. IRE 39, 1951.
  W. R. Bennett, "Spectra of quantized signals", Bell Syst. Tech. J. 27, 1948.
  J. Max, "Quantizing for minimum distortion", IRE Trans. IT-6, 1960.
  C. E. Shannon, "Coding theorems for a discrete source with a fidelity criterion", 1959.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vqjax._densities import (
    _MOMENTS,
    Density,
    _cells,
    _check_density,
    _check_num_levels,
    _is_concrete,
)

__all__ = [
    "UniformQuantizerResult",
    "cell_probabilities",
    "gaussian_distortion_rate",
    "output_entropy",
    "panter_dite_mse",
    "snr_db",
    "uniform_quantizer",
]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # golden ratio conjugate, 0.618…


def panter_dite_mse(density: Density, num_levels: int) -> jax.Array:
    r"""High-resolution approximation of the optimal N-level MSE (Panter & Dite 1951).

    .. math::
        D_N \approx \frac{1}{12 N^2} \Big(\int f^{1/3}(u)\, du\Big)^3

    Closed forms: Gaussian ``σ² (√3 π / 2) / N²``; Laplace (variance ``2b²``)
    ``9 b² / N² = 4.5 σ² / N²``; uniform on ``[a, b]`` ``(b - a)² / (12 N²)`` (exact for every
    N). A tabulated density integrates ``f^{1/3}`` on its grid (trapezoid rule). The optimal
    MSE approaches it from below as N grows.

    Args:
      density: a :class:`~vqjax.quantization.Density`.
      num_levels: N >= 1.

    Returns:
      ``[]`` the approximate distortion, in the density's dtype.
    """
    _check_density(density)
    _check_num_levels(num_levels)
    n2 = float(num_levels) ** 2
    if density.kind == "gaussian":
        return density.variance * (math.sqrt(3.0) * math.pi / 2.0) / n2
    if density.kind == "laplace":
        return 9.0 * density.scale * density.scale / n2
    if density.kind == "uniform":
        return density.scale * density.scale / (12.0 * n2)
    x, f, _ = density.table
    g = jnp.cbrt(f)
    integral = jnp.sum(0.5 * (g[1:] + g[:-1]) * (x[1:] - x[:-1]))
    return integral**3 / (12.0 * n2)


def gaussian_distortion_rate(rate_bits: jax.Array | float, *, variance: float = 1.0) -> jax.Array:
    r"""Shannon's distortion-rate function of a Gaussian source: ``D(R) = σ² 2^{-2R}``.

    The least MSE any code of ``R`` bits per sample can reach (in the limit of long blocks):
    each bit divides the MSE by 4 (6.02 dB). At ``R = log2 N`` the optimal scalar quantizer is
    ``(√3 π / 2)`` times (4.35 dB) above it at high rate.

    Args:
      rate_bits: ``[...]`` rate R >= 0 in bits per sample.
      variance: σ² (keyword-only).

    Returns:
      ``[...]`` the distortion ``D(R)``.
    """
    rate = jnp.asarray(rate_bits)
    if not jnp.issubdtype(rate.dtype, jnp.floating):
        rate = rate.astype(jnp.float32)
    if _is_concrete(rate) and bool(jnp.any(rate < 0)):
        raise ValueError(f"`rate_bits` must be >= 0; got {rate_bits!r}.")
    if _is_concrete(variance) and not float(variance) > 0:
        raise ValueError(f"`variance` must be > 0; got {variance!r}.")
    return variance * jnp.exp2(-2.0 * rate)


class UniformQuantizerResult(NamedTuple):
    """The best uniform quantizer of :func:`uniform_quantizer`."""

    levels: jax.Array  # [N] mean + step · (j - (N - 1)/2)
    thresholds: jax.Array  # [N-1] mean + step · (k - N/2), k = 1 … N-1
    mse: jax.Array  # [] its mean-square error
    step: jax.Array  # [] the optimal step Δ


def _uniform_layout(d: Density, step: jax.Array, num_levels: int):
    j = jnp.arange(num_levels, dtype=d.dtype)
    levels = d.mean + step * (j - (num_levels - 1) / 2)
    thresholds = 0.5 * (levels[1:] + levels[:-1])
    return levels, thresholds


def _uniform_mse(d: Density, step: jax.Array, num_levels: int) -> jax.Array:
    levels, thresholds = _uniform_layout(d, step, num_levels)
    lo, hi = _cells(thresholds)
    return jnp.sum(_MOMENTS[d.kind](d, lo, hi, levels).second)


def uniform_quantizer(
    density: Density, num_levels: int, *, grid_size: int = 128, refine_steps: int = 64
) -> UniformQuantizerResult:
    r"""The best uniform quantizer: equal steps ``Δ``, symmetric about the mean (Max 1960).

    Levels ``a_j = μ + Δ (j - (N-1)/2)`` and thresholds halfway between them; the two outer
    cells are unbounded. The step minimises

    .. math::
        D(Δ) = \sum_j \int_{b_{j-1}}^{b_j} (u - a_j)^2 f(u)\, du

    found by a geometric grid of ``grid_size`` steps in ``[σ/(4N), 64σ/N]`` and then golden-section
    search between the grid neighbours of the best one (``refine_steps`` iterations). For
    symmetric densities this is Max's optimum uniform quantizer (Gaussian: N = 2, Δ = 1.596,
    D = 0.3634; N = 4, Δ = 0.9957, D = 0.1188; N = 8, Δ = 0.5860, D = 0.03744); for the uniform
    density it is Lloyd-Max's, ``Δ = (b - a)/N``, ``D = Δ²/12``.

    Args:
      density: a :class:`~vqjax.quantization.Density`.
      num_levels: N >= 1 (N = 1: the mean, ``D = σ²``, ``step = 0``).
      grid_size: steps on the coarse grid (keyword-only).
      refine_steps: golden-section iterations.

    Returns:
      :class:`UniformQuantizerResult` with ``levels [N]``, ``thresholds [N-1]``, ``mse``, ``step``.
    """
    _check_density(density)
    _check_num_levels(num_levels)
    for name, v, least in (("grid_size", grid_size, 3), ("refine_steps", refine_steps, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"`{name}` must be an int >= {least}; got {v!r}.")
    return _uniform_quantizer(density, num_levels, grid_size, refine_steps)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _uniform_quantizer(d: Density, num_levels: int, grid_size: int, refine_steps: int):
    dt = d.dtype
    sigma = jnp.sqrt(d.variance)
    if num_levels == 1:
        return UniformQuantizerResult(d.mean[None], jnp.zeros((0,), dt), d.variance,
                                      jnp.zeros((), dt))
    mse_of = lambda s: _uniform_mse(d, s, num_levels)
    u = jnp.linspace(math.log(0.25), math.log(64.0), grid_size, dtype=dt)
    steps = sigma / num_levels * jnp.exp(u)
    g = jnp.argmin(jax.vmap(mse_of)(steps))
    lo = steps[jnp.maximum(g - 1, 0)]
    hi = steps[jnp.minimum(g + 1, grid_size - 1)]

    def body(_, state):
        a, b = state
        c, e = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
        left = mse_of(c) <= mse_of(e)
        return jnp.where(left, a, c), jnp.where(left, e, b)

    a, b = lax.fori_loop(0, refine_steps, body, (lo, hi))
    step = 0.5 * (a + b)
    levels, thresholds = _uniform_layout(d, step, num_levels)
    return UniformQuantizerResult(levels, thresholds, mse_of(step), step)


def cell_probabilities(density: Density, thresholds: jax.Array) -> jax.Array:
    r"""Probabilities ``P_j = ∫_{b_{j-1}}^{b_j} f`` of the cells of increasing thresholds.

    Args:
      density: a :class:`~vqjax.quantization.Density`.
      thresholds: ``[..., N-1]`` increasing thresholds (``b_{-1} = -∞``, ``b_{N-1} = +∞``).

    Returns:
      ``[..., N]`` cell probabilities (they sum to 1).
    """
    _check_density(density)
    t = jnp.asarray(thresholds)
    if t.ndim < 1:
        raise ValueError(f"`thresholds` must be [..., N-1]; got a scalar of shape {t.shape}.")
    return _cell_masses(density, t.astype(density.dtype))


@jax.jit
def _cell_masses(density: Density, thresholds: jax.Array) -> jax.Array:
    lo, hi = _cells(thresholds)
    return _MOMENTS[density.kind](density, lo, hi, jnp.zeros((), density.dtype)).mass


def output_entropy(probabilities: jax.Array) -> jax.Array:
    r"""Entropy ``H = -Σ_j p_j log2 p_j`` in bits of a quantizer's output (``0 log 0 = 0``).

    The rate an ideal entropy coder needs for the quantizer's indices; ``<= log2 N``, with
    equality for equiprobable cells.

    Args:
      probabilities: ``[..., N]`` probabilities over the last axis.

    Returns:
      ``[...]`` entropy in bits.
    """
    p = jnp.asarray(probabilities)
    if p.ndim < 1:
        raise ValueError(f"`probabilities` must be [..., N]; got shape {p.shape}.")
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.float32)
    # 0 - Σ rather than -Σ: one certain cell gives +0.0, not -0.0.
    return 0.0 - jnp.sum(jax.scipy.special.xlogy(p, p), axis=-1) / math.log(2.0)


def snr_db(mse: jax.Array | float, *, variance: jax.Array | float = 1.0) -> jax.Array:
    r"""Signal-to-quantization-noise ratio ``10 log10(σ² / D)`` in decibels.

    Args:
      mse: ``[...]`` distortion D > 0.
      variance: σ² of the source (keyword-only).

    Returns:
      ``[...]`` SNR in dB (6.02 dB per bit at high rate).
    """
    mse = jnp.asarray(mse)
    if not jnp.issubdtype(mse.dtype, jnp.floating):
        mse = mse.astype(jnp.float32)
    return 10.0 * jnp.log10(jnp.asarray(variance, mse.dtype) / mse)
