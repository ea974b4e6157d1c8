"""Residual vector quantization: S quantizers, each on what the previous ones left.

Juang & Gray (1982, multistage VQ); in neural codecs Zeghidour et al. (2021, SoundStream) and
Lee et al. (2022, RQ-VAE). With codebooks ``e^(1) … e^(S)`` and ``r_1 = z``::

    k_s = argmin_i ||r_s - e^(s)_i||²      r_{s+1} = r_s - sg[e^(s)_{k_s}]
    z_q = z + sg[Σ_s e^(s)_{k_s} - z]      (straight-through for the sum)

The residuals stop the gradient at the codes, so each stage's codebook loss
``||sg[r_s] - e^(s)_k||²`` moves only that stage's codebook and each commitment loss
``||r_s - sg[e^(s)_k]||²`` moves only the encoder (as in vector-quantize-pytorch's ``ResidualVQ``).

With the rotation trick (Fifty et al., 2024) each stage maps its residual to its code::

    z_q = Σ_s q̃_s,     q̃_s = sg[λ_s R_s] r_s      (forward Σ_s e^(s)_{k_s}; ∂z_q/∂z = Σ_s λ_s R_s)

as vector-quantize-pytorch's ``ResidualVQ`` with ``rotation_trick=True`` (each layer rotates its
residual, and the layers' outputs are summed).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax.quantizers._rotation import _rotation_delta
from vqjax.quantizers._vq import lookup, nearest_code, straight_through

__all__ = ["ResidualQuantized", "residual_lookup", "residual_quantize"]


class ResidualQuantized(NamedTuple):
    """Output of :func:`residual_quantize` for ``z [..., D]`` and S stages."""

    z_q: jax.Array  # [..., D] straight-through sum of the stages' codes
    codes: jax.Array  # [S, ..., D] each stage's code e^(s)_{k_s}; differentiable in its codebook
    indices: jax.Array  # [..., S] int32 code index of each stage
    residuals: jax.Array  # [S, ..., D] r_s, the input of stage s (r_1 = z)


def _check_codebooks(z: jax.Array, codebooks: jax.Array) -> None:
    if codebooks.ndim != 3 or codebooks.shape[0] < 1 or codebooks.shape[1] < 1:
        raise ValueError(f"`codebooks` must be [S, K, D] with S, K >= 1; got shape {codebooks.shape}.")
    if z.ndim < 1 or z.shape[-1] != codebooks.shape[2]:
        raise ValueError(
            f"`z` must be [..., D] with D = codebooks.shape[2] = {codebooks.shape[2]}; got shape {z.shape}."
        )


def residual_quantize(
    z: jax.Array, codebooks: jax.Array, *, rotation_trick: bool = False, block_size: int | None = None
) -> ResidualQuantized:
    r"""Quantize ``z [..., D]`` with ``codebooks [S, K, D]`` stage by stage.

    Feed ``z_q`` to the decoder and, per stage s, ``(residuals[s], codes[s])`` to
    :func:`vqjax.losses.codebook_loss` and :func:`vqjax.losses.commitment_loss`. Each stage
    picks the nearest code to its residual, so ``||r_{s+1}|| ≤ ||r_s||`` whenever the
    codebook holds a code no farther from ``r_s`` than the origin (e.g. a zero code).

    ``rotation_trick=True``: ``z_q`` forwards the same ``Σ_s e^(s)_{k_s}``, but its gradient reaches
    ``z`` through each stage's rotation trick (:func:`vqjax.quantizers.rotation_trick` of ``r_s`` to
    ``e^(s)_{k_s}``), summed over the stages: ``∂z_q/∂z = Σ_s λ_s R_s`` instead of the identity.
    """
    z, codebooks = jnp.asarray(z), jnp.asarray(codebooks)
    _check_codebooks(z, codebooks)

    # Stages unrolled (S is small and static) rather than a lax.scan: a scan's backward pass puts each
    # stage's codebook-gradient all-reduce inside a while loop, which deadlocked XLA:CPU with one
    # device per core (the loop body blocks a shared pool thread the other device needs).
    r, codes, indices, residuals = z, [], [], []
    for e in codebooks:
        k = nearest_code(r, e, block_size=block_size)
        code = lookup(k, e).astype(z.dtype)
        codes.append(code), indices.append(k), residuals.append(r)
        r = r - jax.lax.stop_gradient(code)
    codes, residuals = jnp.stack(codes), jnp.stack(residuals)
    total = jnp.sum(codes, axis=0)
    if rotation_trick:  # forward exactly Σ_s codes; gradient Σ_s λ_s R_s (each delta is 0 in value)
        delta = sum(_rotation_delta(res, code) for res, code in zip(residuals, codes))
        z_q = jax.lax.stop_gradient(total) + delta.astype(total.dtype)
        return ResidualQuantized(z_q, codes, jnp.stack(indices, axis=-1), residuals)
    # straight_through forwards exactly Σ_s codes (z + sg[Σ - z] would round Σ - z: wrong for |z| ≫ |Σ|)
    return ResidualQuantized(straight_through(z, total), codes, jnp.stack(indices, axis=-1), residuals)


def residual_lookup(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
    """``Σ_s e^(s)[indices[..., s]]``: decode stored ``[..., S]`` indices to ``[..., D]``."""
    indices, codebooks = jnp.asarray(indices), jnp.asarray(codebooks)
    if codebooks.ndim != 3:
        raise ValueError(f"`codebooks` must be [S, K, D]; got shape {codebooks.shape}.")
    if indices.ndim < 1 or indices.shape[-1] != codebooks.shape[0]:
        raise ValueError(f"`indices` must be [..., S] with S = {codebooks.shape[0]}; got shape {indices.shape}.")
    per_stage = jax.vmap(lookup, in_axes=(-1, 0), out_axes=0)(indices, codebooks)
    return jnp.sum(per_stage, axis=0)
