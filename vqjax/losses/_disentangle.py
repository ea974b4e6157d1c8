r"""Disentanglement objectives: β-TCVAE, FactorVAE and DIP-VAE, as pure losses.

All three act on the *aggregate posterior* ``q(z) = E_{p(x)} q(z|x)`` (``q(z) = (1/N) Σ_n q(z|x_n)`` over a
data set of N examples), so, unlike the per-example ELBO terms, each is estimated from a whole batch: a
per-example term returned here depends on every example of the batch (as :func:`vqjax.losses.mmd` does).

- **β-TCVAE** (Chen, Li, Grosse & Duvenaud, 2018, "Isolating Sources of Disentanglement in VAEs", eq. 2)
  splits the aggregate KL term of the ELBO::

      E_{p(x)} KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || Π_j q(z_j)) + Σ_j KL(q(z_j) || p(z_j))
                                  = index-code MI + total correlation (TC) + dimension-wise KL

  and weights the three terms α, β, γ (eq. 4). ``log q(z)`` and ``log q(z_j)`` are estimated on the batch
  (:func:`tc_decomposition`: minibatch-weighted or minibatch-stratified sampling).
- **FactorVAE** (Kim & Mnih, 2018, "Disentangling by Factorising", eq. 2) estimates the TC with a
  discriminator between samples of ``q(z)`` and of ``Π_j q(z_j)`` (:func:`permute_dims`): the density-ratio
  trick ``TC ≈ E_{q(z)} log D(z) / (1 - D(z))`` (:func:`factor_vae_tc`,
  :func:`factor_vae_discriminator_loss`; the network is :class:`vqjax.nn.TCDiscriminator`).
- **DIP-VAE** (Kumar, Sattigeri & Balakrishnan, 2018, "Variational Inference of Disentangled Latent Concepts
  from Unlabeled Observations", eqs. 6–7) pulls a covariance of the aggregate posterior to the identity
  (:func:`dip_vae_covariance`, :func:`dip_vae_regularizer`).

The Gaussian encoder is ``q(z|x) = N(μ(x), diag σ²(x))`` given as ``(mean, log_variance)`` ``[B, L]``, the
prior ``p(z) = N(0, I)``. Everything is computed in float32 at least.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_nonnegative, check_same_shape, float_dtype

__all__ = [
    "TC_ESTIMATORS",
    "BetaTCVAELoss",
    "DIPVAELoss",
    "FactorVAELoss",
    "TCDecomposition",
    "beta_tcvae_loss",
    "dip_vae_covariance",
    "dip_vae_loss",
    "dip_vae_regularizer",
    "factor_vae_discriminator_loss",
    "factor_vae_loss",
    "factor_vae_tc",
    "log_importance_weight_matrix",
    "pairwise_gaussian_log_density",
    "permute_dims",
    "tc_decomposition",
]

TC_ESTIMATORS = ("mss", "mws")
_LOG_2PI = math.log(2.0 * math.pi)


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_latents(z: jax.Array, name: str, *, min_batch: int = 1) -> None:
    if z.ndim != 2:
        raise ValueError(f"`{name}` must be a [B, L] batch of latent vectors; got shape {z.shape}.")
    if z.shape[0] < min_batch:
        raise ValueError(f"`{name}` needs a batch of at least {min_batch} examples; got shape {z.shape}.")


def _check_mask(weights, batch_size: int) -> jax.Array:
    """A ``[B]`` 0/1 mask of the rows in use, as bool (all rows when None)."""
    if weights is None:
        return jnp.ones((batch_size,), bool)
    w = jnp.asarray(weights)
    if w.shape != (batch_size,):
        raise ValueError(f"`weights` must be a [B] mask with B={batch_size}; got shape {w.shape}.")
    return w > 0


# --------------------------------------------------------------------------------------------- β-TCVAE


def pairwise_gaussian_log_density(z: jax.Array, mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    r"""``log N(z_{i,d}; μ_{j,d}, σ²_{j,d})`` for every sample i, every Gaussian j and every dimension d.

    .. math::
        \log q(z_{i,d} \mid x_j) = -\frac12\Big[\frac{(z_{i,d} - μ_{j,d})^2}{σ^2_{j,d}} + \log σ^2_{j,d}
            + \log 2π\Big]

    The matrix behind the minibatch estimators of ``log q(z)`` (Chen et al., 2018, §4.1; the reference's
    ``_logqz = q_dist.log_density(zs.view(B, 1, L), z_params.view(1, B, L, 2))``). Summing its last axis
    gives ``log q(z_i | x_j)``; its diagonal ``[i, i]`` is the sample's own posterior density.

    Args:
      z: ``[B, L]`` samples (``z_i ~ q(z|x_i)``).
      mean: ``[B', L]`` μ of the Gaussians (the batch's encoder means; B' = B for the estimators).
      log_variance: ``[B', L]`` ``log σ²``, same shape as ``mean``.

    Returns:
      ``[B, B', L]`` log-densities in nats, float32 at least.
    """
    z, mean, log_variance = jnp.asarray(z), jnp.asarray(mean), jnp.asarray(log_variance)
    check_same_shape(mean, log_variance, "mean", "log_variance")
    _check_latents(z, "z")
    _check_latents(mean, "mean")
    if z.shape[1] != mean.shape[1]:
        raise ValueError(
            f"`z` and `mean` must have the same number of latents L; got z.shape={z.shape}, "
            f"mean.shape={mean.shape}."
        )
    dtype = float_dtype(z, mean, log_variance)
    z, mu, lv = z.astype(dtype), mean.astype(dtype), log_variance.astype(dtype)
    diff = z[:, None, :] - mu[None, :, :]
    return -0.5 * (jnp.square(diff) * jnp.exp(-lv)[None] + lv[None] + _LOG_2PI)


def _check_dataset_size(dataset_size, batch_size: int) -> None:
    if _is_traced(dataset_size):
        return
    try:
        ok = (not isinstance(dataset_size, bool) and jnp.ndim(dataset_size) == 0
              and float(dataset_size) >= batch_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"`dataset_size` must be a number N >= the batch size B={batch_size} (the batch is drawn from "
            f"the N examples); got {dataset_size!r}."
        )


def _check_estimator(estimator: str) -> None:
    if estimator not in TC_ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {TC_ESTIMATORS}; got {estimator!r}.")


def _log_weights(valid: jax.Array, dataset_size, estimator: str, dtype) -> jax.Array:
    r"""``[B, B]`` log weights ``log w_{ij}`` of component ``q(·|x_j)`` in the estimate of ``q(z_i)``.

    Row i uses the components ``S_i = {i} ∪ {j : valid_j}`` (a padded row keeps its own component, so that
    its estimate stays finite; the caller zeroes it); ``|S_i| = M_i + 1``.
    """
    b = valid.shape[0]
    eye = jnp.eye(b, dtype=bool)
    member = valid[None, :] | eye
    count = jnp.sum(member, axis=1).astype(dtype)  # M_i + 1
    n = jnp.asarray(dataset_size, dtype)
    if estimator == "mws":
        w = jnp.broadcast_to((1.0 / (n * count))[:, None], (b, b))
    else:
        m = count - 1.0
        m_safe = jnp.maximum(m, 1.0)
        idx = jnp.arange(b)
        offset = (idx[None, :] - idx[:, None]) % b  # (j - i) mod B: the cyclic successor of i has offset 1
        offset = jnp.where(member & ~eye, offset, b)
        strat = (offset == jnp.min(offset, axis=1, keepdims=True)) & (offset < b)  # next member after i
        w_strat = ((n - m) / (n * m_safe))[:, None]
        w_other = (1.0 / m_safe)[:, None]
        w = jnp.where(eye, 1.0 / n, jnp.where(strat, w_strat, w_other))
    return jnp.where(member, jnp.log(jnp.where(member, w, 1.0)), -jnp.inf)


def log_importance_weight_matrix(batch_size: int, dataset_size: int) -> jax.Array:
    r"""The ``[B, B]`` log weights of minibatch-stratified sampling (Chen et al., 2018, appendix C.2).

    Row i estimates ``q(z_i) = (1/N) Σ_n q(z_i|x_n)`` for ``z_i ~ q(z|x_i)`` from the B components
    ``q(z_i|x_j)`` of the batch, with ``M = B - 1`` and weights::

        w_ii            = 1/N               (the sample's own posterior)
        w_i,(i+1 mod B) = (N - M) / (N M)   (the stratum that also holds x_i, minus x_i)
        w_ij            = 1/M               (the M - 1 other strata)

    each row summing to one. The weights are the paper's and those the reference implementation
    (``VAE._log_importance_weight_matrix`` of github.com/rtqichen/beta-tcvae, ``vae_quant.py``) intends:
    its strided assignments ``W.view(-1)[::M+1]`` and ``[1::M+1]`` step by B, not B + 1, and so set
    *columns* 0 and 1 rather than the diagonal and its successor (reported in rtqichen/beta-tcvae pull
    request 1 and YannDubs/disentangling-vae issue 58); here the diagonal gets ``1/N`` as the appendix says.

    Args:
      batch_size: B >= 2.
      dataset_size: N >= B.

    Returns:
      ``[B, B]`` float32 ``log w``; ``-inf`` where a weight is 0 (``N = M``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"`batch_size` must be an int >= 2; got {batch_size!r}.")
    _check_dataset_size(dataset_size, batch_size)
    return _log_weights(jnp.ones((batch_size,), bool), dataset_size, "mss", jnp.float32)


class TCDecomposition(NamedTuple):
    """Per-example terms of the KL decomposition; the batch mean of each is its estimate (nats)."""

    mutual_information: jax.Array  # log q(z|x) - log q(z): index-code MI I_q(x; z)
    total_correlation: jax.Array  # log q(z) - Σ_j log q(z_j): KL(q(z) || Π_j q(z_j))
    dimension_wise_kl: jax.Array  # Σ_j log q(z_j) - log p(z): Σ_j KL(q(z_j) || p(z_j))


def tc_decomposition(
    z: jax.Array,
    mean: jax.Array,
    log_variance: jax.Array,
    *,
    dataset_size: int | jax.Array,
    estimator: str = "mss",
    weights: jax.Array | None = None,
) -> TCDecomposition:
    r"""The β-TCVAE decomposition of the KL term on a batch (Chen et al., 2018, eq. 2 and §4.1, appendix C).

    For a batch ``x_1 … x_B`` of a data set of N examples and one sample ``z_i ~ q(z|x_i)`` each, with
    ``q(z_i|x_j) = Π_d q(z_{i,d}|x_j)`` from :func:`pairwise_gaussian_log_density` and ``log w_{ij}`` the
    estimator's weights:

    .. math::
        \log \hat q(z_i) = \operatorname{logsumexp}_j
            \big[\log w_{ij} + \textstyle\sum_d \log q(z_{i,d}|x_j)\big], \qquad
        \log \hat q(z_{i,d}) = \operatorname{logsumexp}_j \big[\log w_{ij} + \log q(z_{i,d}|x_j)\big]

    - ``"mws"``, minibatch-weighted sampling (§4.1): ``w_{ij} = 1/(N B)``, i.e.
      ``log q̂(z_i) = logsumexp_j log q(z_i|x_j) - log(N B)``.
    - ``"mss"``, minibatch-stratified sampling (appendix C.2): :func:`log_importance_weight_matrix`.

    These are the formulas of the reference implementation (``VAE.elbo`` of rtqichen/beta-tcvae,
    ``vae_quant.py``: ``logqz`` and ``logqz_prodmarginals``, with the MSS weight matrix as described in
    :func:`log_importance_weight_matrix`). The terms, per example, are

    .. math::
        MI_i = \log q(z_i|x_i) - \log \hat q(z_i), \quad
        TC_i = \log \hat q(z_i) - \textstyle\sum_d \log \hat q(z_{i,d}), \quad
        DWKL_i = \textstyle\sum_d \log \hat q(z_{i,d}) - \log p(z_i)

    and their batch means are the estimates of the three terms. Whatever the estimator, they telescope:
    ``MI_i + TC_i + DWKL_i = log q(z_i|x_i) - log p(z_i)``, the one-sample Monte Carlo KL of example i
    (its batch mean estimates the aggregate KL ``E_x KL(q(z|x) || p(z))``).

    Bias: MSS's ``q̂(z_i)`` is unbiased for ``q(z_i)`` when the batch is a uniformly random draw without
    replacement in random order (each other example then carries weight 1/N on average), its log slightly
    low (Jensen). MWS's weights sum to 1/N, not one: when the batch is the whole data set (N = B) its
    ``log q̂(z)`` is exactly ``log q(z) - log B`` and its TC ``(L - 1) log B`` too high, and with narrow
    posteriors (each sample's own term dominant) the same holds for N > B. The memory is ``B² L`` floats.

    Args:
      z: ``[B, L]`` samples ``z_i ~ q(z|x_i)`` (reparameterized, so the terms are differentiable).
      mean: ``[B, L]`` μ of ``q(z|x_i)``.
      log_variance: ``[B, L]`` ``log σ²``.
      dataset_size: N, the number of examples the batch is drawn from (N >= B).
      estimator: ``"mss"`` (default) or ``"mws"`` (the reference's default).
      weights: optional ``[B]`` 0/1 mask of the rows in use (padded evaluation batches): the estimate is
        then that of the batch of the rows in use alone (B their number; MSS's successor of a row is the
        next row in use), and the terms of the other rows are 0.

    Returns:
      :class:`TCDecomposition` of ``[B]`` float32 arrays.
    """
    z, mean, log_variance = jnp.asarray(z), jnp.asarray(mean), jnp.asarray(log_variance)
    check_same_shape(z, mean, "z", "mean")
    check_same_shape(mean, log_variance, "mean", "log_variance")
    _check_latents(z, "z", min_batch=2)
    _check_estimator(estimator)
    b = z.shape[0]
    _check_dataset_size(dataset_size, b)
    valid = _check_mask(weights, b)
    log_q = pairwise_gaussian_log_density(z, mean, log_variance)  # [B, B, L]
    dtype = log_q.dtype
    log_w = _log_weights(valid, dataset_size, estimator, dtype)  # [B, B]
    log_q_joint = jnp.sum(log_q, axis=-1)  # [B, B]: log q(z_i | x_j)
    log_q_z_given_x = jnp.diagonal(log_q_joint)  # [B]
    log_q_z = jax.nn.logsumexp(log_w + log_q_joint, axis=1)  # [B]
    log_q_marginals = jnp.sum(jax.nn.logsumexp(log_w[:, :, None] + log_q, axis=1), axis=-1)  # [B]
    zf = z.astype(dtype)
    log_p_z = -0.5 * jnp.sum(jnp.square(zf) + _LOG_2PI, axis=-1)
    terms = (log_q_z_given_x - log_q_z, log_q_z - log_q_marginals, log_q_marginals - log_p_z)
    return TCDecomposition(*(jnp.where(valid, t, 0.0) for t in terms))


class BetaTCVAELoss(NamedTuple):
    """Per-example terms of the β-TCVAE objective; ``loss`` is what is minimised (nats)."""

    loss: jax.Array  # distortion + α·MI + β·TC + γ·dimension-wise KL
    distortion: jax.Array  # -log p(x|z)
    rate: jax.Array  # MI + TC + dimension-wise KL = log q(z|x) - log p(z), the one-sample KL
    mutual_information: jax.Array
    total_correlation: jax.Array
    dimension_wise_kl: jax.Array


def beta_tcvae_loss(
    log_likelihood: jax.Array,
    decomposition: TCDecomposition | tuple[jax.Array, jax.Array, jax.Array],
    *,
    alpha: float | jax.Array = 1.0,
    beta: float | jax.Array,
    gamma: float | jax.Array = 1.0,
) -> BetaTCVAELoss:
    r"""β-TCVAE loss ``-log p(x|z) + α I_q(x; z) + β TC + γ Σ_j KL(q(z_j)||p(z_j))`` (Chen 2018, eq. 4).

    ``α = β = γ = 1`` is the negative ELBO with the one-sample KL ``log q(z|x) - log p(z)``; the paper's
    β-TCVAE keeps ``α = γ = 1`` and raises β (the reference, ``VAE.elbo`` with ``tcvae``:
    ``modified_elbo = logpx - (logqz_condx - logqz) - β (logqz - logqz_prodmarginals)
    - (1 - λ)(logqz_prodmarginals - logpz)``, so ``γ = 1 - λ``). The batch mean of ``loss`` is the
    paper's minibatch objective.

    Args:
      log_likelihood: ``[B]`` ``log p(x|z)`` at ``z ~ q(z|x)``.
      decomposition: :func:`tc_decomposition` of the same samples (``[B]`` each).
      alpha: weight α >= 0 of the index-code mutual information.
      beta: weight β >= 0 of the total correlation.
      gamma: weight γ >= 0 of the dimension-wise KL.

    Returns:
      :class:`BetaTCVAELoss` of ``[B]`` arrays.
    """
    log_likelihood = jnp.asarray(log_likelihood)
    if len(decomposition) != 3:
        raise ValueError(
            "`decomposition` must be a TCDecomposition (mutual_information, total_correlation, "
            f"dimension_wise_kl); got {len(decomposition)} arrays."
        )
    mi, tc, dwkl = (jnp.asarray(t) for t in decomposition)
    for name, t in (("mutual_information", mi), ("total_correlation", tc), ("dimension_wise_kl", dwkl)):
        check_same_shape(log_likelihood, t, "log_likelihood", f"decomposition.{name}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_nonnegative(value, name)
    dtype = float_dtype(log_likelihood, mi)
    distortion = -log_likelihood.astype(dtype)
    mi, tc, dwkl = mi.astype(dtype), tc.astype(dtype), dwkl.astype(dtype)
    loss = distortion + alpha * mi + beta * tc + gamma * dwkl
    return BetaTCVAELoss(loss, distortion, mi + tc + dwkl, mi, tc, dwkl)


# --------------------------------------------------------------------------------------------- FactorVAE


def permute_dims(z: jax.Array, *, key: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    r"""Each latent dimension permuted independently across the batch (Kim & Mnih, 2018, Algorithm 1).

    ``z̃_{i,d} = z_{π_d(i), d}`` with independent uniform permutations ``π_1 … π_L`` of the B rows: each
    column keeps its values (so the marginals ``q(z_d)`` are unchanged) while the dependence between
    columns is broken, which makes the rows samples of ``Π_d q(z_d)``. disentanglement_lib's
    ``shuffle_codes`` does the same with one ``tf.random_shuffle`` per column.

    Args:
      z: ``[B, L]`` samples of ``q(z)`` (encoder samples of a batch).
      key: a ``jax.random.key``; column d uses permutation d of ``jax.random.split(key, L)``.
      weights: optional ``[B]`` 0/1 mask of the rows in use (padded evaluation batches): each column then
        permutes the rows in use among themselves (uniformly) and the others among themselves, so no
        value of a padded row reaches a row in use.

    Returns:
      ``[B, L]`` the permuted samples, same dtype (differentiable: a gather).
    """
    z = jnp.asarray(z)
    _check_latents(z, "z")
    if key is None:
        raise ValueError("`key` must be a jax.random.key; got None.")
    b, num_latents = z.shape
    keys = jax.random.split(key, num_latents)
    if weights is None:
        perms = jax.vmap(lambda k: jax.random.permutation(k, b))(keys)  # [L, B]
    else:
        valid = _check_mask(weights, b)
        slots = jnp.argsort(jnp.where(valid, 0, 1), stable=True)  # the rows in use, then the others, in order

        def column(k):  # a uniform order of the rows in use (then of the others), written into their slots
            order = jnp.argsort(jnp.where(valid, 0.0, 2.0) + jax.random.uniform(k, (b,)))
            return jnp.zeros((b,), jnp.int32).at[slots].set(order.astype(jnp.int32))

        perms = jax.vmap(column)(keys)
    return jnp.take_along_axis(z, perms.T, axis=0)


def _check_logits(logits: jax.Array, name: str) -> None:
    if logits.ndim == 0 or logits.shape[-1] not in (1, 2):
        raise ValueError(
            f"`{name}` must end in an axis of 2 logits (real, permuted) or of 1 logit (log D/(1-D)); "
            f"got shape {logits.shape}."
        )


def factor_vae_tc(logits: jax.Array) -> jax.Array:
    r"""The VAE's per-example TC estimate ``log D(z) / (1 - D(z))`` from the discriminator's logits.

    By the density-ratio trick (Kim & Mnih, 2018, §2) an optimal D between ``q(z)`` (class "real") and
    ``Π_j q(z_j)`` (class "permuted") has ``D/(1-D) = q(z) / Π_j q(z_j)``, so

    .. math::
        TC = KL(q(z) \| Π_j q(z_j)) ≈ E_{q(z)}\Big[\log \frac{D(z)}{1 - D(z)}\Big]

    With two logits ``(a, b)`` and ``D = softmax(a, b)_0`` the log-ratio is ``a - b`` (disentanglement_lib's
    ``tc_loss_per_sample = logits_z[:, 0] - logits_z[:, 1]``); with one logit ``ℓ`` and
    ``D = sigmoid(ℓ)`` it is ``ℓ``. Evaluate the logits at the encoder's samples (not permuted) and let
    the gradient reach the encoder; the discriminator's own parameters are trained by
    :func:`factor_vae_discriminator_loss`.

    Args:
      logits: ``[..., 2]`` (real, permuted) or ``[..., 1]`` logits of D at ``z ~ q(z|x)``.

    Returns:
      ``[...]`` the per-example log density ratio; its batch mean estimates the TC (nats).
    """
    logits = jnp.asarray(logits)
    _check_logits(logits, "logits")
    logits = logits.astype(float_dtype(logits))
    if logits.shape[-1] == 2:
        return logits[..., 0] - logits[..., 1]
    return logits[..., 0]


def factor_vae_discriminator_loss(logits_real: jax.Array, logits_permuted: jax.Array) -> jax.Array:
    r"""Cross-entropy of the TC discriminator: samples of ``q(z)`` are "real", permuted samples are not.

    .. math::
        \mathcal{L}_D = -\frac12\,\mathbb{E}_{z \sim q(z)}[\log D(z)]
                        - \frac12\,\mathbb{E}_{\tilde z \sim Π_j q(z_j)}[\log(1 - D(\tilde z))]

    — minus the quantity the discriminator ascends in Kim & Mnih (2018), Algorithm 2
    (``(1/2m) Σ_i [log D(z_i) + log(1 - D(perm(z')_i))]``), and minus disentanglement_lib's
    ``discriminator_loss = 0.5 mean log probs_z[:, 0] + 0.5 mean log probs_z_shuffle[:, 1]`` (which the
    discriminator's optimizer minimises negated). With two logits, ``D = softmax(logits)_0`` and
    ``1 - D = softmax(logits)_1`` (disentanglement_lib's convention, the default of
    :class:`vqjax.nn.TCDiscriminator`); with one, ``D = sigmoid(ℓ)``. Computed with ``log_softmax`` /
    ``log_sigmoid``, exactly, where disentanglement_lib clips the probabilities to ``[1e-6, 1 - 1e-6]``.

    Pass logits of ``jax.lax.stop_gradient(z)`` (and of its permutation) so that this loss trains the
    discriminator alone. The paper permutes a second, independent batch; disentanglement_lib permutes the
    same batch: either works here.

    Args:
      logits_real: ``[..., 2]`` or ``[..., 1]`` logits of D at samples of ``q(z)``.
      logits_permuted: logits of D at :func:`permute_dims` samples, with the same last axis (the leading
        axes may differ).

    Returns:
      ``[]`` the loss in nats (``log 2`` for a discriminator that cannot tell the two apart).
    """
    logits_real, logits_permuted = jnp.asarray(logits_real), jnp.asarray(logits_permuted)
    _check_logits(logits_real, "logits_real")
    _check_logits(logits_permuted, "logits_permuted")
    if logits_real.shape[-1] != logits_permuted.shape[-1]:
        raise ValueError(
            "`logits_real` and `logits_permuted` must have the same number of logits; got shapes "
            f"{logits_real.shape} and {logits_permuted.shape}."
        )
    dtype = float_dtype(logits_real, logits_permuted)
    real, perm = logits_real.astype(dtype), logits_permuted.astype(dtype)
    if real.shape[-1] == 2:
        log_d_real = jax.nn.log_softmax(real, axis=-1)[..., 0]
        log_not_d_perm = jax.nn.log_softmax(perm, axis=-1)[..., 1]
    else:
        log_d_real = jax.nn.log_sigmoid(real[..., 0])
        log_not_d_perm = jax.nn.log_sigmoid(-perm[..., 0])
    return -0.5 * (jnp.mean(log_d_real) + jnp.mean(log_not_d_perm))


class FactorVAELoss(NamedTuple):
    """Per-example terms of the FactorVAE objective; ``loss`` is what the VAE minimises (nats)."""

    loss: jax.Array  # distortion + rate + γ·TC
    distortion: jax.Array  # -log p(x|z)
    rate: jax.Array  # KL(q(z|x) || p(z))
    total_correlation: jax.Array  # log D(z)/(1 - D(z))


def factor_vae_loss(
    log_likelihood: jax.Array, kl: jax.Array, total_correlation: jax.Array, *, gamma: float | jax.Array
) -> FactorVAELoss:
    r"""FactorVAE's VAE loss ``-log p(x|z) + KL(q(z|x)||p(z)) + γ log D(z)/(1 - D(z))`` (Kim & Mnih, eq. 2).

    Args:
      log_likelihood: ``[B]`` ``log p(x|z)`` at ``z ~ q(z|x)``.
      kl: ``[B]`` ``KL(q(z|x) || p(z))``, e.g. :func:`gaussian_kl`.
      total_correlation: ``[B]`` :func:`factor_vae_tc` of the discriminator's logits at the same ``z``.
      gamma: γ >= 0 (the paper and disentanglement_lib sweep 10 … 100 on dSprites).

    Returns:
      :class:`FactorVAELoss` of ``[B]`` arrays.
    """
    log_likelihood, kl, tc = jnp.asarray(log_likelihood), jnp.asarray(kl), jnp.asarray(total_correlation)
    check_same_shape(log_likelihood, kl, "log_likelihood", "kl")
    check_same_shape(log_likelihood, tc, "log_likelihood", "total_correlation")
    check_nonnegative(gamma, "gamma")
    dtype = float_dtype(log_likelihood, kl, tc)
    distortion, rate, tc = -log_likelihood.astype(dtype), kl.astype(dtype), tc.astype(dtype)
    return FactorVAELoss(distortion + rate + gamma * tc, distortion, rate, tc)


# --------------------------------------------------------------------------------------------- DIP-VAE

DIP_KINDS = ("i", "ii")


def dip_vae_covariance(
    mean: jax.Array,
    log_variance: jax.Array | None = None,
    *,
    kind: str = "i",
    weights: jax.Array | None = None,
) -> jax.Array:
    r"""The covariance DIP-VAE regularises (Kumar et al., 2018, eqs. 6 and 7), over the batch.

    .. math::
        \text{I:}\quad C = \operatorname{Cov}_{p(x)}[μ(x)], \qquad
        \text{II:}\quad C = \operatorname{Cov}_{q(z)}[z] = \mathbb{E}_{p(x)}[\operatorname{diag} σ^2(x)]
                            + \operatorname{Cov}_{p(x)}[μ(x)]

    with the batch (biased, ``1/B``) covariance ``E[μ μᵀ] - E[μ] E[μ]ᵀ``, as disentanglement_lib's
    ``compute_covariance_z_mean`` (computed here on centred means, which is the same in exact arithmetic
    and loses less in float32).

    Args:
      mean: ``[B, L]`` μ(x) of the batch.
      log_variance: ``[B, L]`` ``log σ²(x)``; needed for ``kind="ii"``.
      kind: ``"i"`` or ``"ii"``.
      weights: optional ``[B]`` 0/1 mask of the rows in use (padded evaluation batches).

    Returns:
      ``[L, L]`` float32.
    """
    if kind not in DIP_KINDS:
        raise ValueError(f"`kind` must be one of {DIP_KINDS}; got {kind!r}.")
    mean = jnp.asarray(mean)
    _check_latents(mean, "mean")
    if log_variance is not None:
        log_variance = jnp.asarray(log_variance)
        check_same_shape(mean, log_variance, "mean", "log_variance")
    elif kind == "ii":
        raise ValueError(
            "`log_variance` is needed for kind='ii' (E[diag σ²(x)] is part of Cov_q(z)); got None."
        )
    dtype = float_dtype(mean) if log_variance is None else float_dtype(mean, log_variance)
    mu = mean.astype(dtype)
    w = _check_mask(weights, mean.shape[0]).astype(dtype)
    total = jnp.maximum(jnp.sum(w), 1.0)
    centred = mu - jnp.sum(w[:, None] * mu, axis=0) / total
    cov = (w[:, None] * centred).T @ centred / total
    if kind == "ii":
        cov = cov + jnp.diag(jnp.sum(w[:, None] * jnp.exp(log_variance.astype(dtype)), axis=0) / total)
    return cov


def dip_vae_regularizer(
    mean: jax.Array,
    log_variance: jax.Array | None = None,
    *,
    kind: str = "i",
    lambda_od: float | jax.Array,
    lambda_d: float | jax.Array | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
    r"""DIP-VAE's penalty ``λ_od Σ_{i≠j} C_ij² + λ_d Σ_i (C_ii - 1)²`` (Kumar et al., eqs. 6–7).

    ``C`` is :func:`dip_vae_covariance` (``Cov[μ(x)]`` for DIP-VAE-I, ``Cov_q(z)`` for DIP-VAE-II); the
    penalty pulls it to the identity. This is disentanglement_lib's ``regularize_diag_off_diag_dip`` of
    ``DIPVAE.regularizer``, whose ``lambda_d = lambda_d_factor · lambda_od`` with ``lambda_d_factor`` 10
    for DIP-VAE-I and 1 for DIP-VAE-II in its studies (``unsupervised_study_v1``, which sweeps
    λ_od ∈ {1, 2, 5, 10, 20, 50}): those are the defaults of ``lambda_d`` here. The DIP-VAE loss adds it,
    once per batch, to the ELBO's ``distortion + KL`` (:func:`dip_vae_loss`).

    Args:
      mean: ``[B, L]`` μ(x).
      log_variance: ``[B, L]`` ``log σ²(x)`` (needed for ``kind="ii"``).
      kind: ``"i"`` or ``"ii"``.
      lambda_od: λ_od >= 0, the weight of the off-diagonal entries.
      lambda_d: λ_d >= 0, the weight of the diagonal; None: ``10 λ_od`` (I) or ``λ_od`` (II).
      weights: optional ``[B]`` 0/1 mask of the rows in use.

    Returns:
      ``[]`` the penalty, float32.
    """
    cov = dip_vae_covariance(mean, log_variance, kind=kind, weights=weights)
    check_nonnegative(lambda_od, "lambda_od")
    if lambda_d is None:
        lambda_d = (10.0 if kind == "i" else 1.0) * lambda_od
    check_nonnegative(lambda_d, "lambda_d")
    diag = jnp.diagonal(cov)
    off_diagonal = jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(diag))
    return lambda_od * off_diagonal + lambda_d * jnp.sum(jnp.square(diag - 1.0))


class DIPVAELoss(NamedTuple):
    """Per-example terms of the DIP-VAE objective; ``loss`` is what is minimised (nats)."""

    loss: jax.Array  # distortion + rate + regularizer
    distortion: jax.Array  # -log p(x|z)
    rate: jax.Array  # KL(q(z|x) || p(z))
    regularizer: jax.Array  # the batch's dip_vae_regularizer, broadcast per example


def dip_vae_loss(log_likelihood: jax.Array, kl: jax.Array, regularizer: jax.Array) -> DIPVAELoss:
    r"""DIP-VAE loss ``-log p(x|z) + KL(q(z|x)||p(z)) + λ_od Σ_{i≠j} C_ij² + λ_d Σ_i (C_ii - 1)²``.

    Args:
      log_likelihood: ``[B]`` ``log p(x|z)``.
      kl: ``[B]`` ``KL(q(z|x) || p(z))``.
      regularizer: ``[]`` :func:`dip_vae_regularizer` of the batch.

    Returns:
      :class:`DIPVAELoss` of ``[B]`` arrays (the batch mean of ``loss`` is the paper's objective).
    """
    log_likelihood, kl, regularizer = jnp.asarray(log_likelihood), jnp.asarray(kl), jnp.asarray(regularizer)
    check_same_shape(log_likelihood, kl, "log_likelihood", "kl")
    if regularizer.ndim != 0:
        raise ValueError(f"`regularizer` must be the batch's scalar penalty; got shape {regularizer.shape}.")
    dtype = float_dtype(log_likelihood, kl)
    distortion, rate = -log_likelihood.astype(dtype), kl.astype(dtype)
    reg = jnp.broadcast_to(regularizer.astype(dtype), rate.shape)
    return DIPVAELoss(distortion + rate + reg, distortion, rate, reg)
