"""vqjax.nn VAE and VIB modules: shapes, the pure losses they wrap, the IWAE bound, generation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import losses
from vqjax.nn import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, VIBClassifier

SHAPE = (28, 28, 1)


def _vae(arch="mlp", latents=3, likelihood="bernoulli"):
    rngs = nnx.Rngs(0)
    if arch == "mlp":
        return VAE(MLPEncoder(SHAPE, latents, hidden=16, rngs=rngs), MLPDecoder(SHAPE, latents, hidden=16, rngs=rngs),
                   latents=latents, likelihood=likelihood, variance=0.5)
    return VAE(ConvEncoder(SHAPE, latents, hidden=4, rngs=rngs), ConvDecoder(SHAPE, latents, hidden=4, rngs=rngs),
               latents=latents, likelihood=likelihood, variance=0.5)


def _binary(n, seed=1):
    return jax.random.bernoulli(jax.random.key(seed), 0.3, (n, *SHAPE)).astype(jnp.float32)


def _log_normal(z, mu, var):
    return np.sum(-0.5 * (z - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var), axis=-1)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_forward_pass_is_the_pure_losses_at_the_reparameterized_sample(arch):
    model, x, key = _vae(arch), _binary(5), jax.random.key(2)
    out = model(x, key=key)
    assert out.logits.shape == x.shape and out.mean.shape == out.z.shape == (5, 3)
    mean, log_var = model.encode(x)
    np.testing.assert_allclose(out.z, losses.reparameterize(mean, log_var, key=key), rtol=1e-6)
    np.testing.assert_allclose(out.kl, losses.gaussian_kl(mean, log_var), rtol=1e-6)
    np.testing.assert_allclose(out.log_likelihood,
                               losses.bernoulli_log_likelihood(model.decode(out.z), x, event_ndim=3), rtol=1e-6)


def test_log_weights_are_log_joint_minus_log_posterior():
    model, x = _vae(), _binary(4)
    log_w = np.asarray(model.log_weights(x, key=jax.random.key(3), num_samples=6))
    assert log_w.shape == (6, 4)
    mean, log_var = (np.asarray(a, np.float64) for a in model.encode(x))
    z = np.asarray(losses.reparameterize(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32),
                                         key=jax.random.key(3), num_samples=6), np.float64)
    logits = np.asarray(model.decode(jnp.asarray(z, jnp.float32)), np.float64)
    xs = np.asarray(x, np.float64)
    ll = np.sum(xs * logits - np.logaddexp(0.0, logits), axis=(2, 3, 4))
    expected = ll + _log_normal(z, 0.0, 1.0) - _log_normal(z, mean, np.exp(log_var))
    np.testing.assert_allclose(log_w, expected, rtol=1e-4, atol=1e-3)


def test_iwae_is_chunked_logmeanexp_of_the_log_weights_and_tightens_with_s():
    model, x, key = _vae(), _binary(64), jax.random.key(4)
    mean, log_var = model.encode(x)
    direct = losses.iwae_bound(model._log_weights(x, mean, log_var, jax.random.fold_in(key, 0), 7))
    np.testing.assert_allclose(model.iwae_log_likelihood(x, key=key, num_samples=7, chunk_size=7), direct, rtol=1e-6)
    # E[L_1] <= E[L_10] <= E[L_100] on a fixed model, averaged over 64 images.
    bounds = [float(jnp.mean(model.iwae_log_likelihood(x, key=key, num_samples=s, chunk_size=32)))
              for s in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2], bounds
    elbo = float(jnp.mean(jax.vmap(lambda k: model(x, key=k).log_likelihood - model(x, key=k).kl)(
        jax.random.split(key, 20))))
    assert elbo < bounds[2]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_generation_samples_the_prior_then_the_decoder(likelihood):
    model = _vae(likelihood=likelihood)
    key = jax.random.key(5)
    x, mean = model.generate(key=key, num_samples=6)
    assert x.shape == mean.shape == (6, *SHAPE)
    z = jax.random.normal(jax.random.split(key)[0], (6, 3))
    np.testing.assert_allclose(mean, model.mean_image(model.decode(z)), rtol=1e-6)
    if likelihood == "bernoulli":
        assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}
    else:
        assert np.std(np.asarray(x - mean)) == pytest.approx(math.sqrt(0.5), rel=0.1)


def test_vae_is_differentiable_and_jits():
    model, x = _vae("conv"), _binary(3)

    @nnx.jit
    def loss(model, x, key):
        out = model(x, key=key)
        return -jnp.mean(out.log_likelihood - out.kl)

    grads = nnx.grad(loss)(model, x, jax.random.key(0))
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert leaves and all(np.isfinite(g).all() for g in leaves)
    assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(nnx.state(grads.encoder, nnx.Param)))


def test_bad_configuration_is_a_clear_error():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="likelihood"):
        VAE(MLPEncoder(SHAPE, 2, rngs=rngs), MLPDecoder(SHAPE, 2, rngs=rngs), latents=2, likelihood="poisson")
    with pytest.raises(ValueError, match="image_shape"):
        ConvEncoder((30, 30, 1), 2, rngs=rngs)


def test_vib_classifier_samples_and_averages_the_softmax():
    rngs = nnx.Rngs(0)
    model = VIBClassifier(MLPEncoder(SHAPE, 4, hidden=(16, 8), rngs=rngs), latents=4, num_classes=10, rngs=rngs)
    x = _binary(5)
    logits, mean, _, kl = model(x, key=jax.random.key(1), num_samples=3)
    assert logits.shape == (3, 5, 10) and mean.shape == (5, 4) and kl.shape == (5,)
    probs = model.predict(x, key=jax.random.key(1), num_samples=3)
    np.testing.assert_allclose(probs, jnp.mean(jax.nn.softmax(logits, -1), 0), rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, rtol=1e-5)


def test_discretized_logistic_vae_scores_8_bit_levels():
    rngs = nnx.Rngs(0)
    model = VAE(MLPEncoder(SHAPE, 3, hidden=16, rngs=rngs), MLPDecoder((28, 28, 2), 3, hidden=16, rngs=rngs),
                latents=3, likelihood="discretized_logistic")
    x = jnp.round(jax.random.uniform(jax.random.key(1), (4, *SHAPE)) * 255) / 255
    out = model(x, key=jax.random.key(2))
    location, log_scale = jnp.split(out.logits, 2, axis=-1)
    expected = losses.discretized_logistic_log_likelihood(jax.nn.sigmoid(location), jnp.maximum(log_scale, -7.0),
                                                          x, event_ndim=3)
    np.testing.assert_allclose(out.log_likelihood, expected, rtol=1e-6)
    assert np.all(np.asarray(out.log_likelihood) < 0)  # a probability mass: log P <= 0
    iwae = model.iwae_log_likelihood(x, key=jax.random.key(3), num_samples=5, chunk_size=2)
    assert iwae.shape == (4,) and np.all(np.isfinite(iwae))
    samples, mean = model.generate(key=jax.random.key(4), num_samples=3)
    assert samples.shape == mean.shape == (3, *SHAPE)
    np.testing.assert_allclose(np.asarray(samples) * 255, np.round(np.asarray(samples) * 255), atol=1e-3)
