"""Pure vector quantizers: nearest-code search, straight-through quantization, usage statistics.

Shapes: inputs ``z`` are ``[..., D]`` with any leading axes; the codebook ``e`` is ``[K, D]``.

The VQ-VAE quantizer (van den Oord et al., 2017)::

    k(z) = argmin_i ||z - e_i||²          (nearest code, eq. 1)
    z_q  = z + sg[e_k - z]                (straight-through: forward e_k, gradient copied to z)

The search computes ``||z - e_i||² = ||z||² - 2 z·e_i + ||e_i||²`` as one matrix product,
in row blocks so that peak memory stays bounded for large ``N × K``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_weights
from vqjax.quantizers import _rotation

__all__ = [
    "CodeUsage",
    "Quantized",
    "code_usage",
    "l2_normalize",
    "lookup",
    "nearest_code",
    "perplexity",
    "quantize",
    "squared_distances",
    "straight_through",
]

# A block's distance matrix holds at most this many float32 entries (64 MiB) when it is
# materialised (the argmin path); the fused CPU path never materialises it.
_BLOCK_ELEMENTS = 1 << 24
# Lifts a tied code's index above every code index (< 2²⁴) once its distance gap is >= 1 (see ``_fused_block``).
_GAP_LIFT = float(2.0**30)


def _check_codebook(z: jax.Array, codebook: jax.Array) -> None:
    if codebook.ndim != 2:
        raise ValueError(f"`codebook` must be [K, D]; got shape {codebook.shape}.")
    if codebook.shape[0] < 1:
        raise ValueError(f"`codebook` must hold at least one code; got shape {codebook.shape}.")
    if z.ndim < 1 or z.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"`z` must be [..., D] with D = codebook.shape[1] = {codebook.shape[1]}; "
            f"got z.shape={z.shape}."
        )


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    r"""All squared distances ``||z - e_k||²`` as ``||z||² - 2 z·e_kᵀ + ||e_k||²`` (float32).

    Args:
      z: ``[..., D]`` vectors.
      codebook: ``[K, D]`` codes.

    Returns:
      ``[..., K]`` squared Euclidean distances. This materialises ``N × K`` values: use
      :func:`nearest_code` when only the nearest code is needed.
    """
    z, codebook = jnp.asarray(z), jnp.asarray(codebook)
    _check_codebook(z, codebook)
    z32, e32 = z.astype(jnp.float32), codebook.astype(jnp.float32)
    z_sq = jnp.sum(jnp.square(z32), axis=-1, keepdims=True)
    e_sq = jnp.sum(jnp.square(e32), axis=-1)
    return z_sq - 2.0 * jnp.einsum("...d,kd->...k", z32, e32) + e_sq


def _argmin_block(z: jax.Array, e: jax.Array, e_sq: jax.Array) -> jax.Array:
    """Nearest code of each row of ``z [n, D]``: the dense distance block, then argmin."""
    d = e_sq - 2.0 * (z @ e.T)
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def _fused_block(z: jax.Array, e: jax.Array, e_sq: jax.Array) -> jax.Array:
    """The same result in two passes that XLA's CPU backend fuses into the matrix product.

    XLA:CPU fuses ``dot -> elementwise -> reduce_min`` into one kernel that never writes the
    ``[n, K]`` block, but not an argmin (a two-operand reduction). So: pass 1 finds the
    minimum ``m`` of ``d_k = ||e_k||² - 2 z·e_k``; pass 2 recomputes ``d_k`` (the same kernel on
    the same operands, so the same floats) and takes ``min_k ⌈max(d_k - m, 0)⌉·2³⁰ + k``, which
    is exactly the lowest index ``k`` with ``d_k = m`` — ``jnp.argmin``'s tie rule: the ceiling
    maps every positive gap, however small, to at least 1 (a fixed scale such as 2⁶⁴ does not:
    gaps below K·2⁻⁶⁴, i.e. inputs of magnitude ~1e-10, would lose to the lower index).
    """
    k = e.shape[0]
    m = jnp.min(e_sq - 2.0 * (z @ e.T), axis=-1, keepdims=True)
    # Keep XLA from merging the two products into one materialised block.
    z2, e2, e_sq2 = jax.lax.optimization_barrier((z, e, e_sq))
    d2 = e_sq2 - 2.0 * (z2 @ e2.T)
    codes = jnp.arange(k, dtype=jnp.float32)
    v = jnp.ceil(jnp.maximum(d2 - m, 0.0)) * jnp.float32(_GAP_LIFT) + codes
    idx = jnp.min(v, axis=-1)
    return jnp.clip(jnp.nan_to_num(idx, nan=0.0), 0, k - 1).astype(jnp.int32)


# The search kernel: None picks by platform (fused on CPU, dense argmin on GPU/TPU); "fused" or
# "argmin" forces one, so that the CPU test suite runs the accelerators' branch too.
_FORCE_KERNEL: str | None = None


def _search_block(z: jax.Array, e: jax.Array, e_sq: jax.Array) -> jax.Array:
    if e.shape[0] > (1 << 24) or _FORCE_KERNEL == "argmin":  # indices beyond 2²⁴ are not exact in float32
        return _argmin_block(z, e, e_sq)
    if _FORCE_KERNEL == "fused":
        return _fused_block(z, e, e_sq)
    return jax.lax.platform_dependent(z, e, e_sq, cpu=_fused_block, default=_argmin_block)


def nearest_code(
    z: jax.Array, codebook: jax.Array, *, block_size: int | None = None
) -> jax.Array:
    r"""Index of the nearest code, ``argmin_k ||z - e_k||²`` (ties: the lowest index).

    Distances are float32 for any input dtype. Rows are searched in blocks of
    ``block_size`` (default: as many rows as keep a block's ``[rows, K]`` distances within
    2²⁴ values), so memory stays ``O(block_size · K)`` however many vectors come in; the result
    does not depend on the block size. On CPU each block is two fused passes that never
    materialise the distances (see ``_fused_block``); elsewhere, a dense block and ``argmin``.
    No gradient flows through the indices.

    Args:
      z: ``[..., D]`` vectors (any leading axes).
      codebook: ``[K, D]`` codes.
      block_size: rows per search block (keyword-only); ``None`` picks it from ``K``.

    Returns:
      ``[...]`` int32 indices in ``[0, K)``.
    """
    z, codebook = jnp.asarray(z), jnp.asarray(codebook)
    _check_codebook(z, codebook)
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"`block_size` must be a positive int or None; got {block_size!r}.")
    lead = z.shape[:-1]
    n, (k, dim) = math.prod(lead), codebook.shape
    if n == 0:
        return jnp.zeros(lead, jnp.int32)
    z = jax.lax.stop_gradient(z).reshape(n, dim).astype(jnp.float32)
    e = jax.lax.stop_gradient(codebook).astype(jnp.float32)
    e_sq = jnp.sum(jnp.square(e), axis=-1)
    rows = block_size or max(1, _BLOCK_ELEMENTS // k)
    if n <= rows:
        return _search_block(z, e, e_sq).reshape(lead)
    num_blocks = -(-n // rows)
    z = jnp.pad(z, ((0, num_blocks * rows - n), (0, 0))).reshape(num_blocks, rows, dim)
    idx = jax.lax.map(lambda zb: _search_block(zb, e, e_sq), z)
    return idx.reshape(-1)[:n].reshape(lead)


def lookup(indices: jax.Array, codebook: jax.Array) -> jax.Array:
    """Codes of given indices, ``e[indices]``: decode stored indices.

    Args:
      indices: ``[...]`` integer indices in ``[0, K)``.
      codebook: ``[K, D]``.

    Returns:
      ``[..., D]`` codes; the gradient flows to the rows of ``codebook`` that were used.
    """
    indices, codebook = jnp.asarray(indices), jnp.asarray(codebook)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers; got dtype {indices.dtype}.")
    if codebook.ndim != 2:
        raise ValueError(f"`codebook` must be [K, D]; got shape {codebook.shape}.")
    return jnp.take(codebook, indices, axis=0, mode="clip")


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
    r"""Straight-through estimator ``z_e + sg[z_q - z_e]``.

    Forward: exactly the value of ``z_q``. Backward: the gradient with respect to the output is
    copied unchanged to ``z_e``; ``z_q`` receives none. Computed as ``sg[z_q] + (z_e - sg[z_e])``:
    the same value and gradient, without rounding ``z_q - z_e`` (which, for ``|z_e| ≫ |z_q|``,
    e.g. an encoder output of 1000 and a code of 0.5 in bfloat16, forwards 0 instead of ``z_q``).
    A non-finite ``z_e`` gives NaN.

    Args:
      z_e: ``[..., D]`` encoder output.
      z_q: ``[..., D]`` quantized values, same shape.
    """
    if z_e.shape != z_q.shape:
        raise ValueError(
            f"`z_e` and `z_q` must have the same shape; got {z_e.shape} and {z_q.shape}."
        )
    return jax.lax.stop_gradient(z_q) + (z_e - jax.lax.stop_gradient(z_e))


def l2_normalize(x: jax.Array, *, eps: float = 1e-12) -> jax.Array:
    r"""``x / max(||x||₂, eps)`` along the last axis (a zero vector stays zero, with no NaN)."""
    x = jnp.asarray(x)
    wide = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits >= 32
    xf = x.astype(x.dtype if wide else jnp.float32)  # bfloat16 (and ints): computed in float32
    norm_sq = jnp.sum(jnp.square(xf), axis=-1, keepdims=True)
    return (xf * jax.lax.rsqrt(jnp.maximum(norm_sq, eps * eps))).astype(x.dtype)


class Quantized(NamedTuple):
    """Output of :func:`quantize` (and of :func:`fsq`)."""

    z_q: jax.Array  # [..., D] straight-through: forward e_k, gradient to z_e
    codes: jax.Array  # [..., D] e_k = codebook[k]; differentiable in the codebook
    indices: jax.Array  # [...] int32 nearest-code indices k


def quantize(
    z_e: jax.Array,
    codebook: jax.Array,
    *,
    cosine: bool = False,
    rotation_trick: bool = False,
    block_size: int | None = None,
) -> Quantized:
    r"""Vector-quantize ``z_e [..., D]`` with ``codebook [K, D]``.

    ``k = argmin_i ||z_e - e_i||²``, ``codes = e_k`` and ``z_q = z_e + sg[e_k - z_e]``. Feed
    ``z_q`` to the decoder and ``(z_e, codes)`` to :func:`vqjax.losses.codebook_loss` and
    :func:`vqjax.losses.commitment_loss`.

    With ``cosine=True`` both ``z_e`` and the codes are first l2-normalised (Yu et al., 2022,
    "Vector-quantized image modeling with improved VQGAN"): the nearest code is the one of largest
    cosine similarity, and ``z_q``, ``codes`` live on the unit sphere — so the losses
    (``||ẑ_e - ê||² = 2 - 2 cos``) compare directions only.

    With ``rotation_trick=True``, ``z_q`` is :func:`vqjax.quantizers.rotation_trick` ``(z_e, codes)``
    (Fifty et al., 2024) instead of the straight-through copy: the same forward value ``e_k``, but
    the gradient reaches ``z_e`` rotated and rescaled by ``sg[λ R]``, the map taking ``z_e`` to ``e_k``.
    """
    if cosine:
        z_e, codebook = l2_normalize(z_e), l2_normalize(codebook)
    indices = nearest_code(z_e, codebook, block_size=block_size)
    codes = lookup(indices, codebook).astype(z_e.dtype)
    if rotation_trick:
        return Quantized(_rotation.rotation_trick(z_e, codes), codes, indices)
    return Quantized(straight_through(z_e, codes), codes, indices)


class CodeUsage(NamedTuple):
    """Codebook usage statistics of :func:`code_usage`."""

    counts: jax.Array  # [K] float32 number of vectors assigned to each code
    perplexity: jax.Array  # [] exp(entropy of the code distribution), in [1, K]
    used_fraction: jax.Array  # [] share of codes with at least one vector
    dead: jax.Array  # [] int32 number of codes with no vector (K · (1 - used_fraction))


def perplexity(counts: jax.Array) -> jax.Array:
    r"""``exp(-Σ_k p_k log p_k)`` with ``p = counts / Σ counts`` (1 for all-zero counts)."""
    counts = jnp.asarray(counts, jnp.float32)
    p = counts / jnp.maximum(jnp.sum(counts, axis=-1, keepdims=True), 1.0)
    return jnp.exp(-jnp.sum(jax.scipy.special.xlogy(p, p), axis=-1))


def code_usage(
    indices: jax.Array,
    num_codes: int,
    *,
    axis_name: str | tuple[str, ...] | None = None,
    weights: jax.Array | None = None,
) -> CodeUsage:
    """Per-code counts, perplexity, used fraction and dead-code count of a batch of indices.

    Under ``jax.jit`` with sharded inputs the counts are global already. Inside
    ``jax.shard_map`` pass the mesh ``axis_name``: counts are ``psum``-ed over it first, so the
    perplexity is that of the whole batch, not an average of per-device perplexities.

    Args:
      indices: ``[...]`` integer code indices; values outside ``[0, K)`` are not counted.
      num_codes: K.
      axis_name: mesh axis (or axes) to sum counts over, inside ``shard_map``.
      weights: optional ``[...]`` padding mask or nonnegative weights (broadcastable to
        ``indices.shape``): ``counts_k = Σ_j w_j [k_j = k]``; positions with weight 0 are not
        counted, so a padded batch has exactly the usage of the unpadded one.
    """
    indices = jnp.asarray(indices)
    if not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"`num_codes` must be a positive int; got {num_codes!r}.")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers; got dtype {indices.dtype}.")
    flat = indices.reshape(-1)
    flat = jnp.where((flat >= 0) & (flat < num_codes), flat, num_codes)  # JAX wraps negatives
    if weights is None:
        counts = jnp.zeros((num_codes,), jnp.float32).at[flat].add(1.0, mode="drop")
    else:
        flat_w = check_weights(weights, indices.shape, "indices.shape").reshape(-1)
        flat = jnp.where(flat_w != 0, flat, num_codes)  # padded: not counted
        counts = jnp.zeros((num_codes,), jnp.float32).at[flat].add(flat_w, mode="drop")
    if axis_name is not None:
        counts = jax.lax.psum(counts, axis_name)
    used = counts > 0
    return CodeUsage(counts, perplexity(counts), jnp.mean(used.astype(jnp.float32)),
                     num_codes - jnp.sum(used, dtype=jnp.int32))
