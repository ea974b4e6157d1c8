"""EMA codebook updates and dead-code restarts, as pure functions of a plain-pytree state.

The VQ-VAE paper's alternative to the codebook loss (van den Oord et al., 2017, appendix A.1):
each code is the running mean of the encoder outputs assigned to it. With ``n_i`` the number of
vectors assigned to code ``i`` in a batch and ``s_i`` their sum, and decay ``γ``::

    N_i ← γ N_i + (1 - γ) n_i          m_i ← γ m_i + (1 - γ) s_i          w ← γ w + (1 - γ)

Zero-initialised averages are biased toward 0 early on; ``w = 1 - γ^t`` is the EMA of the
constant 1, so ``N̂ = N / w`` and ``m̂ = m / w`` are the bias-corrected averages (as in Adam).
Laplace smoothing keeps a code that lost its vectors from dividing by zero, without being
accumulated into the state::

    Ñ_i = (N̂_i + ε) / (n + K ε) · n,  n = Σ_i N̂_i          e_i = m̂_i / Ñ_i

A code that has never been assigned a vector (``N̂_i = 0``) has no statistics and keeps its
value. Statistics are float32 whatever the input dtype, and are summed over the whole batch
before the update: global arrays under ``jax.jit`` sum over every device already, and inside
``jax.shard_map`` the ``axis_name`` argument adds the ``psum``.

Dead codes (Williams et al., 2020; Dhariwal et al., 2020, "Jukebox"): a code whose average
usage ``N̂_i`` falls below a threshold is re-seeded with an encoder output of the current batch
and its statistics are reset to those of a code used ``threshold`` times per batch at that point.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax.quantizers._vq import l2_normalize

__all__ = ["EMAState", "ema_init", "ema_update", "ema_usage", "restart_dead_codes"]


class EMAState(NamedTuple):
    """The EMA codebook: codes and their (uncorrected) running statistics, all float32."""

    codebook: jax.Array  # [K, D] current codes e_i
    cluster_size: jax.Array  # [K] N_i, EMA of the number of vectors assigned to each code
    embed_sum: jax.Array  # [K, D] m_i, EMA of their sum
    weight: jax.Array  # [] w = 1 - γ^t, the EMA of 1: divides N and m for the bias correction


def _check_state(state: EMAState) -> tuple[int, int]:
    if not isinstance(state, EMAState):
        raise ValueError(f"`state` must be an EMAState (from ema_init); got {type(state).__name__}.")  # noqa: TRY004  (DESIGN: bad input is a ValueError)
    if state.codebook.ndim != 2:
        raise ValueError(f"`state.codebook` must be [K, D]; got shape {state.codebook.shape}.")
    return state.codebook.shape


def ema_init(codebook: jax.Array) -> EMAState:
    """A state with ``codebook [K, D]`` as its codes and empty statistics (``t = 0``)."""
    codebook = jnp.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(f"`codebook` must be [K, D] with K >= 1; got shape {codebook.shape}.")
    k, d = codebook.shape
    e = codebook.astype(jnp.float32)
    return EMAState(e, jnp.zeros((k,), jnp.float32), jnp.zeros((k, d), jnp.float32), jnp.zeros((), jnp.float32))


def _check_inputs(z: jax.Array, indices: jax.Array, k: int, d: int) -> tuple[jax.Array, jax.Array]:
    z, indices = jnp.asarray(z), jnp.asarray(indices)
    if z.ndim < 1 or z.shape[-1] != d:
        raise ValueError(f"`z` must be [..., D] with D = {d} (the codebook's); got shape {z.shape}.")
    if indices.shape != z.shape[:-1]:
        raise ValueError(f"`indices` must be z.shape[:-1] = {z.shape[:-1]}; got shape {indices.shape}.")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers; got dtype {indices.dtype}.")
    return z, indices


def _corrected(state: EMAState) -> tuple[jax.Array, jax.Array]:
    """``(N̂, m̂)``: bias-corrected statistics (zero before the first update)."""
    inv = jnp.where(state.weight > 0, 1.0 / jnp.maximum(state.weight, 1e-30), 0.0)
    return state.cluster_size * inv, state.embed_sum * inv


def ema_update(
    state: EMAState,
    z: jax.Array,
    indices: jax.Array,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    cosine: bool = False,
    axis_name: str | tuple[str, ...] | None = None,
) -> EMAState:
    r"""One EMA step of the codebook from a batch of encoder outputs and their nearest codes.

    Args:
      state: the :class:`EMAState` (``K`` codes of dimension ``D``).
      z: ``[..., D]`` encoder outputs (no gradient flows; any float dtype, summed in float32).
        With ``cosine=True``, pass the l2-normalised outputs the search used.
      indices: ``[...]`` their code indices in ``[0, K)``, e.g. from
        :func:`vqjax.quantizers.nearest_code` with ``state.codebook``; others are not counted.
      decay: γ in ``[0, 1)``.
      eps: Laplace smoothing ε > 0.
      cosine: l2-normalise the new codes (a cosine-similarity codebook).
      axis_name: mesh axis (or axes) to ``psum`` the batch statistics over, inside ``shard_map``.

    Returns:
      The new :class:`EMAState`: ``N``, ``m``, ``w`` updated as in the module docstring and
      ``codebook = m̂ / Ñ`` (kept for codes never assigned a vector).
    """
    k, d = _check_state(state)
    z, indices = _check_inputs(z, indices, k, d)
    if not isinstance(decay, jax.core.Tracer) and not 0.0 <= decay < 1.0:  # traced: a sweep's per-run γ
        raise ValueError(f"`decay` must be in [0, 1); got {decay!r}.")
    if not eps > 0.0:
        raise ValueError(f"`eps` must be > 0; got {eps!r}.")
    flat_z = jax.lax.stop_gradient(z).reshape(-1, d).astype(jnp.float32)
    flat_i = indices.reshape(-1)
    flat_i = jnp.where((flat_i >= 0) & (flat_i < k), flat_i, k)  # out of range: dropped
    counts = jnp.zeros((k,), jnp.float32).at[flat_i].add(1.0, mode="drop")
    sums = jnp.zeros((k, d), jnp.float32).at[flat_i].add(flat_z, mode="drop")
    if axis_name is not None:
        counts, sums = jax.lax.psum((counts, sums), axis_name)
    new = EMAState(
        state.codebook,
        decay * state.cluster_size + (1.0 - decay) * counts,
        decay * state.embed_sum + (1.0 - decay) * sums,
        decay * state.weight + (1.0 - decay),
    )
    n_hat, m_hat = _corrected(new)
    n = jnp.sum(n_hat)
    smoothed = (n_hat + eps) / (n + k * eps) * n
    codebook = m_hat / jnp.maximum(smoothed, jnp.finfo(jnp.float32).tiny)[:, None]
    if cosine:
        codebook = l2_normalize(codebook)
    codebook = jnp.where((n_hat > 0)[:, None], codebook, state.codebook)
    return new._replace(codebook=codebook)


def ema_usage(state: EMAState) -> jax.Array:
    """``[K]`` bias-corrected average number of vectors per batch assigned to each code, ``N̂``."""
    _check_state(state)
    return _corrected(state)[0]


def restart_dead_codes(
    state: EMAState,
    z: jax.Array,
    *,
    key: jax.Array,
    threshold: float = 1.0,
    cosine: bool = False,
    axis_name: str | tuple[str, ...] | None = None,
) -> tuple[EMAState, jax.Array]:
    r"""Re-seed the codes whose average usage ``N̂_i`` is below ``threshold`` from encoder outputs.

    Each dead code gets a different row of the batch (drawn without replacement when the batch
    has at least K rows), chosen by ``key`` from the whole batch, so every device makes the same
    choice: pass the same key on every device, and inside ``shard_map`` the mesh ``axis_name``
    (the rows are gathered first, and the result is replicated). A re-seeded code ``e_i = z_r`` gets the statistics
    ``N̂_i = threshold`` (up to rounding; it is not dead again), ``m̂_i = threshold · z_r``; live codes and their statistics are untouched.
    Before the first :func:`ema_update` (``t = 0``) no code counts as dead.

    Args:
      state: the :class:`EMAState`.
      z: ``[..., D]`` encoder outputs of the current batch (no gradient flows).
      key: a ``jax.random.key``, the same on every device.
      threshold: usage below which a code is dead, in vectors per batch (> 0).
      cosine: l2-normalise the re-seeded codes.
      axis_name: mesh axis (or axes) of a sharded batch inside ``shard_map``.

    Returns:
      ``(state, dead)``: the new state and the ``[K]`` bool mask of the codes re-seeded.
    """
    k, d = _check_state(state)
    z = jnp.asarray(z)
    if z.ndim < 1 or z.shape[-1] != d:
        raise ValueError(f"`z` must be [..., D] with D = {d} (the codebook's); got shape {z.shape}.")
    if not isinstance(threshold, jax.core.Tracer) and not threshold > 0:  # traced: checked by the caller
        raise ValueError(f"`threshold` must be > 0; got {threshold!r}.")
    rows = jax.lax.stop_gradient(z).reshape(-1, d).astype(jnp.float32)
    if axis_name is not None:  # gather the global batch, replicated (an all_gather result counts as varying)
        local = rows.shape[0]
        offset = jax.lax.axis_index(axis_name) * local
        buffer = jnp.zeros((jax.lax.axis_size(axis_name) * local, d), rows.dtype)
        rows = jax.lax.psum(jax.lax.dynamic_update_slice(buffer, rows, (offset, 0)), axis_name)
    n = rows.shape[0]
    if n == 0:
        return state, jnp.zeros((k,), bool)
    pick = jax.random.choice(key, n, (k,), replace=n < k)
    seeds = rows[pick]
    if cosine:
        seeds = l2_normalize(seeds)
    size = threshold * state.weight  # N_i such that N̂_i = threshold
    dead = (state.weight > 0) & (state.cluster_size < size)  # N̂_i < threshold, exactly as it is reset
    new = EMAState(
        jnp.where(dead[:, None], seeds, state.codebook),
        jnp.where(dead, size, state.cluster_size),
        jnp.where(dead[:, None], size * seeds, state.embed_sum),
        state.weight,
    )
    return new, dead
