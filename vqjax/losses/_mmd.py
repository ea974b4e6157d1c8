r"""Maximum mean discrepancy and the InfoVAE objective (Zhao, Song & Ermon, 2019).

InfoVAE adds the notes' mutual-information term to the VAE. Its objective (eq. 6 of the paper),
minimised, is::

    L = -E_q[log p(x|z)] + (1 - α) KL(q(z|x) || p(z)) + (α + λ - 1) D(q(z) || p(z))

where ``q(z) = E_x q(z|x)`` is the aggregate posterior, α weights the mutual information
``I_q(x; z)`` and λ the divergence. With ``D = MMD`` (the "MMD-VAE") ``D`` is estimated from a batch
of encoder samples and a batch of prior samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_nonnegative, check_same_shape, float_dtype

__all__ = ["InfoVAELoss", "info_vae_loss", "inverse_multiquadratic_kernel", "mmd", "rbf_kernel"]


def _pairwise_squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    xx = jnp.sum(jnp.square(x), axis=-1)[:, None]
    yy = jnp.sum(jnp.square(y), axis=-1)[None, :]
    return jnp.maximum(xx + yy - 2.0 * (x @ y.T), 0.0)


def _check_pair(x: jax.Array, y: jax.Array) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` and `y` must be [N, L] and [M, L] sample matrices; got x.shape={x.shape}, y.shape={y.shape}."
        )


def rbf_kernel(x: jax.Array, y: jax.Array, *, bandwidth: float | None = None) -> jax.Array:
    r"""Gaussian (RBF) kernel matrix ``k(x, y) = exp(-||x - y||² / (2 h²))``.

    Args:
      x: ``[N, L]``; y: ``[M, L]``.
      bandwidth: h > 0; default ``sqrt(L)``, so that for two ``N(0, I)`` samples
        ``E||x - y||² / (2h²) = 1``.

    Returns:
      ``[N, M]``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y)
    dtype = float_dtype(x, y)
    h2 = float(x.shape[1]) if bandwidth is None else jnp.square(jnp.asarray(bandwidth, dtype))
    return jnp.exp(-_pairwise_squared_distances(x.astype(dtype), y.astype(dtype)) / (2.0 * h2))


def inverse_multiquadratic_kernel(x: jax.Array, y: jax.Array, *, scale: float | None = None) -> jax.Array:
    r"""Inverse multiquadratic kernel ``k(x, y) = C / (C + ||x - y||²)`` (Tolstikhin et al., 2018).

    Its heavy tails keep gradients alive for samples far from the prior, where the RBF vanishes.

    Args:
      x: ``[N, L]``; y: ``[M, L]``.
      scale: C > 0; default ``2L`` (WAE's choice for a ``N(0, I)`` prior on L dimensions).

    Returns:
      ``[N, M]``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y)
    dtype = float_dtype(x, y)
    c = 2.0 * x.shape[1] if scale is None else jnp.asarray(scale, dtype)
    return c / (c + _pairwise_squared_distances(x.astype(dtype), y.astype(dtype)))


_KERNELS = {"rbf": rbf_kernel, "imq": inverse_multiquadratic_kernel}


def mmd(
    x: jax.Array,
    y: jax.Array,
    *,
    kernel: str | Callable[[jax.Array, jax.Array], jax.Array] = "rbf",
    x_weights: jax.Array | None = None,
    **kernel_kwargs,
) -> jax.Array:
    r"""Unbiased estimate of the squared MMD between the distributions of ``x`` and ``y``.

    .. math::
        \widehat{MMD}^2 = \frac{1}{N(N-1)} \sum_{i \ne j} k(x_i, x_j)
            + \frac{1}{M(M-1)} \sum_{i \ne j} k(y_i, y_j)
            - \frac{2}{NM} \sum_{i, j} k(x_i, y_j)

    (Gretton et al., 2012, eq. 3). Its expectation is zero when x and y have the same
    distribution, so single estimates may be slightly negative.

    Args:
      x: ``[N, L]`` samples, e.g. encoder samples ``z ~ q(z|x)`` over a batch (N ≥ 2).
      y: ``[M, L]`` samples, e.g. prior samples ``z ~ p(z)`` (M ≥ 2).
      kernel: ``"rbf"``, ``"imq"``, or a callable ``(x, y) -> [N, M]`` kernel matrix.
      x_weights: optional ``[N]`` 0/1 mask of the rows of ``x`` to use (padded evaluation
        batches): the estimate is then exactly that of the unmasked rows.
      **kernel_kwargs: passed to the kernel (``bandwidth=`` for RBF, ``scale=`` for IMQ).

    Returns:
      ``[]`` the estimate.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    _check_pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"`x` and `y` need at least 2 samples each; got x.shape={x.shape}, y.shape={y.shape}.")
    if isinstance(kernel, str):
        if kernel not in _KERNELS:
            raise ValueError(f"`kernel` must be one of {tuple(_KERNELS)} or a callable; got {kernel!r}.")
        kernel_fn = lambda a, b: _KERNELS[kernel](a, b, **kernel_kwargs)
    else:
        kernel_fn = lambda a, b: kernel(a, b, **kernel_kwargs)
    n, m = x.shape[0], y.shape[0]
    dtype = float_dtype(x, y)
    w = jnp.ones((n,), dtype) if x_weights is None else jnp.asarray(x_weights, dtype)
    if w.shape != (n,):
        raise ValueError(f"`x_weights` must be [N]={n,}; got shape {w.shape}.")
    kxx, kyy, kxy = kernel_fn(x, x), kernel_fn(y, y), kernel_fn(x, y)
    wsum = jnp.sum(w)
    # Σ_{i≠j} w_i w_j k(x_i, x_j) / Σ_{i≠j} w_i w_j, and the same with unit weights for y.
    xx = (w @ kxx @ w - jnp.sum(jnp.square(w) * jnp.diagonal(kxx))) / (wsum**2 - jnp.sum(jnp.square(w)))
    yy = (jnp.sum(kyy) - jnp.sum(jnp.diagonal(kyy))) / (m * (m - 1))
    xy = jnp.sum(w @ kxy) / (wsum * m)
    return xx + yy - 2.0 * xy


class InfoVAELoss(NamedTuple):
    """Per-example terms of the InfoVAE objective; ``loss`` is what is minimised."""

    loss: jax.Array  # distortion + (1 - α)·rate + (α + λ - 1)·divergence
    distortion: jax.Array  # -log p(x|z)
    rate: jax.Array  # KL(q(z|x) || p(z))
    divergence: jax.Array  # D(q(z) || p(z)), one batch-level value broadcast per example


def info_vae_loss(
    log_likelihood: jax.Array,
    kl: jax.Array,
    divergence: jax.Array,
    *,
    alpha: float,
    lambda_: float,
) -> InfoVAELoss:
    r"""InfoVAE loss ``-log p(x|z) + (1-α) KL(q(z|x)||p(z)) + (α+λ-1) D(q(z)||p(z))`` per example.

    ``α = 0, λ = 1`` is the plain VAE; ``α = 1`` drops the per-example KL and keeps only the
    divergence of the aggregate posterior (the MMD-VAE); larger λ matches ``q(z)`` to ``p(z)``
    more tightly. The batch mean of ``loss`` is the paper's objective on that batch.

    Args:
      log_likelihood: ``[B]`` ``log p(x|z)`` at ``z ~ q(z|x)``.
      kl: ``[B]`` ``KL(q(z|x) || p(z))``.
      divergence: ``[]`` a batch estimate of ``D(q(z) || p(z))``, e.g. :func:`mmd` between the
        batch's encoder samples and prior samples.
      alpha: α, the weight of the mutual information (α ≤ 1 keeps the KL weight ≥ 0).
      lambda_: λ > 0, with ``α + λ - 1 ≥ 0`` so the divergence weight is not negative.

    Returns:
      :class:`InfoVAELoss` of ``[B]`` arrays.
    """
    log_likelihood, kl, divergence = jnp.asarray(log_likelihood), jnp.asarray(kl), jnp.asarray(divergence)
    check_same_shape(log_likelihood, kl, "log_likelihood", "kl")
    if divergence.ndim != 0:
        raise ValueError(f"`divergence` must be a scalar batch estimate; got shape {divergence.shape}.")
    if not isinstance(alpha, jax.core.Tracer) and not isinstance(lambda_, jax.core.Tracer):
        if not lambda_ > 0:
            raise ValueError(f"`lambda_` must be > 0; got {lambda_!r}.")
        if not alpha <= 1:
            raise ValueError(f"`alpha` must be <= 1 (else the KL weight 1 - alpha is negative); got {alpha!r}.")
        check_nonnegative(alpha + lambda_ - 1, "alpha + lambda_ - 1")
    dtype = float_dtype(log_likelihood)
    distortion, rate = -log_likelihood.astype(dtype), kl.astype(dtype)
    div = jnp.broadcast_to(divergence.astype(dtype), rate.shape)
    return InfoVAELoss(distortion + (1.0 - alpha) * rate + (alpha + lambda_ - 1.0) * div, distortion, rate, div)
