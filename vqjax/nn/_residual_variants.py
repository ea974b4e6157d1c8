"""Residual quantizer variants (GitHub issue 17): residual FSQ, residual LFQ and grouped residual VQ.

NNX wrappers of the pure :mod:`vqjax.quantizers` functions, with the interface of
:class:`vqjax.nn.ResidualVectorQuantizer`: a :class:`vqjax.nn.QuantizerOutput` with indices
``[..., num_stages]`` of ``num_codes`` codes per stage (so the VQ-VAE's per-stage usage metrics
apply unchanged), ``encode``, ``decode``, ``codebook_vectors``, a ``deterministic`` flag
(``model.eval()``) and the ``quantize_dropout`` option.

- :class:`ResidualFSQ`: :func:`vqjax.quantizers.residual_fsq` (vector-quantize-pytorch's ``ResidualFSQ``),
  no parameters, no loss.
- :class:`ResidualLFQ`: :func:`vqjax.quantizers.residual_lfq` (vector-quantize-pytorch's ``ResidualLFQ``),
  no parameters, per-stage commitment and LFQ entropy losses.
- :class:`GroupedResidualVectorQuantizer`: G :class:`vqjax.nn.ResidualVectorQuantizer` on G parts of
  the vector (vector-quantize-pytorch's ``GroupedResidualVQ``), indices flattened to ``[..., G·S]``.

Quantize dropout (SoundStream, Zeghidour et al. 2021; ``quantize_dropout=True``): in training
mode each example (the first axis of ``z``: an image, all of whose positions share it) keeps only
its first ``n ~ U{1 … S}`` stages (:func:`vqjax.quantizers.quantize_dropout_stages`, drawn with
``key``, which is then required); the later stages add nothing to ``z_q``, have index -1 and zero
losses. In eval mode every stage is used; ``num_active`` picks n explicitly in any mode. One n per
example as in the paper, not vector-quantize-pytorch's one per batch: every step trains every
bitrate, and data-parallel devices need no shared draw.

Precision: computed in float32 whatever the input's dtype; ``z_q`` in the input's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses, quantizers
from vqjax._checks import check_positive_int
from vqjax.nn._precision import to_float32
from vqjax.nn._quantizers import QuantizerOutput, ResidualVectorQuantizer
from vqjax.quantizers._lfq import MAX_DIM, lfq_entropy_loss

__all__ = ["GroupedResidualVectorQuantizer", "ResidualFSQ", "ResidualLFQ"]


def _zeros(z: jax.Array) -> jax.Array:
    return jnp.zeros(z.shape[:-1], jnp.float32)


class _Residual(nnx.Module):
    """Shared plumbing: shape checks and quantize dropout's draw."""

    num_stages: int
    code_dim: int
    quantize_dropout: bool
    deterministic: bool

    def _check(self, z: jax.Array) -> None:
        if z.ndim < 1 or z.shape[-1] != self.code_dim:
            raise ValueError(f"`z` must be [..., D] with D = {self.code_dim}; got shape {z.shape}.")

    def _num_active(self, z: jax.Array, key: jax.Array | None, num_active) -> tuple[jax.Array | None, jax.Array | None]:
        """``(n or None, the key left for other draws)``."""
        if num_active is not None or not self.quantize_dropout or self.deterministic:
            return num_active, key
        if key is None:
            raise ValueError(f"{type(self).__name__} with quantize_dropout needs `key` in training mode.")
        key, sub = jax.random.split(key)
        return quantizers.quantize_dropout_stages(sub, z.shape[:1], self.num_stages), key

    def _stage_rows(self, decode) -> jax.Array:
        """``[S·K, D]``: every stage's codes as decoded alone (stage s's grid, scaled), stage by stage."""
        k, s = self.num_codes, self.num_stages
        idx = jnp.full((s, k, s), -1, jnp.int32)
        idx = idx.at[jnp.arange(s)[:, None], jnp.arange(k)[None, :], jnp.arange(s)[:, None]].set(
            jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (s, k)))
        return decode(idx).reshape(s * k, self.code_dim)


class ResidualFSQ(_Residual):
    """Residual FSQ: S FSQ stages, stage s rounding its residual scaled up by ``L_d^s``.

    :func:`vqjax.quantizers.residual_fsq` (vector-quantize-pytorch's ``ResidualFSQ``): the input is
    bounded by ``tanh(z/c)·c``, ``c = 1 + 1/(L - 1)``, and every stage rounds to the L symmetric
    levels of [-1, 1], so ``num_codes = Π_d L_d`` per stage and the error shrinks about L-fold per
    stage. No parameters and no loss (both loss fields are 0), as :class:`vqjax.nn.FiniteScalarQuantizer`.
    Indices ``[..., S]``.
    """

    def __init__(self, levels: Sequence[int], num_stages: int, *, quantize_dropout: bool = False):
        check_positive_int(num_stages, "num_stages")
        self.levels = tuple(int(v) for v in levels)
        self.num_codes = quantizers.fsq_codebook_size(self.levels)  # validates the levels
        self.code_dim, self.num_stages = len(self.levels), num_stages
        self.quantize_dropout, self.deterministic = bool(quantize_dropout), False

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None,
                 num_active: jax.Array | None = None) -> QuantizerOutput:
        self._check(z)
        z, dtype = to_float32(z)
        num_active, _ = self._num_active(z, key, num_active)
        r = quantizers.residual_fsq(z, self.levels, self.num_stages, num_active=num_active)
        return QuantizerOutput(r.z_q.astype(dtype), r.indices, _zeros(z), _zeros(z), jnp.zeros((), jnp.int32))

    def encode(self, z: jax.Array) -> jax.Array:
        self._check(z)
        return quantizers.residual_fsq(to_float32(z)[0], self.levels, self.num_stages).indices

    def decode(self, indices: jax.Array) -> jax.Array:
        """``[..., S]`` indices -> ``[..., D]`` (an index -1 adds nothing)."""
        return quantizers.residual_fsq_indices_to_codes(indices, self.levels)

    def codebook_vectors(self) -> jax.Array:
        """``[S·K, D]``: stage s's grid, scaled by ``L^-s``, for each stage."""
        return self._stage_rows(self.decode)


class ResidualLFQ(_Residual):
    """Residual LFQ: S sign quantizers with codes ``{±2^-s}^d``, each quantizing what the previous left.

    :func:`vqjax.quantizers.residual_lfq` (vector-quantize-pytorch's ``ResidualLFQ``), ``num_codes = 2^d``
    per stage. Losses, summed over the stages (each masked where quantize dropout skipped it):

    - ``commitment_loss``: ``Σ_s ‖r_s - sg[q_s]‖²``, the residual VQ's (without β).
    - ``codebook_loss``: ``entropy_weight · Σ_s`` the LFQ entropy loss of stage s's input
      ``u_s = 2^s r_s`` (:func:`vqjax.quantizers.lfq_entropy_loss` with ``temperature``,
      ``diversity_weight``, ``sample_fraction``, ``exact_codebook_entropy``): every stage is LFQ of its
      scaled residual, with the same sharpness τ. vector-quantize-pytorch applies LFQ's entropy loss
      per stage too, but to the unscaled residual against codes ``±2^-s``, i.e. ``u_s`` at
      temperature ``τ·4^s`` (its later stages' assignments are ever softer). Under quantize dropout
      a skipped stage's per-vector loss is 0; its codebook (batch) entropy still sees every vector.
      Like :class:`vqjax.nn.LookupFreeQuantizer`'s, this codebook term is a batch statistic:
      the loss is not a mean of per-example terms. ``entropy_weight=0``: no entropy loss.
    """

    def __init__(
        self,
        bits: int,
        num_stages: int,
        *,
        entropy_weight: float = 0.1,
        diversity_weight: float = 1.0,
        temperature: float = 0.01,
        sample_fraction: float = 1.0,
        exact_codebook_entropy: bool | None = None,
        quantize_dropout: bool = False,
    ):
        check_positive_int(bits, "bits")
        check_positive_int(num_stages, "num_stages")
        if bits > MAX_DIM:
            raise ValueError(f"`bits` must be <= {MAX_DIM} (int32 indices); got {bits}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature!r}.")
        if not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"`sample_fraction` must be in (0, 1]; got {sample_fraction!r}.")
        if not entropy_weight >= 0:
            raise ValueError(f"`entropy_weight` must be >= 0 (0: no entropy loss); got {entropy_weight!r}.")
        self.code_dim, self.num_codes, self.num_stages = bits, 2**bits, num_stages
        self.entropy_weight, self.diversity_weight = float(entropy_weight), float(diversity_weight)
        self.temperature, self.sample_fraction = float(temperature), float(sample_fraction)
        self.exact = exact_codebook_entropy
        self.quantize_dropout, self.deterministic = bool(quantize_dropout), False

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None,
                 num_active: jax.Array | None = None) -> QuantizerOutput:
        self._check(z)
        z, dtype = to_float32(z)
        num_active, key = self._num_active(z, key, num_active)
        r = quantizers.residual_lfq(z, self.num_stages, num_active=num_active)
        used = jnp.moveaxis(r.indices >= 0, -1, 0)  # [S, ...]
        commitment = jax.vmap(lambda res, code: losses.commitment_loss(res, code, beta=1.0))(r.residuals, r.codes)
        commitment = jnp.sum(jnp.where(used, commitment, 0.0), axis=0)
        entropy = _zeros(z)
        if self.entropy_weight > 0:
            for s in range(self.num_stages):
                k = None if key is None else jax.random.fold_in(key, s)
                e = lfq_entropy_loss(r.residuals[s] * 2.0**s, temperature=self.temperature,
                                     diversity_weight=self.diversity_weight, sample_fraction=self.sample_fraction,
                                     exact=self.exact, key=k)
                entropy = entropy + jnp.where(used[s], e, 0.0)
        return QuantizerOutput(r.z_q.astype(dtype), r.indices, self.entropy_weight * entropy, commitment,
                               jnp.zeros((), jnp.int32))

    def encode(self, z: jax.Array) -> jax.Array:
        self._check(z)
        return quantizers.residual_lfq(to_float32(z)[0], self.num_stages).indices

    def decode(self, indices: jax.Array) -> jax.Array:
        """``[..., S]`` indices -> ``[..., D]`` (an index -1 adds nothing)."""
        return quantizers.residual_lfq_indices_to_codes(indices, self.code_dim)

    def codebook_vectors(self) -> jax.Array:
        """``[S·K, D]``: stage s's codes ``{±2^-s}^d`` for each stage."""
        return self._stage_rows(self.decode)


class GroupedResidualVectorQuantizer(_Residual):
    """Grouped residual VQ: ``z [..., D]`` split into ``groups`` parts of ``D/G`` channels, each its own
    :class:`vqjax.nn.ResidualVectorQuantizer` (vector-quantize-pytorch's ``GroupedResidualVQ``;
    :func:`vqjax.quantizers.grouped_residual_quantize` is the pure form).

    Every group has ``num_stages_per_group`` S stages of ``num_codes`` K codes of dimension ``D/G`` and
    the residual options (``ema``, ``decay``, ``eps``, ``dead_code_threshold``, ``rotation_trick``,
    ``shared_codebook``: one codebook per group, shared by its stages). Indices are flattened to
    ``[..., G·S]`` (entry ``g·S + s``: group g, stage s) and ``num_stages = G·S``, so the VQ-VAE's
    per-stage usage metrics (perplexity, codes used) cover every group's every stage. Losses and
    restarts are summed over the groups. ``quantize_dropout``: one n per example shared by the groups
    (as the peer's one seed for all groups). ``codebook_vectors`` is ``[G·S·K, D]``: each code as what
    it adds to ``z_q``, i.e. in its group's channels with zeros elsewhere.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        num_stages: int,
        groups: int,
        *,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        rotation_trick: bool = False,
        shared_codebook: bool = False,
        quantize_dropout: bool = False,
        rngs: nnx.Rngs,
    ):
        for name, v in (("num_codes", num_codes), ("code_dim", code_dim), ("num_stages", num_stages),
                        ("groups", groups)):
            check_positive_int(v, name)
        if code_dim % groups:
            raise ValueError(f"`code_dim` must be divisible by `groups` = {groups}; got code_dim = {code_dim}.")
        self.num_codes, self.code_dim, self.num_groups = num_codes, code_dim, groups
        self.num_stages_per_group, self.num_stages = num_stages, groups * num_stages
        self.quantize_dropout, self.deterministic = bool(quantize_dropout), False
        self.group_quantizers = nnx.List([
            ResidualVectorQuantizer(num_codes, code_dim // groups, num_stages, ema=ema, decay=decay, eps=eps,
                                    dead_code_threshold=dead_code_threshold, rotation_trick=rotation_trick,
                                    shared_codebook=shared_codebook, rngs=rngs)
            for _ in range(groups)])

    def _num_active(self, z, key, num_active):
        if num_active is not None or not self.quantize_dropout or self.deterministic:
            return num_active, key
        if key is None:
            raise ValueError("GroupedResidualVectorQuantizer with quantize_dropout needs `key` in training mode.")
        key, sub = jax.random.split(key)
        return quantizers.quantize_dropout_stages(sub, z.shape[:1], self.num_stages_per_group), key

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None,
                 num_active: jax.Array | None = None) -> QuantizerOutput:
        """``num_active``: n stages per group (in ``[1, S]``), as quantize dropout's draw."""
        self._check(z)
        z, dtype = to_float32(z)
        num_active, key = self._num_active(z, key, num_active)
        outs = [q(part, key=None if key is None else jax.random.fold_in(key, g), num_active=num_active)
                for g, (q, part) in enumerate(zip(self.group_quantizers, jnp.split(z, self.num_groups, axis=-1)))]
        z_q = jnp.concatenate([o.z_q for o in outs], axis=-1).astype(dtype)
        indices = jnp.concatenate([o.indices for o in outs], axis=-1)
        return QuantizerOutput(z_q, indices, sum(o.codebook_loss for o in outs),
                               sum(o.commitment_loss for o in outs), sum(o.restarted for o in outs))

    def encode(self, z: jax.Array) -> jax.Array:
        self._check(z)
        parts = jnp.split(z, self.num_groups, axis=-1)
        return jnp.concatenate([q.encode(p) for q, p in zip(self.group_quantizers, parts)], axis=-1)

    def decode(self, indices: jax.Array) -> jax.Array:
        """``[..., G·S]`` indices -> ``[..., D]`` (an index -1 adds nothing)."""
        if indices.ndim < 1 or indices.shape[-1] != self.num_stages:
            raise ValueError(f"`indices` must be [..., G·S] with G·S = {self.num_stages}; got shape {indices.shape}.")
        chunks = jnp.split(indices, self.num_groups, axis=-1)
        return jnp.concatenate([q.decode(c) for q, c in zip(self.group_quantizers, chunks)], axis=-1)

    def codebook_vectors(self) -> jax.Array:
        part = self.code_dim // self.num_groups
        rows = []
        for g, q in enumerate(self.group_quantizers):
            v = q.codebook_vectors()
            if q.shared_codebook:  # one [K, D/G] codebook: the same rows at every stage
                v = jnp.tile(v, (self.num_stages_per_group, 1))
            rows.append(jnp.pad(v, ((0, 0), (g * part, self.code_dim - (g + 1) * part))))
        return jnp.concatenate(rows)

    def initialize(self, z: jax.Array, key: jax.Array) -> None:
        """Each group's codebooks by generalized Lloyd on its part of ``z [..., D]``, stage by stage."""
        self._check(z)
        for g, (q, part) in enumerate(zip(self.group_quantizers, jnp.split(z, self.num_groups, axis=-1))):
            q.initialize(part, jax.random.fold_in(key, g))
