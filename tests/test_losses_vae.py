"""The VAE-family losses (likelihoods, KL, ELBO/β-VAE, IWAE, MMD/InfoVAE, VIB) against scipy / NumPy.

Statistical checks use fixed keys and tolerances of several standard errors (estimated from the same
samples), so they are deterministic and would stay green under any correct change of the PRNG.
"""

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special, stats

pytestmark = pytest.mark.usefixtures("strict_promotion")

from vqjax import losses

RNG = np.random.default_rng(0)


def _f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def _compiled(f):
    """``f()`` as one XLA program: one compilation instead of one per primitive (keeps the file fast).

    Eager execution is compared with jit separately, in ``test_under_jit_vmap_grad``.
    """
    return jax.device_get(jax.jit(f)())


def _np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    return logits - special.logsumexp(logits, axis=-1, keepdims=True)


def _np_kl(mu, lv, pm=0.0, plv=0.0):
    """Closed-form KL(N(mu, e^lv) || N(pm, e^plv)) per coordinate, float64."""
    mu, lv, pm, plv = (np.asarray(a, np.float64) for a in (mu, lv, pm, plv))
    var, pvar = np.exp(lv), np.exp(plv)
    return 0.5 * np.log(pvar / var) + (var + (mu - pm) ** 2) / (2 * pvar) - 0.5


# --------------------------------------------------------------------------------------------- KL


def test_gaussian_kl_standard_prior_matches_closed_form():
    mu = RNG.normal(size=(4, 5)).astype(np.float32)
    lv = RNG.uniform(-3, 2, size=(4, 5)).astype(np.float32)
    got, got_all, zero = _compiled(
        lambda: (
            losses.gaussian_kl(mu, lv),
            losses.gaussian_kl(mu, lv, event_ndim=2),
            losses.gaussian_kl(np.zeros((4, 5), np.float32), np.zeros((4, 5), np.float32)),
        )
    )
    assert got.shape == (4,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _np_kl(mu, lv).sum(-1), rtol=1e-5, atol=1e-6)
    # The textbook form ½ Σ (μ² + σ² - 1 - log σ²).
    np.testing.assert_allclose(got, 0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, -1), rtol=1e-5, atol=1e-6)
    # event_ndim sums more axes; the KL of the prior to itself is zero.
    np.testing.assert_allclose(got_all, _np_kl(mu, lv).sum(), rtol=1e-5)
    np.testing.assert_array_equal(zero, 0.0)


def test_gaussian_kl_general_diagonal_prior_matches_closed_form():
    mu, pm = RNG.normal(size=(2, 3, 4)).astype(np.float32), RNG.normal(size=(3, 4)).astype(np.float32)
    lv = RNG.uniform(-2, 1, size=(2, 3, 4)).astype(np.float32)
    plv = RNG.uniform(-1, 1, size=(4,)).astype(np.float32)  # broadcast: one prior variance per latent
    zeros = np.zeros(4, np.float32)
    got, only_mean, only_var, explicit_standard, default, self_kl = _compiled(
        lambda: (
            losses.gaussian_kl(mu, lv, pm, plv),
            losses.gaussian_kl(mu, lv, prior_mean=pm),
            losses.gaussian_kl(mu, lv, prior_log_variance=plv),
            losses.gaussian_kl(mu, lv, zeros, zeros),
            losses.gaussian_kl(mu, lv),
            losses.gaussian_kl(mu, lv, mu, lv),
        )
    )
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, _np_kl(mu, lv, pm, plv).sum(-1), rtol=1e-5, atol=1e-5)
    # Only one of the two prior parameters given: the other is the standard normal's.
    np.testing.assert_allclose(only_mean, _np_kl(mu, lv, pm, 0.0).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(only_var, _np_kl(mu, lv, 0.0, plv).sum(-1), rtol=1e-5)
    # An explicit N(0, I) prior is the default; KL(q || q) = 0; KL > 0 otherwise.
    np.testing.assert_allclose(explicit_standard, default, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(self_kl, 0.0, atol=1e-6)
    assert np.all(got > 0)


@jax.jit
def _kl_and_monte_carlo(mu, lv, pm, plv, key):
    z = losses.reparameterize(mu, lv, key=key, num_samples=20_000)
    log_q = losses.gaussian_log_likelihood(jnp.broadcast_to(mu, z.shape), z, log_variance=lv, event_ndim=1)
    log_p = losses.gaussian_log_likelihood(jnp.broadcast_to(pm, z.shape), z, log_variance=plv, event_ndim=1)
    moved = losses.monte_carlo_kl(jnp.moveaxis(log_q, 0, -1), jnp.moveaxis(log_p, 0, -1), axis=-1)
    return losses.gaussian_kl(mu, lv, pm, plv), losses.monte_carlo_kl(log_q, log_p), log_q - log_p, moved


@pytest.mark.parametrize("general_prior", [False, True])
def test_gaussian_kl_matches_its_monte_carlo_estimate(general_prior):
    """reparameterize + gaussian_log_likelihood(log_variance=) + monte_carlo_kl ≈ gaussian_kl."""
    rng = np.random.default_rng(1)  # a statistical test: its own fixed numbers, whatever the test order
    mu = rng.normal(size=(4, 3)).astype(np.float32)
    lv = rng.uniform(-1.5, 1.0, size=(4, 3)).astype(np.float32)
    pm = rng.normal(size=(3,)).astype(np.float32) if general_prior else np.zeros(3, np.float32)
    plv = rng.uniform(-0.5, 1.0, size=(3,)).astype(np.float32) if general_prior else np.zeros(3, np.float32)
    analytic, mc, diff, moved = jax.device_get(_kl_and_monte_carlo(mu, lv, pm, plv, jax.random.key(1)))
    num_samples = diff.shape[0]
    assert diff.shape == (num_samples, 4) and mc.shape == (4,)
    exact = _np_kl(mu, lv, pm, plv).sum(-1)
    np.testing.assert_allclose(analytic, exact, rtol=1e-5, atol=1e-6)
    se = diff.astype(np.float64).std(axis=0) / math.sqrt(num_samples)
    assert np.all(np.abs(mc - exact) < 5 * se + 1e-4), (mc, exact, se)
    # The sample axis may be elsewhere.
    np.testing.assert_allclose(moved, mc, rtol=1e-6)


def test_reparameterize_shapes_and_moments():
    mu, lv = np.array([1.0, -2.0], np.float32), np.array([0.0, np.log(4.0)], np.float32)
    key = jax.random.key(0)
    one, many = _compiled(
        lambda: (
            losses.reparameterize(mu, lv, key=key),
            losses.reparameterize(mu, lv, key=key, num_samples=40_000),
        )
    )
    assert one.shape == (2,) and one.dtype == np.float32 and many.shape == (40_000, 2)
    z = many.astype(np.float64)
    se_mean = np.sqrt(np.exp(lv)) / math.sqrt(len(z))
    assert np.all(np.abs(z.mean(0) - mu) < 5 * se_mean)
    # The variance of a sample variance of a normal is 2σ⁴/(n-1).
    assert np.all(np.abs(z.var(0) - np.exp(lv)) < 5 * np.exp(lv) * math.sqrt(2 / len(z)))


# ------------------------------------------------------------------------------------- likelihoods


def test_bernoulli_matches_scipy_for_binary_targets():
    logits = RNG.normal(scale=3.0, size=(3, 4, 5)).astype(np.float32)
    x = RNG.integers(0, 2, size=(3, 4, 5))
    p = special.expit(logits.astype(np.float64))
    ref = stats.bernoulli.logpmf(x, p)
    xf = x.astype(np.float32)
    per_example, per_pixel, total = _compiled(
        lambda: (
            losses.bernoulli_log_likelihood(logits, xf, event_ndim=2),
            losses.bernoulli_log_likelihood(logits, xf, event_ndim=0),
            losses.bernoulli_log_likelihood(logits, xf),
        )
    )
    np.testing.assert_allclose(per_example, ref.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(per_pixel, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, ref.sum(), rtol=1e-5)


def test_gaussian_fixed_variance_matches_scipy():
    mu, x = RNG.normal(size=(2, 3, 4)).astype(np.float32), RNG.normal(size=(2, 3, 4)).astype(np.float32)
    variances = (0.5, 1.0, 3.0)
    got = _compiled(
        lambda: [
            (
                losses.gaussian_log_likelihood(mu, x, variance=v, event_ndim=1),
                losses.gaussian_log_likelihood(mu, x, variance=v),
                losses.gaussian_log_likelihood(mu, x, variance=v, event_ndim=2),
            )
            for v in variances
        ]
    )
    for var, (per_row, total, _) in zip(variances, got, strict=True):
        ref = stats.norm.logpdf(x.astype(np.float64), mu.astype(np.float64), math.sqrt(var))
        np.testing.assert_allclose(per_row, ref.sum(-1), rtol=1e-5)
        np.testing.assert_allclose(total, ref.sum(), rtol=1e-5)
    # σ² = 1/2: the negative log-likelihood is the squared error plus a constant.
    nll = -got[0][2]
    np.testing.assert_allclose(nll, np.sum((x - mu) ** 2, (1, 2)) + 12 * 0.5 * math.log(math.pi), rtol=1e-5)


def test_gaussian_learned_log_variance_matches_scipy():
    mu, x = RNG.normal(size=(2, 3, 4)).astype(np.float32), RNG.normal(size=(2, 3, 4)).astype(np.float32)
    lv = RNG.uniform(-3, 2, size=(2, 3, 4)).astype(np.float32)
    lv_pixel = lv[0]
    per_element, per_pixel, constant, fixed = _compiled(
        lambda: (
            losses.gaussian_log_likelihood(mu, x, log_variance=lv, event_ndim=2),
            losses.gaussian_log_likelihood(mu, x, variance=7.0, log_variance=lv_pixel, event_ndim=2),
            losses.gaussian_log_likelihood(mu, x, log_variance=np.float32(np.log(0.3)), event_ndim=1),
            losses.gaussian_log_likelihood(mu, x, variance=0.3, event_ndim=1),
        )
    )
    ref = stats.norm.logpdf(x.astype(np.float64), mu.astype(np.float64), np.exp(0.5 * lv.astype(np.float64)))
    np.testing.assert_allclose(per_element, ref.sum((1, 2)), rtol=1e-5)
    # One log-variance per pixel, broadcast over the batch; it overrides `variance`.
    ref = stats.norm.logpdf(
        x.astype(np.float64), mu.astype(np.float64), np.exp(0.5 * lv_pixel.astype(np.float64))
    )
    np.testing.assert_allclose(per_pixel, ref.sum((1, 2)), rtol=1e-5)
    # A constant log-variance equals the fixed-variance form.
    np.testing.assert_allclose(constant, fixed, rtol=1e-5)


LEVELS = np.arange(256)


def _np_discretized_logistic_logp(mean, log_scale, num_bins=256):
    """log P(x = k) for every level k, from scipy.stats.logistic in float64 (``[..., num_bins]``)."""
    mean = np.asarray(mean, np.float64)[..., None]
    s = np.exp(np.asarray(log_scale, np.float64))[..., None]
    k = np.arange(num_bins)
    c, d = k / (num_bins - 1), 0.5 / (num_bins - 1)
    hi = np.where(k == num_bins - 1, np.inf, (c + d - mean) / s)
    lo = np.where(k == 0, -np.inf, (c - d - mean) / s)
    # F(hi) - F(lo), or the same as sf(lo) - sf(hi) on the right tail where F saturates at 1.
    right = np.where(k == 0, hi, np.where(k == num_bins - 1, lo, 0.5 * (hi + lo))) > 0
    p = np.where(
        right, stats.logistic.sf(lo) - stats.logistic.sf(hi), stats.logistic.cdf(hi) - stats.logistic.cdf(lo)
    )
    with np.errstate(divide="ignore"):
        return np.log(p)


def _discretized_logistic_all_levels_eager(mean, log_scale, num_bins=256):
    """The library's log P(x = k) for every level k: ``[..., num_bins]`` (float32)."""
    mean, log_scale = jnp.asarray(mean, jnp.float32), jnp.asarray(log_scale, jnp.float32)
    shape = (*mean.shape, num_bins)
    targets = jnp.broadcast_to(jnp.arange(num_bins, dtype=jnp.float32) / (num_bins - 1), shape)
    return losses.discretized_logistic_log_likelihood(
        jnp.broadcast_to(mean[..., None], shape),
        log_scale[..., None],
        targets,
        num_bins=num_bins,
        event_ndim=0,
    )


_discretized_logistic_all_levels = jax.jit(_discretized_logistic_all_levels_eager, static_argnames="num_bins")


# Means: mid-range, near a bin edge, near the end levels, outside [0, 1]. Log-scales: from a very
# sharp decoder (s ≈ 6e-6) to a very broad one (s ≈ 1.6e5), where a bin is tiny next to the scale.
MEANS = np.array([0.5 + 0.2 / 255, 0.3, 0.0012, 0.999, -0.7, 1.6, 4.0], np.float32)
LOG_SCALES = np.array([-12.0, -7.0, -4.0, -1.0, 0.0, 2.0, 5.0, 8.0, 12.0], np.float32)


def test_discretized_logistic_matches_scipy():
    mean, log_scale = np.meshgrid(MEANS, LOG_SCALES, indexing="ij")
    got = np.asarray(_discretized_logistic_all_levels(mean, log_scale), np.float64)
    ref = _np_discretized_logistic_logp(mean.astype(np.float64), log_scale.astype(np.float64))
    usable = ref > -600  # where float64 scipy still resolves the bin (the rest: see the extremes test)
    assert usable.mean() > 0.75
    assert np.all(np.isfinite(got))
    # The float32 inputs alone move the logistic's arguments (c ± δ - μ)/s by about
    # eps·(1 + |μ|)/s, and log P has slope ≤ 1 in each: that, and float32 relative precision, is all
    # the error allowed. (A difference of two rounded log σ's is off by ~1e-2 nats at s = e^8.)
    cond = (
        2
        * np.finfo(np.float32).eps
        * (1 + np.abs(mean.astype(np.float64)))
        / np.exp(log_scale.astype(np.float64))
    )
    tol = 2e-6 * np.abs(ref) + 2 * cond[..., None] + 2e-6
    ratio = np.zeros_like(ref)
    ratio[usable] = np.abs(got - ref)[usable] / tol[usable]
    worst = np.unravel_index(np.argmax(ratio), ratio.shape)
    assert ratio.max() <= 1, (worst, got[worst], ref[worst], tol[worst])
    # Other values are rounded to the nearest level; event_ndim sums the example's pixels.
    off_grid = ((LEVELS + RNG.uniform(-0.45, 0.45, size=256)) / 255).astype(np.float32)
    x = RNG.integers(0, 256, size=(2, 3, 4)) / 255
    mu, ls = (
        RNG.uniform(0, 1, size=(2, 3, 4)).astype(np.float32),
        RNG.uniform(-4, 0, size=(3, 4)).astype(np.float32),
    )
    rounded, per_example = _compiled(
        lambda: (
            losses.discretized_logistic_log_likelihood(
                np.full(256, 0.4, np.float32), np.float32(-3.0), off_grid, event_ndim=0
            ),
            losses.discretized_logistic_log_likelihood(mu, ls, x.astype(np.float32), event_ndim=2),
        )
    )
    np.testing.assert_allclose(
        rounded, _np_discretized_logistic_logp(np.float32(0.4), np.float32(-3.0)), rtol=2e-5, atol=2e-5
    )
    ref = np.take_along_axis(
        _np_discretized_logistic_logp(mu, np.broadcast_to(ls, mu.shape)),
        (x * 255).round().astype(int)[..., None],
        -1,
    )[..., 0]
    np.testing.assert_allclose(per_example, ref.sum((1, 2)), rtol=1e-5)


EXTREME_MEANS = np.array([0.5, 127.5 / 255, 0.0, 1.0, -3.0, 5.0, -1e3, 1e3], np.float32)
EXTREME_LOG_SCALES = np.array([-15.0, -10.0, -7.0, 0.0, 8.0, 12.0], np.float32)


def test_discretized_logistic_probabilities_sum_to_one_at_extremes():
    """Σ_k P(k) = 1 over the 256 levels even where σ(a) - σ(b) in float32 would be 0 or 1 - 1."""
    mean, log_scale = np.meshgrid(EXTREME_MEANS, EXTREME_LOG_SCALES, indexing="ij")
    # Every bin edge (k + ½)/255 as the mean, at sharp scales: two levels share the mass there, and
    # unless both compute their common edge identically the sum is off by ~eps/s (0.05 at s = e^-15).
    edges, sharp_scales = np.meshgrid(
        (np.arange(255) + 0.5) / 255, [-15.0, -12.0, -10.0, -8.0], indexing="ij"
    )
    k = 80  # and a tiny scale around a mean inside level k's bin
    mean = np.concatenate([mean.ravel(), edges.ravel(), [(k + 0.1) / 255]])
    log_scale = np.concatenate([log_scale.ravel(), sharp_scales.ravel(), [-15.0]])
    # Eagerly (op by op) and under jit (where XLA may fuse the edge arithmetic differently).
    for all_levels in (_discretized_logistic_all_levels_eager, _discretized_logistic_all_levels):
        log_p = np.asarray(all_levels(mean, log_scale), np.float64)
        assert not np.any(np.isnan(log_p)) and not np.any(log_p == -np.inf), (
            "a level got probability 0 or NaN"
        )
        assert np.all(log_p <= 1e-6)
        log_total = special.logsumexp(log_p, axis=-1)
        worst = np.argmax(np.abs(log_total))
        assert abs(log_total[worst]) < 1e-6, (all_levels, mean[worst], log_scale[worst], log_total[worst])
    # The tiny scale: all the mass on the level whose bin holds the mean.
    sharp = log_p[-1]
    assert sharp[k] > -1e-6 and np.max(np.delete(sharp, k)) < -1e3
    # Naive float32 differences fail exactly here: the neighbours of the sharp level are
    # 1 - 1 (right tail) or 0 - 0 (left), yet their log-probabilities are finite and ordered.
    assert np.all(np.diff(sharp[:k]) > 0) and np.all(np.diff(sharp[k:]) < 0)


def test_discretized_logistic_gradients_are_finite_at_extremes():
    mean, log_scale = np.meshgrid(EXTREME_MEANS, EXTREME_LOG_SCALES, indexing="ij")

    moderate = np.array([[0.3, -3.0], [0.5, 0.0], [1.2, 2.0]], np.float32)

    @jax.jit
    def grads(m, s):
        """Gradients of Σ_k log P(k) at every (m, s), and of log P(77) alone at the moderate points."""
        all_levels = jax.grad(lambda a, b: jnp.sum(_discretized_logistic_all_levels(a, b)), argnums=(0, 1))(
            m, s
        )
        one_level = jax.grad(
            lambda a, b: jnp.sum(_discretized_logistic_all_levels(a, b)[:, 77]), argnums=(0, 1)
        )(moderate[:, 0], moderate[:, 1])
        return all_levels, one_level

    (gm, gs), (gm77, gs77) = jax.device_get(grads(*_f32(mean, log_scale)))
    assert np.all(np.isfinite(gm)) and np.all(np.isfinite(gs))
    # Moderate values: the gradient agrees with central differences of the float64 scipy reference.
    h = 1e-6
    for (m, s), got in zip(moderate.astype(np.float64), np.stack([gm77, gs77], -1), strict=True):
        fd_m = (_np_discretized_logistic_logp(m + h, s)[77] - _np_discretized_logistic_logp(m - h, s)[77]) / (
            2 * h
        )
        fd_s = (_np_discretized_logistic_logp(m, s + h)[77] - _np_discretized_logistic_logp(m, s - h)[77]) / (
            2 * h
        )
        np.testing.assert_allclose(got, [fd_m, fd_s], rtol=2e-3, atol=2e-4)
    # jax's own checker in float64, through all three branches (first level, interior, last level).
    with jax.enable_x64(True):
        targets = jnp.asarray([0.0, 17 / 255, 128 / 255, 1.0, 1.0])
        check_grads(
            jax.jit(lambda m, s: losses.discretized_logistic_log_likelihood(m, s, targets)),
            (jnp.asarray([0.1, 0.3, 0.5, 0.9, 1.4]), jnp.asarray([-2.0, -4.5, 0.0, -3.0, 3.0])),
            order=1,
            modes=("rev",),
        )


def test_categorical_matches_numpy_log_softmax():
    logits = RNG.normal(scale=3.0, size=(2, 3, 4, 6)).astype(np.float32)
    x = RNG.integers(0, 6, size=(2, 3, 4))
    per_pixel = np.take_along_axis(_np_log_softmax(logits), x[..., None], -1)[..., 0]
    per_example, got_pixels, total, vib_ce = _compiled(
        lambda: (
            losses.categorical_log_likelihood(logits, x, event_ndim=2),
            losses.categorical_log_likelihood(logits, x.astype(np.uint8), event_ndim=0),
            losses.categorical_log_likelihood(logits, x),
            losses.vib_loss(logits, x, np.zeros(x.shape, np.float32), beta=0.0).cross_entropy,
        )
    )
    np.testing.assert_allclose(per_example, per_pixel.sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(got_pixels, per_pixel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, per_pixel.sum(), rtol=1e-5)
    # It is the VIB cross-entropy with the opposite sign.
    np.testing.assert_allclose(vib_ce, -per_pixel, rtol=1e-5, atol=1e-6)


def test_bits_per_dim():
    nll = RNG.uniform(100, 2000, size=(5,)).astype(np.float32)
    labels = RNG.integers(0, 256, (2, 7))
    bpd, uniform_bpd = _compiled(
        lambda: (
            losses.bits_per_dim(nll, 3 * 32 * 32),
            # A uniform 256-way categorical costs exactly 8 bits per dimension.
            losses.bits_per_dim(
                -losses.categorical_log_likelihood(jnp.zeros((2, 7, 256)), labels, event_ndim=1), 7
            ),
        )
    )
    np.testing.assert_allclose(bpd, nll / (3 * 32 * 32 * np.log(2)), rtol=1e-6)
    np.testing.assert_allclose(uniform_bpd, 8.0, rtol=1e-6)


_BF16 = jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)


@pytest.mark.parametrize(
    "fn, args",
    [
        (losses.bernoulli_log_likelihood, (_BF16, _BF16)),
        (losses.gaussian_log_likelihood, (_BF16, _BF16)),
        (losses.discretized_logistic_log_likelihood, (_BF16, _BF16, _BF16)),
        (
            losses.categorical_log_likelihood,
            (jax.ShapeDtypeStruct((2, 3, 4), jnp.bfloat16), jax.ShapeDtypeStruct((2, 3), jnp.int32)),
        ),
        (losses.gaussian_kl, (_BF16, _BF16)),
        (losses.reparameterize, (_BF16, _BF16)),
        (losses.monte_carlo_kl, (_BF16, _BF16)),
        (losses.elbo, (_BF16, _BF16)),
        (losses.iwae_bound, (_BF16,)),
        (losses.mmd, (_BF16, _BF16)),
    ],
)
def test_bfloat16_inputs_give_float32(fn, args):
    if fn is losses.reparameterize:
        fn = functools.partial(fn, key=jax.random.key(0))
    assert jax.eval_shape(fn, *args).dtype == jnp.float32


# ----------------------------------------------------------------------------------- ELBO / IWAE
# A linear-Gaussian model with log p(x) in closed form: z ~ N(0, I_2), x | z ~ N(A z + b, s² I_3).
# The encoder q(z|x) is a deliberately poor diagonal Gaussian (shifted mean, ignores the posterior
# correlation) that is wider than the posterior in every direction, so the weights are bounded.

A = np.array([[1.0, 0.5], [-0.3, 0.8], [0.6, -0.4]])
B = np.array([0.2, -0.1, 0.4])
NOISE_VAR = 0.25
X = np.array([0.9, -0.6, 1.1])
POST_COV = np.linalg.inv(np.eye(2) + A.T @ A / NOISE_VAR)
POST_MEAN = POST_COV @ A.T @ (X - B) / NOISE_VAR
Q_MEAN = (POST_MEAN + np.array([0.7, -0.5])).astype(np.float32)
Q_LOG_VAR = np.log(np.full(2, 3.0 * np.linalg.eigvalsh(POST_COV).max())).astype(np.float32)
LOG_PX = stats.multivariate_normal(B, A @ A.T + NOISE_VAR * np.eye(3)).logpdf(X)


def _model_terms(z):
    """``log p(x|z), log p(z), log q(z|x)`` for ``z: [..., 2]``."""
    x_mean = z @ jnp.asarray(A.T, jnp.float32) + jnp.asarray(B, jnp.float32)
    log_px_z = losses.gaussian_log_likelihood(
        x_mean, jnp.broadcast_to(jnp.asarray(X, jnp.float32), x_mean.shape), variance=NOISE_VAR, event_ndim=1
    )
    log_pz = losses.gaussian_log_likelihood(jnp.zeros_like(z), z, event_ndim=1)
    log_qz = losses.gaussian_log_likelihood(
        jnp.broadcast_to(Q_MEAN, z.shape), z, log_variance=Q_LOG_VAR, event_ndim=1
    )
    return log_px_z, log_pz, log_qz


def _model_log_weights(key, n):
    z = losses.reparameterize(Q_MEAN, Q_LOG_VAR, key=key, num_samples=n)
    log_px_z, log_pz, log_qz = _model_terms(z)
    return log_px_z + log_pz - log_qz


def test_model_has_the_closed_form_it_claims():
    """The ELBO of the fixed model is log p(x) - KL(q || posterior), with both KL estimates."""

    @jax.jit
    def terms(key):
        z = losses.reparameterize(Q_MEAN, Q_LOG_VAR, key=key, num_samples=50_000)
        log_px_z, log_pz, log_qz = _model_terms(z)
        return (
            log_px_z,
            log_px_z + log_pz - log_qz,
            losses.elbo(jnp.mean(log_px_z), losses.monte_carlo_kl(log_qz, log_pz)),
            losses.elbo(jnp.mean(log_px_z), losses.gaussian_kl(Q_MEAN, Q_LOG_VAR)),
        )

    log_px_z, log_w, elbo_mc, elbo_analytic_kl = terms(jax.random.key(3))
    var_q, prec = np.exp(Q_LOG_VAR.astype(np.float64)), np.linalg.inv(POST_COV)
    d = Q_MEAN - POST_MEAN
    kl_post = 0.5 * (
        np.trace(prec * var_q) + d @ prec @ d - 2 + np.log(np.linalg.det(POST_COV) / var_q.prod())
    )
    n = log_w.shape[0]
    assert abs(float(elbo_mc) - (LOG_PX - kl_post)) < 5 * np.asarray(log_w, np.float64).std() / math.sqrt(n)
    assert abs(float(elbo_analytic_kl) - (LOG_PX - kl_post)) < 5 * np.asarray(
        log_px_z, np.float64
    ).std() / math.sqrt(n)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _nested_iwae_bounds(key, reps, sizes):
    """``[len(sizes), reps]``: per repetition, L_S on the first S of the same ``max(sizes)`` samples."""
    log_w = _model_log_weights(key, reps * max(sizes)).reshape(reps, max(sizes))
    return jnp.stack([losses.iwae_bound(log_w[:, :s], axis=1) for s in sizes]), log_w


def test_iwae_bound_increases_with_samples_toward_log_px():
    """E[L_1] = ELBO < E[L_10] < E[L_100] < log p(x), and L_S -> log p(x) for large S."""
    reps, sizes = 20_000, (1, 10, 100)
    # Nested subsets of the same samples (as in Burda et al.'s proof), so the differences are paired.
    stacked, log_w = _nested_iwae_bounds(jax.random.key(1), reps, sizes)
    bounds = dict(zip(sizes, np.asarray(stacked, np.float64), strict=True))
    mean = {s: b.mean() for s, b in bounds.items()}
    se = {s: b.std() / math.sqrt(reps) for s, b in bounds.items()}
    for lo, hi in [(1, 10), (10, 100)]:
        d = bounds[hi] - bounds[lo]
        assert d.mean() > 5 * d.std() / math.sqrt(reps), (lo, hi, d.mean(), d.std())
    assert LOG_PX - mean[100] > 5 * se[100], (LOG_PX, mean, se)  # still a strict lower bound
    assert LOG_PX - mean[1] > 1.0  # the encoder really is poor: a gap of over a nat
    assert mean[100] - mean[1] > 0.9 * (LOG_PX - mean[1])  # and S = 100 recovers most of it
    # Large S through the chunked scan: 16 independent estimates with S = 20 000 each.
    w = np.exp(np.asarray(log_w, np.float64) - np.max(log_w))
    rel_var = w.var() / w.mean() ** 2  # Var(w) / E[w]² sets the spread of L_S: ≈ sqrt(rel_var / S)
    estimates = jax.jit(
        jax.vmap(
            lambda k: losses.iwae_log_likelihood(
                _model_log_weights, key=k, num_samples=20_000, chunk_size=2_500
            )
        )
    )(jax.random.split(jax.random.key(2), 16))
    tol = 5 * math.sqrt(rel_var / 20_000) / 4 + rel_var / (2 * 20_000)
    assert abs(float(jnp.mean(estimates)) - LOG_PX) < tol, (np.asarray(estimates), LOG_PX, tol)
    assert tol < 0.1 * (LOG_PX - mean[10])


def test_iwae_with_one_sample_is_the_single_sample_elbo():
    lw = RNG.normal(size=(5, 1)).astype(np.float32)

    def run(key):
        z = losses.reparameterize(Q_MEAN, Q_LOG_VAR, key=key, num_samples=1)
        log_px_z, log_pz, log_qz = _model_terms(z)
        log_w = log_px_z + log_pz - log_qz
        return (
            log_w[0],
            losses.iwae_bound(log_w),
            losses.elbo(log_px_z[0], losses.monte_carlo_kl(log_qz, log_pz)),
            losses.iwae_bound(lw, axis=-1),
            losses.iwae_log_likelihood(
                lambda k, n: jnp.broadcast_to(lw[:, 0], (n, 5)), key=key, num_samples=1
            ),
        )

    log_w, bound, elbo, batch_bound, chunked = jax.device_get(jax.jit(run)(jax.random.key(4)))
    np.testing.assert_array_equal(bound, log_w)
    # The same number through elbo() with the one-sample Monte Carlo KL (other rounding order).
    np.testing.assert_allclose(elbo, bound, rtol=1e-6)
    # Per example over a batch, with the sample axis last; and through the chunked estimator.
    np.testing.assert_array_equal(batch_bound, lw[:, 0])
    np.testing.assert_array_equal(chunked, lw[:, 0])


def test_iwae_bound_matches_numpy():
    lw = RNG.normal(scale=5.0, size=(7, 3)).astype(np.float32) - 300.0  # no underflow: logsumexp
    ref = special.logsumexp(lw.astype(np.float64), axis=0) - np.log(7)
    first, last, equal = _compiled(
        lambda: (
            losses.iwae_bound(lw),
            losses.iwae_bound(lw.T, axis=1),
            losses.iwae_bound(jnp.full((7, 3), -3.5)),
        )
    )
    np.testing.assert_allclose(first, ref, rtol=1e-6)
    np.testing.assert_allclose(last, ref, rtol=1e-6)
    # Equal weights: the bound is that weight.
    np.testing.assert_allclose(equal, -3.5, rtol=1e-6)


_IWAE_MU = np.random.default_rng(5).normal(size=(3,)).astype(np.float32)  # a batch of 3 "examples"
# A multiple of the chunk, not a multiple (the last chunk is masked), and a chunk larger than S.
# (S = 1 is in the single-sample test above.)
_CHUNKINGS = ((12, 4), (10, 3), (7, 100))


def _toy_log_weights(k, n):
    """``[n, 3]`` log weights that differ from key to key and from sample to sample (no sampling cost)."""
    # A number in [0, 10) that differs for every fold_in(key, c).
    base = (jax.random.key_data(k)[-1] % 997).astype(jnp.float32) / 99.7
    return -jnp.square(base + 0.37 * jnp.arange(n, dtype=jnp.float32)[:, None] - _IWAE_MU) - 2.0


@jax.jit
def _chunked_and_rebuilt(key):
    out = []
    for num_samples, chunk_size in _CHUNKINGS:
        got = losses.iwae_log_likelihood(
            _toy_log_weights, key=key, num_samples=num_samples, chunk_size=chunk_size
        )
        # The samples it documents: chunk c draws min(chunk, S) with fold_in(key, c); extras are dropped.
        chunk = min(chunk_size, num_samples)
        chunks = jnp.arange(-(-num_samples // chunk))
        all_w = jax.vmap(lambda c, chunk=chunk: _toy_log_weights(jax.random.fold_in(key, c), chunk))(chunks)
        all_w = all_w.reshape(-1, *all_w.shape[2:])
        out.append((got, all_w, losses.iwae_bound(all_w[:num_samples])))
    return out


def test_iwae_log_likelihood_equals_iwae_bound_on_the_same_samples():
    results = jax.device_get(_chunked_and_rebuilt(jax.random.key(5)))
    for (num_samples, _), (got, all_w, bound) in zip(_CHUNKINGS, results, strict=True):
        assert got.shape == (3,)
        # iwae_bound on exactly those samples, and its NumPy value.
        np.testing.assert_allclose(got, bound, rtol=1e-6, atol=1e-6)
        ref = special.logsumexp(all_w[:num_samples].astype(np.float64), axis=0) - np.log(num_samples)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        assert len(np.unique(all_w[:, 0])) == len(all_w)  # every sample is a different weight
        # The extras of the last chunk really are dropped: keeping them would change the value.
        if all_w.shape[0] != num_samples:
            wrong = special.logsumexp(all_w.astype(np.float64), axis=0) - np.log(all_w.shape[0])
            assert not np.allclose(wrong, got, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------- MMD


def _np_mmd(x, y, k):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def _laplace_kernel(a, b, *, gamma=1.0):
    return jnp.exp(-gamma * jnp.sum(jnp.abs(a[:, None, :] - b[None, :, :]), -1))


@pytest.mark.parametrize(
    "kernel, kwargs, np_kernel",
    [
        ("rbf", {}, lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 3))),
        ("rbf", {"bandwidth": 0.7}, lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 0.49))),
        ("imq", {}, lambda a, b: 6 / (6 + np.sum((a - b) ** 2))),
        ("imq", {"scale": 0.5}, lambda a, b: 0.5 / (0.5 + np.sum((a - b) ** 2))),
        (_laplace_kernel, {"gamma": 0.5}, lambda a, b: np.exp(-0.5 * np.sum(np.abs(a - b)))),
    ],
)
def test_mmd_matches_numpy_double_loop(kernel, kwargs, np_kernel):
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    y = (RNG.normal(size=(6, 3)) * 1.5 + 0.3).astype(np.float32)
    kernel_fn = {"rbf": losses.rbf_kernel, "imq": losses.inverse_multiquadratic_kernel}.get(kernel, kernel)
    xy, matrix = _compiled(lambda: (losses.mmd(x, y, kernel=kernel, **kwargs), kernel_fn(x, y, **kwargs)))
    np.testing.assert_allclose(xy, _np_mmd(x, y, np_kernel), rtol=1e-5, atol=1e-6)
    ref = np.array([[np_kernel(a, b) for b in y.astype(np.float64)] for a in x.astype(np.float64)])
    np.testing.assert_allclose(matrix, ref, rtol=1e-5, atol=1e-6)


def test_mmd_x_weights_select_rows_exactly():
    """A 0/1 mask on x (padded evaluation batches) gives the estimate of the unmasked rows alone."""
    x = RNG.normal(size=(7, 3)).astype(np.float32)
    y = RNG.normal(size=(6, 3)).astype(np.float32)
    keep = np.array([1, 0, 1, 1, 0, 1, 1], np.float32)
    masked, subset, ones, plain = _compiled(
        lambda: (
            losses.mmd(x, y, kernel="imq", x_weights=keep),
            losses.mmd(x[keep == 1], y, kernel="imq"),
            losses.mmd(x, y, x_weights=np.ones(7, np.float32)),
            losses.mmd(x, y),
        )
    )
    np.testing.assert_allclose(masked, subset, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        masked, _np_mmd(x[keep == 1], y, lambda a, b: 6 / (6 + np.sum((a - b) ** 2))), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(ones, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_is_unbiased_for_equal_distributions_and_positive_for_different(kernel):
    reps, n, dim = 600, 16, 2
    rng = np.random.default_rng(6)
    x = rng.normal(size=(reps, n, dim)).astype(np.float32)
    y = rng.normal(size=(reps, n + 4, dim)).astype(np.float32)  # unequal sizes: the estimator allows N ≠ M
    big = rng.normal(size=(2, 2000, dim)).astype(np.float32)  # many samples: ≈ the population MMD²
    shift = np.array([1.0, -0.5], np.float32)

    @jax.jit
    def estimates(x, y, big):
        one_estimate = jax.vmap(lambda a, b: losses.mmd(a, b, kernel=kernel))
        return (
            one_estimate(x, y),
            one_estimate(x, y + shift),
            losses.mmd(big[0], big[1] + shift, kernel=kernel),
        )

    same, diff, population = (np.asarray(a, np.float64) for a in estimates(x, y, big))
    se = same.std() / math.sqrt(reps)
    assert abs(same.mean()) < 4 * se, (same.mean(), se)
    assert np.any(same < 0)  # unbiased, hence sometimes negative
    se_diff = diff.std() / math.sqrt(reps)
    assert diff.mean() > 20 * max(se, se_diff), (diff.mean(), se, se_diff)
    # Unbiased for different distributions too: the mean of the small estimates is the population value.
    assert abs(diff.mean() - population) < 5 * se_diff + 0.01, (diff.mean(), population, se_diff)


# ------------------------------------------------------------------------ β-VAE, InfoVAE, VIB, ELBO


def test_elbo_and_beta_vae_loss_match_numpy():
    ll = RNG.normal(scale=50, size=(6,)).astype(np.float32) - 100
    kl = RNG.uniform(0, 20, size=(6,)).astype(np.float32)
    betas, capacities = (0.0, 0.5, 1.0, 4.0), (0.0, 7.5, np.float32(25.0))
    elbo, plain, default, with_capacity, grad = _compiled(
        lambda: (
            losses.elbo(ll, kl),
            [losses.beta_vae_loss(ll, kl, beta=b) for b in betas],
            losses.beta_vae_loss(ll, kl),
            [losses.beta_vae_loss(ll, kl, beta=3.0, capacity=c) for c in capacities],
            # The capacity term pulls the rate toward C from either side.
            jax.grad(lambda k: losses.beta_vae_loss(ll, k, beta=2.0, capacity=7.5).loss.sum())(kl),
        )
    )
    np.testing.assert_allclose(elbo, ll - kl, rtol=1e-6)
    for beta, out in zip(betas, plain, strict=True):
        np.testing.assert_allclose(out.loss, -ll + beta * kl, rtol=1e-6)
        np.testing.assert_allclose(out.distortion, -ll, rtol=1e-6)
        np.testing.assert_allclose(out.rate, kl, rtol=1e-6)
    np.testing.assert_allclose(default.loss, -elbo, rtol=1e-6)  # β = 1 is the negative ELBO
    for capacity, out in zip(capacities, with_capacity, strict=True):
        np.testing.assert_allclose(out.loss, -ll + 3.0 * np.abs(kl - float(capacity)), rtol=1e-6)
        np.testing.assert_allclose(out.rate, kl, rtol=1e-6)
    np.testing.assert_allclose(grad, 2.0 * np.sign(kl - 7.5))


def test_info_vae_loss_matches_numpy():
    ll = RNG.normal(size=(5,)).astype(np.float32) - 50
    kl = RNG.uniform(0, 10, size=(5,)).astype(np.float32)
    div = np.float32(0.37)
    settings = [(0.0, 1.0), (1.0, 1.0), (0.5, 2.0), (-1.0, 3.0), (1.0, 500.0)]
    outs, vae = _compiled(
        lambda: (
            [losses.info_vae_loss(ll, kl, div, alpha=a, lambda_=lam) for a, lam in settings],
            losses.beta_vae_loss(ll, kl).loss,
        )
    )
    for (alpha, lam), out in zip(settings, outs, strict=True):
        np.testing.assert_allclose(out.loss, -ll + (1 - alpha) * kl + (alpha + lam - 1) * div, rtol=1e-5)
        np.testing.assert_allclose(out.distortion, -ll, rtol=1e-6)
        np.testing.assert_allclose(out.rate, kl, rtol=1e-6)
        np.testing.assert_allclose(out.divergence, np.full(5, div), rtol=1e-6)
    # α = 0, λ = 1 is the plain VAE, whatever the divergence.
    np.testing.assert_allclose(outs[0].loss, vae, rtol=1e-6)


def test_vib_loss_matches_numpy():
    logits = RNG.normal(scale=2.0, size=(4, 3, 10)).astype(np.float32)
    labels = RNG.integers(0, 10, size=(4, 3))
    kl = RNG.uniform(0, 5, size=(4, 3)).astype(np.float32)
    ce = -np.take_along_axis(_np_log_softmax(logits), labels[..., None], -1)[..., 0]
    betas = (0.0, 1e-3, 1.0)
    outs, g = _compiled(
        lambda: (
            [losses.vib_loss(logits, labels, kl, beta=b) for b in betas],
            jax.grad(lambda l: losses.vib_loss(l, labels, kl, beta=0.1).loss.sum())(logits),
        )
    )
    for beta, out in zip(betas, outs, strict=True):
        np.testing.assert_allclose(out.loss, ce + beta * kl, rtol=1e-5)
        np.testing.assert_allclose(out.cross_entropy, ce, rtol=1e-5)
        np.testing.assert_allclose(out.rate, kl, rtol=1e-6)
    np.testing.assert_allclose(
        g, special.softmax(logits.astype(np.float64), -1) - np.eye(10)[labels], rtol=1e-4, atol=1e-6
    )


# ------------------------------------------------------------------------------ reparameterization


def test_reparameterization_gradients_match_finite_differences():
    """d/dμ and d/dlog σ² of the fixed-key estimate of E[f(z)], against central differences (float64)."""
    with jax.enable_x64(True):
        key = jax.random.key(8)
        mu = jnp.asarray([0.3, -1.1, 0.8], jnp.float64)
        lv = jnp.asarray([-0.5, 0.2, 1.0], jnp.float64)

        def estimate(m, v):
            z = losses.reparameterize(m, v, key=key, num_samples=64)
            return jnp.mean(jnp.sum(jnp.sin(z) + 0.1 * z**2 * jnp.cos(z), -1))

        @jax.jit
        def grads_and_differences(m, v):
            h, eye = 1e-6, jnp.eye(3, dtype=m.dtype)
            fd_m = jax.vmap(lambda e: (estimate(m + h * e, v) - estimate(m - h * e, v)) / (2 * h))(eye)
            fd_v = jax.vmap(lambda e: (estimate(m, v + h * e) - estimate(m, v - h * e)) / (2 * h))(eye)
            return jax.grad(estimate, argnums=(0, 1))(m, v), (fd_m, fd_v)

        (gm, gv), (fd_m, fd_v) = grads_and_differences(mu, lv)
        assert gm.dtype == jnp.float64
        np.testing.assert_allclose(gm, fd_m, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(gv, fd_v, rtol=1e-6, atol=1e-8)


def test_reparameterization_gradient_is_unbiased_for_the_true_gradient():
    """For f = sin, E[sin z] = sin μ e^{-σ²/2}: the pathwise gradients estimate its exact derivatives."""
    num_samples = 40_000
    mu = jnp.asarray([0.3, -1.1, 0.8], jnp.float32)
    lv = jnp.asarray([-0.5, 0.2, 1.0], jnp.float32)

    def f(m, v, k):  # one sample z = μ + σ ε(k), f(z) = Σ sin z
        return jnp.sum(jnp.sin(losses.reparameterize(m, v, key=k)))

    # Per-sample pathwise gradients [S, 3] each, so their standard error is known.
    keys = jax.random.split(jax.random.key(9), num_samples)
    jm, jv = jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(None, None, 0)))(mu, lv, keys)
    m, var = np.asarray(mu, np.float64), np.exp(np.asarray(lv, np.float64))
    exact_m = np.cos(m) * np.exp(-var / 2)
    exact_v = -0.5 * var * np.sin(m) * np.exp(-var / 2)
    for per, exact in [(np.asarray(jm, np.float64), exact_m), (np.asarray(jv, np.float64), exact_v)]:
        se = per.std(0) / math.sqrt(num_samples)
        assert np.all(np.abs(per.mean(0) - exact) < 5 * se + 1e-5), (per.mean(0), exact, se)


# -------------------------------------------------------------------------------- jit / vmap / grad

_KEY = jax.random.key(11)
_LABELS = np.array([2, 0, 3])
_PIX = np.array([0, 17, 128, 255]) / 255.0


def _iwae_ll(mu):
    def log_weight_fn(k, n):  # z = μ + pseudo-noise from the key: differentiable in μ through every chunk
        u = (jax.random.key_data(k)[-1] % 997).astype(mu.dtype) / 997  # exact in float32 and float64
        z = mu + jnp.sin(7 * u + jnp.arange(n * mu.shape[0], dtype=mu.dtype).reshape(n, -1))
        return losses.gaussian_log_likelihood(jnp.zeros_like(z), z, event_ndim=1) + jnp.sum(jnp.sin(z), -1)

    return losses.iwae_log_likelihood(log_weight_fn, key=_KEY, num_samples=7, chunk_size=3)


# name -> (function of float arrays only, per-example argument shapes). Integer arguments are fixed.
_PUBLIC = {
    "bernoulli_log_likelihood": (
        lambda l, t: losses.bernoulli_log_likelihood(l, jax.nn.sigmoid(t)),
        [(4,), (4,)],
    ),
    "gaussian_log_likelihood": (
        lambda m, t: losses.gaussian_log_likelihood(m, t, variance=0.7),
        [(4,), (4,)],
    ),
    "gaussian_log_likelihood_learned": (
        lambda m, t, v: losses.gaussian_log_likelihood(m, t, log_variance=v),
        [(4,), (4,), (4,)],
    ),
    "discretized_logistic_log_likelihood": (
        lambda m, s: losses.discretized_logistic_log_likelihood(m, s, jnp.asarray(_PIX, m.dtype)),
        [(4,), (4,)],
    ),
    "categorical_log_likelihood": (
        lambda l: losses.categorical_log_likelihood(l, jnp.asarray(_LABELS)),
        [(3, 5)],
    ),
    "bits_per_dim": (lambda n: losses.bits_per_dim(n, 12), [()]),
    "reparameterize": (lambda m, v: losses.reparameterize(m, v, key=_KEY, num_samples=2), [(3,), (3,)]),
    "gaussian_kl": (losses.gaussian_kl, [(3,), (3,)]),
    "gaussian_kl_prior": (losses.gaussian_kl, [(3,), (3,), (3,), (3,)]),
    "monte_carlo_kl": (losses.monte_carlo_kl, [(5,), (5,)]),
    "elbo": (losses.elbo, [(), ()]),
    "beta_vae_loss": (lambda l, k: losses.beta_vae_loss(l, k, beta=2.0), [(), ()]),
    "beta_vae_loss_capacity": (
        lambda l, k, c: losses.beta_vae_loss(l, k, beta=2.0, capacity=c + 10.0),
        [(), (), ()],
    ),
    "iwae_bound": (losses.iwae_bound, [(6,)]),
    "iwae_log_likelihood": (_iwae_ll, [(2,)]),
    "rbf_kernel": (losses.rbf_kernel, [(3, 2), (4, 2)]),
    "inverse_multiquadratic_kernel": (losses.inverse_multiquadratic_kernel, [(3, 2), (4, 2)]),
    "mmd_rbf": (lambda x, y: losses.mmd(x, y, kernel="rbf"), [(4, 2), (4, 2)]),
    "mmd_callable": (lambda x, y: losses.mmd(x, y, kernel=_laplace_kernel, gamma=0.3), [(4, 2), (4, 2)]),
    "info_vae_loss": (
        lambda l, k, d: losses.info_vae_loss(l, k, d, alpha=0.5, lambda_=2.0),
        [(3,), (3,), ()],
    ),
    "vib_loss": (lambda l, k: losses.vib_loss(l, jnp.asarray(_LABELS), k, beta=0.1), [(3, 5), (3,)]),
}


def _sum_leaves(tree):
    return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(tree))


def _assert_trees_close(a, b, **kw):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x) == np.shape(y) and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, **kw)


@pytest.mark.parametrize("name", sorted(_PUBLIC))
def test_under_jit_vmap_grad(name):
    fn, shapes = _PUBLIC[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    batch = 3
    args64 = [rng.normal(size=(batch, *s)) for s in shapes]
    args = [a.astype(np.float32) for a in args64]

    @jax.jit
    def under_jit(xs):
        looped = jax.lax.map(lambda x: fn(*x), xs)  # one example at a time (a scan), not batched
        return looped, jax.vmap(fn)(*xs)

    looped, batched = jax.device_get(under_jit(args))
    # jit equals eager; vmap over a leading batch axis equals a loop over the examples.
    _assert_trees_close(
        jax.tree.map(lambda leaf: leaf[0], looped),
        jax.device_get(fn(*(a[0] for a in args))),
        rtol=1e-6,
        atol=1e-6,
    )
    _assert_trees_close(batched, looped, rtol=1e-5, atol=1e-6)
    # jit(grad) is finite and equals numerical derivatives (in float64, to make that comparison sharp).
    with jax.enable_x64(True):
        x64 = tuple(jnp.asarray(a[0], jnp.float64) for a in args64)
        directions = tuple(rng.normal(size=x.shape) for x in x64)
        grads, analytic, numeric = _directional_derivatives(lambda *xs: _sum_leaves(fn(*xs)), x64, directions)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@functools.partial(jax.jit, static_argnums=0)
def _directional_derivatives(f, xs, vs):
    """``<∇f(x), v>`` by reverse mode and by a central difference (step 1e-5), in one program."""
    grads = jax.grad(lambda *a: f(*a), argnums=tuple(range(len(xs))))(*xs)
    analytic = sum(jnp.vdot(g, v) for g, v in zip(grads, vs, strict=True))
    h = 1e-5
    plus = f(*(x + h * v for x, v in zip(xs, vs, strict=True)))
    minus = f(*(x - h * v for x, v in zip(xs, vs, strict=True)))
    return grads, analytic, (plus - minus) / (2 * h)


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        # shapes
        (lambda: losses.gaussian_kl(np.zeros((2, 3)), np.zeros((2, 4))), "log_variance"),
        (lambda: losses.gaussian_kl(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(4)), "prior_mean"),
        (lambda: losses.gaussian_kl(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((5, 2, 3))), "prior_mean"),
        (
            lambda: losses.gaussian_kl(np.zeros((2, 3)), np.zeros((2, 3)), None, np.zeros((4, 1, 3))),
            "prior_log_variance",
        ),
        (lambda: losses.gaussian_kl(np.zeros(3), np.zeros(3), event_ndim=2), "event_ndim"),
        (lambda: losses.reparameterize(np.zeros(3), np.zeros(2), key=_KEY), "log_variance"),
        (lambda: losses.monte_carlo_kl(np.zeros((4, 2)), np.zeros((4, 3))), "log_p"),
        (lambda: losses.monte_carlo_kl(np.zeros((4, 2)), np.zeros((4, 2)), axis=2), "axis"),
        (
            lambda: losses.gaussian_log_likelihood(
                np.zeros((2, 3)), np.zeros((2, 3)), log_variance=np.zeros(4)
            ),
            "log_variance",
        ),
        (
            lambda: losses.gaussian_log_likelihood(
                np.zeros((2, 3)), np.zeros((2, 3)), log_variance=np.zeros((4, 1, 3))
            ),
            "log_variance",
        ),
        (lambda: losses.gaussian_log_likelihood(np.zeros(2), np.zeros(2), variance=-1.0), "variance"),
        (
            lambda: losses.discretized_logistic_log_likelihood(
                np.zeros((2, 3)), np.zeros(4), np.zeros((2, 3))
            ),
            "log_scale",
        ),
        (
            lambda: losses.discretized_logistic_log_likelihood(np.zeros(3), np.zeros(3), np.zeros(4)),
            "targets",
        ),
        (
            lambda: losses.discretized_logistic_log_likelihood(
                np.zeros(3), np.zeros(3), np.zeros(3), num_bins=1
            ),
            "num_bins",
        ),
        (
            lambda: losses.categorical_log_likelihood(np.zeros((2, 3, 5)), np.zeros((2, 4), np.int32)),
            "logits",
        ),
        (lambda: losses.bernoulli_log_likelihood(np.zeros(3), np.zeros(3), event_ndim=2), "event_ndim"),
        (lambda: losses.bits_per_dim(np.zeros(2), 0), "num_dims"),
        (lambda: losses.elbo(np.zeros(3), np.zeros(2)), "kl"),
        (lambda: losses.beta_vae_loss(np.zeros(3), np.zeros((3, 1))), "kl"),
        (lambda: losses.iwae_bound(np.zeros(())), "log_weights"),
        (lambda: losses.iwae_bound(np.zeros((3, 2)), axis=2), "axis"),
        (
            lambda: losses.iwae_log_likelihood(
                lambda k, n: np.zeros(3), key=_KEY, num_samples=5, chunk_size=2
            ),
            "log_weight_fn",
        ),
        (
            lambda: losses.iwae_log_likelihood(lambda k, n: np.zeros(()), key=_KEY, num_samples=5),
            "log_weight_fn",
        ),
        (lambda: losses.mmd(np.zeros((4, 2)), np.zeros((4, 3))), "y.shape"),
        (lambda: losses.mmd(np.zeros(4), np.zeros(4)), "x.shape"),
        (lambda: losses.rbf_kernel(np.zeros((4, 2)), np.zeros((4, 3))), "y.shape"),
        (
            lambda: losses.info_vae_loss(np.zeros(3), np.zeros(3), np.zeros(3), alpha=0.0, lambda_=1.0),
            "divergence",
        ),
        (lambda: losses.info_vae_loss(np.zeros(3), np.zeros(2), np.zeros(()), alpha=0.0, lambda_=1.0), "kl"),
        (lambda: losses.vib_loss(np.zeros((3, 5)), np.zeros(4, np.int32), np.zeros(4), beta=1.0), "logits"),
        (lambda: losses.vib_loss(np.zeros((3, 5)), np.zeros(3, np.int32), np.zeros(4), beta=1.0), "kl"),
        # values
        (lambda: losses.beta_vae_loss(np.zeros(3), np.zeros(3), beta=-0.5), "beta"),
        (lambda: losses.beta_vae_loss(np.zeros(3), np.zeros(3), beta=1.0, capacity=-1.0), "capacity"),
        (lambda: losses.vib_loss(np.zeros((3, 5)), np.zeros(3, np.int32), np.zeros(3), beta=-1e-3), "beta"),
        (lambda: losses.reparameterize(np.zeros(3), np.zeros(3), key=_KEY, num_samples=0), "num_samples"),
        (lambda: losses.reparameterize(np.zeros(3), np.zeros(3), key=None), "key"),
        (lambda: losses.iwae_log_likelihood(_model_log_weights, key=_KEY, num_samples=0), "num_samples"),
        (lambda: losses.iwae_log_likelihood(_model_log_weights, key=_KEY, num_samples=2.5), "num_samples"),
        (
            lambda: losses.iwae_log_likelihood(_model_log_weights, key=_KEY, num_samples=4, chunk_size=0),
            "chunk_size",
        ),
        (lambda: losses.iwae_log_likelihood(_model_log_weights, key=None, num_samples=4), "key"),
        (lambda: losses.mmd(np.zeros((4, 2)), np.zeros((4, 2)), x_weights=np.ones(3)), "x_weights"),
        (lambda: losses.mmd(np.zeros((4, 2)), np.zeros((4, 2)), kernel="gaussian"), "kernel"),
        (lambda: losses.mmd(np.zeros((1, 2)), np.zeros((4, 2))), "at least 2"),
        (lambda: losses.mmd(np.zeros((4, 2)), np.zeros((1, 2))), "at least 2"),
        (
            lambda: losses.info_vae_loss(np.zeros(3), np.zeros(3), np.zeros(()), alpha=1.5, lambda_=1.0),
            "alpha",
        ),
        (
            lambda: losses.info_vae_loss(np.zeros(3), np.zeros(3), np.zeros(()), alpha=0.5, lambda_=0.0),
            "lambda_",
        ),
        (
            lambda: losses.info_vae_loss(np.zeros(3), np.zeros(3), np.zeros(()), alpha=-1.0, lambda_=1.5),
            "alpha \\+ lambda_ - 1",
        ),
        (lambda: losses.vib_loss(np.zeros((3, 5)), np.zeros(3), np.zeros(3), beta=1.0), "labels"),
        (lambda: losses.categorical_log_likelihood(np.zeros((3, 5)), np.zeros(3)), "targets"),
        (lambda: losses.categorical_log_likelihood(np.zeros((3, 5)), np.zeros(3, bool)), "targets"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_traced_hyperparameters_are_not_checked_but_work():
    """β and C may be traced (an annealing schedule under jit); the checks only see Python numbers."""
    ll, kl = np.array([-3.0, -4.0], np.float32), np.array([1.0, 6.0], np.float32)
    got = jax.jit(lambda b, c: losses.beta_vae_loss(ll, kl, beta=b, capacity=c).loss)(2.0, 2.5)
    np.testing.assert_allclose(got, -np.asarray(ll) + 2.0 * np.abs(np.asarray(kl) - 2.5), rtol=1e-6)
    got = jax.jit(lambda a, lam: losses.info_vae_loss(ll, kl, np.float32(0.5), alpha=a, lambda_=lam).loss)(
        0.5, 2.0
    )
    np.testing.assert_allclose(got, -np.asarray(ll) + 0.5 * np.asarray(kl) + 1.5 * 0.5, rtol=1e-6)
