"""The VQ-VAE objective's codebook and commitment terms (van den Oord et al., 2017, eq. 3).

With ``sg`` the stop-gradient::

    L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||² + β ||z_e(x) - sg[e]||²

The second term (the *codebook* or VQ loss) moves only the codebook ``e``; the third (the
*commitment* loss) moves only the encoder output ``z_e``.

Padding: every term takes an optional ``weights`` (a mask, 0/1, or nonnegative weights) over the
latent positions ``z_e.shape[:-1]`` (broadcastable to it). Each vector's squared distance is
multiplied by its weight before the event axes are summed, so a position with weight 0 contributes
exactly 0 (whatever its values, even inf or NaN) and the per-example outputs keep their shape.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_event_ndim, check_same_shape, check_weights, sum_event

__all__ = ["VQVAELoss", "codebook_loss", "commitment_loss", "vqvae_loss"]


def _weighted_sq(diff: jax.Array, weights, event_ndim: int) -> jax.Array:
    """``Σ_event w · ||diff||²``: the weight of each ``D``-vector multiplies its squared norm."""
    sq = jnp.square(diff)
    if weights is None:
        return sum_event(sq, event_ndim)
    if event_ndim < 1:
        raise ValueError(f"`weights` needs event_ndim >= 1 (it weighs whole D-vectors); got event_ndim={event_ndim}.")
    w = check_weights(weights, diff.shape[:-1], "the leading axes z_e.shape[:-1]")
    per_vector = jnp.sum(sq, axis=-1)
    per_vector = jnp.where(w != 0, w * per_vector, 0.0)  # padded rows: exactly 0, even for inf / NaN
    return sum_event(per_vector, event_ndim - 1)


def codebook_loss(
    z_e: jax.Array, e: jax.Array, *, event_ndim: int = 1, weights: jax.Array | None = None
) -> jax.Array:
    r"""VQ (codebook) loss ``||sg[z_e] - e||²``: moves the chosen codes toward the encoder output.

    Args:
      z_e: ``[..., D]`` encoder outputs.
      e: ``[..., D]`` the codes chosen for them (``codebook[indices]``), same shape.
      event_ndim: trailing axes summed (1: one vector; 3: an ``[H, W, D]`` latent map).
      weights: optional ``z_e.shape[:-1]`` padding mask or nonnegative weights (broadcastable):
        ``Σ_event w_j ||sg[z_e_j] - e_j||²``; weight-0 positions contribute exactly 0.

    Returns:
      ``[...]`` squared distances (the same shape with or without ``weights``); zero gradient
      with respect to ``z_e``.
    """
    check_same_shape(jnp.asarray(z_e), jnp.asarray(e), "z_e", "e")
    check_event_ndim(jnp.asarray(z_e), event_ndim, "z_e")
    diff = jax.lax.stop_gradient(z_e).astype(jnp.float32) - jnp.asarray(e).astype(jnp.float32)
    if weights is not None:
        return _weighted_sq(diff, weights, event_ndim)
    return sum_event(jnp.square(diff), event_ndim)


def commitment_loss(
    z_e: jax.Array,
    e: jax.Array,
    *,
    beta: float = 0.25,
    event_ndim: int = 1,
    weights: jax.Array | None = None,
) -> jax.Array:
    r"""Commitment loss ``β ||z_e - sg[e]||²``: keeps the encoder output near its code.

    Args:
      z_e: ``[..., D]`` encoder outputs.
      e: ``[..., D]`` the codes chosen for them, same shape.
      beta: the commitment cost β (0.25 in the paper).
      event_ndim: trailing axes summed.
      weights: optional ``z_e.shape[:-1]`` padding mask or nonnegative weights (broadcastable):
        ``β Σ_event w_j ||z_e_j - sg[e_j]||²``; weight-0 positions contribute exactly 0.

    Returns:
      ``[...]`` β times squared distances (the same shape with or without ``weights``); zero
      gradient with respect to ``e``.
    """
    check_same_shape(jnp.asarray(z_e), jnp.asarray(e), "z_e", "e")
    check_event_ndim(jnp.asarray(z_e), event_ndim, "z_e")
    diff = jnp.asarray(z_e).astype(jnp.float32) - jax.lax.stop_gradient(e).astype(jnp.float32)
    if weights is not None:
        return beta * _weighted_sq(diff, weights, event_ndim)
    return beta * sum_event(jnp.square(diff), event_ndim)


class VQVAELoss(NamedTuple):
    """Per-example terms of the VQ-VAE objective; ``loss`` is their sum."""

    loss: jax.Array
    reconstruction: jax.Array  # -log p(x | z_q)
    codebook: jax.Array  # ||sg[z_e] - e||²
    commitment: jax.Array  # β ||z_e - sg[e]||²


def vqvae_loss(
    log_likelihood: jax.Array,
    z_e: jax.Array,
    e: jax.Array,
    *,
    beta: float = 0.25,
    event_ndim: int = 1,
    weights: jax.Array | None = None,
) -> VQVAELoss:
    r"""The VQ-VAE objective ``-log p(x|z_q) + ||sg[z_e] - e||² + β ||z_e - sg[e]||²``.

    Args:
      log_likelihood: ``[...]`` per-example ``log p(x | z_q(x))`` from the decoder
        (e.g. :func:`bernoulli_log_likelihood`).
      z_e: ``[..., *event]`` encoder outputs of the same examples.
      e: ``[..., *event]`` their codes (before the straight-through copy).
      beta: commitment cost β.
      event_ndim: trailing axes of ``z_e`` that belong to one example (3 for ``[H, W, D]``).
      weights: optional ``z_e.shape[:-1]`` padding mask of the latent positions, passed to
        :func:`codebook_loss` and :func:`commitment_loss`. The reconstruction term lives in
        data space, not latent space: mask it yourself before passing ``log_likelihood``
        (e.g. sum a per-position log-likelihood times the data mask).

    Returns:
      :class:`VQVAELoss` of ``[...]`` arrays.
    """
    log_likelihood = jnp.asarray(log_likelihood)
    z_e = jnp.asarray(z_e)
    if z_e.ndim - event_ndim != log_likelihood.ndim or (
        z_e.shape[: z_e.ndim - event_ndim] != log_likelihood.shape
    ):
        raise ValueError(
            "`log_likelihood` must have the batch shape of `z_e` without its last "
            f"event_ndim={event_ndim} axes; got log_likelihood.shape={log_likelihood.shape}, "
            f"z_e.shape={z_e.shape}."
        )
    rec = -log_likelihood.astype(jnp.float32)
    cb = codebook_loss(z_e, e, event_ndim=event_ndim, weights=weights)
    cm = commitment_loss(z_e, e, beta=beta, event_ndim=event_ndim, weights=weights)
    return VQVAELoss(rec + cb + cm, rec, cb, cm)
