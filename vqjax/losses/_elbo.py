r"""The evidence lower bound, its β-weighted form, and the importance-weighted bound.

With the encoder ``q(z|x)``, decoder ``p(x|z)`` and prior ``p(z)`` (Kingma & Welling, 2014)::

    log p(x) ≥ ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))
                       = -distortion     - rate

β-VAE (Higgins et al., 2017) weights the rate: ``loss = distortion + β · rate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_nonnegative, check_positive_int, check_same_shape, float_dtype

__all__ = ["BetaVAELoss", "beta_vae_loss", "elbo", "iwae_bound", "iwae_log_likelihood"]


def elbo(log_likelihood: jax.Array, kl: jax.Array) -> jax.Array:
    r"""``ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))`` per example, a lower bound on ``log p(x)``.

    Args:
      log_likelihood: ``[...]`` ``log p(x|z)`` at a sample ``z ~ q(z|x)`` (a one-sample estimate
        of the expectation), e.g. :func:`bernoulli_log_likelihood`.
      kl: ``[...]`` the rate, e.g. :func:`gaussian_kl` or :func:`monte_carlo_kl`.

    Returns:
      ``[...]`` the ELBO in nats; ``-elbo`` is the VAE loss.
    """
    log_likelihood, kl = jnp.asarray(log_likelihood), jnp.asarray(kl)
    check_same_shape(log_likelihood, kl, "log_likelihood", "kl")
    dtype = float_dtype(log_likelihood)
    return log_likelihood.astype(dtype) - kl.astype(dtype)


class BetaVAELoss(NamedTuple):
    """Per-example terms of the β-VAE objective; ``loss`` is what is minimised."""

    loss: jax.Array  # distortion + β·rate, or distortion + β·|rate - C|
    distortion: jax.Array  # -log p(x|z)
    rate: jax.Array  # KL(q(z|x) || p(z))


def beta_vae_loss(
    log_likelihood: jax.Array,
    kl: jax.Array,
    *,
    beta: float = 1.0,
    capacity: float | jax.Array | None = None,
) -> BetaVAELoss:
    r"""β-VAE loss ``-log p(x|z) + β KL`` (Higgins 2017), or ``-log p(x|z) + β |KL - C|`` (Burgess 2018).

    ``β = 1`` is the negative ELBO. ``β > 1`` presses the rate down (more disentangled,
    blurrier); ``β < 1`` lets it rise. With ``capacity`` C (Burgess et al., 2018, "Understanding
    disentangling in β-VAE", eq. 8, where the weight is called γ) the KL is pulled toward C
    instead; anneal C from 0 upward during training, e.g. with ``optax.linear_schedule``.

    Args:
      log_likelihood: ``[...]`` ``log p(x|z)`` at ``z ~ q(z|x)``.
      kl: ``[...]`` ``KL(q(z|x) || p(z))``.
      beta: weight β ≥ 0 of the rate term (γ in Burgess et al.).
      capacity: target rate C ≥ 0 in nats, or None for the plain β-VAE.

    Returns:
      :class:`BetaVAELoss` of ``[...]`` arrays.
    """
    log_likelihood, kl = jnp.asarray(log_likelihood), jnp.asarray(kl)
    check_same_shape(log_likelihood, kl, "log_likelihood", "kl")
    check_nonnegative(beta, "beta")
    dtype = float_dtype(log_likelihood)
    distortion, rate = -log_likelihood.astype(dtype), kl.astype(dtype)
    if capacity is None:
        penalty = rate
    else:
        check_nonnegative(capacity, "capacity")
        penalty = jnp.abs(rate - jnp.asarray(capacity, dtype))
    return BetaVAELoss(distortion + beta * penalty, distortion, rate)


def iwae_bound(log_weights: jax.Array, *, axis: int = 0) -> jax.Array:
    r"""Importance-weighted bound ``L_S = log (1/S) Σ_s w_s`` (Burda et al., 2016), via logsumexp.

    With ``log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x)``, ``z_s ~ q(z|x)``:
    ``E[L_1] = ELBO ≤ E[L_S] ≤ E[L_{S+1}] ≤ log p(x)``, and ``L_S → log p(x)`` as S grows.

    Args:
      log_weights: ``[S, ...]`` log importance weights (sample axis where ``axis`` says).
      axis: the sample axis.

    Returns:
      ``[...]`` the bound per example, in nats.
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim == 0 or not -log_weights.ndim <= axis < log_weights.ndim:
        raise ValueError(f"`axis` must index a sample axis of log_weights.shape={log_weights.shape}; got {axis}.")
    s = log_weights.shape[axis]
    log_weights = log_weights.astype(float_dtype(log_weights))
    return jax.nn.logsumexp(log_weights, axis=axis) - math.log(s)


def iwae_log_likelihood(
    log_weight_fn: Callable[[jax.Array, int], jax.Array],
    *,
    key: jax.Array,
    num_samples: int,
    chunk_size: int = 100,
) -> jax.Array:
    r"""The IWAE estimate of ``log p(x)`` with ``S = num_samples`` samples, ``chunk_size`` at a time.

    ``log_weight_fn(key, n)`` draws ``n`` samples ``z ~ q(z|x)`` and returns their ``[n, ...]``
    log weights ``log p(x|z) + log p(z) - log q(z|x)``. The samples are taken in ``⌈S / chunk⌉``
    chunks inside a ``lax.scan`` that carries a running logsumexp, so memory is that of one chunk:
    ``S = 5000`` for a whole test batch fits where ``[5000, B, 784]`` logits would not. Extra samples
    of the last chunk are masked out, so the result is exactly :func:`iwae_bound` of S samples.

    Args:
      log_weight_fn: ``(key, n) -> [n, ...]`` log weights; traced once.
      key: a ``jax.random.key``; chunk ``c`` uses ``jax.random.fold_in(key, c)``.
      num_samples: S ≥ 1.
      chunk_size: samples per chunk ≥ 1 (clipped to S).

    Returns:
      ``[...]`` ``log (1/S) Σ_s w_s`` per example.
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(chunk_size, "chunk_size")
    if key is None:
        raise ValueError("`key` must be a jax.random.key; got None.")
    chunk = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk)
    shape = jax.eval_shape(lambda k: log_weight_fn(k, chunk), key)
    if not shape.shape or shape.shape[0] != chunk:
        raise ValueError(
            f"`log_weight_fn(key, n)` must return [n, ...] log weights; got shape {shape.shape} for n={chunk}."
        )
    dtype = float_dtype(jnp.zeros((), shape.dtype))

    def body(acc, c):
        log_w = log_weight_fn(jax.random.fold_in(key, c), chunk).astype(dtype)
        valid = (c * chunk + jnp.arange(chunk)) < num_samples
        log_w = jnp.where(valid.reshape((chunk,) + (1,) * (log_w.ndim - 1)), log_w, -jnp.inf)
        return jnp.logaddexp(acc, jax.nn.logsumexp(log_w, axis=0)), None

    init = jnp.full(shape.shape[1:], -jnp.inf, dtype)
    total, _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
    return total - math.log(num_samples)
