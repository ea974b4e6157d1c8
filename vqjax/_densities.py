"""1-D densities for quantizer design: Gaussian, Laplace, uniform, any pdf on an interval, and
their partial moments ``P = ∫f``, ``M1 = ∫u f``, ``M2 = ∫u² f`` over cells (closed forms where they exist).

Shared by :mod:`vqjax.quantization` (which exports the public names) and
:mod:`vqjax._lloyd_max` (FSQ's Lloyd-Max levels in :mod:`vqjax.quantizers`); it lives outside both
packages so that ``vqjax.quantizers`` never imports ``vqjax.quantization``. See
:mod:`vqjax.quantization._scalar` for the precision and transformation notes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

__all__ = [
    "Density",
    "PartialMoments",
    "gaussian",
    "laplace",
    "on_interval",
    "partial_moments",
    "uniform",
]

_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _default_float() -> Any:
    """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _is_concrete(*xs: Any) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_num_levels(num_levels: Any) -> None:
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)):
        raise ValueError(f"`num_levels` must be an int >= 1; got {num_levels!r}.")  # noqa: TRY004
    if num_levels < 1:
        raise ValueError(f"`num_levels` must be >= 1; got {num_levels}.")


def _check_iter_tol(max_iter: Any, tol: Any) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"`max_iter` must be an int >= 0; got {max_iter!r}.")
    if tol is not None and _is_concrete(tol) and not (np.ndim(tol) == 0 and float(tol) >= 0):
        raise ValueError(f"`tol` must be a scalar >= 0 or None; got {tol!r}.")


def _gather(a: jax.Array, i: jax.Array) -> jax.Array:
    """``a[i]`` for indices known to be in bounds (no clamping, no negative wrap-around)."""
    return a.at[i].get(mode="promise_in_bounds", wrap_negative_indices=False)


def _midpoints(levels: jax.Array) -> jax.Array:
    return 0.5 * (levels[..., :-1] + levels[..., 1:])


def _cells(thresholds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lower and upper edges ``[N]`` of the cells of ``N - 1`` thresholds (±∞ at the ends)."""
    inf = jnp.full(thresholds.shape[:-1] + (1,), jnp.inf, thresholds.dtype)
    return jnp.concatenate([-inf, thresholds], -1), jnp.concatenate([thresholds, inf], -1)


# --------------------------------------------------------------------------------------------
# Densities
# --------------------------------------------------------------------------------------------


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["mean", "variance", "scale", "lower", "upper", "table"],
    meta_fields=["kind"],
)
@dataclasses.dataclass(frozen=True)
class Density:
    """A 1-D probability density, as a pytree (``kind`` is static, the parameters are arrays).

    Build one with :func:`gaussian`, :func:`laplace`, :func:`uniform` or :func:`on_interval`;
    it can be passed through ``jax.jit`` and batched with ``jax.vmap`` (same ``kind``).

    Attributes:
      kind: ``"gaussian"``, ``"laplace"``, ``"uniform"`` or ``"tabulated"``.
      mean: ``[]`` the mean ``E[U]``.
      variance: ``[]`` ``Var[U]``.
      scale: ``[]`` σ (Gaussian), b (Laplace), ``upper - lower`` (uniform, tabulated).
      lower, upper: ``[]`` the support (``±inf`` for the Gaussian and the Laplace).
      table: ``None``, or for ``"tabulated"`` the grid ``(x [G], f [G], cum [G, 3])``: the
        normalised pdf at the grid points and its cumulative moments ``∫_{x_0}^{x_i} (u - mean)^k
        f(u) du``, ``k = 0, 1, 2``, of the piecewise-linear interpolant.
    """

    kind: str
    mean: jax.Array
    variance: jax.Array
    scale: jax.Array
    lower: jax.Array
    upper: jax.Array
    table: tuple[jax.Array, jax.Array, jax.Array] | None = None

    @property
    def dtype(self) -> Any:
        return self.mean.dtype

    def astype(self, dtype: Any) -> Density:
        """The same density with its arrays cast to ``dtype``."""
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(dtype), self)


def _check_positive(value: Any, name: str) -> None:
    if _is_concrete(value):
        v = np.asarray(value)
        if v.ndim != 0 or not np.isfinite(v) or not v > 0:
            raise ValueError(f"`{name}` must be a finite scalar > 0; got {value!r}.")


def gaussian(sigma: float = 1.0, *, mean: float = 0.0) -> Density:
    r"""The Gaussian density ``N(mean, σ²)``: ``f(u) = exp(-(u - μ)²/(2σ²)) / (σ √(2π))``.

    Partial moments in closed form through the normal CDF ``Φ`` and the pdf (see
    :func:`partial_moments`); cells right of the mean use ``Φ(-z)``, so that far cells on either
    side keep their relative precision.
    """
    _check_positive(sigma, "sigma")
    dt = _default_float()
    s = jnp.asarray(sigma, dt)
    inf = jnp.asarray(jnp.inf, dt)
    return Density("gaussian", jnp.asarray(mean, dt), s * s, s, -inf, inf)


def laplace(scale: float = 1.0 / math.sqrt(2.0), *, mean: float = 0.0) -> Density:
    r"""The Laplace density ``f(u) = exp(-|u - μ|/b) / (2b)``, variance ``2b²``.

    The default ``b = 1/√2`` has unit variance. Partial moments in closed form (exponentials).
    """
    _check_positive(scale, "scale")
    dt = _default_float()
    b = jnp.asarray(scale, dt)
    inf = jnp.asarray(jnp.inf, dt)
    return Density("laplace", jnp.asarray(mean, dt), 2 * b * b, b, -inf, inf)


def _check_interval(a: Any, b: Any) -> None:
    """A finite, ordered interval ``a < b`` (checked when the values are concrete)."""
    if _is_concrete(a, b):
        if not (np.ndim(a) == 0 and np.ndim(b) == 0 and np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"`a` and `b` must be finite scalars; got a={a!r}, b={b!r}.")
        if not float(a) < float(b):
            raise ValueError(f"`a` must be < `b`; got a={a!r}, b={b!r}.")


def uniform(a: float = 0.0, b: float = 1.0) -> Density:
    r"""The uniform density on ``[a, b]``: mean ``(a + b)/2``, variance ``(b - a)²/12``."""
    _check_interval(a, b)
    dt = _default_float()
    lo, hi = jnp.asarray(a, dt), jnp.asarray(b, dt)
    w = hi - lo
    return Density("uniform", 0.5 * (lo + hi), w * w / 12, w, lo, hi)


def _segment_moments(
    f0: jax.Array, slope: jax.Array, v0: jax.Array, r: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``∫_0^r (v0 + t)^k (f0 + slope t) dt`` for ``k = 0, 1, 2`` (a linear pdf piece)."""
    r2 = r * r
    r3 = r2 * r
    j0 = f0 * r + slope * r2 / 2
    j1 = f0 * r2 / 2 + slope * r3 / 3
    j2 = f0 * r3 / 3 + slope * r3 * r / 4
    return j0, v0 * j0 + j1, v0 * v0 * j0 + 2 * v0 * j1 + j2


def _tabulate(x: jax.Array, f: jax.Array, center: jax.Array) -> jax.Array:
    """Cumulative moments ``[G, 3]`` about ``center`` of the piecewise-linear pdf ``f`` on ``x``."""
    h = x[1:] - x[:-1]
    slope = (f[1:] - f[:-1]) / h
    m = _segment_moments(f[:-1], slope, x[:-1] - center, h)
    seg = jnp.stack(m, axis=-1)
    zero = jnp.zeros((1, 3), x.dtype)
    return jnp.concatenate([zero, jnp.cumsum(seg, axis=0)], axis=0)


def on_interval(
    pdf: Callable[[jax.Array], jax.Array], a: float, b: float, *, num_points: int = 4097
) -> Density:
    r"""A density given by a JAX-callable ``pdf`` on a finite interval ``[a, b]``.

    The pdf is evaluated on ``num_points`` equally spaced points and replaced by its
    piecewise-linear interpolant, normalised to unit mass; the partial moments of the interpolant
    are exact (error ``O(h²)`` against the true pdf, ``h = (b - a)/(num_points - 1)``). ``pdf``
    need not be normalised.

    Args:
      pdf: ``[G] -> [G]`` non-negative density (up to a constant), vectorised over its input.
      a, b: the finite interval, ``a < b``.
      num_points: grid size G >= 2 (keyword-only).

    Raises:
      ValueError: if the interval is not finite or ordered, or (when the values are concrete)
        the pdf has negative or non-finite values or does not integrate to a positive finite mass.
    """
    if not callable(pdf):
        raise ValueError(f"`pdf` must be a callable u -> f(u); got {pdf!r}.")  # noqa: TRY004
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or (
        num_points < 2
    ):
        raise ValueError(f"`num_points` must be an int >= 2; got {num_points!r}.")
    _check_interval(a, b)
    dt = _default_float()
    lo, hi = jnp.asarray(a, dt), jnp.asarray(b, dt)
    x = lo + (hi - lo) * (jnp.arange(num_points, dtype=dt) / (num_points - 1))
    f = jnp.asarray(pdf(x))
    if f.shape != x.shape:
        raise ValueError(f"`pdf` must map [G] to [G]; got output shape {f.shape} for G={x.shape}.")
    f = f.astype(dt)
    mass = _tabulate(x, f, 0.5 * (lo + hi))[-1, 0]
    if _is_concrete(f, mass):
        fn = np.asarray(f)
        if not np.all(np.isfinite(fn)) or np.any(fn < 0):
            raise ValueError("`pdf` must return finite values >= 0 on [a, b].")
        if not (np.isfinite(mass) and float(mass) > 0):
            raise ValueError(
                f"`pdf` must integrate to a positive finite mass on [{a}, {b}]; got {float(mass)}."
            )
    f = f / mass
    mean = 0.5 * (lo + hi) + _tabulate(x, f, 0.5 * (lo + hi))[-1, 1]
    cum = _tabulate(x, f, mean)
    return Density("tabulated", mean, cum[-1, 2], hi - lo, lo, hi, (x, f, cum))


# --------------------------------------------------------------------------------------------
# Partial moments
# --------------------------------------------------------------------------------------------


class PartialMoments(NamedTuple):
    """Moments of ``U - center`` restricted to ``[lo, hi]`` (see :func:`partial_moments`)."""

    mass: jax.Array  # P  = ∫ f
    first: jax.Array  # M1 = ∫ (u - c) f
    second: jax.Array  # M2 = ∫ (u - c)² f


def _xphi(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``φ(z)`` and ``z φ(z)``, both 0 at ``z = ±∞``."""
    fin = jnp.isfinite(z)
    zs = jnp.where(fin, z, 0)
    phi = jnp.where(fin, _INV_SQRT2PI * jnp.exp(-0.5 * zs * zs), 0)
    return phi, zs * phi


def _gaussian_moments(d: Density, lo, hi, c) -> PartialMoments:
    mu, s = d.mean, d.scale
    zl, zh = (lo - mu) / s, (hi - mu) / s
    # P = Φ(zh) - Φ(zl), from the upper tails Φ(-z) when zl > 0: no cancellation in either tail.
    sign = jnp.where(zl > 0, -1.0, 1.0).astype(zl.dtype)
    p = sign * (ndtr(sign * zh) - ndtr(sign * zl))
    phl, zphl = _xphi(zl)
    phh, zphh = _xphi(zh)
    q1 = phl - phh  # ∫ z φ
    q2 = p + zphl - zphh  # ∫ z² φ
    dd = mu - c  # u - c = s z + dd
    return PartialMoments(p, s * q1 + dd * p, s * s * q2 + 2 * s * dd * q1 + dd * dd * p)


def _laplace_tail(t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``∫_t^∞ s^k e^{-s}/2 ds`` for ``t >= 0`` (``t = +∞`` gives 0), ``k = 0, 1, 2``."""
    fin = jnp.isfinite(t)
    ts = jnp.where(fin, t, 0)
    e = jnp.where(fin, 0.5 * jnp.exp(-ts), 0)
    return e, e * (1 + ts), e * (ts * ts + 2 * ts + 2)


def _laplace_moments(d: Density, lo, hi, c) -> PartialMoments:
    mu, b = d.mean, d.scale
    tl, th = (lo - mu) / b, (hi - mu) / b
    pos = lambda t: jnp.maximum(t, 0)
    zero = _laplace_tail(jnp.zeros_like(tl))
    right_l, right_h = _laplace_tail(pos(tl)), _laplace_tail(pos(th))
    left_h, left_l = _laplace_tail(pos(-th)), _laplace_tail(pos(-tl))
    out = []
    for k in range(3):
        sign = (-1) ** k
        both_right = right_l[k] - right_h[k]
        both_left = sign * (left_h[k] - left_l[k])
        mixed = sign * (zero[k] - left_l[k]) + (zero[k] - right_h[k])
        out.append(jnp.where(tl >= 0, both_right, jnp.where(th <= 0, both_left, mixed)))
    i0, i1, i2 = out
    dd = mu - c  # u - c = b t + dd
    return PartialMoments(i0, b * i1 + dd * i0, b * b * i2 + 2 * b * dd * i1 + dd * dd * i0)


def _uniform_moments(d: Density, lo, hi, c) -> PartialMoments:
    l_ = jnp.clip(lo, d.lower, d.upper) - c
    h_ = jnp.clip(hi, d.lower, d.upper) - c
    w = d.scale
    return PartialMoments(
        (h_ - l_) / w,
        (h_ - l_) * (h_ + l_) / (2 * w),
        (h_ - l_) * (h_ * h_ + h_ * l_ + l_ * l_) / (3 * w),
    )


def _tabulated_cum(d: Density, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``∫_{lower}^{t} (u - mean)^k f(u) du``, ``k = 0, 1, 2``."""
    x, f, cum = d.table
    g = x.shape[0]
    t = jnp.clip(t, d.lower, d.upper)
    i = jnp.clip(jnp.searchsorted(x, t, side="right") - 1, 0, g - 2)
    x0, f0 = x[i], f[i]
    slope = (f[i + 1] - f0) / (x[i + 1] - x0)
    part = _segment_moments(f0, slope, x0 - d.mean, t - x0)
    return tuple(cum[i, k] + part[k] for k in range(3))


def _tabulated_moments(d: Density, lo, hi, c) -> PartialMoments:
    ch, cl = _tabulated_cum(d, hi), _tabulated_cum(d, lo)
    p, m1, m2 = (ch[k] - cl[k] for k in range(3))
    dd = d.mean - c  # u - c = (u - mean) + dd
    return PartialMoments(p, m1 + dd * p, m2 + 2 * dd * m1 + dd * dd * p)


_MOMENTS = {
    "gaussian": _gaussian_moments,
    "laplace": _laplace_moments,
    "uniform": _uniform_moments,
    "tabulated": _tabulated_moments,
}


def _check_density(density: Any) -> None:
    if not isinstance(density, Density):
        raise ValueError(  # noqa: TRY004
            "`density` must be a Density (gaussian(), laplace(), uniform() or on_interval()); "
            f"got {type(density).__name__}."
        )


def partial_moments(
    density: Density, lo: jax.Array, hi: jax.Array, *, center: jax.Array | float = 0.0
) -> PartialMoments:
    r"""Mass and first two moments of ``U - c`` over ``[lo, hi]``: ``∫_lo^hi (u - c)^k f(u) du``.

    Closed forms: Gaussian through ``Φ`` (upper tails for cells right of the mean) and ``φ``
    (with ``z = (u - μ)/σ``: ``∫ φ = Φ(z_h) - Φ(z_l)``, ``∫ z φ = φ(z_l) - φ(z_h)``,
    ``∫ z² φ = ∫ φ + z_l φ(z_l) - z_h φ(z_h)``); Laplace through exponentials; uniform as
    polynomials; tabulated densities exactly for their piecewise-linear interpolant. Infinite
    ``lo``/``hi`` are allowed. Centring at ``c`` (e.g. a cell's level) avoids the cancellation of
    ``M2 - 2 a M1 + a² P`` far from the origin.

    Args:
      density: a :class:`Density`.
      lo, hi: ``[...]`` interval ends, ``lo <= hi`` (broadcast together).
      center: ``[...]`` the point ``c`` (keyword-only; default 0: raw moments).

    Returns:
      :class:`PartialMoments` of ``[...]`` arrays in the density's dtype.
    """
    _check_density(density)
    dt = density.dtype
    lo, hi, c = (jnp.asarray(v).astype(dt) for v in (lo, hi, center))
    return _MOMENTS[density.kind](density, lo, hi, c)


def _quantile(d: Density, p: jax.Array) -> jax.Array:
    """Inverse CDF (exact for the closed forms, linear interpolation of the tabulated CDF)."""
    if d.kind == "gaussian":
        return d.mean + d.scale * ndtri(p)
    if d.kind == "laplace":
        q = p - 0.5
        return d.mean - d.scale * jnp.sign(q) * jnp.log1p(-2 * jnp.abs(q))
    if d.kind == "uniform":
        return d.lower + p * d.scale
    x, _, cum = d.table
    return jnp.interp(p, cum[:, 0], x)
