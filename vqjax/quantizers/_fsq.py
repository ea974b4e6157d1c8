"""Finite scalar quantization: uniform (FSQ) and non-uniform (Lloyd-Max) levels per channel.

FSQ (Mentzer, Minnen, Agustsson & Tschannen, 2024) bounds each of the D channels of
``z [..., D]`` and rounds it to one of ``L_d`` levels, with a straight-through gradient; the
implied codebook is the grid of ``Π_d L_d`` points and needs no learning, no codebook loss and no
commitment loss. :func:`scalar_quantize` is the same idea with any level set, e.g. the Lloyd-Max
quantizer (the notes' optimal scalar quantizer, :mod:`vqjax.quantization`) of the bounded values'
density, from :func:`vqjax.quantizers.lloyd_max_levels` (defined in :mod:`vqjax._lloyd_max`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.quantizers._vq import Quantized

__all__ = [
    "fsq",
    "fsq_codebook_size",
    "fsq_codes_to_indices",
    "fsq_indices_to_codes",
    "fsq_range_loss",
    "scalar_quantize",
]

# Finite scalar quantization (FSQ; Mentzer, Minnen, Agustsson & Tschannen, 2024).
#
# Each of the D channels of ``z [..., D]`` is bounded and rounded to one of ``L_d`` levels, with a
# straight-through gradient; the implied codebook is the grid of ``Π_d L_d`` points and needs no
# learning, no codebook loss and no commitment loss. With ``h_d = (L_d - 1)(1 + ε)/2`` and an offset
# ``o_d = 1/2`` for even ``L_d`` (else 0)::
#
#     bounded_d = tanh(z_d + atanh(o_d / h_d)) · h_d - o_d    # z_d = 0 -> 0; rounds to L_d levels
#     ẑ_d       = (round(bounded_d) straight-through) / ⌊L_d / 2⌋       # levels in [-1, 1]
#
# Index of a code: the mixed-radix number of its level digits ``k_d = ẑ_d ⌊L_d/2⌋ + ⌊L_d/2⌋``,
# ``index = Σ_d k_d Π_{d' < d} L_{d'}``.


def _fsq_levels(levels: Sequence[int]) -> np.ndarray:
    lv = np.asarray(levels)
    if lv.ndim != 1 or lv.size == 0 or not np.issubdtype(lv.dtype, np.integer) or np.any(lv < 2):
        raise ValueError(f"`levels` must be a non-empty sequence of ints >= 2; got {levels!r}.")
    if math.prod(int(v) for v in lv) > 2**31 - 1:
        raise ValueError(f"`levels` imply {math.prod(int(v) for v in lv)} codes; at most 2**31 - 1 fit int32 indices.")
    return lv.astype(np.int64)


def _fsq_check_last_axis(x: jax.Array, lv: np.ndarray, name: str) -> None:
    if x.ndim < 1 or x.shape[-1] != lv.size:
        raise ValueError(f"`{name}` must be [..., D] with D = len(levels) = {lv.size}; got shape {x.shape}.")


def fsq_codebook_size(levels: Sequence[int]) -> int:
    """``Π_d L_d``: the number of codes FSQ with these levels can output."""
    return math.prod(int(v) for v in _fsq_levels(levels))


def fsq(z: jax.Array, levels: Sequence[int], *, eps: float = 1e-3) -> Quantized:
    r"""Finite scalar quantization of ``z [..., D]`` with ``levels`` (length D), straight-through.

    Args:
      z: ``[..., D]`` encoder outputs (any float dtype; computed in float32 at least).
      levels: ``L_d ≥ 2`` per channel, e.g. ``(8, 5, 5, 5)`` for 1000 codes (the paper's table 1).
      eps: widens the bound slightly (by less than half a level, so rounding still gives L_d
        levels) so that ``o_d / h_d < 1`` even for ``L_d = 2``.

    Returns:
      :class:`vqjax.quantizers.Quantized`: ``z_q`` (levels in [-1, 1]; the gradient is that of the
      bounding, passed straight through the rounding), ``codes`` (the same values, no gradient) and
      int32 ``indices [...]`` in ``[0, Π L_d)``.
    """
    lv = _fsq_levels(levels)
    z = jnp.asarray(z)
    _fsq_check_last_axis(z, lv, "z")
    floating = jnp.issubdtype(z.dtype, jnp.floating) and jnp.finfo(z.dtype).bits >= 32
    dtype = z.dtype if floating else jnp.dtype(jnp.float32)  # bfloat16 and ints: float32
    zf = z.astype(dtype)
    half_l = jnp.asarray((lv - 1) * (1.0 + eps) / 2.0, dtype)
    offset = jnp.asarray(np.where(lv % 2 == 0, 0.5, 0.0), dtype)
    shift = jnp.arctanh(offset / half_l)
    bounded = jnp.tanh(zf + shift) * half_l - offset
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    half_width = jnp.asarray(lv // 2, dtype)
    z_q = rounded / half_width
    codes = jax.lax.stop_gradient(z_q)
    return Quantized(z_q, codes, fsq_codes_to_indices(codes, levels))


def fsq_codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """``[..., D]`` FSQ codes (levels in [-1, 1]) -> int32 ``[...]`` indices in ``[0, Π L_d)``."""
    lv = _fsq_levels(levels)
    codes = jnp.asarray(codes)
    _fsq_check_last_axis(codes, lv, "codes")
    half_width = jnp.asarray(lv // 2, jnp.float32)
    digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)
    return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)


def fsq_indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """int ``[...]`` indices -> float32 ``[..., D]`` FSQ codes: the inverse of :func:`fsq_codes_to_indices`."""
    lv = _fsq_levels(levels)
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers; got dtype {indices.dtype}.")
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)
    digits = (indices[..., None].astype(jnp.int32) // basis) % jnp.asarray(lv, jnp.int32)
    half_width = jnp.asarray(lv // 2, jnp.float32)
    return (digits.astype(jnp.float32) - half_width) / half_width


# --------------------------------------------------------------------------- non-uniform levels


def _check_level_table(levels: jax.Array, d: int) -> jax.Array:
    levels = jnp.asarray(levels)
    if levels.ndim == 1:
        levels = jnp.broadcast_to(levels, (d, levels.shape[0]))
    if levels.ndim != 2 or levels.shape[0] != d or levels.shape[1] < 2:
        raise ValueError(
            f"`levels` must be [L] (shared by all channels) or [D, L] with D = {d} and L >= 2; "
            f"got shape {levels.shape}."
        )
    if not jnp.issubdtype(levels.dtype, jnp.floating):
        raise ValueError(f"`levels` must be floats; got dtype {levels.dtype}.")
    return levels.astype(jnp.float32)


def scalar_quantize(z: jax.Array, levels: jax.Array) -> Quantized:
    r"""Bound each channel with ``u = tanh(z)`` and round it to the nearest of given levels.

    The per-channel scalar quantizer of the notes, inside a network: with sorted reconstruction
    levels ``a_1 < … < a_L`` in ``(-1, 1)`` and thresholds ``b_j = (a_j + a_{j+1})/2`` (the
    nearest-neighbour rule), ``k_d = #{j : u_d > b_j}`` and ``ẑ_d = u_d + sg[a_{k_d} - u_d]``
    (straight-through: the gradient is that of the tanh). Uniform levels give FSQ; the Lloyd-Max
    levels of :func:`vqjax.quantizers.lloyd_max_levels` minimise the mean squared rounding error
    for the bounded values' density.

    Args:
      z: ``[..., D]`` encoder outputs (computed in float32).
      levels: ``[L]`` sorted levels shared by every channel, or ``[D, L]`` one sorted row per channel.

    Returns:
      :class:`vqjax.quantizers.Quantized` with ``z_q`` (straight-through), ``codes`` (the levels,
      no gradient) and int32 ``indices [...]`` in ``[0, L^D)``: the digits ``k_d`` in base L.
    """
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(f"`z` must be [..., D]; got shape {z.shape}.")
    table = _check_level_table(levels, z.shape[-1])
    num_levels = table.shape[1]
    if num_levels ** z.shape[-1] > 2**31 - 1:
        raise ValueError(f"L^D = {num_levels}^{z.shape[-1]} codes do not fit int32 indices.")
    u = jnp.tanh(z.astype(jnp.float32))
    thresholds = 0.5 * (table[:, 1:] + table[:, :-1])  # [D, L-1]
    digits = jnp.sum(u[..., None] > thresholds, axis=-1).astype(jnp.int32)  # [..., D]
    codes = jnp.take_along_axis(jnp.broadcast_to(table, (*u.shape, num_levels)), digits[..., None],
                                axis=-1)[..., 0]
    z_q = u + jax.lax.stop_gradient(codes - u)
    basis = jnp.asarray(num_levels ** np.arange(z.shape[-1]), jnp.int32)
    return Quantized(z_q, jax.lax.stop_gradient(codes), jnp.sum(digits * basis, axis=-1))


def fsq_range_loss(z: jax.Array, *, bound: float = 2.0) -> jax.Array:
    r"""``Σ_d max(|z_d| - bound, 0)²``: keeps FSQ's inputs where its tanh still passes a gradient.

    FSQ's straight-through gradient flows through ``tanh``; a channel pushed far past the last level
    (``|z| ≫ 1``) gets ``tanh' ≈ 0``, stays at one level for every input and shrinks the implied
    codebook by a factor ``L_d`` for good. This penalty is zero inside ``[-bound, bound]``
    (``tanh'(2) ≈ 0.07``) and pulls a saturating channel back with a gradient that does not vanish.
    Not part of the FSQ paper: our remedy for the dead channels we measured on MNIST.

    Args:
      z: ``[..., D]`` FSQ inputs (before the bounding).
      bound: where the penalty starts (> 0).

    Returns:
      ``[...]`` float32 per-vector penalties.
    """
    z = jnp.asarray(z)
    if z.ndim < 1:
        raise ValueError(f"`z` must be [..., D]; got shape {z.shape}.")
    if not bound > 0:
        raise ValueError(f"`bound` must be > 0; got {bound!r}.")
    excess = jax.nn.relu(jnp.abs(z.astype(jnp.float32)) - bound)
    return jnp.sum(jnp.square(excess), axis=-1)
