r"""Codebook regularisers: orthogonality of the codes and entropy (diversity) of their usage.

Both are *batch-level* (codebook-level) quantities, like :func:`vqjax.losses.mmd`: they return a
scalar for the whole codebook or batch, not per-example values.

- Orthogonality (Shin et al., 2023, "Exploration into translation-equivariant image quantization",
  eq. 2)::

      L_orth = ||Ê Êᵀ - I_K||²_F / K²,    Ê = l2-normalised rows of E [K, D]

  Zero iff the nonzero codes are pairwise orthogonal (possible only for K <= D).
- Usage entropy of the batch-mean soft assignment ``p̄ = mean_n p_n`` (``p_n [K]``, e.g.
  :func:`vqjax.quantizers.sample_code`'s ``probs``)::

      codebook_entropy_loss   = -H(p̄) = Σ_k p̄_k log p̄_k                 in [-log K, 0]
      codebook_diversity_loss = (K - exp H(p̄)) / K                       in [0, 1 - 1/K]

  the second being wav2vec 2.0's diversity loss ``(GV - Σ_g exp H(p̄_g)) / (GV)`` (Baevski et al.,
  2020) with ``G = 1`` group of ``V = K`` entries (for G groups, pass ``probs [..., G, V]`` with
  ``groups=True``). Both are minimal for uniform usage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["codebook_diversity_loss", "codebook_entropy_loss", "codebook_orthogonality_loss"]


def codebook_orthogonality_loss(codebook: jax.Array, *, eps: float = 1e-12) -> jax.Array:
    r"""``||Ê Êᵀ - I||²_F / K²`` over the l2-normalised codes ``Ê`` (Shin et al., 2023, eq. 2).

    Computed in float32. A zero code normalises to zero (no NaN) and so contributes ``1/K²`` through
    its diagonal entry.

    Args:
      codebook: ``[K, D]`` codes.
      eps: floor on the norms in the normalisation.

    Returns:
      ``[]`` float32 loss in ``[0, 1]``.
    """
    codebook = jnp.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(f"`codebook` must be [K, D] with K >= 1; got shape {codebook.shape}.")
    e = codebook.astype(jnp.float32)
    e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(e), axis=-1, keepdims=True), eps * eps))
    k = e.shape[0]
    gram = e @ e.T
    return jnp.sum(jnp.square(gram - jnp.eye(k, dtype=jnp.float32))) / (k * k)


def _mean_probs(probs: jax.Array, groups: bool, axis_name) -> jax.Array:
    probs = jnp.asarray(probs)
    min_ndim = 2 if groups else 1
    if probs.ndim < min_ndim or probs.shape[-1] < 1:
        raise ValueError(
            f"`probs` must be {'[..., G, K]' if groups else '[..., K]'} soft assignments; "
            f"got shape {probs.shape}."
        )
    p = probs.astype(jnp.float32)
    batch_axes = tuple(range(p.ndim - min_ndim))
    p = jnp.mean(p, axis=batch_axes) if batch_axes else p
    if axis_name is not None:
        p = jax.lax.pmean(p, axis_name)
    return p  # [K] or [G, K]


# Floor inside the log: an unused code (p̄_k = 0) contributes 0 to H and a finite gradient
# (log 1e-12 ≈ -27.6) instead of the exact -∞ (NaN through ``xlogy``).
_LOG_FLOOR = 1e-12


def _entropy(p: jax.Array) -> jax.Array:
    return -jnp.sum(p * jnp.log(jnp.maximum(p, _LOG_FLOOR)), axis=-1)


def codebook_entropy_loss(
    probs: jax.Array, *, groups: bool = False, axis_name: str | tuple[str, ...] | None = None
) -> jax.Array:
    r"""Negative entropy of the batch-mean assignment, ``-H(p̄) = Σ_k p̄_k log p̄_k`` (nats).

    Minimising it spreads usage over the codebook; its minimum ``-log K`` is uniform usage. The log
    is floored at 1e-12, so unused codes give finite gradients (no NaN).

    Args:
      probs: ``[..., K]`` per-vector soft assignments (rows summing to 1); every leading axis is
        the batch. With ``groups=True``, ``[..., G, K]`` and the result is summed over the G groups.
      groups: treat the second-to-last axis as independent codebooks (groups).
      axis_name: mesh / ``vmap`` axis (or axes) over which ``p̄`` is averaged (``pmean``) first, so
        that sharded batches give the entropy of the global mean.

    Returns:
      ``[]`` float32.
    """
    return -jnp.sum(_entropy(_mean_probs(probs, groups, axis_name)))


def codebook_diversity_loss(
    probs: jax.Array, *, groups: bool = False, axis_name: str | tuple[str, ...] | None = None
) -> jax.Array:
    r"""wav2vec 2.0's diversity loss ``(G·K - Σ_g exp H(p̄_g)) / (G·K)``: 0 for uniform usage.

    ``exp H(p̄_g)`` is the perplexity of group g's batch-mean assignment; the loss is in
    ``[0, 1 - 1/K]``. Arguments as in :func:`codebook_entropy_loss` (G = 1 unless ``groups``).

    Returns:
      ``[]`` float32.
    """
    p = _mean_probs(probs, groups, axis_name)
    total = p.size  # G·K
    return (total - jnp.sum(jnp.exp(_entropy(p)))) / total
