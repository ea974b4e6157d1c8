r"""Stochastic code sampling: straight-through categorical and Gumbel-softmax VQ.

Shapes: ``z`` is ``[..., D]`` with any leading axes; the codebook ``E`` is ``[K, D]``.

The code distribution is a softmax over negative squared distances (float32)::

    logits_k = -||z - e_k||² / τ,    p = softmax(logits)

- ``estimator="straight_through"``: ``k ~ Categorical(p)`` and
  ``z_q = e_k + (p - sg[p])·sg[E]``: forward exactly ``e_k``; backward, ``z`` gets the gradient of the
  soft assignment ``p(z)·E`` through ``p`` only (``∂z_q/∂z = Eᵀ ∂p/∂z``), and ``E`` gets the gradient
  of the row lookup ``e_k`` plus that of ``p(E)·E`` through ``p`` only — the same gradient as
  ``(onehot(k) + p - sg[p])·E``, the straight-through categorical estimator (Bengio et al., 2013).
- ``estimator="gumbel"``: the Gumbel-softmax relaxation (Jang et al., 2017; Maddison et al., 2017),
  as in DALL-E's dVAE (Ramesh et al., 2021): ``g ~ Gumbel(0, 1)^K``, ``y = softmax((logits + g)/τ_g)``
  and ``z_q = y·E`` (all gradients flow), or with ``hard=True`` ``k = argmax(logits + g)`` (a sample
  of ``Categorical(p)``) and ``z_q = e_k + (y - sg[y])·sg[E]`` (straight-through Gumbel).
- ``temperature=0`` or ``deterministic=True``: greedy, ``k = argmin_i ||z - e_i||²`` and ``z_q`` the
  straight-through copy of :func:`vqjax.quantizers.quantize` (evaluation).

DALL-E's Gumbel-softmax bottleneck (Ramesh et al., 2021, §2.1), :func:`gumbel_softmax_code`, takes
logits ``[..., K]`` (an encoder's output or a learned projection of it) instead of distances::

    y = softmax((logits + g)/τ),   z_q = y·E          (hard: z_q = e_k + (y - sg[y])·sg[E], k = argmax(logits + g))

with the KL of ``q = softmax(logits)`` to the uniform prior over the K codes as its auxiliary loss,
:func:`kl_to_uniform` ``= Σ_k q_k log(K q_k) = log K - H(q)`` (the rate of a discrete VAE).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax.quantizers._vq import _check_codebook, lookup, quantize, squared_distances

__all__ = ["SampledCodes", "gumbel_softmax_code", "kl_to_uniform", "sample_code", "temperature_schedule"]

_ESTIMATORS = ("straight_through", "gumbel")


class SampledCodes(NamedTuple):
    """Output of :func:`sample_code`."""

    z_q: jax.Array  # [..., D] decoder input (forward e_k, or y·E for the soft Gumbel relaxation)
    codes: jax.Array  # [..., D] e_k = codebook[k]; differentiable in the codebook
    indices: jax.Array  # [...] int32 sampled (or, greedy, nearest) code indices k
    probs: jax.Array  # [..., K] float32 p = softmax(-||z - e||²/τ); one-hot of k when τ = 0


def _static_float(value, name: str) -> float | None:
    """A concrete number's value (checked >= 0); None for a traced one (the caller's responsibility)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if jnp.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {jnp.shape(value)}.")
    v = float(value)
    if not v >= 0:
        raise ValueError(f"`{name}` must be >= 0; got {value!r}.")
    return v


def sample_code(
    z: jax.Array,
    codebook: jax.Array,
    *,
    key: jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
    estimator: str = "straight_through",
    gumbel_temperature: float | jax.Array = 1.0,
    hard: bool = False,
    deterministic: bool = False,
) -> SampledCodes:
    r"""Sample a code for each ``z [..., D]`` from ``p = softmax(-||z - e_k||²/τ)`` (module docstring).

    Args:
      z: ``[..., D]`` encoder outputs (distances in float32 for any dtype).
      codebook: ``[K, D]`` codes.
      key: a ``jax.random.key``; required unless greedy (``temperature=0`` or ``deterministic``).
      temperature: τ >= 0 of the code distribution; a traced τ (a schedule under ``jit``) must be > 0.
        A concrete 0 is greedy nearest-code quantization.
      estimator: ``"straight_through"`` (sample ``k ~ p``, gradient of ``p·E``) or ``"gumbel"``.
      gumbel_temperature: τ_g > 0 of the Gumbel-softmax relaxation ``softmax((logits + g)/τ_g)``
        (``"gumbel"`` only; anneal it with :func:`temperature_schedule`).
      hard: ``"gumbel"`` only: forward the one-hot sample ``e_k`` with the straight-through gradient
        of ``y·E`` instead of the soft ``y·E``.
      deterministic: greedy nearest code (as :func:`vqjax.quantizers.quantize`), e.g. for evaluation.

    Returns:
      :class:`SampledCodes` ``(z_q, codes, indices, probs)``; ``z_q`` in ``z``'s dtype.
    """
    z, codebook = jnp.asarray(z), jnp.asarray(codebook)
    _check_codebook(z, codebook)
    if estimator not in _ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {_ESTIMATORS}; got {estimator!r}.")
    if hard and estimator != "gumbel":
        raise ValueError(f"`hard=True` applies to estimator='gumbel' only; got estimator={estimator!r}.")
    tau = _static_float(temperature, "temperature")
    k = codebook.shape[0]
    if deterministic or tau == 0.0:
        q = quantize(z, codebook)
        probs = (jax.nn.one_hot(q.indices, k, dtype=jnp.float32) if tau == 0.0
                 else jax.nn.softmax(-squared_distances(z, codebook) / temperature, axis=-1))
        return SampledCodes(q.z_q, q.codes, q.indices, probs)
    if key is None:
        raise ValueError("`key` is required to sample codes (unless temperature=0 or deterministic=True).")
    if estimator == "gumbel" and _static_float(gumbel_temperature, "gumbel_temperature") == 0.0:
        raise ValueError("`gumbel_temperature` must be > 0; got 0.")
    logits = -squared_distances(z, codebook) / jnp.asarray(temperature, jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    e32 = codebook.astype(jnp.float32)
    e_sg = jax.lax.stop_gradient(e32)
    if estimator == "straight_through":
        indices = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
        weights = probs
    else:
        perturbed = logits + jax.random.gumbel(key, logits.shape, jnp.float32)
        indices = jnp.argmax(perturbed, axis=-1).astype(jnp.int32)
        weights = jax.nn.softmax(perturbed / jnp.asarray(gumbel_temperature, jnp.float32), axis=-1)
    codes = lookup(indices, codebook)
    if estimator == "gumbel" and not hard:
        z_q = jnp.einsum("...k,kd->...d", weights, e32)
    else:
        surrogate = jnp.einsum("...k,kd->...d", weights - jax.lax.stop_gradient(weights), e_sg)
        z_q = codes.astype(jnp.float32) + surrogate  # surrogate is exactly 0 forward
    return SampledCodes(z_q.astype(z.dtype), codes.astype(z.dtype), indices, probs)


def temperature_schedule(step: jax.Array | int, *, start: float | jax.Array, end: float | jax.Array,
                         steps: int) -> jax.Array:
    r"""Exponential decay ``τ(t) = start · (end/start)^{min(t, steps)/steps}``, then constant ``end``.

    The geometric interpolation used to anneal Gumbel-softmax temperatures (Jang et al., 2017, anneal
    ``τ = max(τ_min, exp(-r t))``; DALL-E anneals τ from 1 to 1/16). Equal to
    ``optax.exponential_decay(start, transition_steps=steps, decay_rate=end/start, end_value=end)``.
    jit-safe in ``step``; ``start`` and ``end`` may be ``[]`` arrays too (a module's
    :class:`vqjax.nn.Hyperparameter` state, per run in a sweep; traced ones must be > 0).

    Args:
      step: the training step (int or traced int/float).
      start: τ at step 0 (> 0).
      end: τ from ``steps`` on (> 0).
      steps: length of the decay (>= 1).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1; got {steps!r}.")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):  # Python numbers: ratio in float64
        if not (start > 0 and end > 0):
            raise ValueError(f"`start` and `end` must be > 0; got start={start!r}, end={end!r}.")
        first, ratio = jnp.float32(start), jnp.float32(end / start)
    else:
        for name, value in (("start", start), ("end", end)):
            if _static_float(value, name) == 0.0:
                raise ValueError(f"`start` and `end` must be > 0; got {name}=0.")
        first = jnp.asarray(start, jnp.float32)
        ratio = jnp.asarray(end, jnp.float32) / first
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
    return first * jnp.power(ratio, frac)


def _check_logits(logits: jax.Array, codebook: jax.Array | None = None) -> None:
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"`logits` must be [..., K] with K >= 1; got shape {logits.shape}.")
    if codebook is not None and (codebook.ndim != 2 or codebook.shape[0] != logits.shape[-1]):
        raise ValueError(f"`codebook` must be [K, D] with K = logits.shape[-1] = {logits.shape[-1]}; "
                         f"got shape {codebook.shape}.")


def gumbel_softmax_code(
    logits: jax.Array,
    codebook: jax.Array,
    *,
    key: jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
    hard: bool = False,
    deterministic: bool = False,
) -> SampledCodes:
    r"""DALL-E's Gumbel-softmax bottleneck (Ramesh et al., 2021): ``z_q = softmax((logits + g)/τ)·E``.

    With ``g ~ Gumbel(0, 1)^K`` and ``y = softmax((logits + g)/τ)`` (the relaxation of Jang et al.,
    2017; Maddison et al., 2017), in float32::

        soft (default):  z_q = y·E                                  (all gradients flow, E and logits)
        hard=True:       z_q = e_k + (y - sg[y])·sg[E],   k = argmax(logits + g) ~ Categorical(q)
        deterministic:   z_q = e_k,  k = argmax(logits)             (evaluation; greedy)

    ``hard``'s forward pass is exactly the sampled code ``e_k`` (``E`` gets the lookup's gradient, row
    ``k``); its backward pass gives the logits the gradient of the soft ``y·E`` (straight-through
    Gumbel-softmax). τ → 0 makes ``y`` one-hot; anneal it with :func:`temperature_schedule`.

    Args:
      logits: ``[..., K]`` unnormalised log-probabilities ``q = softmax(logits)`` of the codes.
      codebook: ``[K, D]`` codes.
      key: a ``jax.random.key``; required unless ``deterministic``.
      temperature: τ > 0 of the relaxation (a traced τ is the caller's responsibility).
      hard: straight-through one-hot forward pass.
      deterministic: greedy ``argmax(logits)``, no noise (evaluation).

    Returns:
      :class:`SampledCodes` ``(z_q [..., D] float32, codes = e_k, indices k [...] int32, probs q [..., K])``.
    """
    logits, codebook = jnp.asarray(logits), jnp.asarray(codebook)
    _check_logits(logits, codebook)
    logits = logits.astype(jnp.float32)
    e32 = codebook.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    if deterministic:
        indices = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        codes = lookup(indices, e32)
        return SampledCodes(codes, codes, indices, probs)
    if key is None:
        raise ValueError("`key` is required to sample codes (unless deterministic=True).")
    if _static_float(temperature, "temperature") == 0.0:
        raise ValueError("`temperature` must be > 0; got 0.")
    perturbed = logits + jax.random.gumbel(key, logits.shape, jnp.float32)
    indices = jnp.argmax(perturbed, axis=-1).astype(jnp.int32)
    y = jax.nn.softmax(perturbed / jnp.asarray(temperature, jnp.float32), axis=-1)
    codes = lookup(indices, e32)
    if hard:
        z_q = codes + jnp.einsum("...k,kd->...d", y - jax.lax.stop_gradient(y), jax.lax.stop_gradient(e32))
    else:
        z_q = jnp.einsum("...k,kd->...d", y, e32)
    return SampledCodes(z_q, codes, indices, probs)


def kl_to_uniform(logits: jax.Array) -> jax.Array:
    r"""``KL(q || U(K)) = Σ_k q_k log(K q_k) = log K - H(q)`` per vector, ``q = softmax(logits)`` (nats).

    The rate of a discrete VAE with a uniform prior over K codes: DALL-E's KL term (Ramesh et al.,
    2021). Computed in float32 from ``log_softmax`` (no ``log 0``).

    Args:
      logits: ``[..., K]``.

    Returns:
      ``[...]`` float32, in ``[0, log K]``.
    """
    logits = jnp.asarray(logits)
    _check_logits(logits)
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    k = logits.shape[-1]
    return jnp.sum(jnp.exp(log_q) * (log_q + jnp.float32(math.log(k))), axis=-1)
