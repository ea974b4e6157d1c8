"""The Fréchet distance between Gaussians fitted to features (Heusel et al., 2017, FID; Dowson &
Landau, 1982).

``d² = ||μ₁ - μ₂||² + Tr(Σ₁ + Σ₂ - 2 (Σ₁^½ Σ₂ Σ₁^½)^½)``, with the trace of the matrix square root
computed from the eigenvalues of the symmetric ``Σ₁^½ Σ₂ Σ₁^½`` (which has the same trace as
``(Σ₁ Σ₂)^½``), so no non-symmetric square root and no complex round-off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["frechet_distance", "gaussian_statistics"]


def gaussian_statistics(features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``features [N, F] -> (μ [F], Σ [F, F])``: the mean and the unbiased covariance, in float64
    if x64 is on, else float32."""
    features = jnp.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"`features` must be [N, F] with N >= 2; got shape {features.shape}.")
    f = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    mu = jnp.mean(f, axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(sigma: jax.Array) -> jax.Array:
    w, v = jnp.linalg.eigh(sigma)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


def frechet_distance(mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array, sigma2: jax.Array) -> jax.Array:
    r"""Squared Fréchet (2-Wasserstein) distance between ``N(μ₁, Σ₁)`` and ``N(μ₂, Σ₂)``.

    Args:
      mu1, mu2: ``[F]`` means.
      sigma1, sigma2: ``[F, F]`` symmetric positive semi-definite covariances.

    Returns:
      ``[]``: ``||μ₁ - μ₂||² + Tr Σ₁ + Tr Σ₂ - 2 Tr (Σ₁^½ Σ₂ Σ₁^½)^½`` (what FID reports).
    """
    mu1, mu2, sigma1, sigma2 = map(jnp.asarray, (mu1, mu2, sigma1, sigma2))
    f = mu1.shape[-1] if mu1.ndim == 1 else None
    if f is None or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(f"Expected mu1, mu2 [F] and sigma1, sigma2 [F, F]; got {mu1.shape}, {mu2.shape}, "
                         f"{sigma1.shape}, {sigma2.shape}.")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    cross = jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh((middle + middle.T) / 2), 0.0)))
    return jnp.sum(jnp.square(mu1 - mu2)) + jnp.trace(sigma1) + jnp.trace(sigma2) - 2.0 * cross
