"""Model-level objectives: ``(model, batch) -> (scalar loss, metrics)`` for the training loop.

Each objective is the batch mean of a per-example loss from :mod:`vqjax.losses`, plus the
metrics worth logging. Metrics that must be summed over a whole data set (for evaluation)
are returned as per-batch sums under ``"sum/…"`` keys and counts under ``"counts"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqjax import losses, quantizers
from vqjax.nn import VQVAE

__all__ = ["vqvae_objective", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian")


def _log_likelihood(logits: jax.Array, x: jax.Array, likelihood: str, variance: float) -> jax.Array:
    if likelihood == "bernoulli":
        return losses.bernoulli_log_likelihood(logits, x, event_ndim=3)
    if likelihood == "gaussian":
        return losses.gaussian_log_likelihood(logits, x, variance=variance, event_ndim=3)
    raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}.")


def reconstruction_mean(logits: jax.Array, likelihood: str) -> jax.Array:
    """The decoder's mean image: ``sigmoid(logits)`` (Bernoulli) or the Gaussian mean."""
    return jax.nn.sigmoid(logits) if likelihood == "bernoulli" else logits


def vqvae_objective(
    model: VQVAE,
    batch: dict,
    *,
    beta: float = 0.25,
    likelihood: str = "bernoulli",
    variance: float = 0.5,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean VQ-VAE loss ``-log p(x|z_q) + ||sg[z_e] - e||² + β||z_e - sg[e]||²``.

    Args:
      model: a :class:`vqjax.nn.VQVAE`.
      batch: ``{"image": [B, H, W, C] float in [0, 1]}``.
      beta: commitment cost β.
      likelihood: ``"bernoulli"`` (logits) or ``"gaussian"`` (mean, fixed ``variance``).
      weights: optional ``[B]`` 0/1 mask for padded evaluation batches.

    Returns:
      ``(loss, metrics)``: the weighted mean loss and a dict of scalars (``loss``,
      ``reconstruction`` in nats per image, ``codebook``, ``commitment``, ``mse`` per pixel,
      ``perplexity``, ``used_fraction``), plus ``sum/*`` totals, ``weight`` and ``counts [K]``.
    """
    x = batch["image"]
    out = model(x)
    ll = _log_likelihood(out.logits, x, likelihood, variance)
    terms = losses.vqvae_loss(ll, out.z_e, out.codes, beta=beta, event_ndim=3)
    b = x.shape[0]
    w = jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    total_w = jnp.maximum(jnp.sum(w), 1.0)
    mse = jnp.mean(jnp.square(reconstruction_mean(out.logits, likelihood) - x), axis=(1, 2, 3))
    sums = {
        "loss": terms.loss, "reconstruction": terms.reconstruction, "codebook": terms.codebook,
        "commitment": terms.commitment, "mse": mse,
    }
    sums = {k: jnp.sum(v * w) for k, v in sums.items()}
    num_codes = model.codebook.shape[0]
    idx = jnp.where(w[:, None, None] > 0, out.indices, num_codes)  # padded rows: out of range
    usage = quantizers.code_usage(idx, num_codes)
    metrics = {k: v / total_w for k, v in sums.items()}
    metrics.update(perplexity=usage.perplexity, used_fraction=usage.used_fraction)
    metrics.update({f"sum/{k}": v for k, v in sums.items()}, weight=jnp.sum(w), counts=usage.counts)
    return sums["loss"] / total_w, metrics
