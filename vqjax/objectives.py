"""Model-level objectives: ``(model, batch) -> (scalar loss, metrics)`` for the training loop.

Each objective is the batch mean of a per-example loss from :mod:`vqjax.losses`, plus the
metrics worth logging. Metrics that must be summed over a whole data set (for evaluation)
are returned as per-batch sums under ``"sum/…"`` keys and counts under ``"counts"``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses, quantizers
from vqjax._checks import check_nonnegative, float_dtype
from vqjax.evaluation._image_quality import psnr, ssim
from vqjax.nn import (
    VAE,
    VQVAE,
    VQVAE2,
    EMAVectorQuantizer,
    FactorVAE,
    GatedPixelCNN,
    GumbelVectorQuantizer,
    HierarchicalPrior,
    ResidualVectorQuantizer,
    SimVQ,
    StochasticVectorQuantizer,
    VectorQuantizer,
    VIBClassifier,
)
from vqjax.nn._images import logistic_parameters, output_channels

__all__ = [
    "LIKELIHOODS",
    "beta_tcvae_objective",
    "binarize",
    "dip_vae_objective",
    "factor_vae_objective",
    "hierarchical_prior_objective",
    "oivae_objective",
    "prior_objective",
    "reconstruction_mean",
    "tc_metrics",
    "vae_iwae_objective",
    "vae_objective",
    "vib_objective",
    "vqvae2_objective",
    "vqvae_objective",
]

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")


def _log_likelihood(logits: jax.Array, x: jax.Array, likelihood: str, variance: float) -> jax.Array:
    if likelihood == "discretized_logistic":  # logits [B, H, W, 2C]: location and log-scale per pixel
        location, log_scale = logistic_parameters(logits.astype(float_dtype(logits)))
        return losses.discretized_logistic_log_likelihood(location, log_scale, x, event_ndim=3)
    if likelihood == "bernoulli":
        return losses.bernoulli_log_likelihood(logits, x, event_ndim=3)
    if likelihood == "gaussian":
        return losses.gaussian_log_likelihood(logits, x, variance=variance, event_ndim=3)
    raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}.")


def reconstruction_mean(logits: jax.Array, likelihood: str) -> jax.Array:
    """The decoder's mean image: ``sigmoid(logits)`` (Bernoulli), the Gaussian mean, or the discretized
    logistic's location clipped to [0, 1] (float32 at least)."""
    logits = logits.astype(float_dtype(logits))  # a bfloat16 decoder's output: the mean and MSE in float32
    if likelihood == "discretized_logistic":
        return jnp.clip(logistic_parameters(logits)[0], 0.0, 1.0)
    return jax.nn.sigmoid(logits) if likelihood == "bernoulli" else logits


def _check_decoder_channels(logits: jax.Array, x: jax.Array, likelihood: str) -> None:
    want = output_channels(x.shape[-1], likelihood)
    if logits.shape[-1] != want:
        raise ValueError(
            f"`likelihood`={likelihood!r} needs {want} decoder channels for images of {x.shape[-1]} channel(s); "
            f"got logits of shape {logits.shape}: build the model with the same likelihood "
            f"(e.g. VQVAE(..., likelihood={likelihood!r})).")


def _image_quality(mean: jax.Array, x: jax.Array, w: jax.Array, weights: jax.Array | None) -> dict:
    """Per image: ``psnr`` (dB) and ``ssim`` (:mod:`vqjax.evaluation`, images of at least 11×11 pixels) of
    the mean reconstruction clipped to [0, 1] against ``x [B, H, W, C]`` in [0, 1]; 0 on padded rows.
    Evaluation only (``weights`` given, as :func:`vqjax.training.evaluate` always does): a training
    step does not spend its time on them."""
    if weights is None:
        return {}
    mean = jnp.clip(jax.lax.stop_gradient(mean), 0.0, 1.0)
    out = {"psnr": psnr(mean, x)}
    if min(x.shape[1:3]) >= 11:  # SSIM's 11×11 window must fit
        out["ssim"] = ssim(mean, x)
    return {k: jnp.where(w > 0, v, 0.0) for k, v in out.items()}  # a padded row's PSNR may be inf


def _weights(batch_size: int, weights: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    w = jnp.ones((batch_size,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    return w, jnp.maximum(jnp.sum(w), 1.0)


def _report(per_example: dict, w: jax.Array, total_w: jax.Array) -> dict:
    sums = {k: jnp.sum(v * w) for k, v in per_example.items()}
    metrics = {k: v / total_w for k, v in sums.items()}
    metrics.update({f"sum/{k}": v for k, v in sums.items()}, weight=jnp.sum(w))
    return metrics


def _vq_loss_terms(out, x: jax.Array, *, beta: float, likelihood: str, variance: float,
                   weights: jax.Array | None) -> tuple[dict, jax.Array]:
    """``(metrics, w)``: the reported ``-log p(x|z_q) + codebook + β·commitment`` terms and MSE of a
    VQ-VAE or VQ-VAE-2 output, and the ``[B]`` example weights."""
    _check_decoder_channels(out.logits, x, likelihood)
    reconstruction = -_log_likelihood(out.logits, x, likelihood, variance)
    w, total_w = _weights(x.shape[0], weights)
    mean = reconstruction_mean(out.logits, likelihood)
    mse = jnp.mean(jnp.square(mean - x), axis=(1, 2, 3))
    commitment = beta * out.commitment_loss
    per_example = {"loss": reconstruction + out.codebook_loss + commitment, "reconstruction": reconstruction,
                   "codebook": out.codebook_loss, "commitment": commitment, "mse": mse,
                   **_image_quality(mean, x, w, weights)}
    if likelihood == "discretized_logistic":  # a probability mass: -log p(x|z_q) in bits per dimension
        per_example["bits_per_dim"] = losses.bits_per_dim(reconstruction, x.shape[1] * x.shape[2] * x.shape[3])
    metrics = _report(per_example, w, total_w)
    metrics["restarted"] = out.restarted.astype(jnp.float32)
    return metrics, w


# Quantizers whose codes the codebook regularisers of vqvae_objective apply to (see its docstring).
_ORTHOGONALITY_QUANTIZERS = (VectorQuantizer, SimVQ, StochasticVectorQuantizer, GumbelVectorQuantizer,
                             ResidualVectorQuantizer)
_ENTROPY_QUANTIZERS = (VectorQuantizer, EMAVectorQuantizer, SimVQ, StochasticVectorQuantizer, GumbelVectorQuantizer)


def _is_on(weight) -> bool:
    """A regulariser's weight is in use: nonzero, or traced (a sweep's per-run value)."""
    return isinstance(weight, jax.core.Tracer) or float(weight) != 0.0


def _orthogonality(quantizer) -> jax.Array:
    """:func:`vqjax.losses.codebook_orthogonality_loss` of the quantizer's codes (the mean over residual stages)."""
    name = type(quantizer).__name__
    if isinstance(quantizer, EMAVectorQuantizer) or getattr(quantizer, "ema_codebooks", False):
        raise ValueError(f"`orthogonality_weight` > 0 needs codes learned by gradient; {name}'s EMA codes are "
                         "cluster means that no gradient reaches (the loss could not move them): use 0.")
    supported = isinstance(quantizer, _ORTHOGONALITY_QUANTIZERS)
    if not supported:  # a ValueError: the weight, not the model's type, is the bad argument
        raise ValueError(f"`orthogonality_weight` > 0 applies to a learned codebook "
                         f"({', '.join(c.__name__ for c in _ORTHOGONALITY_QUANTIZERS)}); got {name}.")
    codes = quantizer.codebook_vectors()
    if codes.shape[0] > quantizer.num_codes:  # residual VQ's [S·K, D]: each stage's codebook on its own
        codes = codes.reshape(-1, quantizer.num_codes, codes.shape[-1])
        return jnp.mean(jax.vmap(losses.codebook_orthogonality_loss)(codes))
    return losses.codebook_orthogonality_loss(codes)


def _soft_assignments(quantizer, z_e: jax.Array, temperature) -> jax.Array:
    """``q(k|z_e) [..., K]`` float32: the quantizer's own (``soft_assignments``: a stochastic quantizer's
    sampling distribution) or ``softmax(-||z_e - e_k||²/temperature)`` (l2-normalised with ``cosine``)."""
    supported = isinstance(quantizer, _ENTROPY_QUANTIZERS)
    if not supported:
        raise ValueError(f"`entropy_weight` > 0 needs one codebook's soft assignments "
                         f"({', '.join(c.__name__ for c in _ENTROPY_QUANTIZERS)}); got {type(quantizer).__name__}.")
    if hasattr(quantizer, "soft_assignments"):
        return quantizer.soft_assignments(z_e)
    z = z_e.astype(jnp.float32)
    if getattr(quantizer, "cosine", False):
        z = quantizers.l2_normalize(z)  # codebook_vectors() are normalised too
    return jax.nn.softmax(-quantizers.squared_distances(z, quantizer.codebook_vectors()) / temperature, axis=-1)


def _codebook_regularizers(model, out, w: jax.Array, *, orthogonality_weight, entropy_weight,
                           entropy_temperature) -> dict:
    """The weighted ``orthogonality`` and ``entropy`` terms that are on (batch-level ``[]`` values)."""
    terms = {}
    if _is_on(orthogonality_weight):
        terms["orthogonality"] = orthogonality_weight * _orthogonality(model.quantizer)
    if _is_on(entropy_weight):
        p = _soft_assignments(model.quantizer, out.z_e, entropy_temperature)  # [B, h, w, K]
        per_image = jnp.mean(p, axis=tuple(range(1, p.ndim - 1)))  # [B, K]
        p_bar = jnp.sum(per_image * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)  # padded rows: no weight
        terms["entropy"] = entropy_weight * losses.codebook_entropy_loss(p_bar)
    return terms


def vqvae_objective(
    model: VQVAE,
    batch: dict,
    *,
    beta: float = 0.25,
    likelihood: str | None = None,
    variance: float = 0.5,
    key: jax.Array | None = None,
    weights: jax.Array | None = None,
    orthogonality_weight: float | jax.Array = 0.0,
    entropy_weight: float | jax.Array = 0.0,
    entropy_temperature: float | jax.Array = 1.0,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean VQ-VAE loss ``-log p(x|z_q) + ||sg[z_e] - e||² + β||z_e - sg[e]||²``.

    The codebook and commitment terms are the quantizer's (:class:`vqjax.nn.VQVAEOutput`): an EMA
    quantizer has no codebook term (the EMA update replaces it), FSQ neither term, residual VQ the
    sum over its stages.

    Codebook regularisers (off at weight 0, the default: then nothing of them is computed), each a
    batch-level ``[]`` term added to every image's loss and reported with its weight:

    - ``orthogonality = orthogonality_weight · ||Ê Êᵀ - I||²_F / K²`` over the l2-normalised codes
      (:func:`vqjax.losses.codebook_orthogonality_loss`, Shin et al., 2023; per stage and averaged for
      residual VQ). Codes learned by gradient only: an EMA codebook is a ValueError (no gradient reaches
      it, so the term could not act), as are quantizers without codes (FSQ, LFQ, BSQ).
    - ``entropy = entropy_weight · (-H(p̄))``, ``p̄`` the batch mean (padded rows excluded) of the soft
      assignments ``q(k|z_e)`` (:func:`vqjax.losses.codebook_entropy_loss`): minimising it spreads the
      batch's usage over the codes. ``q`` is ``softmax(-||z_e - e_k||²/entropy_temperature)`` for
      :class:`vqjax.nn.VectorQuantizer` (normalised vectors with ``cosine``),
      :class:`vqjax.nn.EMAVectorQuantizer` (the encoder's gradient only) and :class:`vqjax.nn.SimVQ`, and the
      sampling distribution of :class:`vqjax.nn.StochasticVectorQuantizer` / :class:`vqjax.nn.GumbelVectorQuantizer`
      (their ``soft_assignments``). A statistic of the whole batch: not a mean of per-example terms.

    Args:
      model: a :class:`vqjax.nn.VQVAE`.
      batch: ``{"image": [B, H, W, C] float in [0, 1]}``.
      beta: commitment cost β.
      likelihood: ``"bernoulli"`` (logits), ``"gaussian"`` (mean, fixed ``variance``) or
        ``"discretized_logistic"`` (8-bit images as ``k / 255``; a decoder of ``2C`` channels, built
        with ``VQVAE(likelihood="discretized_logistic")``: :func:`vqjax.losses.discretized_logistic_log_likelihood`);
        None (default): the model's own ``likelihood`` (Bernoulli for a model without one).
      key: draws the dead-code restarts of an EMA quantizer in training mode (and a stochastic
        quantizer's codes).
      weights: optional ``[B]`` 0/1 mask for padded evaluation batches.
      orthogonality_weight: weight (>= 0) of the codebook orthogonality loss; 0: off.
      entropy_weight: weight (>= 0) of the negative usage entropy; 0: off.
      entropy_temperature: τ > 0 of the distance softmax of the entropy's soft assignments.

    Returns:
      ``(loss, metrics)``: the weighted mean loss and a dict of scalars (``loss``,
      ``reconstruction`` in nats per image, ``codebook``, ``commitment`` (with β), ``orthogonality`` and
      ``entropy`` (with their weights; when on), ``mse`` per pixel,
      ``psnr`` (dB) and ``ssim`` (images of at least 11×11 pixels) of the mean reconstruction clipped
      to [0, 1] (:func:`vqjax.evaluation.psnr`, :func:`vqjax.evaluation.ssim`), ``bits_per_dim``
      (discretized logistic only: ``reconstruction / (H·W·C ln 2)``), ``perplexity``,
      ``used_fraction``, ``dead_codes`` (codes unused by this batch), ``restarted``), plus ``sum/*``
      totals, ``weight`` and ``counts`` (``[K]``, or ``[S, K]`` per stage of residual VQ).
    """
    check_nonnegative(orthogonality_weight, "orthogonality_weight")
    check_nonnegative(entropy_weight, "entropy_weight")
    if _is_on(entropy_weight) and not isinstance(entropy_temperature, jax.core.Tracer) and not entropy_temperature > 0:
        raise ValueError(f"`entropy_temperature` must be > 0; got {entropy_temperature!r}.")
    out = model(batch["image"], key=key)
    likelihood = getattr(model, "likelihood", "bernoulli") if likelihood is None else likelihood
    metrics, w = _vq_loss_terms(out, batch["image"], beta=beta, likelihood=likelihood, variance=variance,
                                weights=weights)
    terms = _codebook_regularizers(model, out, w, orthogonality_weight=orthogonality_weight,
                                   entropy_weight=entropy_weight, entropy_temperature=entropy_temperature)
    if terms:  # batch-level terms, added to every image's loss (so also to the evaluation sums)
        _, total_w = _weights(w.shape[0], w)
        metrics.update(_report({k: jnp.broadcast_to(v, w.shape) for k, v in terms.items()}, w, total_w))
        extra = sum(terms.values())
        metrics["loss"] = metrics["loss"] + extra
        metrics["sum/loss"] = metrics["sum/loss"] + extra * jnp.sum(w)
    num_codes = model.num_codes
    mask = (w > 0).reshape((-1,) + (1,) * (out.indices.ndim - 1))
    idx = jnp.where(mask, out.indices, num_codes)  # padded rows: out of range, not counted
    if idx.ndim == 4:  # residual VQ: [B, h, w, S], usage per stage
        usage = jax.vmap(lambda i: quantizers.code_usage(i, num_codes), in_axes=-1)(idx)
        metrics.update(perplexity=jnp.mean(usage.perplexity), used_fraction=jnp.mean(usage.used_fraction),
                       dead_codes=jnp.sum(usage.dead).astype(jnp.float32), counts=usage.counts)
    else:
        usage = quantizers.code_usage(idx, num_codes)
        metrics.update(perplexity=usage.perplexity, used_fraction=usage.used_fraction,
                       dead_codes=usage.dead.astype(jnp.float32), counts=usage.counts)
    return metrics["loss"], metrics


def vqvae2_objective(
    model: VQVAE2,
    batch: dict,
    *,
    beta: float = 0.25,
    likelihood: str | None = None,
    variance: float = 0.5,
    key: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean VQ-VAE-2 loss: :func:`vqvae_objective`'s terms with both levels' codebook and
    commitment losses summed (Razavi et al., 2019, eq. 2).

    Metrics: ``loss``, ``reconstruction`` (nats per image), ``codebook``, ``commitment`` (with β),
    ``mse``, ``psnr``, ``ssim`` and ``bits_per_dim`` (as :func:`vqvae_objective`), ``perplexity_top``, ``perplexity_bottom``, ``used_top``, ``used_bottom``,
    ``restarted``, plus ``sum/*`` totals, ``weight`` and ``counts_top``, ``counts_bottom`` (``[K]``, which
    :func:`vqjax.training.evaluate` sums over a data set).
    """
    out = model(batch["image"], key=key)
    likelihood = getattr(model, "likelihood", "bernoulli") if likelihood is None else likelihood
    metrics, w = _vq_loss_terms(out, batch["image"], beta=beta, likelihood=likelihood, variance=variance,
                                weights=weights)
    for name, idx, k in (("top", out.top_indices, model.num_codes[0]), ("bottom", out.bottom_indices,
                                                                        model.num_codes[1])):
        usage = quantizers.code_usage(jnp.where((w > 0)[:, None, None], idx, k), k)
        metrics.update({f"perplexity_{name}": usage.perplexity, f"used_{name}": usage.used_fraction,
                        f"counts_{name}": usage.counts})
    return metrics["loss"], metrics


def prior_objective(
    prior: GatedPixelCNN,
    codes: jax.Array,
    *,
    labels: jax.Array | None = None,
    cond: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean negative log-likelihood of code grids under an autoregressive prior.

    ``-log p(c) = -Σ_ij log softmax(logits_ij)[c_ij]`` (:func:`vqjax.losses.categorical_log_likelihood`),
    in nats per grid; ``bits_per_code`` divides it by ``H·W·ln 2``.

    Args:
      prior: a :class:`vqjax.nn.GatedPixelCNN`.
      codes: ``[B, H, W]`` code indices.
      labels: ``[B]`` classes for a class-conditional prior.
      cond: ``[B, H, W, C_s]`` for a spatially conditioned prior.
      weights: optional ``[B]`` 0/1 mask for padded evaluation batches.

    Returns:
      ``(loss, metrics)``: ``loss`` and ``nll`` in nats per grid, ``bits_per_code``, ``sum/*`` and
      ``weight``.
    """
    nll = -losses.categorical_log_likelihood(prior(codes, labels=labels, cond=cond), codes, event_ndim=2)
    w, total_w = _weights(codes.shape[0], weights)
    bits = losses.bits_per_dim(nll, codes.shape[1] * codes.shape[2])
    metrics = _report({"loss": nll, "nll": nll, "bits_per_code": bits}, w, total_w)
    return metrics["loss"], metrics


def hierarchical_prior_objective(
    prior: HierarchicalPrior,
    top: jax.Array,
    bottom: jax.Array,
    *,
    labels: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""``-log p(c_t | y) - log p(c_b | c_t, y)``, batch mean; both priors train together.

    Metrics: ``loss`` and ``nll`` (nats per image), ``bits_top`` and ``bits_bottom`` (per code of
    each grid), ``bits_per_code`` (over all ``h·w + 4·h·w`` codes), ``sum/*`` and ``weight``.
    """
    logits_top, logits_bottom = prior(top, bottom, labels=labels)
    nll_top = -losses.categorical_log_likelihood(logits_top, top, event_ndim=2)
    nll_bottom = -losses.categorical_log_likelihood(logits_bottom, bottom, event_ndim=2)
    n_top, n_bottom = top.shape[1] * top.shape[2], bottom.shape[1] * bottom.shape[2]
    nll = nll_top + nll_bottom
    w, total_w = _weights(top.shape[0], weights)
    metrics = _report({"loss": nll, "nll": nll, "bits_top": losses.bits_per_dim(nll_top, n_top),
                       "bits_bottom": losses.bits_per_dim(nll_bottom, n_bottom),
                       "bits_per_code": losses.bits_per_dim(nll, n_top + n_bottom)}, w, total_w)
    return metrics["loss"], metrics


# --------------------------------------------------------------------------- the VAE family


def binarize(images: jax.Array, *, key: jax.Array) -> jax.Array:
    """Dynamic binarization (Salakhutdinov & Murray, 2008): ``x ~ Bernoulli(pixel intensity)``."""
    return jax.random.bernoulli(key, images).astype(images.dtype)


def _batch_key(key: jax.Array, batch: dict) -> jax.Array:
    """In evaluation (``batch["index"]`` present) the key is shared by all batches: make it the batch's."""
    return jax.random.fold_in(key, batch["index"][0]) if "index" in batch else key


def _data(batch: dict, key: jax.Array, dynamic_binarization: bool) -> tuple[jax.Array, jax.Array]:
    """The batch's images, binarized with the first half of ``key``, and a key for the model.

    In evaluation each image is binarized with ``fold_in(k, batch["index"][i])``: every objective
    evaluated on the test split (the ELBO, the IWAE bound) sees the same binary image for each
    example, whatever its batch size.
    """
    k_data, k_model = jax.random.split(key)
    x = batch["image"]
    if dynamic_binarization:
        if "index" in batch:
            x = jax.vmap(lambda i, img: binarize(img, key=jax.random.fold_in(k_data, i)))(batch["index"], x)
        else:
            x = binarize(x, key=k_data)
    return x, _batch_key(k_model, batch)


def vae_objective(
    model: VAE,
    batch: dict,
    *,
    key: jax.Array,
    beta: float = 1.0,
    capacity: float | jax.Array | None = None,
    info_alpha: float | None = None,
    info_lambda: float = 1.0,
    kernel: str = "imq",
    dynamic_binarization: bool = True,
    weights: jax.Array | None = None,
    tc_dataset_size: int | None = None,
    tc_estimator: str = "mss",
    free_bits: float | jax.Array = 0.0,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean loss of the VAE, β-VAE (optionally with capacity C or free bits λ) or InfoVAE.

    - VAE / β-VAE: ``-log p(x|z) + β KL`` (β = 1 is the negative ELBO), or ``-log p(x|z) + β|KL - C|``.
    - InfoVAE, when ``info_alpha`` is given: ``-log p(x|z) + (1-α) KL + (α+λ-1) MMD(q(z), p(z))``,
      the MMD between the batch's posterior samples and as many prior samples.

    Args:
      model: a :class:`vqjax.nn.VAE`.
      batch: ``{"image": [B, H, W, C] in [0, 1]}``.
      key: randomness for the binarization, the posterior samples and the prior samples.
      dynamic_binarization: draw ``x ~ Bernoulli(image)`` afresh (for a Bernoulli decoder on MNIST).
      weights: optional ``[B]`` 0/1 mask of padded evaluation rows.
      tc_dataset_size: N, the size of the training set: then the KL's decomposition into index-code
        mutual information, total correlation and dimension-wise KL (:func:`tc_metrics`) is reported too.
      tc_estimator: its estimator, ``"mss"`` or ``"mws"`` (:func:`vqjax.losses.tc_decomposition`).
      free_bits: λ ≥ 0, nats per latent (Kingma et al., 2016, IAF, app. C.8): when nonzero (or traced, a
        sweep's per-run value) the β-weighted KL term of the loss is :func:`vqjax.losses.free_bits_kl` of
        the per-latent KL, whose batch mean is ``Σ_j max(λ, mean_B KL_j)`` (no gradient to a latent whose
        batch-mean KL is below λ); ``rate`` and ``elbo`` still report the true KL. 0 (default): off, the
        plain KL. Not with ``capacity`` or ``info_alpha``.

    Returns:
      ``(loss, metrics)`` with per-image means of ``loss``, ``elbo`` (always the β = 1 bound, nats),
      ``rate`` (KL), ``distortion`` (``-log p(x|z)``), ``mmd`` (InfoVAE), ``psnr`` and ``ssim`` of the
      mean of ``p(x|z)`` at the posterior sample, clipped to [0, 1], against ``batch["image"]`` (the
      grey levels, also when ``x`` is binarized: the Bernoulli mean estimates them; SSIM for images of at
      least 11×11 pixels), ``bits_per_dim`` (``-elbo / (H·W·C ln 2)``, discretized logistic only),
      and ``sum/*`` totals.
    """
    check_nonnegative(free_bits, "free_bits")
    use_free_bits = _is_on(free_bits)
    if use_free_bits and (capacity is not None or info_alpha is not None):
        other = "capacity" if capacity is not None else "info_alpha"
        raise ValueError(f"`free_bits` (λ={free_bits!r}) cannot be combined with `{other}`: pass one of them.")
    x, k = _data(batch, key, dynamic_binarization)
    k_z, k_prior = jax.random.split(k)
    out = model(x, key=k_z)
    w, total_w = _weights(x.shape[0], weights)
    per_example = {"elbo": losses.elbo(out.log_likelihood, out.kl)}
    if use_free_bits:  # the loss's KL term floored per latent; the reported rate stays the true KL
        kl_term = losses.free_bits_kl(losses.gaussian_kl(out.mean, out.log_variance, event_ndim=0), free_bits,
                                      weights=weights)
        terms = losses.beta_vae_loss(out.log_likelihood, kl_term, beta=beta)._replace(rate=out.kl)
    elif info_alpha is None:
        terms = losses.beta_vae_loss(out.log_likelihood, out.kl, beta=beta, capacity=capacity)
    else:
        prior = jax.random.normal(k_prior, out.z.shape, out.z.dtype)
        divergence = losses.mmd(out.z, prior, kernel=kernel, x_weights=w)
        terms = losses.info_vae_loss(out.log_likelihood, out.kl, divergence, alpha=info_alpha,
                                     lambda_=info_lambda)
        per_example["mmd"] = terms.divergence
    per_example.update(loss=terms.loss, distortion=terms.distortion, rate=terms.rate)
    if tc_dataset_size is not None:
        per_example.update(tc_metrics(out, dataset_size=tc_dataset_size, estimator=tc_estimator, weights=weights))
    return _vae_report(model, batch, out.logits, per_example, w, total_w, weights)


def _vae_report(model, batch: dict, logits: jax.Array, per_example: dict, w, total_w, weights):
    """The VAE objectives' ``(loss, metrics)``: ``per_example`` (with ``loss`` and ``elbo``), image quality
    (evaluation) and bits per dimension (discretized logistic)."""
    image = batch["image"]
    if image.ndim == 4:  # [B, H, W, C] images
        per_example.update(_image_quality(model.mean_image(logits), image, w, weights))
        if model.likelihood == "discretized_logistic":  # a probability mass: the bound in bits per dimension
            per_example["bits_per_dim"] = losses.bits_per_dim(-per_example["elbo"], math.prod(image.shape[1:]))
    metrics = _report(per_example, w, total_w)
    return metrics["loss"], metrics


def tc_metrics(out, *, dataset_size: int, estimator: str = "mss", weights: jax.Array | None = None) -> dict:
    """The KL term's decomposition (Chen et al., 2018) of a VAE pass, as per-example metrics (no gradient).

    ``{"mutual_information", "total_correlation", "dimension_wise_kl"}``, each ``[B]`` in nats, from
    :func:`vqjax.losses.tc_decomposition` of the pass's samples ``out.z`` (``out``: a
    :class:`vqjax.nn.VAEOutput`) against the batch, drawn from a data set of ``dataset_size`` examples.
    Their batch means add up to the one-sample estimate of the KL; they are batch estimates
    (minibatch-stratified by default), so an evaluation's sum over batches is a mean of batch estimates.
    """
    sg = jax.lax.stop_gradient
    terms = losses.tc_decomposition(sg(out.z), sg(out.mean), sg(out.log_variance), dataset_size=dataset_size,
                                    estimator=estimator, weights=weights)
    return terms._asdict()


def beta_tcvae_objective(
    model: VAE,
    batch: dict,
    *,
    key: jax.Array,
    dataset_size: int,
    alpha: float | jax.Array = 1.0,
    beta: float | jax.Array = 6.0,
    gamma: float | jax.Array = 1.0,
    estimator: str = "mss",
    dynamic_binarization: bool = False,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean β-TCVAE loss ``-log p(x|z) + α I_q(x; z) + β TC + γ Σ_j KL(q(z_j)||p(z_j))`` (Chen 2018, eq. 4).

    The KL term split by :func:`vqjax.losses.tc_decomposition` on the batch (``estimator``: minibatch-
    stratified ``"mss"`` or minibatch-weighted ``"mws"`` sampling over a data set of ``dataset_size``
    examples) and weighted by :func:`vqjax.losses.beta_tcvae_loss`; ``α = β = γ = 1`` is the ELBO with a
    one-sample KL. Metrics as :func:`vae_objective`'s (``rate`` the analytic KL, ``elbo`` the β = 1 bound)
    plus ``mutual_information``, ``total_correlation`` and ``dimension_wise_kl``.
    """
    x, k = _data(batch, key, dynamic_binarization)
    k_z, _ = jax.random.split(k)
    out = model(x, key=k_z)
    w, total_w = _weights(x.shape[0], weights)
    terms = losses.tc_decomposition(out.z, out.mean, out.log_variance, dataset_size=dataset_size,
                                    estimator=estimator, weights=weights)
    tc = losses.beta_tcvae_loss(out.log_likelihood, terms, alpha=alpha, beta=beta, gamma=gamma)
    per_example = {"elbo": losses.elbo(out.log_likelihood, out.kl), "loss": tc.loss, "distortion": tc.distortion,
                   "rate": out.kl, **{k: jax.lax.stop_gradient(v) for k, v in terms._asdict().items()}}
    return _vae_report(model, batch, out.logits, per_example, w, total_w, weights)


def dip_vae_objective(
    model: VAE,
    batch: dict,
    *,
    key: jax.Array,
    kind: str = "i",
    lambda_od: float | jax.Array = 10.0,
    lambda_d: float | jax.Array | None = None,
    dynamic_binarization: bool = False,
    weights: jax.Array | None = None,
    tc_dataset_size: int | None = None,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean DIP-VAE-I or -II loss ``-log p(x|z) + KL + λ_od Σ_{i≠j} C_ij² + λ_d Σ_i (C_ii - 1)²``.

    ``C`` is the batch covariance of ``μ(x)`` (``kind="i"``) or of ``z`` under ``q(z)`` (``"ii"``), from
    :func:`vqjax.losses.dip_vae_regularizer` (``lambda_d`` default: ``10 λ_od`` for I, ``λ_od`` for II, as
    disentanglement_lib's studies). Metrics as :func:`vae_objective`'s plus ``dip_regularizer`` (and the
    KL decomposition with ``tc_dataset_size``).
    """
    x, k = _data(batch, key, dynamic_binarization)
    k_z, _ = jax.random.split(k)
    out = model(x, key=k_z)
    w, total_w = _weights(x.shape[0], weights)
    regularizer = losses.dip_vae_regularizer(out.mean, out.log_variance, kind=kind, lambda_od=lambda_od,
                                             lambda_d=lambda_d, weights=weights)
    terms = losses.dip_vae_loss(out.log_likelihood, out.kl, regularizer)
    per_example = {"elbo": losses.elbo(out.log_likelihood, out.kl), "loss": terms.loss,
                   "distortion": terms.distortion, "rate": terms.rate, "dip_regularizer": terms.regularizer}
    if tc_dataset_size is not None:
        per_example.update(tc_metrics(out, dataset_size=tc_dataset_size, weights=weights))
    return _vae_report(model, batch, out.logits, per_example, w, total_w, weights)


def factor_vae_objective(
    model: FactorVAE,
    batch: dict,
    *,
    key: jax.Array,
    gamma: float | jax.Array = 35.0,
    dynamic_binarization: bool = False,
    weights: jax.Array | None = None,
    tc_dataset_size: int | None = None,
) -> tuple[jax.Array, dict]:
    r"""FactorVAE (Kim & Mnih, 2018): the VAE's loss and the discriminator's, on disjoint parameters.

    Returns ``loss = mean_B[-log p(x|z) + KL + γ log D(z)/(1 - D(z))] + L_D`` where the VAE's term sees
    the discriminator's parameters through a stop-gradient and ``L_D``
    (:func:`vqjax.losses.factor_vae_discriminator_loss` of the batch's samples against their
    :func:`vqjax.losses.permute_dims`) sees ``z`` through one: the gradient of the sum is the VAE's
    gradient on the VAE's parameters and the discriminator's on its own. With
    :func:`vqjax.nn.factor_vae_optimizer` each network then takes its own optimizer's step, in the same
    training step, from the same batch (as disentanglement_lib; the paper's Algorithm 2 permutes a second
    batch and updates ``D`` after the VAE). Metrics: ``loss`` (the VAE's), ``discriminator_loss``,
    ``discriminator_accuracy`` (real and permuted samples), ``total_correlation`` (the discriminator's
    estimate, nats), ``elbo``, ``rate``, ``distortion`` (and the KL decomposition with ``tc_dataset_size``).
    With ``weights`` (padded evaluation rows) the permutation keeps the rows in use among themselves
    (:func:`vqjax.losses.permute_dims`), so padded rows reach neither network's loss.
    """
    x, k = _data(batch, key, dynamic_binarization)
    k_z, k_perm = jax.random.split(k)
    out = model.vae(x, key=k_z)
    w, total_w = _weights(x.shape[0], weights)
    graphdef, d_state = nnx.split(model.discriminator)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(d_state))  # the VAE's term moves no weight of D
    tc = losses.factor_vae_tc(frozen(out.z))
    terms = losses.factor_vae_loss(out.log_likelihood, out.kl, tc, gamma=gamma)
    z = jax.lax.stop_gradient(out.z)  # D's loss moves no weight of the VAE
    logits_real = model.discriminator(z)
    logits_perm = model.discriminator(losses.permute_dims(z, key=k_perm, weights=weights))
    # Per example i: D's cross-entropy on z_i ("real") and on the permuted row i; their weighted mean is L_D.
    d_loss = jax.vmap(lambda a, b: losses.factor_vae_discriminator_loss(a[None], b[None]))(logits_real, logits_perm)
    ratio_real = losses.factor_vae_tc(logits_real)  # log D/(1 - D) > 0: D says "a sample of q(z)"
    accuracy = 0.5 * ((ratio_real > 0).astype(jnp.float32) + (losses.factor_vae_tc(logits_perm) < 0))
    per_example = {"elbo": losses.elbo(out.log_likelihood, out.kl), "loss": terms.loss,
                   "distortion": terms.distortion, "rate": terms.rate,
                   "total_correlation_discriminator": jax.lax.stop_gradient(terms.total_correlation),
                   "discriminator_loss": d_loss, "discriminator_accuracy": accuracy}
    if tc_dataset_size is not None:
        per_example.update(tc_metrics(out, dataset_size=tc_dataset_size, weights=weights))
    loss, metrics = _vae_report(model.vae, batch, out.logits, per_example, w, total_w, weights)
    return loss + metrics["discriminator_loss"], metrics


def vae_iwae_objective(
    model: VAE,
    batch: dict,
    *,
    key: jax.Array,
    num_samples: int = 5000,
    chunk_size: int = 100,
    dynamic_binarization: bool = True,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""Test negative log-likelihood by the importance-weighted bound with S samples (Burda et al., 2016).

    For evaluation only (its key is split like :func:`vae_objective`'s, so with the same key both
    see the same binarized images). Returns ``(mean nll, metrics)`` with ``iwae_nll`` =
    ``-log (1/S) Σ_s w_s`` per image, in nats (and ``iwae_bits_per_dim`` for the discretized
    logistic), and their ``sum/`` totals.
    """
    x, k = _data(batch, key, dynamic_binarization)
    k_z, _ = jax.random.split(k)
    ll = model.iwae_log_likelihood(x, key=k_z, num_samples=num_samples, chunk_size=chunk_size)
    w, total_w = _weights(x.shape[0], weights)
    per_example = {"iwae_nll": -ll}
    if model.likelihood == "discretized_logistic":
        per_example["iwae_bits_per_dim"] = losses.bits_per_dim(-ll, math.prod(x.shape[1:]))
    metrics = _report(per_example, w, total_w)
    return metrics["iwae_nll"], metrics


def vib_objective(
    model: VIBClassifier,
    batch: dict,
    *,
    key: jax.Array,
    beta: float,
    num_eval_samples: int = 12,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    r"""Batch-mean VIB loss ``-log q(y|z) + β KL(q(z|x) || N(0, I))`` (Alemi et al., 2017).

    One posterior sample per image for the loss; ``accuracy`` averages the softmax over
    ``num_eval_samples`` samples, as the paper does at test time.

    Returns:
      ``(loss, metrics)`` with means of ``loss``, ``cross_entropy`` (nats), ``rate`` (the KL, an
      upper bound on ``I(x; z)``), ``accuracy`` and ``error``, and ``sum/*`` totals.
    """
    x, y = batch["image"], batch["label"]
    k_train, k_eval = jax.random.split(_batch_key(key, batch))
    logits, _, _, kl = model(x, key=k_train)
    terms = losses.vib_loss(logits[0], y, kl, beta=beta)
    probs = model.predict(x, key=k_eval, num_samples=num_eval_samples)
    correct = (jnp.argmax(jax.lax.stop_gradient(probs), axis=-1) == y).astype(jnp.float32)
    w, total_w = _weights(x.shape[0], weights)
    metrics = _report({"loss": terms.loss, "cross_entropy": terms.cross_entropy, "rate": terms.rate,
                       "accuracy": correct, "error": 1.0 - correct}, w, total_w)
    return metrics["loss"], metrics


def oivae_objective(
    model: VAE,
    batch: dict,
    *,
    key: jax.Array,
    group_lasso: float,
    generator_prior_scale: float | None = 1.0,
    dynamic_binarization: bool = False,
    weights: jax.Array | None = None,
    tc_dataset_size: int | None = None,
) -> tuple[jax.Array, dict]:
    r"""oi-VAE (Ainsworth et al., 2018): the smooth part of its objective, per image, and the rest to report.

    The loss differentiated here is, per image,

        -ELBO + ||θ||² / (2 σ_θ²)

    with ``θ ~ N(0, σ_θ² I)`` on the group generators' weights and biases (not W), which fixes the
    scale that ``f_g`` could otherwise take over from a shrinking ``W_g``. As in the authors' code,
    ``log p(θ)`` is added to the per-image ELBO (a Bayesian reading of the whole data set would
    divide it by the N training images: pass ``σ_θ √N``). The group lasso ``λ Σ_{g,j} ||w_{g,j}||₂``
    (``group_lasso``) is left to the proximal step (:func:`vqjax.proximal.group_lasso_prox` with
    the same λ): it is reported, not differentiated.

    Args:
      model: a :class:`vqjax.nn.VAE` whose decoder is a :class:`vqjax.nn.GroupedGenerator`.
      group_lasso: λ (for the report; the optimizer applies it).
      generator_prior_scale: σ_θ; None for no prior on the generators.
      tc_dataset_size: N of the training set: the KL's decomposition is reported too (:func:`tc_metrics`).

    Returns:
      ``(loss, metrics)``: :func:`vae_objective`'s metrics (``elbo``, ``rate``, ``distortion`` in
      nats per image; ``loss`` now includes the generator prior) plus ``generator_prior``,
      ``group_lasso``, ``objective`` (loss + group lasso in nats per image: what ISTA, SGD with the
      proximal step, minimises; proximal Adam weighs λ on its own scale) and
      ``active_blocks`` (the fraction of nonzero ``w_{g,j}``), with ``sum/*`` totals.
    """
    decoder = model.decoder
    if not hasattr(decoder, "latent_to_group_norms"):
        raise ValueError(f"`model.decoder` must be a vqjax.nn.GroupedGenerator; got {type(decoder).__name__}.")
    if generator_prior_scale is not None and not generator_prior_scale > 0:
        raise ValueError(f"`generator_prior_scale` must be > 0 or None; got {generator_prior_scale!r}.")
    check_nonnegative(group_lasso, "group_lasso")  # a traced λ (a sweep's per-run value) is the caller's
    loss, metrics = vae_objective(model, batch, key=key, dynamic_binarization=dynamic_binarization,
                                  weights=weights, tc_dataset_size=tc_dataset_size)
    prior = jnp.zeros((), jnp.float32)
    if generator_prior_scale is not None:
        prior = decoder.generator_sum_of_squares() / (2.0 * generator_prior_scale**2)
    norms = jax.lax.stop_gradient(decoder.latent_to_group_norms())  # [G, L] ||w_{g,j}||, computed once
    lasso = group_lasso * jnp.sum(norms)  # the penalty of vqjax.proximal.group_lasso_penalty
    active = jnp.mean((norms > 0).astype(jnp.float32))
    w, total_w = _weights(batch["image"].shape[0], weights)
    const = {"generator_prior": prior, "group_lasso": lasso, "objective": loss + prior + lasso,
             "active_blocks": active}
    metrics.update(_report({k: jnp.broadcast_to(v, w.shape) for k, v in const.items()}, w, total_w))
    metrics["loss"] = loss + prior
    metrics["sum/loss"] = metrics["sum/loss"] + prior * jnp.sum(w)
    return loss + prior, metrics
