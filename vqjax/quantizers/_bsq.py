r"""Binary spherical quantization (BSQ; Zhao, Xiong & Krähenbühl, 2024) and its entropy loss.

BSQ projects ``z [..., D]`` to the unit sphere and quantizes it to the nearest corner of the
hypercube ``{±1/√D}^D`` (which lies on the sphere), straight-through on the sphere::

    u = z / ‖z‖,    ẑ = sign(u) / √D   (sign(0) = +1),    z_q = u + sg[ẑ - u]

Indices are LFQ's, ``Σ_d [ẑ_d > 0] 2^d`` (:func:`vqjax.quantizers.lfq_codes_to_indices`).

Entropy loss: as for LFQ (:mod:`vqjax.quantizers._lfq`) with ``q(c|u) = softmax_c(-‖u - c‖²/τ)``
over the ``2^D`` codes. Every code has ``‖c‖ = 1``, so the softmax sees ``2 u·c/τ`` and factorises
into independent bits with ``q_d(+|u_d) = σ(4 u_d / (τ √D))``: the per-sample entropy is exactly
``Σ_d H_b(σ(4 u_d / (τ √D)))`` (derived here as for LFQ). For the codebook entropy BSQ uses the factorised
approximation ``Σ_d H_b(E_n[q_d(+|u_nd)])``, the entropy of the product of the per-bit batch
marginals, an upper bound on the exact ``H(E_n q(·|u_n))`` (equal iff the bits are independent
across the batch); that is our default (``exact=False``), and ``exact=True`` enumerates the codes.
With ``τ = 0.01`` this is vector-quantize-pytorch's ``LFQ(spherical=True)`` except that it
enumerates the codebook (our ``exact=True``). BSQ's sub-group factorisation (codebook entropy over
groups of bits) is not implemented.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vqjax.quantizers._lfq import (
    _check_z,
    _sample_weights,
    _sign_codes,
    bernoulli_entropy_terms,
    lfq_codes_to_indices,
    lfq_indices_to_codes,
)
from vqjax.quantizers._vq import Quantized, l2_normalize

__all__ = ["bsq", "bsq_entropy_loss", "bsq_indices_to_codes"]


def bsq(z: jax.Array) -> Quantized:
    r"""Binary spherical quantization of ``z [..., D]``: ``z_q = u + sg[sign(u)/√D - u]``, ``u = z/‖z‖``.

    Args:
      z: ``[..., D]`` encoder outputs, ``1 ≤ D ≤ 30`` (computed in float32 at least).

    Returns:
      :class:`vqjax.quantizers.Quantized`: ``z_q`` (values ±1/√D; the gradient is that of the
      projection to the sphere), ``codes`` (the same values, no gradient) and int32 ``indices``.
    """
    z = _check_z(z)
    u = l2_normalize(z.astype(jnp.promote_types(z.dtype, jnp.float32)))
    codes = jax.lax.stop_gradient(_sign_codes(u) / math.sqrt(z.shape[-1]))
    return Quantized(u + jax.lax.stop_gradient(codes - u), codes, lfq_codes_to_indices(codes))


def bsq_indices_to_codes(indices: jax.Array, dim: int) -> jax.Array:
    """int ``[...]`` indices -> float32 ``[..., D]`` codes ``±1/√D``."""
    return lfq_indices_to_codes(indices, dim) / math.sqrt(dim)


def bsq_entropy_loss(
    z: jax.Array,
    *,
    temperature: float = 0.01,
    diversity_weight: float = 1.0,
    sample_fraction: float = 1.0,
    exact: bool = False,
    key: jax.Array | None = None,
) -> jax.Array:
    r"""BSQ's entropy loss per vector: ``H(q(·|u_n)) - γ H(E_m q(·|u_m))``, ``u = z/‖z‖``.

    Arguments and reduction as :func:`vqjax.quantizers.lfq_entropy_loss` (mean over every axis gives
    the batch loss), with per-bit logits ``4 u_d / (τ √D)`` and, by default, BSQ's factorised
    codebook entropy ``Σ_d H_b(E_n σ(4 u_nd / (τ √D)))`` (``exact=True``: enumerate the 2^D codes).

    Returns:
      ``[...]`` float32 per-vector losses, in nats.
    """
    z = _check_z(z)
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0; got {temperature!r}.")
    u = l2_normalize(z.astype(jnp.float32))
    weights = _sample_weights(z.shape[:-1], sample_fraction, key)
    logits = 4.0 * u / (temperature * math.sqrt(z.shape[-1]))
    per_sample, codebook = bernoulli_entropy_terms(logits, exact=exact, sample_weights=weights)
    return per_sample - diversity_weight * codebook
