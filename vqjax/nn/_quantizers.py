"""Quantizer modules for the VQ-VAE: thin NNX wrappers of the pure :mod:`vqjax.quantizers`.

Every quantizer maps encoder outputs ``z [..., D]`` to a :class:`QuantizerOutput` and has
``num_codes`` (codes per stage), ``num_stages``, ``code_dim``, ``encode`` (``z -> indices``),
``decode`` (``indices -> z_q``) and ``codebook_vectors`` (the codes as ``[S·K, D]`` rows, for
pictures). The losses are per vector (summed over D and over stages); the VQ-VAE objective adds
``codebook_loss + β · commitment_loss`` to the reconstruction term.

- :class:`VectorQuantizer`: the paper's codebook, learned by the codebook loss.
- :class:`EMAVectorQuantizer`: codes as EMA cluster means (no codebook loss), with dead-code
  restarts. Its statistics are non-trainable variables: they change only in training mode
  (``model.train()``, the NNX convention the training loop follows) and are frozen by
  ``model.eval()``, like BatchNorm's running averages.
- :class:`FiniteScalarQuantizer`: FSQ, with uniform or Lloyd-Max levels; no codebook to learn.
- :class:`ResidualVectorQuantizer`: S stages on successive residuals, gradient- or EMA-learned.

Precision: whatever the input's dtype (a bfloat16 encoder's output), every quantizer computes its
distances, nearest codes, residuals, EMA statistics, FSQ rounding, indices and losses in float32
and returns ``z_q`` in the input's dtype (:mod:`vqjax.nn._precision`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses, quantization, quantizers
from vqjax._checks import check_positive_int
from vqjax.nn._precision import to_float32
from vqjax.quantizers._affine import check_nu

__all__ = [
    "CodebookStatistic",
    "EMAVectorQuantizer",
    "FiniteScalarQuantizer",
    "QuantizerOutput",
    "ResidualVectorQuantizer",
    "VectorQuantizer",
]


class QuantizerOutput(NamedTuple):
    """What a quantizer returns for ``z [..., D]``."""

    z_q: jax.Array  # [..., D] straight-through quantized vectors, fed to the decoder
    indices: jax.Array  # [...] int32 code indices ([..., S] for residual VQ)
    codebook_loss: jax.Array  # [...] ||sg[z] - e||² (0 where EMA or FSQ replaces it)
    commitment_loss: jax.Array  # [...] ||z - sg[e]||², without β (0 for FSQ)
    restarted: jax.Array  # [] int32 number of dead codes re-seeded by this call


class CodebookStatistic(nnx.Variable):
    """A non-trainable codebook variable (EMA codes and statistics): not an ``nnx.Param``."""


class Hyperparameter(nnx.Variable):
    """A hyperparameter held in the module's state, not trained (an EMA decay, a dead-code threshold).

    Being state, it is an array: runs of a sweep stacked on a runs axis each carry their own value
    in one compiled program.
    """


def _check_positive(**values) -> None:
    for name, v in values.items():
        check_positive_int(v, name)


def _uniform_codebook(key: jax.Array, shape: tuple[int, ...], num_codes: int) -> jax.Array:
    """U(-1/K, 1/K), the reference implementation's initialisation (Sonnet's ``VectorQuantizer``)."""
    return jax.random.uniform(key, shape, minval=-1.0 / num_codes, maxval=1.0 / num_codes)


def _lloyd_codebook(z: jax.Array, num_codes: int, key: jax.Array, cosine: bool) -> jax.Array:
    """Generalized Lloyd (k-means++ start) on the rows of ``z [N, D]``."""
    if cosine:
        z = quantizers.l2_normalize(z)
    codebook = quantization.generalized_lloyd(z, num_codes, key=key, init="kmeans++", max_iter=50).codebook
    return quantizers.l2_normalize(codebook) if cosine else codebook


def _zero_loss(z: jax.Array) -> jax.Array:
    return jnp.zeros(z.shape[:-1], jnp.float32)


class VectorQuantizer(nnx.Module):
    """Nearest code of a learned codebook ``e [K, D]`` (an ``nnx.Param``), straight-through.

    Losses: the codebook loss ``||sg[z] - e_k||²`` trains ``e``, the commitment loss trains the
    encoder. With ``cosine=True`` search and losses use l2-normalised vectors and codes. With
    ``rotation_trick=True`` the gradient reaches the encoder through :func:`vqjax.quantizers.rotation_trick`
    (Fifty et al., 2024) instead of the straight-through copy.

    ``dead_code_threshold > 0``: dead-code restarts for the learned codebook (vector-quantize-pytorch's
    ``threshold_ema_dead_code`` with a learnable codebook). In training mode each call updates an EMA
    of each code's usage, ``N_i ← γ N_i + (1 - γ) n_i`` (bias-corrected by ``1 - γ^t``, as the EMA
    codebook's), and re-seeds every code with ``N_i`` below the threshold (vectors per batch) at a
    random encoder output of the batch (:func:`vqjax.quantizers.restart_dead_codes`). The codebook
    the loss trains is the parameter ``e`` plus a non-trainable ``restart_offset`` (a
    :class:`CodebookStatistic`, 0 until a restart): a restart sets the offset row to ``z_r - e_i``,
    so the effective code is ``z_r`` and the codebook loss trains it from there (the optimizer's
    moments of ``e_i`` are kept, as the peer's in-place restart keeps them). ``decay`` γ and the
    threshold are :class:`Hyperparameter` state; ``key`` is needed in training mode.

    ``affine=True``: the affine reparameterisation of Huh et al. (2023),
    :func:`vqjax.quantizers.affine_codebook`: the codes are ``c_k = scale ⊙ e_k + shift`` with
    per-channel ``scale``, ``shift`` ``[D]`` (``nnx.Param``, 1 and 0 at the start). Search, losses,
    ``encode``, ``decode`` and ``codebook_vectors`` all use ``c`` (plus ``restart_offset``, added after
    the affine map, so that a restarted code is exactly its encoder output); the codebook loss trains
    ``e``, ``scale`` and ``shift``, and the shared two move every code. ``sync_nu`` ν > 0: their
    synchronised update, :func:`vqjax.quantizers.synchronized_update`: ``z_q``'s gradient reaches the
    encoder unchanged (or through the rotation trick) and the selected codes (so ``e``, ``scale``,
    ``shift``) as ``ν`` times itself, besides the codebook loss. ν = 0: plain straight-through.
    """

    num_stages = 1

    def __init__(self, num_codes: int, code_dim: int, *, cosine: bool = False, rotation_trick: bool = False,
                 dead_code_threshold: float = 0.0, decay: float = 0.99, affine: bool = False, sync_nu: float = 0.0,
                 rngs: nnx.Rngs):
        _check_positive(num_codes=num_codes, code_dim=code_dim)
        check_nu(sync_nu, "sync_nu")
        self.affine, self.sync_nu = bool(affine), float(sync_nu)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1); got {decay!r}.")
        if dead_code_threshold < 0:
            raise ValueError(f"`dead_code_threshold` must be >= 0 (0: no restarts); got {dead_code_threshold!r}.")
        self.num_codes, self.code_dim, self.cosine = num_codes, code_dim, cosine
        self.rotation_trick = bool(rotation_trick)
        self.codebook = nnx.Param(_uniform_codebook(rngs.params(), (num_codes, code_dim), num_codes))
        if self.affine:  # c_k = scale ⊙ e_k + shift, identity at the start
            self.scale = nnx.Param(jnp.ones((code_dim,), jnp.float32))
            self.shift = nnx.Param(jnp.zeros((code_dim,), jnp.float32))
        self.restarts = dead_code_threshold > 0
        if self.restarts:
            self.decay = Hyperparameter(jnp.float32(decay))  # state: a sweep may vary it per run
            self.dead_code_threshold = Hyperparameter(jnp.float32(dead_code_threshold))
            self.restart_offset = CodebookStatistic(jnp.zeros((num_codes, code_dim), jnp.float32))
            self.usage = CodebookStatistic(jnp.zeros((num_codes,), jnp.float32))  # N_i, uncorrected
            self.usage_weight = CodebookStatistic(jnp.zeros((), jnp.float32))  # 1 - γ^t
            self.deterministic = False  # nnx convention: model.eval() sets True, model.train() False

    def _raw_codes(self) -> jax.Array:
        e = self.codebook[...]
        if self.affine:
            e = quantizers.affine_codebook(e, self.scale[...], self.shift[...])
        return e + self.restart_offset[...] if self.restarts else e

    def _codes(self) -> jax.Array:
        e = self._raw_codes()
        return quantizers.l2_normalize(e) if self.cosine else e

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        z, dtype = to_float32(z)  # search and losses in float32; z_q in the input's dtype
        q = quantizers.quantize(z, self._raw_codes(), cosine=self.cosine, rotation_trick=self.rotation_trick)
        z_in = quantizers.l2_normalize(z) if self.cosine else z
        z_q = q.z_q
        if self.sync_nu > 0:  # the codes also get ν × the decoder's gradient (Huh et al., 2023)
            z_q = quantizers.synchronized_update(z_in, q.codes, self.sync_nu, rotation_trick=self.rotation_trick)
        restarted = jnp.zeros((), jnp.int32)
        if self.restarts and not self.deterministic:
            if key is None:
                raise ValueError("VectorQuantizer with dead-code restarts needs `key` in training mode.")
            restarted = self._restart(z_in, q.indices, key)
        return QuantizerOutput(z_q.astype(dtype), q.indices, losses.codebook_loss(z_in, q.codes),
                               losses.commitment_loss(z_in, q.codes, beta=1.0), restarted)

    def _restart(self, z: jax.Array, indices: jax.Array, key: jax.Array) -> jax.Array:
        """Update the usage EMA, re-seed the dead codes (offset rows), return how many were re-seeded."""
        decay = self.decay[...]
        counts = jnp.bincount(indices.reshape(-1), length=self.num_codes).astype(jnp.float32)
        usage = decay * self.usage[...] + (1.0 - decay) * counts
        weight = decay * self.usage_weight[...] + (1.0 - decay)
        codes = jax.lax.stop_gradient(self._raw_codes())
        state = quantizers.EMAState(codes, usage, usage[:, None] * codes, weight)
        state, dead = quantizers.restart_dead_codes(state, jax.lax.stop_gradient(z), key=key,
                                                    threshold=self.dead_code_threshold[...], cosine=self.cosine)
        self.restart_offset[...] = self.restart_offset[...] + (state.codebook - codes)
        self.usage[...], self.usage_weight[...] = state.cluster_size, weight
        return jnp.sum(dead, dtype=jnp.int32)

    def encode(self, z: jax.Array) -> jax.Array:
        z, _ = to_float32(z)
        return quantizers.nearest_code(quantizers.l2_normalize(z) if self.cosine else z, self._codes())

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.lookup(indices, self._codes())

    def codebook_vectors(self) -> jax.Array:
        return self._codes()

    def initialize(self, z: jax.Array, key: jax.Array) -> None:
        """Fit the codebook to ``z [..., D]`` by generalized Lloyd (k-means) before training (with
        ``affine``: ``e`` the fitted codes, ``scale`` 1 and ``shift`` 0, so that ``c = e``)."""
        self.codebook[...] = _lloyd_codebook(z.reshape(-1, self.code_dim), self.num_codes, key, self.cosine)
        if self.affine:
            self.scale[...], self.shift[...] = jnp.ones_like(self.scale[...]), jnp.zeros_like(self.shift[...])
        if self.restarts:
            self.restart_offset[...] = jnp.zeros_like(self.restart_offset[...])


def _ema_step(state: quantizers.EMAState, z, indices, key, *, decay, eps, threshold, restarts, cosine):
    """An EMA update, then (with ``restarts``) dead-code restarts below ``threshold``: ``(state, num restarted)``."""
    state = quantizers.ema_update(state, z, indices, decay=decay, eps=eps, cosine=cosine)
    if not restarts:
        return state, jnp.zeros((), jnp.int32)
    state, dead = quantizers.restart_dead_codes(state, z, key=key, threshold=threshold, cosine=cosine)
    return state, jnp.sum(dead, dtype=jnp.int32)


class _EMAStatistics(nnx.Module):
    """The four :class:`vqjax.quantizers.EMAState` arrays as variables (leading axes allowed)."""

    def __init__(self, codebook: jax.Array):
        state = quantizers.ema_init(codebook) if codebook.ndim == 2 else jax.vmap(quantizers.ema_init)(codebook)
        self.set(state)

    def get(self) -> quantizers.EMAState:
        return quantizers.EMAState(self.codebook[...], self.cluster_size[...], self.embed_sum[...], self.weight[...])

    def set(self, state: quantizers.EMAState) -> None:
        for name, value in state._asdict().items():
            if hasattr(self, name):
                getattr(self, name)[...] = value
            else:
                setattr(self, name, CodebookStatistic(value))


class EMAVectorQuantizer(nnx.Module):
    """Nearest code of a codebook kept as EMA cluster means (van den Oord et al., 2017, app. A.1).

    In training mode each call updates the statistics with :func:`vqjax.quantizers.ema_update`
    after quantizing with the current codes, then re-seeds codes whose average usage is below
    ``dead_code_threshold`` vectors per batch (0: never) with :func:`restart_dead_codes`, drawing
    the rows with ``key``. The loss is the commitment loss only; the codebook loss is 0. ``decay``
    and ``dead_code_threshold`` are :class:`Hyperparameter` state (a sweep may vary them per run;
    whether restarts happen at all is fixed by ``dead_code_threshold > 0``). ``rotation_trick=True``:
    the encoder's gradient goes through :func:`vqjax.quantizers.rotation_trick`, not straight-through.
    """

    num_stages = 1

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        cosine: bool = False,
        rotation_trick: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_positive(num_codes=num_codes, code_dim=code_dim)
        self.rotation_trick = bool(rotation_trick)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1); got {decay!r}.")
        if dead_code_threshold < 0:
            raise ValueError(f"`dead_code_threshold` must be >= 0 (0: no restarts); got {dead_code_threshold!r}.")
        self.num_codes, self.code_dim, self.cosine = num_codes, code_dim, cosine
        self.eps, self.restarts = float(eps), dead_code_threshold > 0
        self.decay = Hyperparameter(jnp.float32(decay))
        self.dead_code_threshold = Hyperparameter(jnp.float32(dead_code_threshold))
        self.deterministic = False  # nnx convention: model.eval() sets True, model.train() False
        codebook = _uniform_codebook(rngs.params(), (num_codes, code_dim), num_codes)
        self.ema = _EMAStatistics(quantizers.l2_normalize(codebook) if cosine else codebook)

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        state = self.ema.get()
        z, dtype = to_float32(z)  # search, statistics and loss in float32; z_q in the input's dtype
        z_in = quantizers.l2_normalize(z) if self.cosine else z
        q = quantizers.quantize(z_in, state.codebook, rotation_trick=self.rotation_trick)
        restarted = jnp.zeros((), jnp.int32)
        if not self.deterministic:
            if self.restarts and key is None:
                raise ValueError("EMAVectorQuantizer with dead-code restarts needs `key` in training mode.")
            state, restarted = _ema_step(state, z_in, q.indices, key, decay=self.decay[...], eps=self.eps,
                                         threshold=self.dead_code_threshold[...], restarts=self.restarts,
                                         cosine=self.cosine)
            self.ema.set(state)
        return QuantizerOutput(q.z_q.astype(dtype), q.indices, _zero_loss(z),
                               losses.commitment_loss(z_in, q.codes, beta=1.0), restarted)

    def encode(self, z: jax.Array) -> jax.Array:
        z, _ = to_float32(z)
        return quantizers.nearest_code(quantizers.l2_normalize(z) if self.cosine else z, self.ema.codebook[...])

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.lookup(indices, self.ema.codebook[...])

    def codebook_vectors(self) -> jax.Array:
        return self.ema.codebook[...]

    def initialize(self, z: jax.Array, key: jax.Array) -> None:
        """Codes from generalized Lloyd (k-means) on ``z [..., D]``; statistics empty."""
        codebook = _lloyd_codebook(z.reshape(-1, self.code_dim), self.num_codes, key, self.cosine)
        self.ema.set(quantizers.ema_init(codebook))


class FiniteScalarQuantizer(nnx.Module):
    """FSQ: each channel bounded and rounded to ``levels[d]`` values; no codebook, no loss.

    ``lloyd_max=False``: the uniform levels of :func:`vqjax.quantizers.fsq` (Mentzer et al.,
    2024). ``lloyd_max=True``: every channel rounds ``tanh(z)`` to the Lloyd-Max levels of
    :func:`vqjax.quantizers.lloyd_max_levels` (all entries of ``levels`` must be equal).
    ``num_codes`` is the implied codebook size ``Π_d L_d``. With ``range_loss=True`` its
    ``commitment_loss`` is :func:`vqjax.quantizers.fsq_range_loss` (weighted by the objective's β),
    which keeps channels out of tanh saturation; otherwise FSQ has no loss, as in the paper.
    """

    num_stages = 1

    def __init__(self, levels: Sequence[int], *, lloyd_max: bool = False, range_loss: bool = False):
        self.levels = tuple(int(v) for v in levels)
        self.num_codes = quantizers.fsq_codebook_size(self.levels)  # validates the levels
        self.code_dim = len(self.levels)
        self.lloyd_max, self.range_loss = lloyd_max, range_loss
        if lloyd_max:
            if len(set(self.levels)) != 1:
                raise ValueError(f"`levels` must all be equal with lloyd_max=True; got {self.levels}.")
            self.table = nnx.Variable(quantizers.lloyd_max_levels(self.levels[0]))

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        del key
        if self.lloyd_max:
            q = quantizers.scalar_quantize(z, self.table[...])
        else:
            q = quantizers.fsq(z, self.levels)
        commitment = quantizers.fsq_range_loss(z) if self.range_loss else _zero_loss(z)
        return QuantizerOutput(q.z_q.astype(z.dtype), q.indices, _zero_loss(z), commitment, jnp.zeros((), jnp.int32))

    def encode(self, z: jax.Array) -> jax.Array:
        return self(z).indices

    def decode(self, indices: jax.Array) -> jax.Array:
        if not self.lloyd_max:
            return quantizers.fsq_indices_to_codes(indices, self.levels)
        num_levels, table = self.levels[0], self.table[...]
        digits = (indices[..., None] // (num_levels ** jnp.arange(self.code_dim))) % num_levels
        return table[digits]

    def codebook_vectors(self) -> jax.Array:
        return self.decode(jnp.arange(self.num_codes, dtype=jnp.int32))


class ResidualVectorQuantizer(nnx.Module):
    """Residual VQ with ``num_stages`` codebooks of ``num_codes`` codes each.

    ``ema=False``: ``[S, K, D]`` codebooks as an ``nnx.Param``, with per-stage codebook and
    commitment losses (summed). ``ema=True``: each stage an EMA codebook (updated in training mode,
    the stages' updates ``vmap``-ed), with optional dead-code restarts; commitment losses only.
    Indices are ``[..., S]``. ``rotation_trick=True``: each stage's gradient goes through
    :func:`vqjax.quantizers.rotation_trick` (see :func:`vqjax.quantizers.residual_quantize`).

    ``shared_codebook=True``: one ``[K, D]`` codebook used at every stage (its gradient, or with
    ``ema=True`` its one EMA update, gathers every stage's residuals); ``codebook_vectors`` is then
    ``[K, D]`` and :meth:`initialize` fits it to the first stage's input.

    ``quantize_dropout=True`` (SoundStream, Zeghidour et al. 2021): in training mode each
    example (the first axis of ``z``: an image, whose positions all share it) keeps only its first
    ``n ~ U{1 … S}`` stages (:func:`vqjax.quantizers.quantize_dropout_stages`, drawn with ``key``,
    which training mode then requires); the later stages contribute nothing to ``z_q``, have index
    -1, zero losses and no EMA update. In eval mode (``model.eval()``) every stage is used. One n
    per example, as the paper, rather than vector-quantize-pytorch's one n per batch: every step
    trains every bitrate (a gradient of lower variance), and data-parallel devices need no shared
    draw (the peer all-reduces a seed to agree on its n).
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        num_stages: int,
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
        _check_positive(num_codes=num_codes, code_dim=code_dim, num_stages=num_stages)
        self.rotation_trick = bool(rotation_trick)
        self.shared_codebook, self.quantize_dropout = bool(shared_codebook), bool(quantize_dropout)
        self.num_codes, self.code_dim, self.num_stages, self.ema_codebooks = num_codes, code_dim, num_stages, ema
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1); got {decay!r}.")
        if dead_code_threshold < 0:
            raise ValueError(f"`dead_code_threshold` must be >= 0 (0: no restarts); got {dead_code_threshold!r}.")
        self.eps, self.restarts = float(eps), dead_code_threshold > 0
        self.decay = Hyperparameter(jnp.float32(decay))  # state: a sweep may vary it per run
        self.dead_code_threshold = Hyperparameter(jnp.float32(dead_code_threshold))
        self.deterministic = False
        shape = (num_codes, code_dim) if self.shared_codebook else (num_stages, num_codes, code_dim)
        codebooks = _uniform_codebook(rngs.params(), shape, num_codes)
        if ema:
            self.ema = _EMAStatistics(codebooks)
        else:
            self.codebooks = nnx.Param(codebooks)

    def _codebooks(self) -> jax.Array:
        return self.ema.codebook[...] if self.ema_codebooks else self.codebooks[...]

    def _num_active(self, z: jax.Array, key: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
        """``(n [B] or None, the key left for restarts)``: quantize dropout's stages in training mode."""
        if not self.quantize_dropout or self.deterministic:
            return None, key
        if key is None:
            raise ValueError("ResidualVectorQuantizer with quantize_dropout needs `key` in training mode.")
        key, sub = jax.random.split(key)
        return quantizers.quantize_dropout_stages(sub, z.shape[:1], self.num_stages), key

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None,
                 num_active: jax.Array | None = None) -> QuantizerOutput:
        """Quantize ``z [..., D]``; ``num_active`` (int, ``[]`` or ``[B]``): use only the first n stages,
        in any mode (e.g. a lower bitrate in eval mode), instead of quantize dropout's draw."""
        z, dtype = to_float32(z)  # residuals, search and statistics in float32; z_q in the input's dtype
        if num_active is None:
            num_active, key = self._num_active(z, key)
        r = quantizers.residual_quantize(z, self._codebooks(), num_stages=self.num_stages, num_active=num_active,
                                         rotation_trick=self.rotation_trick)
        stage_losses = jax.vmap(lambda res, code: (losses.codebook_loss(res, code), losses.commitment_loss(res, code, beta=1.0)))
        used = jnp.moveaxis(r.indices >= 0, -1, 0)  # [S, ...]: False for the stages quantize dropout skipped
        codebook, commitment = (jnp.sum(jnp.where(used, t, 0.0), axis=0) for t in stage_losses(r.residuals, r.codes))
        restarted = jnp.zeros((), jnp.int32)
        if self.ema_codebooks:
            codebook = _zero_loss(z)
            if not self.deterministic:
                if self.restarts and key is None:
                    raise ValueError("ResidualVectorQuantizer with dead-code restarts needs `key` in training mode.")
                key = key if key is not None else jax.random.key(0)
                decay, threshold = self.decay[...], self.dead_code_threshold[...]
                step = lambda s, res, idx, k: _ema_step(
                    s, res, idx, k, decay=decay, eps=self.eps, threshold=threshold, restarts=self.restarts,
                    cosine=False)
                stage_indices = jnp.moveaxis(r.indices, -1, 0)  # -1 (dropped): not counted by the EMA
                if self.shared_codebook:  # one update from every stage's residuals
                    state, restarted = step(self.ema.get(), r.residuals, stage_indices, key)
                else:
                    keys = jax.random.split(key, self.num_stages)
                    state, per_stage = jax.vmap(step)(self.ema.get(), r.residuals, stage_indices, keys)
                    restarted = jnp.sum(per_stage)
                self.ema.set(state)
        return QuantizerOutput(r.z_q.astype(dtype), r.indices, codebook, commitment, restarted)

    def encode(self, z: jax.Array) -> jax.Array:
        return quantizers.residual_quantize(to_float32(z)[0], self._codebooks(), num_stages=self.num_stages).indices

    def decode(self, indices: jax.Array) -> jax.Array:
        """``[..., S]`` indices -> ``[..., D]``; an index -1 (a stage quantize dropout skipped) adds nothing."""
        return quantizers.residual_lookup(indices, self._codebooks())

    def codebook_vectors(self) -> jax.Array:
        return self._codebooks().reshape(-1, self.code_dim)

    def initialize(self, z: jax.Array, key: jax.Array) -> None:
        """Stage by stage, generalized Lloyd on the residuals the earlier stages leave (shared: on ``z``)."""
        r = z.reshape(-1, self.code_dim)
        books = []
        for s in range(1 if self.shared_codebook else self.num_stages):
            book = _lloyd_codebook(r, self.num_codes, jax.random.fold_in(key, s), False)
            r = r - quantizers.lookup(quantizers.nearest_code(r, book), book)
            books.append(book)
        books = books[0] if self.shared_codebook else jnp.stack(books)
        if self.ema_codebooks:
            self.ema.set(quantizers.ema_init(books) if self.shared_codebook else jax.vmap(quantizers.ema_init)(books))
        else:
            self.codebooks[...] = books
