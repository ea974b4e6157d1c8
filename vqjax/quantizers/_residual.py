"""Residual vector quantization: S quantizers, each on what the previous ones left.

Juang & Gray (1982, multistage VQ); in neural codecs Zeghidour et al. (2021, SoundStream) and
Lee et al. (2022, RQ-VAE). With codebooks ``e^(1) … e^(S)`` and ``r_1 = z``::

    k_s = argmin_i ||r_s - e^(s)_i||²      r_{s+1} = r_s - sg[e^(s)_{k_s}]
    z_q = z + sg[Σ_s e^(s)_{k_s} - z]      (straight-through for the sum)

The residuals stop the gradient at the codes, so each stage's codebook loss
``||sg[r_s] - e^(s)_k||²`` moves only that stage's codebook and each commitment loss
``||r_s - sg[e^(s)_k]||²`` moves only the encoder (as in vector-quantize-pytorch's ``ResidualVQ``).

With the rotation trick (Fifty et al., 2024) each stage maps its residual to its code::

    z_q = Σ_s q̃_s,     q̃_s = sg[λ_s R_s] r_s      (forward Σ_s e^(s)_{k_s}; ∂z_q/∂z = Σ_s λ_s R_s)

as vector-quantize-pytorch's ``ResidualVQ`` with ``rotation_trick=True`` (each layer rotates its
residual, and the layers' outputs are summed).

Extensions (GitHub issue 17; vector-quantize-pytorch's ``ResidualVQ`` options and variants):

- Quantize dropout (SoundStream, Zeghidour et al., 2021): ``num_active`` n ∈ {1 … S} per
  vector; stages ``s > n`` contribute nothing (their code is 0, their index -1), so that one model
  serves every bitrate. :func:`quantize_dropout_stages` draws ``n ~ U{min_stages … S}``.
- A shared codebook: ``codebooks [K, D]`` with ``num_stages=S``, one codebook used at every stage.
- Grouped residual VQ (:func:`grouped_residual_quantize`, vector-quantize-pytorch's
  ``GroupedResidualVQ``): ``z`` split into G parts, each quantized by its own residual VQ.
- Residual FSQ and residual LFQ (:func:`residual_fsq`, :func:`residual_lfq`; vector-quantize-pytorch's
  ``ResidualFSQ`` and ``ResidualLFQ``): the stages are the parameter-free FSQ / LFQ grids, stage s
  quantizing its residual scaled up by ``L^s`` (FSQ) or ``2^s`` (LFQ), i.e. a grid ``L^s`` (``2^s``)
  times finer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vqjax._checks import check_positive_int
from vqjax.quantizers._fsq import _fsq_levels
from vqjax.quantizers._rotation import _rotation_delta
from vqjax.quantizers._vq import lookup, nearest_code, straight_through

__all__ = [
    "ResidualQuantized",
    "grouped_residual_lookup",
    "grouped_residual_quantize",
    "quantize_dropout_stages",
    "residual_fsq",
    "residual_fsq_indices_to_codes",
    "residual_lfq",
    "residual_lfq_indices_to_codes",
    "residual_lookup",
    "residual_quantize",
]


class ResidualQuantized(NamedTuple):
    """Output of :func:`residual_quantize` (and of the other residual quantizers) for ``z [..., D]`` and S stages.

    Under quantize dropout (``num_active``), a dropped stage s has ``codes[s] = 0`` and index -1,
    so ``Σ_s codes[s]`` is always the forward value of ``z_q`` and ``indices >= 0`` marks the stages used.
    """

    z_q: jax.Array  # [..., D] straight-through sum of the stages' codes
    codes: jax.Array  # [S, ..., D] each stage's code e^(s)_{k_s}; differentiable in its codebook; 0 if dropped
    indices: jax.Array  # [..., S] int32 code index of each stage; -1 if dropped
    residuals: jax.Array  # [S, ..., D] r_s, the input of stage s (r_1 = z)


# --------------------------------------------------------------------------- quantize dropout


def quantize_dropout_stages(key: jax.Array, batch_shape: Sequence[int], num_stages: int, *,
                            min_stages: int = 1) -> jax.Array:
    r"""Quantize dropout's number of stages ``n ~ U{min_stages … S}``, one per entry of ``batch_shape``.

    SoundStream (Zeghidour et al., 2021) samples, for each input example, n uniformly in
    [1, N_q] and uses only the quantizers 1 … n. Pass the result as
    ``num_active`` to :func:`residual_quantize` (broadcast over the remaining leading axes: one n per
    example, e.g. ``batch_shape = z.shape[:1]`` for an image's grid of vectors), or ``batch_shape=()``
    for one n per batch (vector-quantize-pytorch's choice).

    Args:
      key: a PRNG key.
      batch_shape: the shape of the draws.
      num_stages: S ≥ 1.
      min_stages: the fewest stages kept, in ``[1, S]`` (1: SoundStream; vector-quantize-pytorch's
        ``quantize_dropout_cutoff_index`` is ``min_stages - 1``).

    Returns:
      int32 ``[*batch_shape]`` in ``[min_stages, S]``, uniform.
    """
    check_positive_int(num_stages, "num_stages")
    if isinstance(min_stages, bool) or not isinstance(min_stages, int) or not 1 <= min_stages <= num_stages:
        raise ValueError(f"`min_stages` must be an int in [1, num_stages={num_stages}]; got {min_stages!r}.")
    try:
        batch_shape = tuple(int(d) for d in batch_shape)
    except TypeError:
        raise ValueError(f"`batch_shape` must be a sequence of ints; got {batch_shape!r}.") from None
    return jax.random.randint(key, batch_shape, min_stages, num_stages + 1, dtype=jnp.int32)


def _masks(num_active, batch_shape: tuple[int, ...], num_stages: int) -> jax.Array | None:
    """``[S, *batch_shape]`` bool, stage s (0-based) used iff ``s < n``; None (every stage) without ``num_active``.

    ``num_active`` is ``[]`` or of a prefix of ``batch_shape`` (``[B]`` for ``[B, h, w]``), broadcast over
    the trailing axes: one n per example.
    """
    if num_active is None:
        return None
    n = jnp.asarray(num_active)
    if n.ndim > len(batch_shape) or any(a not in (1, b) for a, b in zip(n.shape, batch_shape)):
        raise ValueError(f"`num_active` must be [] or of a prefix of z.shape[:-1] = {batch_shape} (one n per "
                         f"example: [B] for [B, ...]); got shape {n.shape}.")
    if not jnp.issubdtype(n.dtype, jnp.integer):
        raise ValueError(f"`num_active` must be integers (the stages used, in [1, S]); got dtype {n.dtype}.")
    n = n.reshape(n.shape + (1,) * (len(batch_shape) - n.ndim))
    return jnp.arange(num_stages).reshape((num_stages,) + (1,) * len(batch_shape)) < n[None]


def _finish(z, codes, indices, residuals, active, deltas=None) -> ResidualQuantized:
    """Mask dropped stages, stack, and make ``z_q`` (straight-through of Σ codes, or Σ rotation deltas)."""
    if active is not None:
        codes = [jnp.where(a[..., None], c, 0.0).astype(c.dtype) for a, c in zip(active, codes)]
        indices = [jnp.where(a, k, -1) for a, k in zip(active, indices)]
    codes, residuals = jnp.stack(codes), jnp.stack(residuals)
    indices = jnp.stack(indices, axis=-1).astype(jnp.int32)
    total = jnp.sum(codes, axis=0)
    if deltas is not None:  # forward exactly Σ_s codes; gradient Σ_s λ_s R_s (each delta is 0 in value)
        if active is not None:
            deltas = [jnp.where(a[..., None], d, 0.0) for a, d in zip(active, deltas)]
        z_q = jax.lax.stop_gradient(total) + sum(deltas).astype(total.dtype)
        return ResidualQuantized(z_q, codes, indices, residuals)
    # straight_through forwards exactly Σ_s codes (z + sg[Σ - z] would round Σ - z: wrong for |z| ≫ |Σ|)
    return ResidualQuantized(straight_through(z, total), codes, indices, residuals)


# --------------------------------------------------------------------------- residual VQ


def _check_codebooks(z: jax.Array, codebooks: jax.Array, num_stages: int | None) -> int:
    """S, checking ``codebooks`` ([S, K, D], or [K, D] shared with ``num_stages``) against ``z [..., D]``."""
    if codebooks.ndim == 2 and min(codebooks.shape) >= 1:
        if num_stages is None:
            raise ValueError("`num_stages` is required with a shared codebook `codebooks` [K, D]; got None.")
        check_positive_int(num_stages, "num_stages")
        stages = num_stages
    elif codebooks.ndim == 3 and min(codebooks.shape) >= 1:
        if num_stages is not None and num_stages != codebooks.shape[0]:
            raise ValueError(f"`num_stages` must be None or codebooks.shape[0] = {codebooks.shape[0]} with "
                             f"`codebooks` [S, K, D]; got {num_stages!r}.")
        stages = codebooks.shape[0]
    else:
        raise ValueError(f"`codebooks` must be [S, K, D] (one per stage) or [K, D] (shared by all stages, with "
                         f"`num_stages`), with S, K, D >= 1; got shape {codebooks.shape}.")
    if z.ndim < 1 or z.shape[-1] != codebooks.shape[-1]:
        raise ValueError(
            f"`z` must be [..., D] with D = codebooks.shape[-1] = {codebooks.shape[-1]}; got shape {z.shape}."
        )
    return stages


def residual_quantize(
    z: jax.Array,
    codebooks: jax.Array,
    *,
    num_stages: int | None = None,
    num_active: jax.Array | None = None,
    rotation_trick: bool = False,
    block_size: int | None = None,
) -> ResidualQuantized:
    r"""Quantize ``z [..., D]`` with ``codebooks [S, K, D]`` stage by stage.

    Feed ``z_q`` to the decoder and, per stage s, ``(residuals[s], codes[s])`` to
    :func:`vqjax.losses.codebook_loss` and :func:`vqjax.losses.commitment_loss` (masked by
    ``indices[..., s] >= 0`` under quantize dropout). Each stage picks the nearest code to its
    residual, so ``||r_{s+1}|| ≤ ||r_s||`` whenever the codebook holds a code no farther from ``r_s``
    than the origin (e.g. a zero code).

    ``rotation_trick=True``: ``z_q`` forwards the same ``Σ_s e^(s)_{k_s}``, but its gradient reaches
    ``z`` through each stage's rotation trick (:func:`vqjax.quantizers.rotation_trick` of ``r_s`` to
    ``e^(s)_{k_s}``), summed over the stages: ``∂z_q/∂z = Σ_s λ_s R_s`` instead of the identity.

    Args:
      z: ``[..., D]`` encoder outputs.
      codebooks: ``[S, K, D]``, one codebook per stage; or ``[K, D]``, one codebook shared by the
        ``num_stages`` stages (the same as tiling it S times; its gradient is the sum over the stages).
      num_stages: S, required with a shared ``[K, D]`` codebook (else None or ``codebooks.shape[0]``).
      num_active: quantize dropout (SoundStream): int n in ``[1, S]``, ``[]`` (one for all) or of a
        prefix of ``z.shape[:-1]`` (``[B]``: one per example, broadcast over the other axes); stages
        ``s > n`` are skipped: ``z_q = Σ_{s ≤ n} e^(s)_{k_s}``, their ``codes`` 0 and ``indices`` -1.
        None: every stage. Draw it with :func:`quantize_dropout_stages`.
      rotation_trick: the rotation-trick gradient instead of straight-through.
      block_size: the nearest-code search's block size (:func:`vqjax.quantizers.nearest_code`).
    """
    z, codebooks = jnp.asarray(z), jnp.asarray(codebooks)
    stages = _check_codebooks(z, codebooks, num_stages)
    active = _masks(num_active, z.shape[:-1], stages)
    books = [codebooks] * stages if codebooks.ndim == 2 else list(codebooks)

    # Stages unrolled (S is small and static) rather than a lax.scan: a scan's backward pass puts each
    # stage's codebook-gradient all-reduce inside a while loop, which deadlocked XLA:CPU with one
    # device per core (the loop body blocks a shared pool thread the other device needs).
    r, codes, indices, residuals = z, [], [], []
    for s, e in enumerate(books):
        k = nearest_code(r, e, block_size=block_size)
        code = lookup(k, e).astype(z.dtype)
        codes.append(code), indices.append(k), residuals.append(r)
        step = jax.lax.stop_gradient(code)
        r = r - (step if active is None else jnp.where(active[s][..., None], step, 0.0).astype(r.dtype))
    deltas = [_rotation_delta(res, code) for res, code in zip(residuals, codes)] if rotation_trick else None
    return _finish(z, codes, indices, residuals, active, deltas)


def residual_lookup(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
    """``Σ_s e^(s)[indices[..., s]]``: decode stored ``[..., S]`` indices to ``[..., D]``.

    ``codebooks``: ``[S, K, D]`` or one shared ``[K, D]``. An index -1 (a stage dropped by quantize
    dropout) contributes 0.
    """
    indices, codebooks = jnp.asarray(indices), jnp.asarray(codebooks)
    if codebooks.ndim not in (2, 3):
        raise ValueError(f"`codebooks` must be [S, K, D] or a shared [K, D]; got shape {codebooks.shape}.")
    if indices.ndim < 1 or (codebooks.ndim == 3 and indices.shape[-1] != codebooks.shape[0]):
        want = f"S = {codebooks.shape[0]}" if codebooks.ndim == 3 else "S >= 1"
        raise ValueError(f"`indices` must be [..., S] with {want}; got shape {indices.shape}.")
    if codebooks.ndim == 2:
        codebooks = jnp.broadcast_to(codebooks, (indices.shape[-1], *codebooks.shape))
    per_stage = jax.vmap(lookup, in_axes=(-1, 0), out_axes=0)(jnp.maximum(indices, 0), codebooks)
    used = jnp.moveaxis(indices >= 0, -1, 0)[..., None]
    return jnp.sum(jnp.where(used, per_stage, 0.0).astype(per_stage.dtype), axis=0)


# --------------------------------------------------------------------------- grouped residual VQ


def _check_groups(z: jax.Array, codebooks: jax.Array, num_stages: int | None) -> tuple[int, int]:
    """``(G, S)`` from ``codebooks`` [G, S, K, D/G] (or [G, K, D/G] shared across each group's stages)."""
    if codebooks.ndim not in (3, 4) or min(codebooks.shape) < 1:
        raise ValueError(f"`codebooks` must be [G, S, K, D/G] (a residual VQ per group) or [G, K, D/G] (one "
                         f"codebook per group, shared by its `num_stages` stages); got shape {codebooks.shape}.")
    groups, part = codebooks.shape[0], codebooks.shape[-1]
    if z.ndim < 1 or z.shape[-1] != groups * part:
        raise ValueError(f"`z` must be [..., D] with D = G·D/G = {groups}·{part} = {groups * part} "
                         f"(codebooks {codebooks.shape}); got shape {z.shape}.")
    return groups, _check_codebooks(z[..., :part], codebooks[0], num_stages)


def grouped_residual_quantize(
    z: jax.Array,
    codebooks: jax.Array,
    *,
    num_stages: int | None = None,
    num_active: jax.Array | None = None,
    rotation_trick: bool = False,
) -> ResidualQuantized:
    r"""Grouped residual VQ: ``z [..., D]`` split into G contiguous parts, each its own residual VQ.

    vector-quantize-pytorch's ``GroupedResidualVQ`` (as in HiFi-Codec's group-residual VQ, Yang et
    al., 2023)::

        z = (z^(1), …, z^(G)),   z_q = (RVQ_1(z^(1)), …, RVQ_G(z^(G)))

    where ``RVQ_g`` is :func:`residual_quantize` with ``codebooks[g]``. Quantize dropout's
    ``num_active`` is shared by the groups (the peer draws one seed for all its groups).

    Args:
      z: ``[..., D]``, D divisible into G parts of ``D/G`` channels.
      codebooks: ``[G, S, K, D/G]``, or ``[G, K, D/G]`` (each group's codebook shared by its
        ``num_stages`` stages).
      num_stages, num_active, rotation_trick: as :func:`residual_quantize`, for every group.

    Returns:
      :class:`ResidualQuantized` with ``z_q [..., D]``, ``codes`` and ``residuals`` ``[S, ..., D]``
      (the groups' stage-s codes / residuals concatenated along D, so the per-stage losses summed over
      D are summed over the groups) and ``indices [..., G, S]``.
    """
    z, codebooks = jnp.asarray(z), jnp.asarray(codebooks)
    groups, _ = _check_groups(z, codebooks, num_stages)
    parts = jnp.split(z, groups, axis=-1)
    outs = [residual_quantize(p, cb, num_stages=num_stages, num_active=num_active, rotation_trick=rotation_trick)
            for p, cb in zip(parts, codebooks)]
    cat = lambda name: jnp.concatenate([getattr(o, name) for o in outs], axis=-1)
    return ResidualQuantized(cat("z_q"), cat("codes"), jnp.stack([o.indices for o in outs], axis=-2),
                             cat("residuals"))


def grouped_residual_lookup(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
    """``[..., G, S]`` indices of :func:`grouped_residual_quantize` -> ``[..., D]`` (-1: a dropped stage, 0)."""
    indices, codebooks = jnp.asarray(indices), jnp.asarray(codebooks)
    if codebooks.ndim not in (3, 4):
        raise ValueError(f"`codebooks` must be [G, S, K, D/G] or [G, K, D/G]; got shape {codebooks.shape}.")
    if indices.ndim < 2 or indices.shape[-2] != codebooks.shape[0]:
        raise ValueError(f"`indices` must be [..., G, S] with G = {codebooks.shape[0]}; got shape {indices.shape}.")
    return jnp.concatenate([residual_lookup(indices[..., g, :], cb) for g, cb in enumerate(codebooks)], axis=-1)


# --------------------------------------------------------------------------- residual FSQ and LFQ


def _check_stages_z(z: jax.Array, dim: int, num_stages: int, what: str) -> jax.Array:
    check_positive_int(num_stages, "num_stages")
    z = jnp.asarray(z)
    if z.ndim < 1 or z.shape[-1] != dim:
        raise ValueError(f"`z` must be [..., D] with D = {what} = {dim}; got shape {z.shape}.")
    return z.astype(jnp.float32)  # float32 whatever the input dtype


def residual_fsq(z: jax.Array, levels: Sequence[int], num_stages: int, *,
                 num_active: jax.Array | None = None) -> ResidualQuantized:
    r"""Residual FSQ (vector-quantize-pytorch's ``ResidualFSQ``): S FSQ grids, each ``L_d`` times finer.

    With ``c_d = 1 + 1/(L_d - 1)`` the input is first bounded, ``r_0 = tanh(z/c)·c``; stage s
    (0-based) then rounds its residual, scaled up by ``L_d^s``, to the L_d symmetric levels
    ``{-1 + 2j/(L_d - 1)}`` of [-1, 1] (the peer's "symmetry-preserving" FSQ, after arXiv:2411.19842
    §3.2, with a hard clamp: unlike :func:`vqjax.quantizers.fsq`'s, the levels of an even L are
    symmetric about 0, which a residual needs), and scales it back down::

        u_s = clip(r_s · L^s, -1, 1)      j_s = ⌊(L - 1)(u_s + 1)/2 + ½⌋      q_s = (2 j_s/(L - 1) - 1) / L^s
        r_{s+1} = r_s - q_s               z_q = r_0 + sg[Σ_s q_s - r_0]

    Every level of stage s is within ``1/((L_d-1) L_d^s)`` of its residual (a symmetric grid of step
    ``2/(L-1)``; ``c`` keeps ``|r_0| < c``), so the error shrinks by about ``L_d`` per stage.
    Index of stage s: the mixed-radix number ``Σ_d j_{s,d} Π_{d'<d} L_{d'}`` (as :func:`vqjax.quantizers.fsq`).

    Gradient: straight-through for the sum, through the bounding: ``∂z_q/∂z = tanh'(z/c)`` (the
    library's residual convention, as :func:`residual_quantize`). vector-quantize-pytorch passes each
    stage's clamp straight through and sums the stages, so its gradient is that times the number of
    stages with ``|r_s L^s| ≤ 1`` (up to S): the same direction, a larger and input-dependent scale.

    Args:
      z: ``[..., D]`` with D = ``len(levels)`` (computed in float32).
      levels: ``L_d ≥ 2`` per channel, the same at every stage (``Π_d L_d`` codes per stage).
      num_stages: S ≥ 1.
      num_active: quantize dropout, as :func:`residual_quantize`.

    Returns:
      :class:`ResidualQuantized`: float32 ``z_q [..., D]``, ``codes [S, ..., D]`` (the ``q_s``, no
      gradient), int32 ``indices [..., S]`` in ``[0, Π L_d)`` (-1 if dropped), ``residuals [S, ..., D]``
      (the ``r_s``, before scaling; ``r_0`` the bounded input).
    """
    lv = _fsq_levels(levels)
    zf = _check_stages_z(z, lv.size, num_stages, "len(levels)")
    active = _masks(num_active, zf.shape[:-1], num_stages)
    levels_f = jnp.asarray(lv, jnp.float32)
    clamp = 1.0 + 1.0 / (levels_f - 1.0)
    r0 = jnp.tanh(zf / clamp) * clamp
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)
    r, codes, indices, residuals = r0, [], [], []
    for s in range(num_stages):
        scale = levels_f ** (-s)  # as the peer: float32 L^-s, the residual divided by it
        u = jnp.clip(r / scale, -1.0, 1.0)
        digits = jnp.floor((levels_f - 1.0) * (u + 1.0) / 2.0 + 0.5)
        code = (digits * (2.0 / (levels_f - 1.0)) - 1.0) * scale
        codes.append(code), residuals.append(r)
        indices.append(jnp.sum(digits.astype(jnp.int32) * basis, axis=-1))
        r = r - (code if active is None else jnp.where(active[s][..., None], code, 0.0))
    return _finish(r0, codes, indices, residuals, active)


def residual_fsq_indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
    """int ``[..., S]`` indices of :func:`residual_fsq` -> float32 ``[..., D]`` ``Σ_s q_s`` (-1: a dropped stage, 0)."""
    lv = _fsq_levels(levels)
    indices = jnp.asarray(indices)
    if indices.ndim < 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers [..., S]; got dtype {indices.dtype}, shape {indices.shape}.")
    levels_f = jnp.asarray(lv, jnp.float32)
    basis = jnp.asarray(np.concatenate([[1], np.cumprod(lv[:-1])]), jnp.int32)
    digits = (jnp.maximum(indices, 0)[..., None].astype(jnp.int32) // basis) % jnp.asarray(lv, jnp.int32)  # [..., S, D]
    scales = levels_f[None, :] ** -jnp.arange(indices.shape[-1], dtype=jnp.float32)[:, None]  # [S, D]
    q = (digits.astype(jnp.float32) * (2.0 / (levels_f - 1.0)) - 1.0) * scales
    return jnp.sum(jnp.where((indices >= 0)[..., None], q, 0.0), axis=-2)


_LFQ_MAX_DIM = 30  # int32 indices


def residual_lfq(z: jax.Array, num_stages: int, *, num_active: jax.Array | None = None) -> ResidualQuantized:
    r"""Residual LFQ (vector-quantize-pytorch's ``ResidualLFQ``): S sign quantizers, each twice finer.

    Stage s (0-based) is LFQ (:func:`vqjax.quantizers.lfq`, Yu et al. 2024) of its residual scaled up
    by ``2^s``, scaled back down: codes ``{±2^{-s}}^D``::

        u_s = 2^s r_s      q_s = sign(u_s) / 2^s      r_{s+1} = r_s - q_s      z_q = z + sg[Σ_s q_s - z]

    (sign(0) = +1). Σ_s q_s is a D-channel binary expansion: for ``|z_d| ≤ 2 - 2^{1-S}`` the error is
    at most ``2^{1-S}`` per channel, halved by every stage. Index of stage s: ``Σ_d [u_{s,d} ≥ 0] 2^d``
    (:func:`vqjax.quantizers.lfq_codes_to_indices`: channel 0 the least significant bit).

    Gradient: straight-through for the sum (``∂z_q/∂z = I``, as :func:`residual_quantize`).
    vector-quantize-pytorch sums per-stage straight-through copies, a gradient ``S·I``; it maps 0 to -1
    and puts channel 0 in the most significant bit of its indices.

    Args:
      z: ``[..., D]``, ``1 ≤ D ≤ 30`` (computed in float32).
      num_stages: S ≥ 1.
      num_active: quantize dropout, as :func:`residual_quantize`.

    Returns:
      :class:`ResidualQuantized`: float32 ``z_q``, ``codes [S, ..., D]`` (the ``q_s``), int32
      ``indices [..., S]`` in ``[0, 2^D)`` (-1 if dropped), ``residuals [S, ..., D]`` (the ``r_s``;
      ``2^s · residuals[s]`` is stage s's LFQ input, e.g. for :func:`vqjax.quantizers.lfq_entropy_loss`).
    """
    z = jnp.asarray(z)
    if z.ndim < 1 or not 1 <= z.shape[-1] <= _LFQ_MAX_DIM:
        raise ValueError(f"`z` must be [..., D] with 1 <= D <= {_LFQ_MAX_DIM}; got shape {z.shape}.")
    zf = _check_stages_z(z, z.shape[-1], num_stages, "z.shape[-1]")
    active = _masks(num_active, zf.shape[:-1], num_stages)
    basis = jnp.asarray(2 ** np.arange(zf.shape[-1]), jnp.int32)
    r, codes, indices, residuals = zf, [], [], []
    for s in range(num_stages):
        bits = jax.lax.stop_gradient(r) >= 0
        code = jnp.where(bits, 2.0**-s, -(2.0**-s)).astype(jnp.float32)
        codes.append(code), residuals.append(r)
        indices.append(jnp.sum(bits.astype(jnp.int32) * basis, axis=-1))
        step = jax.lax.stop_gradient(code)
        r = r - (step if active is None else jnp.where(active[s][..., None], step, 0.0))
    return _finish(zf, codes, indices, residuals, active)


def residual_lfq_indices_to_codes(indices: jax.Array, dim: int) -> jax.Array:
    """int ``[..., S]`` indices of :func:`residual_lfq` -> float32 ``[..., D]`` ``Σ_s q_s`` (-1: a dropped stage, 0)."""
    indices = jnp.asarray(indices)
    if indices.ndim < 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"`indices` must be integers [..., S]; got dtype {indices.dtype}, shape {indices.shape}.")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= _LFQ_MAX_DIM:
        raise ValueError(f"`dim` must be an int in [1, {_LFQ_MAX_DIM}]; got {dim!r}.")
    bits = (jnp.maximum(indices, 0)[..., None].astype(jnp.int32) >> jnp.arange(dim, dtype=jnp.int32)) & 1
    scales = (2.0 ** -jnp.arange(indices.shape[-1], dtype=jnp.float32))[:, None]  # [S, 1]
    q = (2.0 * bits.astype(jnp.float32) - 1.0) * scales
    return jnp.sum(jnp.where((indices >= 0)[..., None], q, 0.0), axis=-2)
