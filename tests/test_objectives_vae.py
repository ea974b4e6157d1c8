"""vqjax.objectives for the VAE family: the batch means of the pure losses, masks, shared binarization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import losses, objectives
from vqjax.nn import VAE, MLPDecoder, MLPEncoder, VIBClassifier

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def vae():
    rngs = nnx.Rngs(0)
    return VAE(MLPEncoder(SHAPE, 3, hidden=16, rngs=rngs), MLPDecoder(SHAPE, 3, hidden=16, rngs=rngs), latents=3)


@pytest.fixture(scope="module")
def batch():
    return {"image": jax.random.uniform(jax.random.key(1), (6, *SHAPE)), "label": jnp.arange(6, dtype=jnp.int32)}


def _terms(model, batch, key):
    """The objective's own randomness, reproduced: binarize with the first half of the key."""
    k_data, k_model = jax.random.split(key)
    x = objectives.binarize(batch["image"], key=k_data)
    k_z, k_prior = jax.random.split(k_model)
    return x, model(x, key=k_z), k_prior


def test_binarize_draws_bernoulli_pixels():
    p = jnp.full((20000,), 0.3)
    x = np.asarray(objectives.binarize(p, key=jax.random.key(0)))
    assert set(np.unique(x)) == {0.0, 1.0} and abs(x.mean() - 0.3) < 0.01


def test_vae_objective_is_the_masked_mean_negative_elbo(vae, batch):
    key, w = jax.random.key(2), jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    loss, m = objectives.vae_objective(vae, batch, key=key, weights=w)
    _, out, _ = _terms(vae, batch, key)
    neg_elbo = np.asarray(out.kl - out.log_likelihood)
    np.testing.assert_allclose(loss, neg_elbo[:4].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["elbo"], -neg_elbo[:4].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["rate"], np.asarray(out.kl)[:4].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["sum/distortion"], -np.asarray(out.log_likelihood)[:4].sum(), rtol=1e-5)
    assert float(m["weight"]) == 4.0


def test_beta_and_capacity(vae, batch):
    key = jax.random.key(3)
    _, out, _ = _terms(vae, batch, key)
    d, r = -np.asarray(out.log_likelihood), np.asarray(out.kl)
    loss, m = objectives.vae_objective(vae, batch, key=key, beta=4.0)
    np.testing.assert_allclose(loss, np.mean(d + 4.0 * r), rtol=1e-5)
    np.testing.assert_allclose(m["elbo"], np.mean(-d - r), rtol=1e-5)  # the ELBO, whatever β
    loss, _ = objectives.vae_objective(vae, batch, key=key, beta=4.0, capacity=5.0)
    np.testing.assert_allclose(loss, np.mean(d + 4.0 * np.abs(r - 5.0)), rtol=1e-5)


def test_info_vae_adds_the_mmd_to_prior_samples(vae, batch):
    key, w = jax.random.key(4), jnp.array([1, 1, 1, 0, 1, 1], jnp.float32)
    loss, m = objectives.vae_objective(vae, batch, key=key, info_alpha=0.5, info_lambda=10.0, kernel="rbf",
                                       weights=w)
    _, out, k_prior = _terms(vae, batch, key)
    prior = jax.random.normal(k_prior, out.z.shape)
    keep = np.asarray(w) > 0
    mmd = float(losses.mmd(out.z[keep], prior, kernel="rbf"))
    d, r = -np.asarray(out.log_likelihood)[keep], np.asarray(out.kl)[keep]
    np.testing.assert_allclose(m["mmd"], mmd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, np.mean(d + 0.5 * r + 9.5 * mmd), rtol=1e-5)


def test_iwae_objective_sees_the_same_binarized_images(vae, batch):
    key = jax.random.key(5)
    _, m = objectives.vae_iwae_objective(vae, batch, key=key, num_samples=4, chunk_size=3)
    x, _, _ = _terms(vae, batch, key)
    k_z = jax.random.split(jax.random.split(key)[1])[0]
    expected = -vae.iwae_log_likelihood(x, key=k_z, num_samples=4, chunk_size=3)
    np.testing.assert_allclose(m["iwae_nll"], np.mean(expected), rtol=1e-5)
    # Without binarization the grey images themselves are scored.
    _, m2 = objectives.vae_iwae_objective(vae, batch, key=key, num_samples=4, chunk_size=3,
                                          dynamic_binarization=False)
    expected2 = -vae.iwae_log_likelihood(batch["image"], key=k_z, num_samples=4, chunk_size=3)
    np.testing.assert_allclose(m2["iwae_nll"], np.mean(expected2), rtol=1e-5)


def test_vib_objective(batch):
    rngs = nnx.Rngs(0)
    model = VIBClassifier(MLPEncoder(SHAPE, 4, hidden=(8,), rngs=rngs), latents=4, num_classes=10, rngs=rngs)
    key = jax.random.key(6)
    loss, m = objectives.vib_objective(model, batch, key=key, beta=0.1, num_eval_samples=5)
    k_train, k_eval = jax.random.split(key)
    logits, _, _, kl = model(batch["image"], key=k_train)
    terms = losses.vib_loss(logits[0], batch["label"], kl, beta=0.1)
    np.testing.assert_allclose(loss, np.mean(terms.loss), rtol=1e-5)
    pred = np.argmax(model.predict(batch["image"], key=k_eval, num_samples=5), -1)
    np.testing.assert_allclose(m["accuracy"], np.mean(pred == np.asarray(batch["label"])), rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"] + m["error"], 1.0, rtol=1e-6)


def test_evaluation_binarizes_each_example_by_its_index(batch):
    """With ``batch["index"]`` (evaluation), a test image's binarization ignores the batch it is in."""
    key = jax.random.key(7)
    full, _ = objectives._data(dict(batch, index=jnp.arange(6, dtype=jnp.int32)), key, True)
    part, _ = objectives._data({"image": batch["image"][2:4], "index": jnp.arange(2, 4, dtype=jnp.int32)}, key, True)
    np.testing.assert_array_equal(full[2:4], part)
    assert set(np.unique(np.asarray(full))) == {0.0, 1.0}
