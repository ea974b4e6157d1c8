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

Padding: ``ema_update``, ``ema_accumulate`` and ``restart_dead_codes`` take optional ``weights``
(a 0/1 mask or nonnegative weights over the leading axes of ``z [..., D]``). The batch statistics
become ``n_i = Σ_j w_j [k_j = i]`` and ``s_i = Σ_j w_j z_j``; a row with ``w_j = 0`` is dropped
before the sums, so a padded batch gives exactly the state of the unpadded one.

Deferred updates (gradient accumulation, e.g. under ``optax.MultiSteps``): ``ema_accumulate``
adds a micro-batch's ``n_i`` and ``s_i`` to an :class:`EMAStatistics` pytree, and ``ema_apply``
takes one EMA step with the totals. Because ``n_i`` and ``s_i`` are sums, this equals one
``ema_update`` on the concatenated micro-batches (up to float summation order).

Dead codes (Williams et al., 2020; Dhariwal et al., 2020, "Jukebox"): a code whose average
usage ``N̂_i`` falls below a threshold is re-seeded with an encoder output of the current batch
and its statistics are reset to those of a code used ``threshold`` times per batch at that point.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_weights
from vqjax.quantizers._vq import l2_normalize

__all__ = [
    "EMAState",
    "EMAStatistics",
    "ema_accumulate",
    "ema_apply",
    "ema_init",
    "ema_statistics_init",
    "ema_update",
    "ema_usage",
    "restart_dead_codes",
]


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


def _check_decay_eps(decay, eps) -> None:
    if not isinstance(decay, jax.core.Tracer) and not 0.0 <= decay < 1.0:  # traced: a sweep's per-run γ
        raise ValueError(f"`decay` must be in [0, 1); got {decay!r}.")
    if not eps > 0.0:
        raise ValueError(f"`eps` must be > 0; got {eps!r}.")


def _batch_statistics(z: jax.Array, indices: jax.Array, k: int, d: int, weights) -> tuple[jax.Array, jax.Array]:
    """``(n [K], s [K, D])``: (weighted) counts and sums of the rows assigned to each code, float32."""
    flat_z = jax.lax.stop_gradient(z).reshape(-1, d).astype(jnp.float32)
    flat_i = indices.reshape(-1)
    flat_i = jnp.where((flat_i >= 0) & (flat_i < k), flat_i, k)  # out of range: dropped
    if weights is None:
        counts = jnp.zeros((k,), jnp.float32).at[flat_i].add(1.0, mode="drop")
        sums = jnp.zeros((k, d), jnp.float32).at[flat_i].add(flat_z, mode="drop")
        return counts, sums
    flat_w = jax.lax.stop_gradient(check_weights(weights, z.shape[:-1], "the leading axes z.shape[:-1]")).reshape(-1)
    flat_i = jnp.where(flat_w != 0, flat_i, k)  # padded rows: dropped, whatever their z (inf, NaN)
    keep = (flat_i < k)[:, None]
    counts = jnp.zeros((k,), jnp.float32).at[flat_i].add(flat_w, mode="drop")
    sums = jnp.zeros((k, d), jnp.float32).at[flat_i].add(flat_w[:, None] * jnp.where(keep, flat_z, 0.0), mode="drop")
    return counts, sums


def _apply_statistics(
    state: EMAState, counts: jax.Array, sums: jax.Array, k: int, decay, eps, cosine: bool
) -> EMAState:
    """One EMA step of ``state`` with the batch statistics ``(n, s)``."""
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
    weights: jax.Array | None = None,
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
      weights: optional ``[...]`` padding mask or nonnegative weights (broadcastable to
        ``z.shape[:-1]``): ``n_i = Σ_j w_j [k_j = i]``, ``s_i = Σ_j w_j z_j``; rows with
        ``w_j = 0`` change nothing (the state is exactly that of the batch without them).
        Treated as constants (no gradient).

    Returns:
      The new :class:`EMAState`: ``N``, ``m``, ``w`` updated as in the module docstring and
      ``codebook = m̂ / Ñ`` (kept for codes never assigned a vector).
    """
    k, d = _check_state(state)
    z, indices = _check_inputs(z, indices, k, d)
    _check_decay_eps(decay, eps)
    counts, sums = _batch_statistics(z, indices, k, d, weights)
    if axis_name is not None:
        counts, sums = jax.lax.psum((counts, sums), axis_name)
    return _apply_statistics(state, counts, sums, k, decay, eps, cosine)


class EMAStatistics(NamedTuple):
    """Batch statistics summed over micro-batches for a deferred EMA step, float32."""

    counts: jax.Array  # [K] n_i = Σ_j w_j [k_j = i]
    sums: jax.Array  # [K, D] s_i = Σ_j w_j [k_j = i] z_j


def ema_statistics_init(num_codes: int, dim: int) -> EMAStatistics:
    """Zero :class:`EMAStatistics` for ``num_codes`` (K) codes of dimension ``dim`` (D)."""
    for value, name in ((num_codes, "num_codes"), (dim, "dim")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
    return EMAStatistics(jnp.zeros((num_codes,), jnp.float32), jnp.zeros((num_codes, dim), jnp.float32))


def _check_statistics(stats: EMAStatistics) -> tuple[int, int]:
    if not isinstance(stats, EMAStatistics):
        raise ValueError(f"`stats` must be an EMAStatistics (from ema_statistics_init); got {type(stats).__name__}.")  # noqa: TRY004
    counts, sums = jnp.asarray(stats.counts), jnp.asarray(stats.sums)
    if sums.ndim != 2 or counts.shape != sums.shape[:1]:
        raise ValueError(
            f"`stats` must hold counts [K] and sums [K, D]; got shapes {counts.shape} and {sums.shape}."
        )
    return sums.shape


def ema_accumulate(
    stats: EMAStatistics, z: jax.Array, indices: jax.Array, *, weights: jax.Array | None = None
) -> EMAStatistics:
    r"""Add a micro-batch's EMA statistics to ``stats``, for one deferred :func:`ema_apply`.

    With micro-batches ``b = 1..M`` (van den Oord et al., 2017, app. A.1, summed over them)::

        n_i = Σ_b Σ_{j ∈ b} w_j [k_j = i]          s_i = Σ_b Σ_{j ∈ b} w_j [k_j = i] z_j

    These are exactly the statistics :func:`ema_update` computes from the concatenated batch,
    so ``ema_apply(state, stats)`` after ``M`` accumulations equals one ``ema_update`` on the
    concatenation (up to float summation order). No collective here: under ``shard_map``
    accumulate the local statistics and pass ``axis_name`` to :func:`ema_apply` (one ``psum``
    per step, not per micro-batch).

    Args:
      stats: the :class:`EMAStatistics` so far (``ema_statistics_init(K, D)`` at the start).
      z: ``[..., D]`` encoder outputs (no gradient flows). With a cosine codebook, the
        l2-normalised outputs the search used.
      indices: ``[...]`` their code indices; values outside ``[0, K)`` are not counted.
      weights: optional ``[...]`` padding mask or nonnegative weights (broadcastable to
        ``z.shape[:-1]``); rows with weight 0 add nothing.

    Returns:
      ``EMAStatistics(counts + n, sums + s)``.
    """
    k, d = _check_statistics(stats)
    z, indices = _check_inputs(z, indices, k, d)
    counts, sums = _batch_statistics(z, indices, k, d, weights)
    return EMAStatistics(
        jnp.asarray(stats.counts).astype(jnp.float32) + counts, jnp.asarray(stats.sums).astype(jnp.float32) + sums
    )


def ema_apply(
    state: EMAState,
    stats: EMAStatistics,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    cosine: bool = False,
    axis_name: str | tuple[str, ...] | None = None,
) -> EMAState:
    r"""One EMA step with accumulated statistics ``(n, s)`` (from :func:`ema_accumulate`)::

        N_i ← γ N_i + (1 - γ) n_i      m_i ← γ m_i + (1 - γ) s_i      w ← γ w + (1 - γ)
        e_i = m̂_i / Ñ_i                (bias correction and Laplace smoothing as in the module)

    Equal, to float tolerance, to :func:`ema_update` on the concatenated micro-batches. Reset
    the statistics (``ema_statistics_init``) after applying them.

    Args:
      state: the :class:`EMAState`.
      stats: :class:`EMAStatistics` with the state's ``K`` and ``D``.
      decay: γ in ``[0, 1)``.
      eps: Laplace smoothing ε > 0.
      cosine: l2-normalise the new codes (a cosine-similarity codebook).
      axis_name: mesh axis (or axes) to ``psum`` the statistics over first, inside ``shard_map``.

    Returns:
      The new :class:`EMAState`.
    """
    k, d = _check_state(state)
    if _check_statistics(stats) != (k, d):
        raise ValueError(
            f"`stats` must match the codebook [K, D] = {(k, d)}; got sums of shape {jnp.shape(stats.sums)}."
        )
    _check_decay_eps(decay, eps)
    counts = jax.lax.stop_gradient(jnp.asarray(stats.counts)).astype(jnp.float32)
    sums = jax.lax.stop_gradient(jnp.asarray(stats.sums)).astype(jnp.float32)
    if axis_name is not None:
        counts, sums = jax.lax.psum((counts, sums), axis_name)
    return _apply_statistics(state, counts, sums, k, decay, eps, cosine)


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
    weights: jax.Array | None = None,
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
      weights: optional ``[...]`` padding mask (broadcastable to ``z.shape[:-1]``): rows with
        weight 0 are never chosen; the others are equally likely, and the dead codes get
        distinct rows while there are enough of them (then draws with replacement). With no row of nonzero weight, no code is re-seeded.
        Without ``weights`` every row is eligible (the choice is the same as before the option).

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
    valid = None if weights is None else (jax.lax.stop_gradient(check_weights(weights, z.shape[:-1], "the leading axes z.shape[:-1]")).reshape(-1) != 0)
    if axis_name is not None:  # gather the global batch, replicated (an all_gather result counts as varying)
        local = rows.shape[0]
        offset = jax.lax.axis_index(axis_name) * local
        buffer = jnp.zeros((jax.lax.axis_size(axis_name) * local, d), rows.dtype)
        rows = jax.lax.psum(jax.lax.dynamic_update_slice(buffer, rows, (offset, 0)), axis_name)
        if valid is not None:
            vbuf = jnp.zeros((jax.lax.axis_size(axis_name) * local,), jnp.int32)
            valid = jax.lax.psum(jax.lax.dynamic_update_slice(vbuf, valid.astype(jnp.int32), (offset,)), axis_name) > 0
    n = rows.shape[0]
    if n == 0:
        return state, jnp.zeros((k,), bool)
    size = threshold * state.weight  # N_i such that N̂_i = threshold
    dead = (state.weight > 0) & (state.cluster_size < size)  # N̂_i < threshold, exactly as it is reset
    if valid is None:
        pick = jax.random.choice(key, n, (k,), replace=n < k)
        any_valid = True
    else:  # valid rows in a uniformly random order first (Gumbel top-k), then draws with replacement
        key_order, key_extra = jax.random.split(key)
        score = jnp.where(valid, jax.random.gumbel(key_order, (n,)), -jnp.inf)
        order = jnp.argsort(-score)
        num_valid = jnp.sum(valid, dtype=jnp.int32)
        slot = jnp.where(dead, jnp.cumsum(dead, dtype=jnp.int32) - 1, 0)  # rank among the dead codes
        first = order[jnp.minimum(slot, n - 1)]
        extra = jax.random.categorical(key_extra, jnp.where(valid, 0.0, -jnp.inf), shape=(k,))
        pick = jnp.where(slot < num_valid, first, extra)
        any_valid = num_valid > 0
    seeds = rows[pick]
    if cosine:
        seeds = l2_normalize(seeds)
    if valid is not None:
        dead = dead & any_valid  # nothing to re-seed from
    new = EMAState(
        jnp.where(dead[:, None], seeds, state.codebook),
        jnp.where(dead, size, state.cluster_size),
        jnp.where(dead[:, None], size * seeds, state.embed_sum),
        state.weight,
    )
    return new, dead
