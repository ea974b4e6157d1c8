"""vqjax.objectives.vqvae_objective: the batch mean of the per-example loss, masks, usage counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import losses, objectives, quantizers
from vqjax.nn import VQVAE


@pytest.fixture(scope="module")
def model_and_batch():
    model = VQVAE(num_codes=8, code_dim=4, hidden=8, residual_hidden=4, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    return model, {"image": x}


def test_objective_is_the_masked_mean_of_the_per_example_loss(model_and_batch):
    model, batch = model_and_batch
    w = jnp.array([1.0, 1.0, 0.0])
    loss, m = objectives.vqvae_objective(model, batch, beta=0.5, weights=w)
    out = model(batch["image"])
    ll = losses.bernoulli_log_likelihood(out.logits, batch["image"], event_ndim=3)
    codes = quantizers.lookup(out.indices, model.quantizer.codebook[...])
    per = np.asarray(losses.vqvae_loss(ll, out.z_e, codes, beta=0.5, event_ndim=3).loss)
    np.testing.assert_allclose(loss, per[:2].mean(), rtol=1e-5)
    mse = np.mean((np.asarray(jax.nn.sigmoid(out.logits)) - np.asarray(batch["image"])) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(m["mse"], mse[:2].mean(), rtol=1e-5)
    np.testing.assert_array_equal(m["counts"], quantizers.code_usage(out.indices[:2], 8).counts)
    assert float(m["weight"]) == 2.0


def test_gaussian_likelihood_and_bad_name(model_and_batch):
    model, batch = model_and_batch
    variance, beta = 0.3, 0.25
    loss, m = nnx.jit(lambda mdl, b: objectives.vqvae_objective(mdl, b, likelihood="gaussian", variance=variance,
                                                                 beta=beta))(model, batch)
    # The objective written out in float64 from the model's outputs: the decoder output is the mean.
    out = nnx.jit(lambda mdl, x: mdl(x))(model, batch["image"])
    x, mean = np.asarray(batch["image"], np.float64), np.asarray(out.logits, np.float64)
    rec = np.sum(0.5 * (x - mean) ** 2 / variance + 0.5 * np.log(2 * np.pi * variance), axis=(1, 2, 3))
    codes = np.asarray(model.quantizer.codebook[...], np.float64)[np.asarray(out.indices)]
    vq = np.sum((np.asarray(out.z_e, np.float64) - codes) ** 2, axis=(1, 2, 3))  # ||z_e - e||², both terms
    np.testing.assert_allclose(m["reconstruction"], rec.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["codebook"], vq.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["commitment"], beta * vq.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean(rec + (1 + beta) * vq), rtol=1e-5)
    np.testing.assert_allclose(m["mse"], np.mean((mean - x) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="likelihood"):
        objectives.vqvae_objective(model, batch, likelihood="poisson")
