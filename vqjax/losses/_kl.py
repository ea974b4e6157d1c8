r"""The Gaussian encoder: reparameterized samples and the KL term of the ELBO (Kingma & Welling, 2014).

The encoder outputs ``q(z|x) = N(μ, diag σ²)`` as ``(mean, log_variance)``, each ``[..., L]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqjax._checks import (
    check_event_ndim,
    check_positive_int,
    check_same_shape,
    float_dtype,
    sum_event,
)

__all__ = ["gaussian_kl", "monte_carlo_kl", "reparameterize"]


def reparameterize(
    mean: jax.Array, log_variance: jax.Array, *, key: jax.Array, num_samples: int | None = None
) -> jax.Array:
    r"""Samples ``z = μ + σ ⊙ ε``, ``ε ~ N(0, I)``: differentiable in μ and ``log σ²``.

    Args:
      mean: ``[..., L]`` μ.
      log_variance: ``[..., L]`` ``log σ²``, same shape.
      key: a ``jax.random.key``.
      num_samples: ``S``; None draws one sample without a sample axis.

    Returns:
      ``[..., L]``, or ``[S, ..., L]`` with ``num_samples``.
    """
    mean, log_variance = jnp.asarray(mean), jnp.asarray(log_variance)
    check_same_shape(mean, log_variance, "mean", "log_variance")
    if key is None:
        raise ValueError("`key` must be a jax.random.key; got None.")
    shape = mean.shape
    if num_samples is not None:
        check_positive_int(num_samples, "num_samples")
        shape = (num_samples, *shape)
    dtype = float_dtype(mean)
    eps = jax.random.normal(key, shape, dtype)
    return mean.astype(dtype) + jnp.exp(0.5 * log_variance.astype(dtype)) * eps


def gaussian_kl(
    mean: jax.Array,
    log_variance: jax.Array,
    prior_mean: jax.Array | None = None,
    prior_log_variance: jax.Array | None = None,
    *,
    event_ndim: int = 1,
) -> jax.Array:
    r"""Analytic ``KL(N(μ, diag σ²) || N(μ_p, diag σ_p²))``; the prior defaults to ``N(0, I)``.

    .. math::
        D_{KL} = \frac12 \sum_j \Big[\log\frac{σ_{p,j}^2}{σ_j^2}
                 + \frac{σ_j^2 + (μ_j - μ_{p,j})^2}{σ_{p,j}^2} - 1\Big]
        \;\overset{p = N(0, I)}{=}\; \frac12 \sum_j \big[μ_j^2 + σ_j^2 - 1 - \log σ_j^2\big]

    This is the *rate* of the ELBO (Kingma & Welling 2014, appendix B). Computed as
    ``½ Σ [expm1(d) - d + (μ - μ_p)² / σ_p²]`` with ``d = log σ² - log σ_p²``: each term is ≥ 0 in
    floating point too, accurate near ``q = p`` (where ``σ²/σ_p² - 1 - log(σ²/σ_p²)`` cancels), and
    finite when both variances overflow (``σ² = σ_p² = e^100``).

    Args:
      mean: ``[..., L]`` μ of q(z|x).
      log_variance: ``[..., L]`` ``log σ²``, same shape.
      prior_mean: optional μ_p, broadcastable to ``mean``.
      prior_log_variance: optional ``log σ_p²``, broadcastable to ``mean``.
      event_ndim: trailing axes summed (1 for a latent vector).

    Returns:
      ``[...]`` KL in nats per example, ≥ 0.
    """
    mean, log_variance = jnp.asarray(mean), jnp.asarray(log_variance)
    check_same_shape(mean, log_variance, "mean", "log_variance")
    check_event_ndim(mean, event_ndim, "mean")
    dtype = float_dtype(mean)
    mu, lv = mean.astype(dtype), log_variance.astype(dtype)
    if prior_mean is None and prior_log_variance is None:
        kl = 0.5 * (jnp.square(mu) + (jnp.expm1(lv) - lv))
    else:
        for name, p in (("prior_mean", prior_mean), ("prior_log_variance", prior_log_variance)):
            if p is not None:
                try:
                    ok = jnp.broadcast_shapes(jnp.shape(p), mean.shape) == mean.shape
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(
                        f"`{name}` must broadcast to mean.shape={mean.shape}; got {jnp.shape(p)}."
                    )
        pm = jnp.zeros((), dtype) if prior_mean is None else jnp.asarray(prior_mean, dtype)
        plv = jnp.zeros((), dtype) if prior_log_variance is None else jnp.asarray(prior_log_variance, dtype)
        d = lv - plv
        kl = 0.5 * ((jnp.expm1(d) - d) + jnp.square(mu - pm) * jnp.exp(-plv))
    return sum_event(kl, event_ndim)


def monte_carlo_kl(log_q: jax.Array, log_p: jax.Array, *, axis: int = 0) -> jax.Array:
    r"""Monte Carlo ``KL(q || p) ≈ (1/S) Σ_s [log q(z_s) - log p(z_s)]``, ``z_s ~ q``.

    For any encoder/prior pair whose log-densities can be evaluated at samples (a mixture prior,
    a flow, a learned prior): compute ``log q(z_s|x)`` and ``log p(z_s)`` at reparameterized
    samples (e.g. with :func:`gaussian_log_likelihood`) and pass them here. Unbiased, and
    differentiable through the samples.

    Args:
      log_q: ``[S, ...]`` ``log q(z_s | x)`` (the sample axis where ``axis`` says).
      log_p: ``[S, ...]`` ``log p(z_s)``, same shape.
      axis: the sample axis.

    Returns:
      ``[...]`` the estimate per example.
    """
    log_q, log_p = jnp.asarray(log_q), jnp.asarray(log_p)
    check_same_shape(log_q, log_p, "log_q", "log_p")
    if not -log_q.ndim <= axis < max(log_q.ndim, 1) or log_q.ndim == 0:
        raise ValueError(f"`axis` must index a sample axis of log_q.shape={log_q.shape}; got {axis}.")
    dtype = float_dtype(log_q)
    return jnp.mean(log_q.astype(dtype) - log_p.astype(dtype), axis=axis)
