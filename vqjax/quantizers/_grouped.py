r"""Grouped (multi-head) vector quantization and product quantization.

Split ``z [..., D]`` into ``H`` contiguous parts ``z = (z^(1), …, z^(H))`` of ``D/H`` channels
each and quantize every part on its own, with its own codebook ``e^(h) [K, D/H]`` (product
quantization, Jégou, Douze & Schmid, 2011, "Product quantization for nearest neighbor search";
multi-head VQ in neural codecs) or with one codebook shared by all parts::

    k_h = argmin_i ||z^(h) - e^(h)_i||²                       (h = 1 … H)
    q(z) = (e^(1)_{k_1}, …, e^(H)_{k_H})                      (concatenation)
    z_q = z + sg[q(z) - z]                                     (straight-through)

Vector-quantizer theory (Gersho & Gray, 1992, "Vector Quantization and Signal Compression",
ch. 12, constrained VQ, product codes): ``q`` is a vector quantizer of ``R^D`` whose codebook is
the Cartesian product ``C = e^(1) × … × e^(H)`` of ``K^H`` code vectors, while only ``H·K`` codes
of ``D/H`` numbers (``K·D`` numbers in all; ``K`` codes when shared) are stored and searched — the
memory and search advantage: a plain VQ with ``K^H`` codes would store ``K^H·D`` numbers. Because
the squared distance is a sum over parts, ``||z - c||² = Σ_h ||z^(h) - c^(h)||²``, the nearest
product code is the concatenation of the per-part nearest codes: the per-part search is the exact
nearest-neighbour search in ``C``. The price: ``C`` is a *constrained* codebook, its Voronoi cells
are Cartesian products of the parts' cells, so the best product quantizer is never better, and
usually worse, than the best unconstrained VQ of ``K^H`` codes (it cannot exploit dependence
between the parts).

Indices are ``[..., H]`` int32, each in ``[0, K)``; e.g. ``Σ_h k_h K^(h-1)`` indexes ``C``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax.quantizers._vq import lookup, nearest_code, straight_through

__all__ = ["GroupedQuantized", "grouped_lookup", "grouped_quantize"]


class GroupedQuantized(NamedTuple):
    """Output of :func:`grouped_quantize` for ``z [..., D]`` and ``H`` parts."""

    z_q: jax.Array  # [..., D] straight-through: forward the concatenated codes, gradient to z
    codes: jax.Array  # [..., D] concatenated codes (e^(1)_{k_1}, …, e^(H)_{k_H}); differentiable in the codebooks
    indices: jax.Array  # [..., H] int32 code index of each part


def _num_parts(codebooks: jax.Array, name: str = "codebooks") -> tuple[int | None, int, int]:
    """``(H or None for a shared codebook, K, D/H)`` from ``[H, K, D/H]`` or ``[K, D/H]``."""
    if codebooks.ndim == 3 and min(codebooks.shape) >= 1:
        return codebooks.shape[0], codebooks.shape[1], codebooks.shape[2]
    if codebooks.ndim == 2 and min(codebooks.shape) >= 1:
        return None, codebooks.shape[0], codebooks.shape[1]
    raise ValueError(
        f"`{name}` must be [H, K, D/H] (one codebook per part) or [K, D/H] (shared), with H, K, D/H >= 1; "
        f"got shape {codebooks.shape}."
    )


def _split(z: jax.Array, codebooks: jax.Array) -> tuple[jax.Array, int | None]:
    """``z [..., D]`` as ``[..., H, D/H]``; ``ValueError`` if ``D`` does not match the codebooks."""
    heads, _, part = _num_parts(codebooks)
    if z.ndim < 1:
        raise ValueError(f"`z` must be [..., D]; got shape {z.shape}.")
    dim = z.shape[-1]
    if heads is None:
        if dim % part:
            raise ValueError(
                f"`z` must be [..., D] with D a multiple of the shared codebook's part size D/H = {part}; "
                f"got z.shape={z.shape}."
            )
    elif dim != heads * part:
        raise ValueError(
            f"`z` must be [..., D] with D = H·(D/H) = {heads}·{part} = {heads * part} for codebooks "
            f"{codebooks.shape}; got z.shape={z.shape}."
        )
    return z.reshape(*z.shape[:-1], dim // part, part), heads


def grouped_quantize(
    z: jax.Array, codebooks: jax.Array, *, block_size: int | None = None
) -> GroupedQuantized:
    r"""Product / multi-head VQ of ``z [..., D]``: each of ``H`` contiguous parts to its nearest code.

    ``codebooks`` is ``[H, K, D/H]`` (a codebook per part: product quantization) or ``[K, D/H]``
    (one codebook shared by the ``H = D / (D/H)`` parts). Part ``h`` is ``z[..., h·D/H:(h+1)·D/H]``
    (vector-quantize-pytorch's ``'b n (h d) -> h b n d'`` split). Returns the straight-through
    ``z_q``, the concatenated ``codes`` and ``[..., H]`` indices; feed ``(z, codes)`` to
    :func:`vqjax.losses.codebook_loss` / :func:`vqjax.losses.commitment_loss` (they sum over
    ``D``, i.e. over the parts). Distances are float32 whatever the dtype of ``z``.

    ``codes`` is the nearest point to ``z`` in the product codebook of ``K^H`` vectors (see the
    module docstring): ``||z - c||² = Σ_h ||z^(h) - c^(h)||²`` is minimised part by part.
    """
    z, codebooks = jnp.asarray(z), jnp.asarray(codebooks)
    parts, heads = _split(z, codebooks)
    if heads is None:
        indices = nearest_code(parts, codebooks, block_size=block_size)  # [..., H]
        codes = lookup(indices, codebooks)  # [..., H, D/H]
    else:
        # Parts to the front, one (nearest_code, lookup) per part; H is small and static.
        front = jnp.moveaxis(parts, -2, 0)  # [H, ..., D/H]
        idx = jnp.stack([nearest_code(front[h], codebooks[h], block_size=block_size) for h in range(heads)])
        codes = jnp.stack([lookup(idx[h], codebooks[h]) for h in range(heads)])
        indices, codes = jnp.moveaxis(idx, 0, -1), jnp.moveaxis(codes, 0, -2)
    codes = codes.reshape(z.shape).astype(z.dtype)
    return GroupedQuantized(straight_through(z, codes), codes, indices)


def grouped_lookup(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
    """The concatenated codes ``(e^(1)[k_1], …, e^(H)[k_H])`` of stored ``[..., H]`` indices: ``[..., D]``.

    ``codebooks`` as in :func:`grouped_quantize`: ``[H, K, D/H]`` or a shared ``[K, D/H]``.
    """
    indices, codebooks = jnp.asarray(indices), jnp.asarray(codebooks)
    heads, _, part = _num_parts(codebooks)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers; got dtype {indices.dtype}.")
    if indices.ndim < 1 or (heads is not None and indices.shape[-1] != heads):
        raise ValueError(f"`indices` must be [..., H] with H = {heads}; got shape {indices.shape}.")
    if heads is None:
        codes = lookup(indices, codebooks)
    else:
        codes = jax.vmap(lookup, in_axes=(-1, 0), out_axes=-2)(indices, codebooks)
    return codes.reshape(*indices.shape[:-1], indices.shape[-1] * part)
