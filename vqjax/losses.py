"""Pure losses: reconstruction log-likelihoods and the VQ-VAE objective.

Every function is per-example: it takes one example's arrays (any shape) and returns a
scalar, or takes arrays with leading batch axes and reduces only the event axes named in its
docstring. Callers reduce over the batch (``jnp.mean``) or ``jax.vmap`` as they like.

The VQ-VAE objective (van den Oord et al., 2017, eq. 3), with ``sg`` the stop-gradient::

    L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||² + β ||z_e(x) - sg[e]||²

The second term (the *codebook* or VQ loss) moves only the codebook ``e``; the third (the
*commitment* loss) moves only the encoder output ``z_e``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "codebook_loss",
    "commitment_loss",
    "VQVAELoss",
    "vqvae_loss",
]


def _check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape; got {name_a}.shape={a.shape} "
            f"and {name_b}.shape={b.shape}."
        )


def _check_event_ndim(x: jax.Array, event_ndim: int, name: str) -> None:
    if not isinstance(event_ndim, int) or event_ndim < 0 or event_ndim > x.ndim:
        raise ValueError(
            f"`event_ndim` must be an int in [0, {name}.ndim={x.ndim}]; got {event_ndim!r}."
        )


def _sum_event(x: jax.Array, event_ndim: int) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(x.ndim - event_ndim, x.ndim)))


def bernoulli_log_likelihood(
    logits: jax.Array, targets: jax.Array, *, event_ndim: int | None = None
) -> jax.Array:
    r"""Bernoulli log-likelihood ``log p(x | z)`` of targets in [0, 1] under logits.

    .. math::
        \log p(x) = \sum_i x_i \log \sigma(l_i) + (1 - x_i) \log(1 - \sigma(l_i))
                  = \sum_i x_i l_i - \operatorname{softplus}(l_i)

    computed in the stable form above. Targets may be binary or grey levels in [0, 1]
    (the "continuous Bernoulli" is *not* normalised here: for grey levels this is the
    cross-entropy usual for MNIST).

    Args:
      logits: ``[..., *event]`` decoder logits.
      targets: ``[..., *event]`` targets in [0, 1], same shape as ``logits``.
      event_ndim: how many trailing axes form one example; default all of them (a scalar).

    Returns:
      ``[...]`` log-likelihood per example (float32 at least).
    """
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    _check_same_shape(logits, targets, "logits", "targets")
    event_ndim = logits.ndim if event_ndim is None else event_ndim
    _check_event_ndim(logits, event_ndim, "logits")
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits, targets = logits.astype(dtype), targets.astype(dtype)
    ll = targets * logits - jax.nn.softplus(logits)
    return _sum_event(ll, event_ndim)


def gaussian_log_likelihood(
    mean: jax.Array,
    targets: jax.Array,
    *,
    variance: float = 1.0,
    event_ndim: int | None = None,
) -> jax.Array:
    r"""Gaussian log-likelihood with fixed variance ``σ²``.

    .. math::
        \log \mathcal{N}(x; \mu, \sigma^2 I) =
            -\frac{1}{2\sigma^2}\|x - \mu\|^2 - \frac{n}{2}\log(2\pi\sigma^2)

    With ``σ² = 1/2`` its negative is the squared error ``||x - D(z)||²`` of the notes plus a
    constant.

    Args:
      mean: ``[..., *event]`` decoder output μ.
      targets: ``[..., *event]`` data x, same shape as ``mean``.
      variance: σ² > 0 (keyword-only).
      event_ndim: trailing axes forming one example; default all.

    Returns:
      ``[...]`` log-likelihood per example.
    """
    mean, targets = jnp.asarray(mean), jnp.asarray(targets)
    _check_same_shape(mean, targets, "mean", "targets")
    if not isinstance(variance, jax.Array) and not variance > 0:
        raise ValueError(f"`variance` must be > 0; got {variance!r}.")
    event_ndim = mean.ndim if event_ndim is None else event_ndim
    _check_event_ndim(mean, event_ndim, "mean")
    dtype = jnp.promote_types(mean.dtype, jnp.float32)
    sq = _sum_event(jnp.square(targets.astype(dtype) - mean.astype(dtype)), event_ndim)
    n = math.prod(mean.shape[mean.ndim - event_ndim :])
    return -0.5 * sq / variance - 0.5 * n * jnp.log(2 * jnp.pi * jnp.asarray(variance, dtype))


def codebook_loss(z_e: jax.Array, e: jax.Array, *, event_ndim: int = 1) -> jax.Array:
    r"""VQ (codebook) loss ``||sg[z_e] - e||²``: moves the chosen codes toward the encoder output.

    Args:
      z_e: ``[..., D]`` encoder outputs.
      e: ``[..., D]`` the codes chosen for them (``codebook[indices]``), same shape.
      event_ndim: trailing axes summed (1: one vector; 3: an ``[H, W, D]`` latent map).

    Returns:
      ``[...]`` squared distances; zero gradient with respect to ``z_e``.
    """
    _check_same_shape(jnp.asarray(z_e), jnp.asarray(e), "z_e", "e")
    _check_event_ndim(jnp.asarray(z_e), event_ndim, "z_e")
    diff = jax.lax.stop_gradient(z_e).astype(jnp.float32) - jnp.asarray(e).astype(jnp.float32)
    return _sum_event(jnp.square(diff), event_ndim)


def commitment_loss(
    z_e: jax.Array, e: jax.Array, *, beta: float = 0.25, event_ndim: int = 1
) -> jax.Array:
    r"""Commitment loss ``β ||z_e - sg[e]||²``: keeps the encoder output near its code.

    Args:
      z_e: ``[..., D]`` encoder outputs.
      e: ``[..., D]`` the codes chosen for them, same shape.
      beta: the commitment cost β (0.25 in the paper).
      event_ndim: trailing axes summed.

    Returns:
      ``[...]`` β times squared distances; zero gradient with respect to ``e``.
    """
    _check_same_shape(jnp.asarray(z_e), jnp.asarray(e), "z_e", "e")
    _check_event_ndim(jnp.asarray(z_e), event_ndim, "z_e")
    diff = jnp.asarray(z_e).astype(jnp.float32) - jax.lax.stop_gradient(e).astype(jnp.float32)
    return beta * _sum_event(jnp.square(diff), event_ndim)


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
) -> VQVAELoss:
    r"""The VQ-VAE objective ``-log p(x|z_q) + ||sg[z_e] - e||² + β ||z_e - sg[e]||²``.

    Args:
      log_likelihood: ``[...]`` per-example ``log p(x | z_q(x))`` from the decoder
        (e.g. :func:`bernoulli_log_likelihood`).
      z_e: ``[..., *event]`` encoder outputs of the same examples.
      e: ``[..., *event]`` their codes (before the straight-through copy).
      beta: commitment cost β.
      event_ndim: trailing axes of ``z_e`` that belong to one example (3 for ``[H, W, D]``).

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
    cb = codebook_loss(z_e, e, event_ndim=event_ndim)
    cm = commitment_loss(z_e, e, beta=beta, event_ndim=event_ndim)
    return VQVAELoss(rec + cb + cm, rec, cb, cm)
