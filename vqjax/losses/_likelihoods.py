r"""Decoder log-likelihoods ``log p(x | z)`` per example, and bits per dimension.

Each returns ``[...]``: the log-likelihood summed over the ``event_ndim`` trailing axes that
form one example (default: all axes, a scalar). All in nats.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vqjax._checks import (
    check_class_targets,
    check_event_ndim,
    check_positive_int,
    check_same_shape,
    float_dtype,
    sum_event,
)

__all__ = [
    "bernoulli_log_likelihood",
    "bits_per_dim",
    "categorical_log_likelihood",
    "discretized_logistic_log_likelihood",
    "gaussian_log_likelihood",
]


def bernoulli_log_likelihood(
    logits: jax.Array, targets: jax.Array, *, event_ndim: int | None = None
) -> jax.Array:
    r"""Bernoulli log-likelihood ``log p(x | z)`` of targets in [0, 1] under logits.

    .. math::
        \log p(x) = \sum_i x_i \log \sigma(l_i) + (1 - x_i) \log(1 - \sigma(l_i))
                  = \sum_i x_i l_i - \operatorname{softplus}(l_i)

    computed in the stable form above. Targets may be binary (binarized MNIST: an honest
    likelihood) or grey levels in [0, 1] (then it is the cross-entropy usual for MNIST, not a
    normalised density: the "continuous Bernoulli" constant is not added).

    Args:
      logits: ``[..., *event]`` decoder logits.
      targets: ``[..., *event]`` targets in [0, 1], same shape as ``logits``.
      event_ndim: how many trailing axes form one example; default all of them (a scalar).

    Returns:
      ``[...]`` log-likelihood per example (float32 at least).
    """
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    check_same_shape(logits, targets, "logits", "targets")
    event_ndim = logits.ndim if event_ndim is None else event_ndim
    check_event_ndim(logits, event_ndim, "logits")
    dtype = float_dtype(logits)
    logits, targets = logits.astype(dtype), targets.astype(dtype)
    return sum_event(targets * logits - jax.nn.softplus(logits), event_ndim)


def gaussian_log_likelihood(
    mean: jax.Array,
    targets: jax.Array,
    *,
    variance: float = 1.0,
    log_variance: jax.Array | None = None,
    event_ndim: int | None = None,
) -> jax.Array:
    r"""Diagonal-Gaussian log-density, with fixed variance or a learned (per-element) one.

    .. math::
        \log \mathcal{N}(x; \mu, \operatorname{diag}\sigma^2) =
            -\frac{1}{2} \sum_i \Big[\frac{(x_i - \mu_i)^2}{\sigma_i^2} + \log \sigma_i^2
            + \log 2\pi\Big]

    With a fixed ``σ² = 1/2`` its negative is the squared error ``||x - D(z)||²`` of the notes
    plus a constant. With ``log_variance`` it is also the log-density ``log q(z|x)`` of an
    encoder sample (``event_ndim=1``), or ``log p(z)`` under the standard normal prior
    (``mean=0``, ``variance=1``).

    Args:
      mean: ``[..., *event]`` the mean μ (decoder output).
      targets: ``[..., *event]`` the data x, same shape as ``mean``.
      variance: fixed σ² > 0, used when ``log_variance`` is None (keyword-only).
      log_variance: learned ``log σ²``, broadcastable to ``mean`` (e.g. ``[..., *event]`` from the
        decoder, or one per pixel); overrides ``variance``.
      event_ndim: trailing axes forming one example; default all.

    Returns:
      ``[...]`` log-likelihood per example.
    """
    mean, targets = jnp.asarray(mean), jnp.asarray(targets)
    check_same_shape(mean, targets, "mean", "targets")
    event_ndim = mean.ndim if event_ndim is None else event_ndim
    check_event_ndim(mean, event_ndim, "mean")
    dtype = float_dtype(mean)
    sq = jnp.square(targets.astype(dtype) - mean.astype(dtype))
    if log_variance is None:
        if not isinstance(variance, jax.Array) and not variance > 0:
            raise ValueError(f"`variance` must be > 0; got {variance!r}.")
        n = math.prod(mean.shape[mean.ndim - event_ndim :])
        var = jnp.asarray(variance, dtype)
        return -0.5 * sum_event(sq, event_ndim) / var - 0.5 * n * jnp.log(2 * jnp.pi * var)
    log_variance = jnp.asarray(log_variance).astype(dtype)
    try:
        log_variance = jnp.broadcast_to(log_variance, mean.shape)
    except ValueError:
        raise ValueError(
            f"`log_variance` must broadcast to mean.shape={mean.shape}; got {log_variance.shape}."
        ) from None
    terms = sq * jnp.exp(-log_variance) + log_variance + math.log(2 * math.pi)
    return -0.5 * sum_event(terms, event_ndim)


def _log_sigmoid_difference(a: jax.Array, b: jax.Array, width: jax.Array) -> jax.Array:
    """``log(σ(a) - σ(b))`` for ``a > b`` with ``width = a - b``, stable for any a, b and width.

    Uses the exact identity ``σ(a) - σ(b) = σ(a) σ(-b) (1 - e^{-(a - b)})``: both ``log σ`` terms
    are accurate at any argument, and ``log(1 - e^{-w})`` is taken on the given ``width`` (not on a
    difference of rounded logs), so a bin that is tiny next to the scale keeps its precision.
    """
    small = width < math.log(2.0)
    # Each branch sees only its own range (double where), so neither yields inf/NaN gradients.
    w_small, w_large = jnp.where(small, width, 1.0), jnp.where(small, 1.0, width)
    log1mexp = jnp.where(small, jnp.log(-jnp.expm1(-w_small)), jnp.log1p(-jnp.exp(-w_large)))
    return jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + log1mexp


def discretized_logistic_log_likelihood(
    mean: jax.Array,
    log_scale: jax.Array,
    targets: jax.Array,
    *,
    num_bins: int = 256,
    event_ndim: int | None = None,
) -> jax.Array:
    r"""Log-probability of discrete pixel values under a discretized logistic (Salimans 2017).

    Targets are the ``num_bins`` levels ``k / (num_bins - 1)`` in [0, 1] (8-bit images divided by
    255). Each level owns the bin ``[c - δ, c + δ]`` with ``δ = 1 / (2 (num_bins - 1))``; the
    first and last bins extend to ∓∞, so the probabilities of the levels sum to one:

    .. math::
        P(x = c) = F\Big(\frac{c + δ - μ}{s}\Big) - F\Big(\frac{c - δ - μ}{s}\Big),
        \qquad F = \operatorname{sigmoid}

    A true probability mass, so ``-log P / (n log 2)`` is bits per dimension (:func:`bits_per_dim`).

    Args:
      mean: ``[..., *event]`` location μ (on the [0, 1] scale of the targets).
      log_scale: ``[..., *event]`` ``log s``, broadcastable to ``mean``.
      targets: ``[..., *event]`` pixel values ``k / (num_bins - 1)``; other values are rounded
        to the nearest level.
      num_bins: number of levels (256 for 8-bit data).
      event_ndim: trailing axes forming one example; default all.

    Returns:
      ``[...]`` log-probability per example, in nats.
    """
    mean, targets = jnp.asarray(mean), jnp.asarray(targets)
    check_same_shape(mean, targets, "mean", "targets")
    check_positive_int(num_bins, "num_bins", minimum=2)
    event_ndim = mean.ndim if event_ndim is None else event_ndim
    check_event_ndim(mean, event_ndim, "mean")
    dtype = float_dtype(mean)
    log_scale = jnp.asarray(log_scale).astype(dtype)
    try:
        log_scale = jnp.broadcast_to(log_scale, mean.shape)
    except ValueError:
        raise ValueError(f"`log_scale` must broadcast to mean.shape={mean.shape}; got {log_scale.shape}.") from None
    levels = num_bins - 1
    k = jnp.clip(jnp.round(targets.astype(dtype) * levels), 0, levels)
    mean = mean.astype(dtype)
    inv_s = jnp.exp(-log_scale)
    half = 0.5 / levels
    # The edge between levels k and k+1 is (2k + 1)·δ, computed by the same float operations as the
    # lower edge of level k+1, so adjacent bins share it bit for bit and the masses telescope to 1.
    upper = ((2.0 * k + 1.0) * half - mean) * inv_s
    lower = ((2.0 * k - 1.0) * half - mean) * inv_s
    interior = _log_sigmoid_difference(upper, lower, 2.0 * half * inv_s)
    last = jnp.where(k == levels, jax.nn.log_sigmoid(-lower), interior)
    log_p = jnp.where(k == 0, jax.nn.log_sigmoid(upper), last)
    return sum_event(log_p, event_ndim)


def categorical_log_likelihood(
    logits: jax.Array, targets: jax.Array, *, event_ndim: int | None = None
) -> jax.Array:
    r"""Per-pixel categorical log-likelihood ``Σ_i log softmax(l_i)[x_i]`` (e.g. 256-way, PixelCNN).

    Args:
      logits: ``[..., *event, num_classes]`` unnormalised log-probabilities.
      targets: ``[..., *event]`` integer classes in ``[0, num_classes)``.
      event_ndim: trailing axes of ``targets`` forming one example; default all.

    Returns:
      ``[...]`` log-likelihood per example, in nats.
    """
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    check_class_targets(logits, targets, "targets")
    event_ndim = targets.ndim if event_ndim is None else event_ndim
    check_event_ndim(targets, event_ndim, "targets")
    log_p = jax.nn.log_softmax(logits.astype(float_dtype(logits)), axis=-1)
    picked = jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return sum_event(picked, event_ndim)


def bits_per_dim(nll: jax.Array, num_dims: int) -> jax.Array:
    r"""Negative log-likelihood in nats per example -> bits per dimension, ``nll / (n \ln 2)``."""
    check_positive_int(num_dims, "num_dims")
    return jnp.asarray(nll) / (num_dims * math.log(2.0))
