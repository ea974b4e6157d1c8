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
    """

    num_stages = 1

    def __init__(self, num_codes: int, code_dim: int, *, cosine: bool = False, rotation_trick: bool = False,
                 rngs: nnx.Rngs):
        _check_positive(num_codes=num_codes, code_dim=code_dim)
        self.num_codes, self.code_dim, self.cosine = num_codes, code_dim, cosine
        self.rotation_trick = bool(rotation_trick)
        self.codebook = nnx.Param(_uniform_codebook(rngs.params(), (num_codes, code_dim), num_codes))

    def _codes(self) -> jax.Array:
        e = self.codebook[...]
        return quantizers.l2_normalize(e) if self.cosine else e

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        del key
        z, dtype = to_float32(z)  # search and losses in float32; z_q in the input's dtype
        q = quantizers.quantize(z, self.codebook[...], cosine=self.cosine, rotation_trick=self.rotation_trick)
        z_in = quantizers.l2_normalize(z) if self.cosine else z
        return QuantizerOutput(q.z_q.astype(dtype), q.indices, losses.codebook_loss(z_in, q.codes),
                               losses.commitment_loss(z_in, q.codes, beta=1.0), jnp.zeros((), jnp.int32))

    def encode(self, z: jax.Array) -> jax.Array:
        z, _ = to_float32(z)
        return quantizers.nearest_code(quantizers.l2_normalize(z) if self.cosine else z, self._codes())

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.lookup(indices, self._codes())

    def codebook_vectors(self) -> jax.Array:
        return self._codes()

    def initialize(self, z: jax.Array, key: jax.Array) -> None:
        """Fit the codebook to ``z [..., D]`` by generalized Lloyd (k-means) before training."""
        self.codebook[...] = _lloyd_codebook(z.reshape(-1, self.code_dim), self.num_codes, key, self.cosine)


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
        rngs: nnx.Rngs,
    ):
        _check_positive(num_codes=num_codes, code_dim=code_dim, num_stages=num_stages)
        self.rotation_trick = bool(rotation_trick)
        self.num_codes, self.code_dim, self.num_stages, self.ema_codebooks = num_codes, code_dim, num_stages, ema
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1); got {decay!r}.")
        if dead_code_threshold < 0:
            raise ValueError(f"`dead_code_threshold` must be >= 0 (0: no restarts); got {dead_code_threshold!r}.")
        self.eps, self.restarts = float(eps), dead_code_threshold > 0
        self.decay = Hyperparameter(jnp.float32(decay))  # state: a sweep may vary it per run
        self.dead_code_threshold = Hyperparameter(jnp.float32(dead_code_threshold))
        self.deterministic = False
        codebooks = _uniform_codebook(rngs.params(), (num_stages, num_codes, code_dim), num_codes)
        if ema:
            self.ema = _EMAStatistics(codebooks)
        else:
            self.codebooks = nnx.Param(codebooks)

    def _codebooks(self) -> jax.Array:
        return self.ema.codebook[...] if self.ema_codebooks else self.codebooks[...]

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        z, dtype = to_float32(z)  # residuals, search and statistics in float32; z_q in the input's dtype
        r = quantizers.residual_quantize(z, self._codebooks(), rotation_trick=self.rotation_trick)
        stage_losses = jax.vmap(lambda res, code: (losses.codebook_loss(res, code), losses.commitment_loss(res, code, beta=1.0)))
        codebook, commitment = (jnp.sum(t, axis=0) for t in stage_losses(r.residuals, r.codes))
        restarted = jnp.zeros((), jnp.int32)
        if self.ema_codebooks:
            codebook = _zero_loss(z)
            if not self.deterministic:
                if self.restarts and key is None:
                    raise ValueError("ResidualVectorQuantizer with dead-code restarts needs `key` in training mode.")
                keys = jax.random.split(key if key is not None else jax.random.key(0), self.num_stages)
                decay, threshold = self.decay[...], self.dead_code_threshold[...]
                step = jax.vmap(lambda s, res, idx, k: _ema_step(
                    s, res, idx, k, decay=decay, eps=self.eps, threshold=threshold, restarts=self.restarts,
                    cosine=False))
                state, per_stage = step(self.ema.get(), r.residuals, jnp.moveaxis(r.indices, -1, 0), keys)
                self.ema.set(state)
                restarted = jnp.sum(per_stage)
        return QuantizerOutput(r.z_q.astype(dtype), r.indices, codebook, commitment, restarted)

    def encode(self, z: jax.Array) -> jax.Array:
        return quantizers.residual_quantize(to_float32(z)[0], self._codebooks()).indices

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.residual_lookup(indices, self._codebooks())

    def codebook_vectors(self) -> jax.Array:
        return self._codebooks().reshape(-1, self.code_dim)

    def initialize(self, z: jax.Array, key: jax.Array) -> None:
        """Stage by stage, generalized Lloyd on the residuals the earlier stages leave."""
        r = z.reshape(-1, self.code_dim)
        books = []
        for s in range(self.num_stages):
            book = _lloyd_codebook(r, self.num_codes, jax.random.fold_in(key, s), False)
            r = r - quantizers.lookup(quantizers.nearest_code(r, book), book)
            books.append(book)
        books = jnp.stack(books)
        if self.ema_codebooks:
            self.ema.set(jax.vmap(quantizers.ema_init)(books))
        else:
            self.codebooks[...] = books
