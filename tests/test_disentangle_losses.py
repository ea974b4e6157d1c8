"""β-TCVAE, FactorVAE and DIP-VAE losses (issue 18) against NumPy / SciPy references written from the papers.

The references are independent transcriptions: the estimators of Chen et al. (2018) as logsumexp over the
``[B, B, L]`` matrix of ``log q(z_{i,d} | x_j)`` in float64 (the formulas of rtqichen/beta-tcvae's
``vae_quant.py``, with the stratified weights of the paper's appendix C.2), the discriminator's cross-entropy
from probabilities, and DIP-VAE's covariances from ``np.cov``. Statistical checks use fixed keys and
tolerances of several standard errors.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import special, stats

from vqjax import losses
from vqjax.nn import TCDiscriminator

strict = pytest.mark.usefixtures("strict_promotion")
RNG = np.random.default_rng(18)
ESTIMATORS = ("mss", "mws")


def _batch(b=12, num_latents=4, seed=0, lv_range=(-2.0, 0.5)):
    """``(z, mean, log_variance)`` float32 ``[B, L]`` with ``z ~ q(z|x)``."""
    r = np.random.default_rng(seed)
    mean = r.normal(size=(b, num_latents))
    lv = r.uniform(*lv_range, size=(b, num_latents))
    z = mean + np.exp(0.5 * lv) * r.normal(size=(b, num_latents))
    return tuple(a.astype(np.float32) for a in (z, mean, lv))


# --------------------------------------------------------------------------------------------- references


def _np_log_density(z, mean, lv):
    """``[B, B', L]``: log N(z_{i,d}; μ_{j,d}, e^{lv_{j,d}}), float64."""
    z, mean, lv = (np.asarray(a, np.float64) for a in (z, mean, lv))
    d = z[:, None, :] - mean[None]
    return -0.5 * (d**2 / np.exp(lv)[None] + lv[None] + np.log(2 * np.pi))


def _np_mss_weights(b, n):
    """Appendix C.2 of Chen et al. (2018): 1/N for the sample's own posterior, (N-M)/(NM) for one other
    (the next in the batch), 1/M for the remaining M-1, with M = B - 1."""
    m = b - 1
    w = np.full((b, b), 1.0 / m)
    for i in range(b):
        w[i, i] = 1.0 / n
        w[i, (i + 1) % b] = (n - m) / (n * m)
    return w


def _np_reference_code_weights(b, n):
    """rtqichen/beta-tcvae's ``_log_importance_weight_matrix`` transcribed literally (before its log)."""
    m = b - 1
    w = np.full((b, b), 1.0 / m)
    flat = w.reshape(-1)  # a view, as torch's W.view(-1)
    flat[:: m + 1] = 1.0 / n
    flat[1 :: m + 1] = (n - m) / (n * m)
    w[m - 1, 0] = (n - m) / (n * m)
    return w


def _np_decomposition(z, mean, lv, n, estimator):
    """vae_quant.py's logqz / logqz_prodmarginals, then MI, TC and dimension-wise KL per example."""
    lq = _np_log_density(z, mean, lv)
    b = lq.shape[0]
    if estimator == "mws":
        log_qz = special.logsumexp(lq.sum(2), axis=1) - math.log(b * n)
        log_prod = (special.logsumexp(lq, axis=1) - math.log(b * n)).sum(1)
    else:
        lw = np.log(_np_mss_weights(b, n))
        log_qz = special.logsumexp(lw + lq.sum(2), axis=1)
        log_prod = special.logsumexp(lw[:, :, None] + lq, axis=1).sum(1)
    log_qzx = np.einsum("iid->i", lq)
    log_pz = stats.norm.logpdf(np.asarray(z, np.float64)).sum(1)
    return log_qzx - log_qz, log_qz - log_prod, log_prod - log_pz


def _decompose(z, mean, lv, **kw):
    return jax.device_get(jax.jit(lambda a, b, c: losses.tc_decomposition(a, b, c, **kw))(z, mean, lv))


# --------------------------------------------------------------------------------------------- β-TCVAE


@strict
def test_pairwise_gaussian_log_density_matches_scipy():
    z, mean, lv = _batch(5, 3, seed=1)
    other_mean, other_lv = mean[:4] + 0.5, lv[:4] - 0.3
    got = np.asarray(losses.pairwise_gaussian_log_density(z, other_mean, other_lv))
    assert got.shape == (5, 4, 3) and got.dtype == np.float32
    want = stats.norm.logpdf(
        z[:, None, :].astype(np.float64), other_mean[None].astype(np.float64),
        np.exp(0.5 * other_lv[None].astype(np.float64)),
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@strict
@pytest.mark.parametrize(("b", "n"), [(2, 2), (6, 6), (8, 1000), (32, 737280)])
def test_importance_weights_are_the_papers_stratified_weights(b, n):
    got = np.asarray(losses.log_importance_weight_matrix(b, n), np.float64)
    np.testing.assert_allclose(np.exp(got), _np_mss_weights(b, n), rtol=1e-5, atol=0)
    np.testing.assert_allclose(special.logsumexp(got, axis=1), 0.0, atol=1e-5)  # each row is a mixture
    np.testing.assert_allclose(np.diagonal(got), -math.log(n), rtol=1e-6)  # the sample's own posterior: 1/N


def test_the_reference_codes_strided_matrix_is_not_the_papers():
    # Documents why log_importance_weight_matrix departs from vae_quant.py: the strided assignment
    # sets columns 0 and 1, so the diagonal is not 1/N and row B-2 no longer sums to one.
    w = _np_reference_code_weights(6, 100)
    np.testing.assert_allclose(w[:, 0][[0, 1, 2, 3, 5]], 1 / 100)
    assert not np.allclose(np.diagonal(w), 1 / 100)
    assert not np.allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(_np_mss_weights(6, 100).sum(1), 1.0)


@strict
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("n", [16, 60000])
def test_decomposition_matches_the_numpy_reference(estimator, n):
    z, mean, lv = _batch(16, 5, seed=2)
    got = _decompose(z, mean, lv, dataset_size=n, estimator=estimator)
    assert isinstance(got, losses.TCDecomposition)
    want = _np_decomposition(z, mean, lv, n, estimator)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (16,) and g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-4)


@strict
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_terms_telescope_to_the_one_sample_kl(estimator):
    # MI + TC + dimension-wise KL = log q(z|x) - log p(z) per example, for either estimator: the batch mean
    # is the estimate of the aggregate KL E_x KL(q(z|x) || p(z)) with the same samples.
    z, mean, lv = _batch(256, 4, seed=3)
    mi, tc, dwkl = _decompose(z, mean, lv, dataset_size=10_000, estimator=estimator)
    log_q = losses.gaussian_log_likelihood(mean, z, log_variance=lv, event_ndim=1)
    log_p = losses.gaussian_log_likelihood(np.zeros_like(z), z, variance=1.0, event_ndim=1)
    np.testing.assert_allclose(mi + tc + dwkl, log_q - log_p, rtol=1e-5, atol=2e-4)
    one_sample = np.asarray(losses.monte_carlo_kl(log_q[None], log_p[None]))
    np.testing.assert_allclose(np.mean(mi + tc + dwkl), np.mean(one_sample), rtol=1e-5, atol=1e-4)
    # ... and it estimates the analytic KL of the batch (within 4 standard errors).
    analytic = np.asarray(losses.gaussian_kl(mean, lv))
    diff = (mi + tc + dwkl) - analytic
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(diff.size)


@strict
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_masked_rows_estimate_the_batch_of_the_rows_in_use(estimator):
    z, mean, lv = _batch(10, 3, seed=4)
    keep = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], np.float32)
    got = _decompose(z, mean, lv, dataset_size=500, estimator=estimator, weights=keep)
    rows = keep > 0
    want = _decompose(z[rows], mean[rows], lv[rows], dataset_size=500, estimator=estimator)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g[rows], w, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(g[~rows], 0.0)
    # Every row padded, or a single row left: finite (zeros for the padded rows).
    for mask in (np.zeros(10, np.float32), np.eye(10, dtype=np.float32)[3]):
        out = _decompose(z, mean, lv, dataset_size=500, estimator=estimator, weights=mask)
        assert all(np.all(np.isfinite(t)) for t in out)


def _mixture(n=5, num_latents=2, seed=5):
    """A tiny data set: N Gaussian posteriors q(z|x_n), overlapping (means of spread 1.2, σ in [0.5, 1])."""
    r = np.random.default_rng(seed)
    mean = 1.2 * r.normal(size=(n, num_latents))
    lv = 2 * np.log(r.uniform(0.5, 1.0, size=(n, num_latents)))
    return mean.astype(np.float32), lv.astype(np.float32)


def _np_exact_log_q(z, mean, lv):
    """Exact log q(z) and log q(z_d) of the data set's aggregate posterior (1/N) Σ_n q(z|x_n), float64."""
    lq = _np_log_density(z, mean, lv)
    n = mean.shape[0]
    return special.logsumexp(lq.sum(2), axis=1) - math.log(n), special.logsumexp(lq, axis=1) - math.log(n)


@strict
def test_mws_is_the_exact_log_q_minus_log_b_when_the_batch_is_the_data_set():
    mean, lv = _mixture(6, 3)
    z = (mean + np.exp(0.5 * lv) * RNG.normal(size=mean.shape)).astype(np.float32)
    mi, tc, _ = _decompose(z, mean, lv, dataset_size=6, estimator="mws")
    log_qz, log_qzd = _np_exact_log_q(z, mean, lv)
    log_qzx = _np_log_density(z, mean, lv)[np.arange(6), np.arange(6)].sum(1)
    np.testing.assert_allclose(mi, log_qzx - log_qz + math.log(6), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tc, log_qz - log_qzd.sum(1) + 2 * math.log(6), rtol=1e-5, atol=1e-4)


@strict
def test_mss_is_unbiased_for_q_z_over_the_order_of_the_batch():
    # N = B: the whole data set is the batch. Over all B! orders of the batch, the stratum weight
    # (N-M)/(NM) goes to each other example equally often, and the mean of q̂(z_i) is exactly q(z_i).
    n = 5
    mean, lv = _mixture(n, 2)
    z = (mean + np.exp(0.5 * lv) * RNG.normal(size=mean.shape)).astype(np.float32)
    perms = np.array(list(itertools.permutations(range(n))))  # [120, 5]
    zj, mj, lj = jnp.asarray(z), jnp.asarray(mean), jnp.asarray(lv)

    def log_q_hat(perm):  # log q̂(z) and Σ_d log q̂(z_d), in the original order
        mi, tc, _ = losses.tc_decomposition(zj[perm], mj[perm], lj[perm], dataset_size=n)
        log_qzx = losses.gaussian_log_likelihood(mj[perm], zj[perm], log_variance=lj[perm], event_ndim=1)
        log_qz = log_qzx - mi
        inverse = jnp.argsort(perm)
        return log_qz[inverse], (log_qz - tc)[inverse]

    log_qz_hat, _ = jax.device_get(jax.jit(jax.vmap(log_q_hat))(jnp.asarray(perms)))
    exact, _ = _np_exact_log_q(z, mean, lv)
    mean_q_hat = special.logsumexp(log_qz_hat.astype(np.float64), axis=0) - math.log(len(perms))
    np.testing.assert_allclose(mean_q_hat, exact, rtol=0, atol=1e-4)
    assert np.ptp(log_qz_hat, axis=0).max() > 1e-3  # a real average: the estimate depends on the order


@strict
def test_mss_is_unbiased_for_q_z_over_random_batches_of_a_larger_data_set():
    # N = 12 > B = 4: batches of x_0 and 3 other examples drawn without replacement, in random order. The
    # mean of q̂(z_0) over batches is q(z_0) (each other example carries weight 1/N on average).
    n, b, draws = 12, 4, 20000
    mean, lv = _mixture(n, 2, seed=9)
    z0 = (mean[0] + np.exp(0.5 * lv[0]) * RNG.normal(size=2)).astype(np.float32)  # a sample of q(z|x_0)
    exact = _np_exact_log_q(z0[None], mean, lv)[0][0]
    mj, lj = jnp.asarray(mean), jnp.asarray(lv)

    def log_q_hat(key):
        k_others, k_order = jax.random.split(key)
        others = 1 + jax.random.permutation(k_others, n - 1)[: b - 1]
        idx = jnp.concatenate([jnp.zeros((1,), others.dtype), others])[jax.random.permutation(k_order, b)]
        z = jnp.where((idx == 0)[:, None], jnp.asarray(z0), mj[idx])  # only row x_0's sample is looked at
        mi, _, _ = losses.tc_decomposition(z, mj[idx], lj[idx], dataset_size=n)
        log_qzx = losses.gaussian_log_likelihood(mj[idx], z, log_variance=lj[idx], event_ndim=1)
        return (log_qzx - mi)[jnp.argmax(idx == 0)]

    log_q = np.asarray(jax.jit(jax.vmap(log_q_hat))(jax.random.split(jax.random.key(1), draws)), np.float64)
    q_hat = np.exp(log_q - exact)  # q̂ / q
    assert abs(q_hat.mean() - 1.0) < 4 * q_hat.std() / math.sqrt(draws) + 1e-4, (q_hat.mean(), q_hat.std())
    assert q_hat.std() > 0.01  # a real average over batches


@strict
def test_mss_against_brute_force_monte_carlo_on_a_tiny_mixture():
    # E_q(z)[log q(z)] and the TC of a 5-component mixture by brute force (exact log-densities at many samples
    # of the mixture), against the batch estimators with N = B = 5, averaged over 4000 random batches.
    n, num_latents, draws = 5, 2, 4000
    mean, lv = _mixture(n, num_latents)
    key_perm, key_eps = jax.random.split(jax.random.key(0))
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key_perm, draws))
    eps = jax.random.normal(key_eps, (draws, n, num_latents))
    mj, lj = jnp.asarray(mean)[perms], jnp.asarray(lv)[perms]
    zs = mj + jnp.exp(0.5 * lj) * eps  # [draws, B, L]: one sample of each component per batch

    def estimate(z, m, v, estimator):
        mi, tc, _ = losses.tc_decomposition(z, m, v, dataset_size=n, estimator=estimator)
        log_qzx = losses.gaussian_log_likelihood(m, z, log_variance=v, event_ndim=1)
        return jnp.mean(log_qzx - mi), jnp.mean(tc)

    results = {e: jax.device_get(jax.jit(jax.vmap(lambda z, m, v, e=e: estimate(z, m, v, e)))(zs, mj, lj))
               for e in ESTIMATORS}
    z_all = np.asarray(zs, np.float64).reshape(-1, num_latents)  # draws · B samples of q(z) (stratified)
    log_qz, log_qzd = _np_exact_log_q(z_all, mean, lv)
    exact_log_qz, exact_tc = log_qz.mean(), (log_qz - log_qzd.sum(1)).mean()
    se = (log_qz - log_qzd.sum(1)).std() / math.sqrt(z_all.shape[0])
    mss_log_qz, mss_tc = (float(np.mean(r)) for r in results["mss"])
    mws_log_qz, mws_tc = (float(np.mean(r)) for r in results["mws"])
    assert abs(mss_log_qz - exact_log_qz) < 0.05, (mss_log_qz, exact_log_qz)
    assert abs(mss_tc - exact_tc) < 0.05 + 4 * se, (mss_tc, exact_tc)
    # MWS is the exact value shifted by log B (and its TC by (L - 1) log B): the bias the paper's MSS removes.
    np.testing.assert_allclose(mws_log_qz, exact_log_qz - math.log(n), atol=1e-3)
    np.testing.assert_allclose(mws_tc, exact_tc + (num_latents - 1) * math.log(n), atol=1e-3)


@strict
@pytest.mark.parametrize("dataset_size", [1024, 100_000])
def test_total_correlation_is_near_zero_for_a_factorised_q_and_large_for_correlated_latents(dataset_size):
    b, num_latents = 1024, 3
    r = np.random.default_rng(6)
    lv = np.full((b, num_latents), 2 * math.log(0.5), np.float32)
    independent = r.normal(size=(b, num_latents)).astype(np.float32)  # factorised: q(z) ≈ N(0, 1.25 I)
    u = r.normal(size=(b, 1))
    correlated = (u + 0.05 * r.normal(size=(b, num_latents))).astype(np.float32)  # all ≈ one variable
    small_lv = np.full((b, num_latents), 2 * math.log(0.1), np.float32)
    # The correlated latents are Gaussian: z_d = u + 0.05 n_d + 0.1 ε_d, each of variance 1.0125 and every
    # covariance 1, so TC = -½ log det(correlation matrix) ≈ 3.85 nats.
    rho = 1 / (1 + 0.05**2 + 0.1**2)
    correlation = np.full((num_latents, num_latents), rho) + (1 - rho) * np.eye(num_latents)
    true_tc = -0.5 * np.linalg.slogdet(correlation)[1]
    for mean, log_var, low in ((independent, lv, True), (correlated, small_lv, False)):
        z = (mean + np.exp(0.5 * log_var) * r.normal(size=mean.shape)).astype(np.float32)
        tc = float(np.mean(_decompose(z, mean, log_var, dataset_size=dataset_size).total_correlation))
        if low:
            assert abs(tc) < 0.1, tc
        else:
            assert abs(tc - true_tc) < 0.25, (tc, true_tc)


@strict
def test_beta_tcvae_loss_weights_the_three_terms():
    z, mean, lv = _batch(8, 3, seed=7)
    decomposition = losses.tc_decomposition(z, mean, lv, dataset_size=100)
    log_likelihood = RNG.normal(size=8).astype(np.float32) - 50.0
    out = losses.beta_tcvae_loss(log_likelihood, decomposition, alpha=0.5, beta=6.0, gamma=2.0)
    mi, tc, dwkl = (np.asarray(t, np.float64) for t in decomposition)
    np.testing.assert_allclose(out.loss, -log_likelihood + 0.5 * mi + 6 * tc + 2 * dwkl, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.distortion, -log_likelihood)
    np.testing.assert_allclose(out.rate, mi + tc + dwkl, rtol=1e-5, atol=1e-4)
    assert out.total_correlation.dtype == jnp.float32
    # α = β = γ = 1: the negative ELBO with the one-sample KL.
    plain = losses.beta_tcvae_loss(log_likelihood, tuple(decomposition), beta=1.0)
    np.testing.assert_allclose(plain.loss, plain.distortion + plain.rate, rtol=1e-6)


@strict
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_decomposition_is_differentiable_and_jit_vmap_safe(estimator):
    z, mean, lv = _batch(8, 3, seed=8, lv_range=(-8.0, 6.0))  # very narrow and very wide posteriors
    weights = np.array([1, 1, 1, 0, 1, 1, 0, 1], np.float32)

    def objective(z, mean, lv):
        terms = losses.tc_decomposition(z, mean, lv, dataset_size=1000, estimator=estimator, weights=weights)
        out = losses.beta_tcvae_loss(jnp.zeros(8), terms, beta=6.0)
        return jnp.sum(out.loss * weights) / jnp.sum(weights)

    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(z, mean, lv)
    for g in grads:
        assert np.all(np.isfinite(g))
    for g in grads:  # a padded row takes no part in the others' estimates, and its own terms are 0
        np.testing.assert_array_equal(np.asarray(g)[weights == 0], 0.0)
    eager = losses.tc_decomposition(z, mean, lv, dataset_size=1000, estimator=estimator)
    jitted = _decompose(z, mean, lv, dataset_size=1000, estimator=estimator)
    for e, j in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(e, j, rtol=1e-5, atol=1e-5)
    stacked = [_batch(8, 3, seed=s) for s in (9, 10, 11)]
    zs, ms, lvs = (np.stack(a) for a in zip(*stacked, strict=True))
    decompose = lambda a, b, c: losses.tc_decomposition(a, b, c, dataset_size=50, estimator=estimator)
    batched = jax.vmap(decompose)(zs, ms, lvs)
    for i, (zi, mi_, lvi) in enumerate(stacked):
        one = losses.tc_decomposition(zi, mi_, lvi, dataset_size=50, estimator=estimator)
        for a, b in zip(batched, one, strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5)


def test_decomposition_grad_matches_finite_differences_in_float64():
    from jax.test_util import check_grads

    z, mean, lv = _batch(5, 2, seed=12)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in (z, mean, lv))
        for estimator in ESTIMATORS:
            f = jax.jit(lambda a, b, c, e=estimator: sum(
                jnp.sum(t * w) for t, w in zip(losses.tc_decomposition(a, b, c, dataset_size=40, estimator=e),
                                                (1.0, 3.0, 0.5), strict=True)))
            check_grads(f, args, order=1, modes=("rev",))


@strict
def test_bfloat16_inputs_are_computed_in_float32():
    z, mean, lv = (jnp.asarray(a, jnp.bfloat16) for a in _batch(6, 2, seed=13))
    out = losses.tc_decomposition(z, mean, lv, dataset_size=10)
    assert all(t.dtype == jnp.float32 for t in out)
    assert losses.dip_vae_regularizer(mean, lv, kind="ii", lambda_od=1.0).dtype == jnp.float32
    assert losses.factor_vae_tc(jnp.zeros((4, 2), jnp.bfloat16)).dtype == jnp.float32


# --------------------------------------------------------------------------------------------- FactorVAE


@strict
def test_permute_dims_keeps_each_column_and_breaks_the_dependence():
    b = 4000
    u = RNG.normal(size=(b, 1))
    z = (u + 0.1 * RNG.normal(size=(b, 3))).astype(np.float32)  # correlations ≈ 0.99
    key = jax.random.key(3)
    out = np.asarray(jax.jit(lambda z, k: losses.permute_dims(z, key=k))(z, key))
    assert out.shape == z.shape and out.dtype == np.float32
    np.testing.assert_array_equal(np.sort(out, axis=0), np.sort(z, axis=0))  # each column's multiset
    np.testing.assert_array_equal(out, losses.permute_dims(z, key=key))  # deterministic for the key
    assert not np.array_equal(out, losses.permute_dims(z, key=jax.random.key(4)))
    corr = np.corrcoef(out.T)[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr) < 4 / math.sqrt(b)), corr  # independent columns: |r| ~ 1/sqrt(B)
    assert np.all(np.corrcoef(z.T)[np.triu_indices(3, 1)] > 0.98)
    # Each column is permuted on its own: the rows of an arange matrix come apart.
    grid = np.tile(np.arange(b, dtype=np.float32)[:, None], (1, 3))
    shuffled = np.asarray(losses.permute_dims(grid, key=key))
    assert np.mean(np.all(shuffled == shuffled[:, :1], axis=1)) < 0.01


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - special.logsumexp(x, axis=-1, keepdims=True)


@strict
def test_factor_vae_tc_is_the_log_density_ratio_of_the_discriminator():
    logits = RNG.normal(size=(7, 2)).astype(np.float32) * 3
    p = np.exp(_np_log_softmax(logits))
    want = np.log(p[:, 0] / (1 - p[:, 0]))
    np.testing.assert_allclose(losses.factor_vae_tc(logits), want, rtol=1e-5, atol=1e-5)
    single = RNG.normal(size=(7, 1)).astype(np.float32)
    d = special.expit(single[:, 0].astype(np.float64))
    np.testing.assert_allclose(losses.factor_vae_tc(single), np.log(d / (1 - d)), rtol=1e-5, atol=1e-5)


@strict
def test_factor_vae_discriminator_loss_is_the_cross_entropy():
    real, perm = (RNG.normal(size=(s, 2)).astype(np.float32) * 2 for s in (9, 5))
    want = -0.5 * _np_log_softmax(real)[:, 0].mean() - 0.5 * _np_log_softmax(perm)[:, 1].mean()
    np.testing.assert_allclose(losses.factor_vae_discriminator_loss(real, perm), want, rtol=1e-5)
    r1, p1 = real[:, :1], perm[:, :1]
    d_real, d_perm = special.expit(r1[:, 0].astype(np.float64)), special.expit(p1[:, 0].astype(np.float64))
    want1 = -0.5 * np.log(d_real).mean() - 0.5 * np.log(1 - d_perm).mean()
    np.testing.assert_allclose(losses.factor_vae_discriminator_loss(r1, p1), want1, rtol=1e-5)
    # One logit ℓ is two logits (ℓ, 0); a discriminator that cannot tell the two apart scores log 2.
    pad = lambda x: np.concatenate([x, np.zeros_like(x)], axis=-1)
    np.testing.assert_allclose(losses.factor_vae_discriminator_loss(pad(r1), pad(p1)), want1, rtol=1e-5)
    np.testing.assert_allclose(losses.factor_vae_discriminator_loss(np.zeros((3, 2)), np.zeros((3, 2))),
                               math.log(2), rtol=1e-6)
    # Confident, extreme logits: exact log-sigmoids, no overflow.
    big = np.array([[80.0, -80.0]], np.float32)
    assert float(losses.factor_vae_discriminator_loss(big, big[:, ::-1])) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(float(losses.factor_vae_discriminator_loss(big[:, ::-1], big)))


@strict
def test_factor_vae_loss_adds_gamma_times_the_tc():
    ll, kl, tc = (RNG.normal(size=6).astype(np.float32) for _ in range(3))
    out = losses.factor_vae_loss(ll, kl, tc, gamma=40.0)
    np.testing.assert_allclose(out.loss, -ll + kl + 40 * tc, rtol=1e-5, atol=1e-5)
    assert out.total_correlation.shape == (6,)


def test_tc_discriminator_has_the_papers_architecture_and_leaky_relu():
    d = TCDiscriminator(10, rngs=nnx.Rngs(0))
    assert [tuple(layer.kernel[...].shape) for layer in d.layers] == [(10, 1000)] + [(1000, 1000)] * 5
    assert d.out.kernel[...].shape == (1000, 2) and d.negative_slope == 0.2
    assert d(jnp.zeros((3, 10))).shape == (3, 2)
    tiny = TCDiscriminator(1, hidden=(1,), num_outputs=1, rngs=nnx.Rngs(0))
    tiny.layers[0].kernel[...], tiny.layers[0].bias[...] = jnp.ones((1, 1)), jnp.zeros((1,))
    tiny.out.kernel[...], tiny.out.bias[...] = jnp.ones((1, 1)), jnp.zeros((1,))
    np.testing.assert_allclose(tiny(jnp.array([[-1.0], [2.0]])), [[-0.2], [2.0]], rtol=1e-6)
    assert TCDiscriminator(4, hidden=(8, 8, 8), rngs=nnx.Rngs(1))(jnp.ones((2, 5, 4))).shape == (2, 5, 2)


def _train_discriminator(z_of, num_latents, steps=300, b=256):
    """Trains a small TCDiscriminator on samples ``z_of(key)`` against their permutations; returns the
    mean ``factor_vae_tc`` on fresh samples and the final discriminator loss."""
    d = TCDiscriminator(num_latents, hidden=(64, 64), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(d, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(d, opt, key):
        k_z, k_perm = jax.random.split(key)
        z = z_of(k_z)
        loss, grads = nnx.value_and_grad(lambda m: losses.factor_vae_discriminator_loss(
            m(z), m(losses.permute_dims(z, key=k_perm))))(d)
        opt.update(d, grads)
        return loss

    keys = jax.random.split(jax.random.key(0), steps + 1)
    history = [float(step(d, opt, k)) for k in keys[:-1]]
    tc = float(jnp.mean(losses.factor_vae_tc(d(z_of(keys[-1])))))
    return tc, history


def test_a_trained_discriminator_estimates_the_total_correlation():
    # z_2 = z_1 + 0.1 ε: a Gaussian pair of correlation ρ = 1/sqrt(1.01), TC = -½ log(1 - ρ²) ≈ 2.31.
    def correlated(key, b=256):
        u, e = jax.random.normal(key, (2, b, 1))
        return jnp.concatenate([u, u + 0.1 * e], axis=1)

    tc, history = _train_discriminator(correlated, 2)
    assert np.all(np.isfinite(history))
    assert np.mean(history[-20:]) < math.log(2) - 0.2
    assert 1.5 < tc < 3.0, tc  # a finite discriminator trained 300 steps: about 2.1
    tc_independent, history = _train_discriminator(lambda k: jax.random.normal(k, (256, 2)), 2)
    assert abs(tc_independent) < 0.3, tc_independent
    assert abs(np.mean(history[-50:]) - math.log(2)) < 0.05


# --------------------------------------------------------------------------------------------- DIP-VAE


@strict
def test_dip_covariances_match_numpy():
    _, mean, lv = _batch(20, 4, seed=14)
    cov_i = np.cov(mean.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(losses.dip_vae_covariance(mean), cov_i, rtol=1e-5, atol=1e-6)
    cov_ii = cov_i + np.diag(np.exp(lv.astype(np.float64)).mean(0))
    np.testing.assert_allclose(losses.dip_vae_covariance(mean, lv, kind="ii"), cov_ii, rtol=1e-5, atol=1e-6)
    keep = (np.arange(20) % 3 != 0).astype(np.float32)
    np.testing.assert_allclose(losses.dip_vae_covariance(mean, lv, kind="ii", weights=keep),
                               losses.dip_vae_covariance(mean[keep > 0], lv[keep > 0], kind="ii"),
                               rtol=1e-5, atol=1e-6)
    # Far from the origin in float32: centring first keeps the small covariance.
    shifted = mean + np.float32(1000.0)
    np.testing.assert_allclose(losses.dip_vae_covariance(shifted), cov_i, rtol=1e-3, atol=1e-3)


@strict
@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_regularizer_matches_numpy_with_disentanglement_libs_defaults(kind):
    _, mean, lv = _batch(16, 3, seed=15)
    c = np.asarray(losses.dip_vae_covariance(mean, lv, kind=kind), np.float64)
    off = np.sum(c**2) - np.sum(np.diag(c) ** 2)
    on = np.sum((np.diag(c) - 1) ** 2)
    factor = 10.0 if kind == "i" else 1.0
    got = losses.dip_vae_regularizer(mean, lv, kind=kind, lambda_od=5.0)
    np.testing.assert_allclose(got, 5 * off + 5 * factor * on, rtol=1e-5)
    np.testing.assert_allclose(losses.dip_vae_regularizer(mean, lv, kind=kind, lambda_od=2.0, lambda_d=3.0),
                               2 * off + 3 * on, rtol=1e-5)


@strict
def test_dip_regularizer_hand_cases():
    # Whitened means: Cov[μ] = I exactly, so DIP-VAE-I's penalty is 0; halved, with σ² = ½, Cov_q(z) = I.
    x = RNG.normal(size=(64, 3))
    x -= x.mean(0)
    white = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False, bias=True))).T
    assert float(losses.dip_vae_regularizer(white.astype(np.float32), kind="i", lambda_od=10.0)) < 1e-8
    half = (white * math.sqrt(0.5)).astype(np.float32)
    lv = np.full_like(half, math.log(0.5))
    assert float(losses.dip_vae_regularizer(half, lv, kind="ii", lambda_od=10.0)) < 1e-3
    # C = diag(2, 1): only the diagonal term, λ_d (1)² = 10 λ_od for DIP-VAE-I.
    diag = np.array([[2, 0], [-2, 0], [0, math.sqrt(2)], [0, -math.sqrt(2)]], np.float32)
    np.testing.assert_allclose(losses.dip_vae_covariance(diag), np.diag([2.0, 1.0]), atol=1e-6)
    np.testing.assert_allclose(losses.dip_vae_regularizer(diag, lambda_od=1.0), 10.0, rtol=1e-6)
    # C = [[1, 1], [1, 1]]: only the off-diagonal term, λ_od (1² + 1²).
    pair = np.array([[1, 1], [-1, -1]], np.float32)
    np.testing.assert_allclose(losses.dip_vae_regularizer(pair, lambda_od=3.0), 6.0, rtol=1e-6)
    out = losses.dip_vae_loss(np.array([-1.0, -2.0], np.float32), np.array([0.5, 0.25], np.float32),
                              jnp.float32(6.0))
    np.testing.assert_allclose(out.loss, [7.5, 8.25])
    np.testing.assert_allclose(out.regularizer, [6.0, 6.0])


@strict
def test_dip_regularizer_is_differentiable_under_jit_and_vmap():
    _, mean, lv = _batch(8, 3, seed=16)
    f = lambda m, v: losses.dip_vae_regularizer(m, v, kind="ii", lambda_od=10.0)
    grads = jax.jit(jax.grad(f, argnums=(0, 1)))(mean, lv)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(jax.jit(f)(mean, lv), f(mean, lv), rtol=1e-6)
    stacked = jax.vmap(f)(np.stack([mean, mean + 1]), np.stack([lv, lv]))
    np.testing.assert_allclose(stacked, [f(mean, lv), f(mean + 1, lv)], rtol=1e-5)


# --------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda z, m, v: losses.tc_decomposition(z, m, v, dataset_size=100, estimator="iwae"), "`estimator`"),
        (lambda z, m, v: losses.tc_decomposition(z, m, v, dataset_size=4), "`dataset_size`"),
        (lambda z, m, v: losses.tc_decomposition(z, m, v, dataset_size=True), "`dataset_size`"),
        (lambda z, m, v: losses.tc_decomposition(z, m[:, :2], v, dataset_size=100), "`z` and `mean`"),
        (lambda z, m, v: losses.tc_decomposition(z, m, v[:, :2], dataset_size=100),
         "`mean` and `log_variance`"),
        (lambda z, m, v: losses.tc_decomposition(z[0], m[0], v[0], dataset_size=100),
         "`z` must be a \\[B, L\\]"),
        (lambda z, m, v: losses.tc_decomposition(z[:1], m[:1], v[:1], dataset_size=100), "at least 2"),
        (lambda z, m, v: losses.tc_decomposition(z, m, v, dataset_size=100, weights=np.ones(3)), "`weights`"),
        (lambda z, m, v: losses.log_importance_weight_matrix(1, 10), "`batch_size`"),
        (lambda z, m, v: losses.log_importance_weight_matrix(8, 7), "`dataset_size`"),
        (lambda z, m, v: losses.pairwise_gaussian_log_density(z, m[:, :2], v[:, :2]),
         "same number of latents"),
        (lambda z, m, v: losses.beta_tcvae_loss(np.zeros(8), (z[:, 0],) * 2, beta=1.0), "`decomposition`"),
        (lambda z, m, v: losses.beta_tcvae_loss(np.zeros(7), (z[:, 0],) * 3, beta=1.0), "`log_likelihood`"),
        (lambda z, m, v: losses.beta_tcvae_loss(np.zeros(8), (z[:, 0],) * 3, beta=-1.0), "`beta`"),
        (lambda z, m, v: losses.beta_tcvae_loss(np.zeros(8), (z[:, 0],) * 3, beta=1.0, alpha=-1), "`alpha`"),
        (lambda z, m, v: losses.permute_dims(z[0], key=jax.random.key(0)), "`z` must be a \\[B, L\\]"),
        (lambda z, m, v: losses.permute_dims(z, key=None), "`key`"),
        (lambda z, m, v: losses.factor_vae_tc(np.zeros((4, 3))), "`logits`"),
        (lambda z, m, v: losses.factor_vae_discriminator_loss(np.zeros((4, 2)), np.zeros((4, 1))),
         "same number"),
        (lambda z, m, v: losses.factor_vae_discriminator_loss(np.zeros(()), np.zeros((4, 1))),
         "`logits_real`"),
        (lambda z, m, v: losses.factor_vae_loss(np.zeros(4), np.zeros(4), np.zeros(3), gamma=1.0),
         "`total_correlation`"),
        (lambda z, m, v: losses.factor_vae_loss(np.zeros(4), np.zeros(4), np.zeros(4), gamma=-1.0),
         "`gamma`"),
        (lambda z, m, v: losses.dip_vae_regularizer(m, v, kind="iii", lambda_od=1.0), "`kind`"),
        (lambda z, m, v: losses.dip_vae_regularizer(m, kind="ii", lambda_od=1.0), "`log_variance`"),
        (lambda z, m, v: losses.dip_vae_regularizer(m, v, lambda_od=-1.0), "`lambda_od`"),
        (lambda z, m, v: losses.dip_vae_regularizer(m, v, lambda_od=1.0, lambda_d=-2.0), "`lambda_d`"),
        (lambda z, m, v: losses.dip_vae_regularizer(m[0], v[0], lambda_od=1.0),
         "`mean` must be a \\[B, L\\]"),
        (lambda z, m, v: losses.dip_vae_loss(np.zeros(4), np.zeros(4), np.zeros(4)), "`regularizer`"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, match):
    z, mean, lv = _batch(8, 3, seed=17)
    with pytest.raises(ValueError, match=match):
        call(z, mean, lv)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latents": 0}, "`latents`"),
        ({"latents": 4, "hidden": (8, 0)}, "`hidden`"),
        ({"latents": 4, "num_outputs": 3}, "`num_outputs`"),
        ({"latents": 4, "negative_slope": 1.5}, "`negative_slope`"),
        ({"latents": 4, "dtype": jnp.int32}, "`dtype`"),
    ],
)
def test_bad_discriminator_configuration_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TCDiscriminator(**kwargs, rngs=nnx.Rngs(0))


def test_discriminator_rejects_the_wrong_number_of_latents():
    with pytest.raises(ValueError, match="`z` must end in an axis of L=4"):
        TCDiscriminator(4, hidden=(8,), rngs=nnx.Rngs(0))(jnp.zeros((3, 5)))
