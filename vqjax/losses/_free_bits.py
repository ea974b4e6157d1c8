r"""Free bits: a floor λ under each latent group's average KL (Kingma et al., 2016, IAF, appendix C.8).

The KL term of the ELBO, ``Σ_j KL_j`` over latent groups ``j``, is replaced by

.. math::
    \tilde{\mathcal{L}}_{KL} = \sum_j \max\big(λ, \; \mathbb{E}_{x \sim \text{batch}}[KL(q(z_j|x) \,\|\, p(z_j))]\big)

(Kingma et al., 2016, "Improved Variational Inference with Inverse Autoregressive Flow", eq. in app. C.8):
a group whose batch-mean KL is below λ nats costs λ and gets no gradient from the KL term, so the
optimizer may spend up to λ nats of information on it for free. Against posterior collapse with a
strong decoder (an autoregressive PixelCNN) it keeps the encoder from being pushed all the way to the prior.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqjax._checks import check_nonnegative, float_dtype

__all__ = ["free_bits_kl"]


def free_bits_kl(
    kl_per_latent: jax.Array,
    free_bits: float | jax.Array,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    r"""Per-example KL with free bits: ``[B, L] -> [B]`` whose batch mean is ``Σ_j max(λ, mean_B KL_j)``.

    With ``m_j = Σ_i w_i KL_ij / Σ_i w_i`` (the weighted batch mean of latent ``j``'s KL) the result is

    .. math::
        r_i = \sum_j \begin{cases} KL_{ij} & m_j > λ \\ λ & m_j \le λ \end{cases}

    (0 for a row of weight 0), so ``Σ_i w_i r_i / Σ_i w_i = Σ_j max(λ, m_j)`` (Kingma et al., 2016,
    IAF, app. C.8), and the gradient of latent ``j`` is the plain KL's while ``m_j > λ``, zero while
    ``m_j ≤ λ`` (the constant λ carries none). ``λ = 0`` gives ``Σ_j KL_ij``. For groups of latents
    (the paper's ``j``), sum each group's KL first and pass ``[B, G]``.

    The choice of branch depends on the whole batch: a batch-level loss, not a per-example one.

    Args:
      kl_per_latent: ``[B, L]`` ``KL(q(z_j|x_i) || p(z_j))`` per example and latent, e.g.
        ``vqjax.losses.gaussian_kl(μ, log σ², event_ndim=0)``.
      free_bits: λ ≥ 0 in nats per latent (group); a traced array is allowed (a sweep's per-run value).
      weights: optional ``[B]`` example weights (a 0/1 mask of padded rows): rows of weight 0 are left
        out of the batch mean and given 0.

    Returns:
      ``[B]`` the KL term per example, in nats (float32 at least).
    """
    kl = jnp.asarray(kl_per_latent)
    if kl.ndim != 2:
        raise ValueError(f"`kl_per_latent` must be [B, L]; got shape {kl.shape}.")
    check_nonnegative(free_bits, "free_bits")
    if not isinstance(free_bits, jax.core.Tracer) and jnp.ndim(free_bits) != 0:
        raise ValueError(f"`free_bits` must be a scalar; got shape {jnp.shape(free_bits)}.")
    dtype = float_dtype(kl)
    kl = kl.astype(dtype)
    if weights is None:
        w = jnp.ones(kl.shape[:1], dtype)
    else:
        w = jnp.asarray(weights)
        if w.shape != kl.shape[:1]:
            raise ValueError(f"`weights` must be [B] = {kl.shape[:1]} (B from `kl_per_latent`); got shape {w.shape}.")
        w = w.astype(dtype)
    total = jnp.sum(w)
    mean = jnp.sum(kl * w[:, None], axis=0) / jnp.where(total > 0, total, 1.0)  # [L]
    lam = jnp.asarray(free_bits, dtype)
    per_latent = jnp.where(mean > lam, kl, jax.lax.stop_gradient(lam))  # [B, L]
    out = jnp.sum(per_latent, axis=-1)
    return out if weights is None else jnp.where(w > 0, out, 0.0)
