r"""Stochastic quantizers: sampled codes in training, the greedy code at evaluation.

Both return the :class:`vqjax.nn.QuantizerOutput` of :class:`vqjax.nn.VectorQuantizer` and have
``num_codes``, ``num_stages``, ``code_dim``, ``encode``, ``decode``, ``codebook_vectors`` and
``soft_assignments`` (the code distribution ``q(k|z)`` ``[..., K]``, for
:func:`vqjax.objectives.vqvae_objective`'s usage-entropy regulariser).

- :class:`StochasticVectorQuantizer`: a code sampled from ``p = softmax(-||z - e_k||²/τ)`` with the
  straight-through categorical or the Gumbel-softmax estimator (:func:`vqjax.quantizers.sample_code`).
- :class:`GumbelVectorQuantizer`: DALL-E's dVAE bottleneck (Ramesh et al., 2021): logits over the K
  codes from a learned projection ``D → K``, ``z_q = softmax((logits + g)/τ)·E``, with the KL to the
  uniform prior as its loss.

Training mode (``model.train()``, ``deterministic = False``) samples and needs ``key``; evaluation
mode (``model.eval()``) takes the greedy code (nearest, or ``argmax`` of the logits) and no key.

Temperature: τ is :class:`vqjax.nn.Hyperparameter` state, ``temperature``, which ``anneal(step)``
sets to :func:`vqjax.quantizers.temperature_schedule` at that training step (from
``temperature_start`` to ``temperature_end`` over ``anneal_steps``, both state too: a sweep may
vary them per run). A training loop calls ``model.quantizer.anneal(step)`` before the forward pass
(the ``vqvae_mnist`` experiment's objective does, with the step the loop hands it); being set from
the step alone, it is the same for every micro-batch of a step and needs no other bookkeeping.

Precision: the input is upcast to float32 (:func:`vqjax.nn._precision.to_float32`); distances,
logits, samples, indices and losses are float32 and ``z_q`` comes back in the input's dtype.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses, quantizers
from vqjax._checks import check_positive_int
from vqjax.nn._precision import to_float32
from vqjax.nn._quantizers import Hyperparameter, QuantizerOutput, _uniform_codebook
from vqjax.quantizers import gumbel_softmax_code, kl_to_uniform

__all__ = ["ESTIMATORS", "GumbelVectorQuantizer", "StochasticVectorQuantizer"]

ESTIMATORS = ("straight_through", "gumbel")


def _check_temperature(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0; got {value!r}.")
    return float(value)


class _AnnealedQuantizer(nnx.Module):
    """A temperature τ held as state and set from the training step by :meth:`anneal`."""

    num_stages = 1

    def _init_temperature(self, temperature, temperature_end, anneal_steps, kl_weight) -> None:
        start = _check_temperature(temperature, "temperature")
        end = start if temperature_end is None else _check_temperature(temperature_end, "temperature_end")
        if anneal_steps is None:
            if end != start:
                raise ValueError(f"`anneal_steps` is required with `temperature_end`={temperature_end!r} != "
                                 f"`temperature`={temperature!r} (the steps of the decay).")
            anneal_steps = 1
        check_positive_int(anneal_steps, "anneal_steps")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, numbers.Real) or not kl_weight >= 0:
            raise ValueError(f"`kl_weight` must be a number >= 0; got {kl_weight!r}.")
        self.anneal_steps = anneal_steps
        self.temperature_start = Hyperparameter(jnp.float32(start))
        self.temperature_end = Hyperparameter(jnp.float32(end))
        self.temperature = Hyperparameter(jnp.float32(start))  # τ now: anneal(step) sets it
        self.kl_weight = Hyperparameter(jnp.float32(kl_weight))
        self.deterministic = False  # nnx convention: model.eval() sets True, model.train() False

    def temperature_at(self, step: jax.Array | int) -> jax.Array:
        """τ at training ``step``: ``start · (end/start)^{min(step, anneal_steps)/anneal_steps}``."""
        return quantizers.temperature_schedule(step, start=self.temperature_start[...],
                                               end=self.temperature_end[...], steps=self.anneal_steps)

    def anneal(self, step: jax.Array | int) -> None:
        """Set ``temperature`` to its value at training ``step`` (call before the forward pass)."""
        self.temperature[...] = self.temperature_at(step)

    def _needs_key(self, key) -> None:
        if not self.deterministic and key is None:
            raise ValueError(f"{type(self).__name__} samples codes in training mode and needs `key` "
                             "(or model.eval() for the greedy code).")


class StochasticVectorQuantizer(_AnnealedQuantizer):
    r"""A code sampled from ``p(k|z) = softmax(-||z - e_k||²/τ)`` of a learned codebook ``e [K, D]``.

    Training mode, :func:`vqjax.quantizers.sample_code` with ``estimator``:

    - ``"straight_through"``: ``k ~ Categorical(p)``, ``z_q = e_k + (p - sg[p])·sg[E]``: forward the
      sampled code; backward, the encoder gets the gradient of the soft assignment ``p(z)·E`` through
      ``p`` and the codebook that of the lookup ``e_k`` plus ``p(E)·E`` through ``p`` (Bengio et al., 2013).
    - ``"gumbel"``: ``y = softmax((log p + g)/τ_g)``, ``z_q = y·E`` (Jang et al., 2017), or with
      ``hard=True`` the sampled ``e_k`` forward and the gradient of ``y·E`` backward.

    Evaluation mode: the nearest code, straight-through (:func:`vqjax.quantizers.quantize`).

    Losses, per vector, against the code ``e_k`` it took (sampled or nearest)::

        codebook_loss   = ||sg[z] - e_k||² + kl_weight · KL(p || U(K))
        commitment_loss = ||z - sg[e_k]||²

    ``KL(p || U(K)) = log K - H(p)`` (:func:`vqjax.quantizers.kl_to_uniform`) is the rate of
    the discrete VAE this is with a uniform prior; ``kl_weight = 0`` (default) leaves the VQ-VAE's
    losses. The schedule anneals τ, the temperature of ``p``: sampling tends to the nearest code as
    τ falls. ``gumbel_temperature`` τ_g (``"gumbel"`` only) stays fixed.

    Args:
      num_codes: K.
      code_dim: D.
      estimator: ``"straight_through"`` or ``"gumbel"``.
      temperature: τ at step 0 (> 0).
      temperature_end: τ from ``anneal_steps`` on (> 0); None: constant τ.
      anneal_steps: steps of the exponential decay (>= 1; required with a ``temperature_end`` != τ).
      gumbel_temperature: τ_g > 0 of the relaxation (``"gumbel"``).
      hard: ``"gumbel"`` only: straight-through one-hot forward pass.
      kl_weight: weight (>= 0) of ``KL(p || U(K))`` in ``codebook_loss``.
      rngs: ``rngs.params()`` draws the codebook, U(-1/K, 1/K) as :class:`VectorQuantizer`.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        estimator: str = "straight_through",
        temperature: float = 1.0,
        temperature_end: float | None = None,
        anneal_steps: int | None = None,
        gumbel_temperature: float = 1.0,
        hard: bool = False,
        kl_weight: float = 0.0,
        rngs: nnx.Rngs,
    ):
        check_positive_int(num_codes, "num_codes")
        check_positive_int(code_dim, "code_dim")
        if estimator not in ESTIMATORS:
            raise ValueError(f"`estimator` must be one of {ESTIMATORS}; got {estimator!r}.")
        if hard and estimator != "gumbel":
            raise ValueError(f"`hard=True` applies to estimator='gumbel' only; got estimator={estimator!r}.")
        self.gumbel_temperature = _check_temperature(gumbel_temperature, "gumbel_temperature")
        self._init_temperature(temperature, temperature_end, anneal_steps, kl_weight)
        self.num_codes, self.code_dim, self.estimator, self.hard = num_codes, code_dim, estimator, bool(hard)
        self.codebook = nnx.Param(_uniform_codebook(rngs.params(), (num_codes, code_dim), num_codes))

    def _logits(self, z: jax.Array) -> jax.Array:
        """``-||z - e_k||²/τ``, ``[..., K]`` float32 (``z`` already float32)."""
        return -quantizers.squared_distances(z, self.codebook[...]) / self.temperature[...]

    def soft_assignments(self, z: jax.Array) -> jax.Array:
        """``p(k|z) = softmax(-||z - e_k||²/τ)`` at the current τ, ``[..., K]`` float32."""
        return jax.nn.softmax(self._logits(to_float32(z)[0]), axis=-1)

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        self._needs_key(key)
        z, dtype = to_float32(z)
        s = quantizers.sample_code(z, self.codebook[...], key=key, temperature=self.temperature[...],
                                   estimator=self.estimator, gumbel_temperature=self.gumbel_temperature,
                                   hard=self.hard, deterministic=self.deterministic)
        codebook = losses.codebook_loss(z, s.codes) + self.kl_weight[...] * kl_to_uniform(self._logits(z))
        return QuantizerOutput(s.z_q.astype(dtype), s.indices, codebook,
                               losses.commitment_loss(z, s.codes, beta=1.0), jnp.zeros((), jnp.int32))

    def encode(self, z: jax.Array) -> jax.Array:
        """The greedy (nearest) codes of ``z [..., D]``."""
        return quantizers.nearest_code(to_float32(z)[0], self.codebook[...])

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.lookup(indices, self.codebook[...])

    def codebook_vectors(self) -> jax.Array:
        return self.codebook[...]


class GumbelVectorQuantizer(_AnnealedQuantizer):
    r"""DALL-E's Gumbel-softmax bottleneck (Ramesh et al., 2021, "Zero-Shot Text-to-Image Generation", §2.1).

    A learned linear map ``P: R^D → R^K`` gives logits over the K codes of a learned codebook
    ``E [K, D]``; in training (:func:`vqjax.quantizers.gumbel_softmax_code`)::

        logits = P z,   g ~ Gumbel(0, 1)^K,   y = softmax((logits + g)/τ)
        z_q = y·E                                  (soft relaxation, default)
        z_q = e_k + (y - sg[y])·sg[E]              (hard=True, k = argmax(logits + g))
        codebook_loss   = kl_weight · KL(q || U(K)) = kl_weight · Σ_k q_k log(K q_k),  q = softmax(logits)
        commitment_loss = 0

    Evaluation mode: ``k = argmax(logits)`` and ``z_q = e_k`` (greedy, no noise). ``KL(q || U(K))``
    (:func:`vqjax.quantizers.kl_to_uniform`) is the rate term of the dVAE's ELBO: with
    ``kl_weight = 1`` (default) and a log-likelihood reconstruction term the loss is the negative
    ELBO of a discrete VAE with a uniform prior over each position's code (DALL-E raises the weight
    to 6.6; VQGAN's ``GumbelQuantize`` uses small ones). DALL-E anneals τ from 1 to 1/16.

    ``E`` is drawn ``N(0, 1)`` (``torch.nn.Embedding``'s initialisation, as taming-transformers'
    ``GumbelQuantize``), ``P`` as ``nnx.Linear``.

    Args:
      num_codes: K.
      code_dim: D, the dimension of ``z`` and of the codes.
      temperature, temperature_end, anneal_steps: the relaxation's τ and its schedule, as
        :class:`StochasticVectorQuantizer`.
      kl_weight: weight (>= 0) of the KL in ``codebook_loss``.
      hard: straight-through one-hot forward pass.
      rngs: ``rngs.params()`` draws ``P`` and ``E``.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        temperature: float = 1.0,
        temperature_end: float | None = None,
        anneal_steps: int | None = None,
        kl_weight: float = 1.0,
        hard: bool = False,
        rngs: nnx.Rngs,
    ):
        check_positive_int(num_codes, "num_codes")
        check_positive_int(code_dim, "code_dim")
        self._init_temperature(temperature, temperature_end, anneal_steps, kl_weight)
        self.num_codes, self.code_dim, self.hard = num_codes, code_dim, bool(hard)
        self.project = nnx.Linear(code_dim, num_codes, rngs=rngs)
        self.codebook = nnx.Param(jax.random.normal(rngs.params(), (num_codes, code_dim), jnp.float32))

    def logits(self, z: jax.Array) -> jax.Array:
        """``P z``: ``[..., K]`` float32 logits of the codes."""
        return self.project(to_float32(z)[0])

    def soft_assignments(self, z: jax.Array) -> jax.Array:
        """``q(k|z) = softmax(P z)``, ``[..., K]`` float32."""
        return jax.nn.softmax(self.logits(z), axis=-1)

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        self._needs_key(key)
        dtype = jnp.asarray(z).dtype
        logits = self.logits(z)
        s = gumbel_softmax_code(logits, self.codebook[...], key=key, temperature=self.temperature[...],
                                hard=self.hard, deterministic=self.deterministic)
        codebook = self.kl_weight[...] * kl_to_uniform(logits)
        return QuantizerOutput(s.z_q.astype(dtype), s.indices, codebook, jnp.zeros(logits.shape[:-1], jnp.float32),
                               jnp.zeros((), jnp.int32))

    def encode(self, z: jax.Array) -> jax.Array:
        """The greedy codes ``argmax(P z)``."""
        return jnp.argmax(self.logits(z), axis=-1).astype(jnp.int32)

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.lookup(indices, self.codebook[...])

    def codebook_vectors(self) -> jax.Array:
        return self.codebook[...]
