"""vqjax.losses against NumPy references, under jit / vmap / grad, and gradient semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("strict_promotion")

from vqjax import losses

RNG = np.random.default_rng(0)


def _np_softplus(x):
    return np.logaddexp(0.0, x)


def test_bernoulli_matches_numpy():
    logits = RNG.normal(size=(3, 5, 4)).astype(np.float32) * 4
    x = RNG.uniform(size=(3, 5, 4)).astype(np.float32)
    ref = np.sum(x * np.log(1 / (1 + np.exp(-logits.astype(np.float64))))
                 + (1 - x) * np.log(1 - 1 / (1 + np.exp(-logits.astype(np.float64)))), axis=(1, 2))
    got = losses.bernoulli_log_likelihood(logits, x, event_ndim=2)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert losses.bernoulli_log_likelihood(logits, x).shape == ()


def test_bernoulli_stable_for_large_logits():
    got = losses.bernoulli_log_likelihood(jnp.array([100.0, -100.0]), jnp.array([1.0, 0.0]))
    assert np.isfinite(got) and abs(float(got)) < 1e-30 + 1e-6


def test_gaussian_matches_numpy():
    mu = RNG.normal(size=(4, 6)).astype(np.float32)
    x = RNG.normal(size=(4, 6)).astype(np.float32)
    var = 0.3
    ref = np.sum(-0.5 * (x - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var), axis=1)
    np.testing.assert_allclose(losses.gaussian_log_likelihood(mu, x, variance=var, event_ndim=1), ref, rtol=1e-5)


def test_vq_terms_match_numpy():
    z = RNG.normal(size=(2, 3, 3, 8)).astype(np.float32)
    e = RNG.normal(size=(2, 3, 3, 8)).astype(np.float32)
    sq = np.sum((z - e) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(losses.codebook_loss(z, e, event_ndim=3), sq, rtol=1e-5)
    np.testing.assert_allclose(losses.commitment_loss(z, e, beta=0.25, event_ndim=3), 0.25 * sq, rtol=1e-5)
    ll = RNG.normal(size=(2,)).astype(np.float32)
    out = losses.vqvae_loss(ll, z, e, beta=0.5, event_ndim=3)
    np.testing.assert_allclose(out.loss, -ll + 1.5 * sq, rtol=1e-5)
    np.testing.assert_allclose(out.reconstruction, -ll, rtol=1e-6)


def test_codebook_loss_moves_only_the_codebook():
    z, e = jnp.ones((4, 3)), jnp.zeros((4, 3))
    gz, ge = jax.grad(lambda z, e: losses.codebook_loss(z, e).sum(), argnums=(0, 1))(z, e)
    np.testing.assert_array_equal(gz, 0.0)
    np.testing.assert_allclose(ge, 2 * (e - z))


def test_commitment_loss_moves_only_the_encoder_output():
    z, e = jnp.ones((4, 3)), jnp.zeros((4, 3))
    gz, ge = jax.grad(lambda z, e: losses.commitment_loss(z, e, beta=0.25).sum(), argnums=(0, 1))(z, e)
    np.testing.assert_allclose(gz, 0.25 * 2 * (z - e))
    np.testing.assert_array_equal(ge, 0.0)


def test_under_jit_vmap_grad():
    logits = jnp.asarray(RNG.normal(size=(5, 7)), jnp.float32)
    x = jnp.asarray(RNG.uniform(size=(5, 7)), jnp.float32)
    per = jax.vmap(losses.bernoulli_log_likelihood)(logits, x)
    np.testing.assert_allclose(jax.jit(losses.bernoulli_log_likelihood, static_argnames="event_ndim")(
        logits, x, event_ndim=1), per, rtol=1e-6)
    g = jax.grad(lambda l: losses.bernoulli_log_likelihood(l, x).sum())(logits)
    np.testing.assert_allclose(g, x - jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
    gg = jax.grad(lambda m: losses.gaussian_log_likelihood(m, x, variance=0.5).sum())(logits)
    np.testing.assert_allclose(gg, (x - logits) / 0.5, rtol=1e-5)
    z, e = logits, x
    v = jax.jit(jax.vmap(lambda a, b: losses.vqvae_loss(0.0 * a.sum(), a, b, beta=0.25).loss))(z, e)
    np.testing.assert_allclose(v, 1.25 * np.sum((np.asarray(z) - np.asarray(e)) ** 2, axis=1), rtol=1e-5)


def test_bfloat16_inputs_give_float32():
    z = jnp.ones((2, 4), jnp.bfloat16)
    assert losses.codebook_loss(z, z * 0).dtype == jnp.float32


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((3, 2))), "same shape"),
        (lambda: losses.gaussian_log_likelihood(jnp.zeros(2), jnp.zeros(2), variance=0.0), "variance"),
        (lambda: losses.codebook_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4))), "z_e"),
        (lambda: losses.commitment_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), event_ndim=3), "event_ndim"),
        (lambda: losses.vqvae_loss(jnp.zeros(3), jnp.zeros((2, 4)), jnp.zeros((2, 4))), "log_likelihood"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
