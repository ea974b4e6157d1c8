"""vqjax.nn.PixelCNNVAE and PixelCNNVQVAE: the Bernoulli logit ``l1 - l0`` gives the PixelCNN's exact
likelihood; vae_objective, vae_iwae_objective and vqvae_objective (EMA state update in training mode)
accept them unchanged under jax.jit; the IWAE bound against a NumPy logmeanexp of hand-computed weights;
samples; the encode / lookup round trip; construction errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp

from tests._numpy_init import numpy_init
from vqjax import losses, objectives
from vqjax.nn import EMAVectorQuantizer, Encoder, MLPEncoder, PixelCNNDecoder, PixelCNNVAE, PixelCNNVQVAE

pytestmark = pytest.mark.usefixtures("strict_promotion")

IMAGE = (8, 8, 1)
B, L, D, K = 4, 3, 2, 8
GRID = (2, 2, D)  # the VQ encoder's 8x8 -> 2x2 map
SMALL = {"hidden": 8, "num_layers": 2, "cond_channels": 4, "cond_hidden": 4, "out_hidden": 8}


def _decoder(latent_shape, rngs):
    return PixelCNNDecoder(IMAGE, latent_shape, **SMALL, rngs=rngs)


@functools.cache
def _vae():
    def make():
        rngs = nnx.Rngs(0)
        return PixelCNNVAE(MLPEncoder(IMAGE, L, hidden=8, rngs=rngs), _decoder((L,), rngs), latents=L)
    return numpy_init(make, 0)


def _vq_encoder(rngs, code_dim=D):
    return Encoder(1, code_dim, hidden=8, residual_hidden=4, num_residual=1, rngs=rngs)


@functools.cache
def _vqvae():
    """In eval mode (the EMA quantizer's statistics frozen): tests that train merge a copy."""
    nets = numpy_init(lambda: nnx.List([_vq_encoder(nnx.Rngs(0)), _decoder(GRID, nnx.Rngs(1))]), 1)
    quantizer = EMAVectorQuantizer(K, D, dead_code_threshold=1.0, rngs=nnx.Rngs(2))
    model = PixelCNNVQVAE(nets[0], quantizer, nets[1])
    model.eval()
    return model


def _x(seed=0, b=B):
    return jnp.asarray((np.random.default_rng(seed).random((b, *IMAGE)) < 0.4).astype(np.float32))


_call = nnx.jit(lambda m, x, key: m(x, key=key))
_ll = nnx.jit(lambda m, x, z: m.log_likelihood_given(x, z))


# --------------------------------------------------------------------------- the Bernoulli logit


def test_bernoulli_logit_is_the_pixelcnn_likelihood():
    model, x = _vae(), _x()
    out = _call(model, x, jax.random.key(0))
    assert out.logits.shape == (B, *IMAGE) and out.z.shape == out.mean.shape == (B, L)
    bern = losses.bernoulli_log_likelihood(out.logits, x, event_ndim=3)
    exact = _ll(model, x, out.z)
    np.testing.assert_allclose(bern, exact, rtol=1e-5)
    np.testing.assert_allclose(out.log_likelihood, exact, rtol=1e-6)
    np.testing.assert_allclose(out.kl, losses.gaussian_kl(out.mean, out.log_variance), rtol=1e-6)
    # per pixel: log softmax(l0, l1)[x] = log sigmoid of ±(l1 - l0)
    two = nnx.jit(lambda m, x, z: m.decoder.logits(x, z))(model, x, out.z)
    per_pixel = np.take_along_axis(np.asarray(jax.nn.log_softmax(two)), np.asarray(x, np.int32), axis=-1)
    np.testing.assert_allclose(losses.bernoulli_log_likelihood(out.logits, x, event_ndim=0), per_pixel,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.mean_image(out.logits), jax.nn.softmax(two)[..., 1:], rtol=1e-5, atol=1e-7)


def test_vq_bernoulli_logit_is_the_pixelcnn_likelihood():
    model, x = _vqvae(), _x()
    out = _call(model, x, None)
    assert out.logits.shape == (B, *IMAGE) and out.z_q.shape == (B, *GRID) and out.indices.shape == (B, 2, 2)
    np.testing.assert_allclose(losses.bernoulli_log_likelihood(out.logits, x, event_ndim=3),
                               _ll(model, x, out.z_q), rtol=1e-5)


# --------------------------------------------------------------------------- the VAE's objectives


def test_vae_and_iwae_objectives_accept_the_model_under_jit():
    model = _vae()
    batch = {"image": jax.random.uniform(jax.random.key(1), (B, *IMAGE))}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    weights = jnp.array([1, 1, 1, 0], jnp.float32)  # an evaluation batch's mask: also the image-quality path

    @jax.jit
    def step(params, beta, lam):
        def loss_fn(p):
            return objectives.vae_objective(nnx.merge(graphdef, p, rest), batch, key=jax.random.key(2),
                                            beta=beta, free_bits=lam, weights=weights)
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, m), grads = step(params, jnp.float32(1.0), jnp.float32(0.0))
    np.testing.assert_allclose(loss, -m["elbo"], rtol=1e-5)  # β = 1, no free bits: the negative ELBO
    assert np.isfinite(float(loss)) and float(m["rate"]) > 0 and np.isfinite(float(m["psnr"]))
    assert float(m["weight"]) == 3
    for part in ("encoder", "decoder"):
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[part])) > 0
    iwae = jax.jit(lambda p: objectives.vae_iwae_objective(nnx.merge(graphdef, p, rest), batch,
                                                           key=jax.random.key(2), num_samples=3, chunk_size=2))
    nll, mi = iwae(params)
    assert np.isfinite(float(nll)) and float(mi["weight"]) == B
    # the same binarized images: the 3-sample bound is not far from the one-sample ELBO
    assert abs(float(nll) + float(m["elbo"])) < 0.2 * abs(float(m["elbo"]))


def test_iwae_against_numpy_logmeanexp_of_hand_computed_weights():
    model, x, key = _vae(), _x(1), jax.random.key(5)
    s, chunk = 3, 2  # two chunks, the last one's extra sample masked out
    got = nnx.jit(lambda m, x, k: m.iwae_log_likelihood(x, key=k, num_samples=s, chunk_size=chunk))(model, x, key)
    mean, log_var = (np.asarray(a, np.float64) for a in model.encode(x))
    z = jnp.concatenate([losses.reparameterize(jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32),
                                               key=jax.random.fold_in(key, c), num_samples=chunk)
                         for c in range(2)])[:s]  # [S, B, L], as iwae_log_likelihood draws them
    zn = np.asarray(z, np.float64)
    log_q = -0.5 * np.sum(np.log(2 * np.pi) + log_var + (zn - mean) ** 2 / np.exp(log_var), axis=-1)
    log_p = -0.5 * np.sum(np.log(2 * np.pi) + zn**2, axis=-1)
    log_px = np.stack([np.asarray(_ll(model, x, z[i]), np.float64) for i in range(s)])
    want = logsumexp(log_px + log_p - log_q, axis=0) - np.log(s)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # S = 1 is the one-sample ELBO with a Monte Carlo KL: log p(x|z) + log p(z) - log q(z|x) of the first draw
    one = nnx.jit(lambda m, x, k: m.iwae_log_likelihood(x, key=k, num_samples=1))(model, x, key)
    np.testing.assert_allclose(one, (log_px + log_p - log_q)[0], rtol=1e-5)


def test_vae_samples_and_generate():
    model = _vae()
    z = jnp.asarray(np.random.default_rng(3).normal(size=(B, L)).astype(np.float32))
    x = model.sample(z, key=jax.random.key(0))
    assert x.shape == (B, *IMAGE) and x.dtype == jnp.float32 and set(np.unique(x)) <= {0.0, 1.0}
    greedy = [model.sample(z, key=jax.random.key(k), temperature=0.0) for k in (1, 2)]
    np.testing.assert_array_equal(*greedy)
    g, mean = model.generate(key=jax.random.key(4), num_samples=3)
    assert g.shape == (3, *IMAGE) and g.dtype == jnp.float32 and set(np.unique(g)) <= {0.0, 1.0}
    np.testing.assert_array_equal(g, mean)
    assert model.likelihood == "bernoulli" and model.latents == L


# --------------------------------------------------------------------------- the VQ-VAE


def test_vqvae_objective_trains_it_and_updates_the_ema_codebook_under_jit():
    model, x = _vqvae(), _x(2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, key):
        def loss_fn(p):  # as vqjax.training's step: a fresh copy, training mode, the new state split off
            m = nnx.merge(graphdef, p, rest, copy=True)
            m.train()
            loss, metrics = objectives.vqvae_objective(m, {"image": x}, key=key, beta=0.25)
            return loss, (metrics, nnx.split(m, nnx.Param, ...)[2])
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, (metrics, new_rest)), grads = step(params, rest, jax.random.key(0))
    assert np.isfinite(float(loss)) and "restarted" in metrics
    np.testing.assert_allclose(loss, metrics["reconstruction"] + metrics["commitment"], rtol=1e-5)
    # the reconstruction term is -log p(x|z_q) with the codes before this step's EMA update
    np.testing.assert_allclose(metrics["reconstruction"],
                               -np.mean(_ll(model, x, nnx.jit(lambda m, x: m.quantize(x))(model, x))), rtol=1e-5)
    old, new = rest["quantizer"]["ema"], new_rest["quantizer"]["ema"]
    assert not np.allclose(old["cluster_size"][...], new["cluster_size"][...])
    for part in ("encoder", "decoder"):  # the encoder's gradient through the straight-through copy
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[part])) > 0


def test_vq_encode_lookup_round_trip_and_outputs():
    model, x = _vqvae(), _x(3)
    codes = nnx.jit(lambda m, x: m.encode(x))(model, x)
    assert codes.shape == (B, 2, 2) and codes.dtype == jnp.int32
    z_q = nnx.jit(lambda m, x: m.quantize(x))(model, x)
    np.testing.assert_array_equal(model.lookup(codes), z_q)
    out = _call(model, x, None)
    np.testing.assert_array_equal(out.indices, codes)
    np.testing.assert_array_equal(out.z_q, z_q)
    np.testing.assert_allclose(out.commitment_loss, np.sum((np.asarray(out.z_e) - np.asarray(z_q)) ** 2,
                                                           axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_array_equal(out.codebook_loss, 0.0)  # EMA: no codebook term
    assert int(out.restarted) == 0 and model.num_codes == K and model.likelihood == "bernoulli"
    sample = model.sample(z_q, key=jax.random.key(0))
    assert sample.shape == (B, *IMAGE) and sample.dtype == jnp.float32 and set(np.unique(sample)) <= {0.0, 1.0}


# --------------------------------------------------------------------------- errors


def test_construction_errors_name_the_argument():
    rngs = nnx.Rngs(0)
    enc = nnx.eval_shape(lambda: MLPEncoder(IMAGE, L, hidden=4, rngs=nnx.Rngs(0)))
    vec = nnx.eval_shape(lambda: _decoder((L,), nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"`decoder` latent_shape=\(4,\) must be \(latents,\)"):
        PixelCNNVAE(enc, nnx.eval_shape(lambda: _decoder((L + 1,), nnx.Rngs(0))), latents=L)
    with pytest.raises(ValueError, match="`decoder` must be built for a vector latent"):
        PixelCNNVAE(enc, nnx.eval_shape(lambda: _decoder(GRID, nnx.Rngs(0))), latents=L)
    with pytest.raises(ValueError, match="`encoder` must map"):
        PixelCNNVAE(nnx.eval_shape(lambda: MLPEncoder(IMAGE, L + 1, hidden=4, rngs=nnx.Rngs(0))), vec, latents=L)
    with pytest.raises(ValueError, match="`latents`"):
        PixelCNNVAE(enc, vec, latents=0)
    with pytest.raises(ValueError, match="`decoder` must be a vqjax.nn.PixelCNNDecoder"):
        PixelCNNVAE(enc, enc, latents=L)

    venc = nnx.eval_shape(lambda: _vq_encoder(nnx.Rngs(0)))
    quantizer = EMAVectorQuantizer(K, D, rngs=rngs)
    with pytest.raises(ValueError, match="`decoder` must be built for a grid latent"):
        PixelCNNVQVAE(venc, quantizer, vec)
    with pytest.raises(ValueError, match="`quantizer` code_dim=3"):
        PixelCNNVQVAE(venc, EMAVectorQuantizer(K, D + 1, rngs=rngs), nnx.eval_shape(lambda: _decoder(GRID, nnx.Rngs(0))))
    with pytest.raises(ValueError, match="`encoder` must map"):  # a 4x4 grid for an encoder that gives 2x2
        PixelCNNVQVAE(venc, quantizer, nnx.eval_shape(lambda: _decoder((4, 4, D), nnx.Rngs(0))))
    with pytest.raises(ValueError, match="`encoder` must map"):  # z_e of the wrong code dimension
        PixelCNNVQVAE(nnx.eval_shape(lambda: _vq_encoder(nnx.Rngs(0), code_dim=D + 1)), quantizer,
                      nnx.eval_shape(lambda: _decoder(GRID, nnx.Rngs(0))))
    with pytest.raises(ValueError, match="`x`"):
        _vqvae()(jnp.zeros(IMAGE))
