"""The models follow the data: any H×W×C, a configurable number of stride-2 stages, RGB likelihoods.

Shapes of the latents and decoder outputs on 32×32×3, 64×48×3 and 28×28×1 with ``downsample`` 1, 2
and 3; the divisibility errors; the discretized-logistic decoder's 2C channels; the default model's
parameters (counted by hand) unchanged; and the objectives' ``bits_per_dim``, ``psnr`` and ``ssim``
against NumPy references.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import objectives
from vqjax.evaluation import psnr, ssim
from vqjax.nn import (
    VAE,
    VQVAE,
    VQVAE2,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    GatedPixelCNN,
    HierarchicalPrior,
    MLPDecoder,
    MLPEncoder,
    VectorQuantizer,
)

SHAPES = [(32, 32, 3), (64, 48, 3), (28, 28, 1)]
CASES = [(s, d) for s in SHAPES for d in (1, 2, 3) if s[0] % 2**d == 0 and s[1] % 2**d == 0]


def _count(module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _tiny_vqvae(c, *, likelihood="bernoulli", downsample=2, seed=0):
    return VQVAE(in_channels=c, num_codes=16, code_dim=4, hidden=8, residual_hidden=4, num_residual=1,
                 likelihood=likelihood, downsample=downsample, rngs=nnx.Rngs(seed))


# --------------------------------------------------------------------------- VQ-VAE


def test_cases_cover_downsample_1_2_and_3_on_every_shape():
    assert {d for _, d in CASES} == {1, 2, 3} and {s for s, _ in CASES} == set(SHAPES)


@pytest.mark.parametrize(("shape", "downsample"), CASES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_vqvae_shapes(shape, downsample, likelihood):
    h, w, c = shape
    model = _tiny_vqvae(c, likelihood=likelihood, downsample=downsample)
    x = jax.random.uniform(jax.random.key(0), (2, *shape))
    out = model(x)
    f = 2**downsample
    assert out.z_e.shape == (2, h // f, w // f, 4) and out.z_q.shape == out.z_e.shape
    assert out.indices.shape == (2, h // f, w // f)
    channels = 2 * c if likelihood == "discretized_logistic" else c  # location and log-scale per sub-pixel
    assert out.logits.shape == (2, h, w, channels)
    assert model.encode(x).shape == (2, h // f, w // f)
    assert model.decode(out.indices).shape == (2, h, w, channels)


def test_the_default_vqvae_keeps_its_parameters():
    """Counted layer by layer for the default (K=512, D=64, hidden 64, residual 32, two blocks, C=1):
    the layer structure of the default is unchanged, and downsample=2 is the default."""
    c, k, d, hid, res = 1, 512, 64, 64, 32
    conv = lambda kh, cin, cout: kh * kh * cin * cout + cout
    residual = conv(3, hid, res) + res * hid + hid
    encoder = conv(4, c, hid // 2) + conv(4, hid // 2, hid) + conv(3, hid, hid) + 2 * residual + hid * d + d
    decoder = conv(3, d, hid) + 2 * residual + conv(4, hid, hid // 2) + conv(4, hid // 2, c)
    model = VQVAE(rngs=nnx.Rngs(0))
    assert _count(model) == encoder + decoder + k * d
    assert model.downsample == 2 and model.likelihood == "bernoulli"
    assert not hasattr(model.encoder, "down") and not hasattr(model.decoder, "up")
    explicit = VQVAE(downsample=2, likelihood="bernoulli", rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    np.testing.assert_array_equal(model(x).logits, explicit(x).logits)  # same parameters, same outputs


def test_more_stages_add_only_the_extra_convolutions():
    """downsample=3 adds one hidden→hidden 4×4 convolution each way to the default's layers."""
    hid = 8
    base, deeper = _count(_tiny_vqvae(3)), _count(_tiny_vqvae(3, downsample=3))
    assert deeper - base == 2 * (4 * 4 * hid * hid + hid)


def test_divisibility_errors_name_the_shape():
    model = _tiny_vqvae(1, downsample=3)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*downsample = 8 .*\(2, 28, 28, 1\)"):
        model(jnp.zeros((2, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"\(1, 30, 32, 3\)"):
        _tiny_vqvae(3)(jnp.zeros((1, 30, 32, 3)))
    with pytest.raises(ValueError, match="downsample"):
        _tiny_vqvae(1, downsample=0)
    with pytest.raises(ValueError, match="likelihood"):
        _tiny_vqvae(1, likelihood="poisson")
    with pytest.raises(ValueError, match="downsample"):
        Encoder(1, 4, hidden=8, downsample=-1, rngs=nnx.Rngs(0))


def test_encoder_and_decoder_alone():
    enc = Encoder(3, 4, hidden=8, residual_hidden=4, downsample=3, rngs=nnx.Rngs(0))
    dec = Decoder(4, 6, hidden=8, residual_hidden=4, downsample=3, rngs=nnx.Rngs(0))
    z = enc(jnp.zeros((1, 64, 48, 3)))
    assert z.shape == (1, 8, 6, 4) and dec(z).shape == (1, 64, 48, 6)


# --------------------------------------------------------------------------- VQ-VAE-2


@pytest.mark.parametrize(("shape", "downsample"), [((32, 32, 3), 2), ((64, 48, 3), 3), ((28, 28, 1), 1),
                                                   ((28, 28, 1), 2), ((30, 20, 3), 2)])
def test_vqvae2_shapes(shape, downsample):
    h, w, c = shape
    rngs = nnx.Rngs(0)
    model = VQVAE2(in_channels=c, top=VectorQuantizer(8, 4, rngs=rngs), bottom=VectorQuantizer(8, 4, rngs=rngs),
                   hidden=8, residual_hidden=4, num_residual=1, likelihood="discretized_logistic",
                   downsample=downsample, rngs=rngs)
    x = jax.random.uniform(jax.random.key(0), (2, *shape))
    out = model(x)
    m = 2 ** (downsample + 1)  # padded to multiples of the top grid's factor
    hp, wp = -(-h // m) * m, -(-w // m) * m
    assert out.top_indices.shape == (2, hp // m, wp // m)
    assert out.bottom_indices.shape == (2, 2 * hp // m, 2 * wp // m)
    assert out.logits.shape == (2, h, w, 2 * c)
    top, bottom = model.encode(x)
    assert model.decode(top, bottom, image_shape=(h, w)).shape == (2, h, w, 2 * c)


def test_the_priors_take_any_grid():
    prior = GatedPixelCNN(16, hidden=8, num_layers=2, out_hidden=8, rngs=nnx.Rngs(0))
    codes = jnp.zeros((2, 8, 6), jnp.int32)
    assert prior(codes).shape == (2, 8, 6, 16)
    hier = HierarchicalPrior((8, 16), hidden=8, num_layers=2, bottom_hidden=8, bottom_layers=2, cond_hidden=8,
                             rngs=nnx.Rngs(0))
    top, bottom = jnp.zeros((2, 4, 3), jnp.int32), jnp.zeros((2, 8, 6), jnp.int32)
    logits_top, logits_bottom = hier(top, bottom)
    assert logits_top.shape == (2, 4, 3, 8) and logits_bottom.shape == (2, 8, 6, 16)


# --------------------------------------------------------------------------- VAE


@pytest.mark.parametrize(("shape", "downsample"), CASES)
def test_conv_vae_shapes(shape, downsample):
    h, w, c = shape
    out_shape = (h, w, 2 * c)  # discretized logistic
    rngs = nnx.Rngs(0)
    enc = ConvEncoder(shape, 3, hidden=4, downsample=downsample, rngs=rngs)
    dec = ConvDecoder(out_shape, 3, hidden=4, downsample=downsample, rngs=rngs)
    vae = VAE(enc, dec, latents=3, likelihood="discretized_logistic")
    x = jnp.round(jax.random.uniform(jax.random.key(0), (2, *shape)) * 255) / 255
    out = vae(x, key=jax.random.key(1))
    assert out.mean.shape == (2, 3) and out.logits.shape == (2, *out_shape)
    assert out.log_likelihood.shape == (2,) and bool(jnp.all(out.log_likelihood < 0))
    assert vae.mean_image(out.logits).shape == (2, *shape)


def test_conv_vae_default_and_errors():
    hid, lat = 32, 20
    enc = ConvEncoder((28, 28, 1), rngs=nnx.Rngs(0))  # the default: two stages, as before
    assert _count(enc) == (16 * 1 * hid + hid) + (16 * hid * 2 * hid + 2 * hid) + (7 * 7 * 2 * hid * 2 * lat + 2 * lat)
    with pytest.raises(ValueError, match=r"image_shape.*divisible by 2\*\*downsample = 8.*\(28, 28, 1\)"):
        ConvEncoder((28, 28, 1), downsample=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(30, 28, 1\)"):
        ConvDecoder((30, 28, 1), rngs=nnx.Rngs(0))


def test_mlp_vae_takes_rgb():
    rngs = nnx.Rngs(0)
    vae = VAE(MLPEncoder((32, 32, 3), 4, hidden=8, rngs=rngs), MLPDecoder((32, 32, 6), 4, hidden=8, rngs=rngs),
              latents=4, likelihood="discretized_logistic")
    out = vae(jnp.zeros((2, 32, 32, 3)), key=jax.random.key(0))
    assert out.logits.shape == (2, 32, 32, 6)


# --------------------------------------------------------------------------- objectives: RGB metrics


def _np_discretized_logistic_nll(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``-log P(x)`` per example in float64: location = sigmoid(first C channels), log s = max(last C, -7),
    bins of half-width 1/510 around k/255, the edge bins open to ∓∞ (Salimans et al., 2017)."""
    logits, x = logits.astype(np.float64), x.astype(np.float64)
    c = x.shape[-1]
    mu = 1.0 / (1.0 + np.exp(-logits[..., :c]))
    s = np.exp(np.maximum(logits[..., c:], -7.0))
    cdf = lambda v: 1.0 / (1.0 + np.exp(-(v - mu) / s))
    upper = np.where(x >= 1.0, 1.0, cdf(x + 0.5 / 255))
    lower = np.where(x <= 0.0, 0.0, cdf(x - 0.5 / 255))
    return -np.sum(np.log(upper - lower), axis=(1, 2, 3))


def test_vqvae_objective_bits_per_dim_psnr_ssim_against_numpy():
    model = _tiny_vqvae(3, likelihood="discretized_logistic")
    k = jax.random.randint(jax.random.key(0), (4, 32, 32, 3), 0, 256)
    x = (k / 255.0).astype(jnp.float32)
    weights = jnp.array([1.0, 1.0, 1.0, 0.0])  # a padded last row
    loss, m = objectives.vqvae_objective(model, {"image": x}, weights=weights)
    logits = np.asarray(model(x).logits)
    nll = _np_discretized_logistic_nll(logits, np.asarray(x))
    n = 32 * 32 * 3
    w = np.asarray(weights)
    np.testing.assert_allclose(float(m["reconstruction"]), np.sum(nll * w) / 3, rtol=1e-5)
    np.testing.assert_allclose(float(m["bits_per_dim"]), np.sum(nll * w) / 3 / (n * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(float(m["sum/bits_per_dim"]), np.sum(nll * w) / (n * math.log(2)), rtol=1e-5)
    # PSNR and SSIM of the mean reconstruction: the logistic's location (in (0, 1))
    mean = 1.0 / (1.0 + np.exp(-logits[..., :3].astype(np.float64)))
    mse = np.mean((mean - np.asarray(x)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(float(m["sum/psnr"]), np.sum(10 * np.log10(1 / mse) * w), rtol=1e-5)
    np.testing.assert_allclose(float(m["mse"]), np.sum(mse * w) / 3, rtol=1e-5)
    want_ssim = np.asarray(ssim(jnp.asarray(mean, jnp.float32), x))
    np.testing.assert_allclose(float(m["ssim"]), np.sum(want_ssim * w) / 3, rtol=1e-5)
    assert float(m["weight"]) == 3.0 and bool(jnp.isfinite(loss))


def test_padded_rows_leave_the_image_metrics_finite():
    """A zero image reconstructed exactly (a clipped Gaussian mean) has infinite PSNR; padded, it must not
    turn the sums into NaN."""
    class Zero(nnx.Module):  # a VQ-VAE whose decoder gives the Gaussian mean 0 everywhere
        def __init__(self):
            self.inner = _tiny_vqvae(1)
            self.num_codes = self.inner.num_codes

        def __call__(self, x, key=None):
            out = self.inner(x, key=key)
            return out._replace(logits=jnp.zeros_like(out.logits))

    x = jnp.zeros((2, 16, 16, 1)).at[0].set(0.5)
    _, m = objectives.vqvae_objective(Zero(), {"image": x}, likelihood="gaussian", weights=jnp.array([1.0, 0.0]))
    for key in ("sum/psnr", "sum/ssim", "psnr", "ssim"):
        assert bool(jnp.isfinite(m[key])), key
    assert float(m["psnr"]) == pytest.approx(float(psnr(jnp.zeros((16, 16, 1)), x[0])), rel=1e-6)


def test_no_bits_per_dim_without_the_logistic_and_no_ssim_below_11_pixels():
    ones = jnp.ones((2,))
    _, m = objectives.vqvae_objective(_tiny_vqvae(1), {"image": jnp.full((2, 28, 28, 1), 0.5)}, weights=ones)
    assert "bits_per_dim" not in m and {"psnr", "ssim", "sum/psnr", "sum/ssim"} <= set(m)
    _, m = objectives.vqvae_objective(_tiny_vqvae(1, downsample=1), {"image": jnp.full((2, 8, 8, 1), 0.5)},
                                      weights=ones)
    assert "psnr" in m and "ssim" not in m


def test_image_quality_is_measured_in_evaluation_not_in_training_steps():
    """PSNR and SSIM cost a training step time and move no parameter: only evaluation (weights given) has them."""
    _, m = objectives.vqvae_objective(_tiny_vqvae(1), {"image": jnp.full((2, 28, 28, 1), 0.5)})
    assert not {"psnr", "ssim"} & set(m) and "mse" in m


def test_a_likelihood_the_decoder_was_not_built_for_is_a_clear_error():
    x = jnp.zeros((2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"needs 6 decoder channels.*\(2, 32, 32, 3\).*likelihood"):
        objectives.vqvae_objective(_tiny_vqvae(3), {"image": x}, likelihood="discretized_logistic")
    with pytest.raises(ValueError, match=r"needs 3 decoder channels"):
        objectives.vqvae_objective(_tiny_vqvae(3, likelihood="discretized_logistic"), {"image": x},
                                   likelihood="bernoulli")
    # Without a likelihood the objective takes the model's.
    _, m = objectives.vqvae_objective(_tiny_vqvae(3, likelihood="discretized_logistic"), {"image": x})
    assert "bits_per_dim" in m


def test_vqvae2_objective_reports_rgb_metrics():
    rngs = nnx.Rngs(0)
    model = VQVAE2(in_channels=3, top=VectorQuantizer(8, 4, rngs=rngs), bottom=VectorQuantizer(8, 4, rngs=rngs),
                   hidden=8, residual_hidden=4, num_residual=1, likelihood="discretized_logistic", rngs=rngs)
    x = jnp.round(jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)) * 255) / 255
    _, m = objectives.vqvae2_objective(model, {"image": x}, likelihood="discretized_logistic", weights=jnp.ones((2,)))
    nll = _np_discretized_logistic_nll(np.asarray(model(x).logits), np.asarray(x))
    np.testing.assert_allclose(float(m["bits_per_dim"]), nll.mean() / (32 * 32 * 3 * math.log(2)), rtol=1e-5)
    assert np.isfinite(float(m["psnr"])) and -1 <= float(m["ssim"]) <= 1


def test_vae_objective_bits_per_dim_is_the_elbo_in_bits():
    rngs = nnx.Rngs(0)
    vae = VAE(ConvEncoder((32, 32, 3), 4, hidden=4, rngs=rngs), ConvDecoder((32, 32, 6), 4, hidden=4, rngs=rngs),
              latents=4, likelihood="discretized_logistic")
    x = jnp.round(jax.random.uniform(jax.random.key(0), (3, 32, 32, 3)) * 255) / 255
    _, m = objectives.vae_objective(vae, {"image": x}, key=jax.random.key(1), dynamic_binarization=False,
                                    weights=jnp.ones((3,)))
    np.testing.assert_allclose(float(m["bits_per_dim"]), -float(m["elbo"]) / (32 * 32 * 3 * math.log(2)), rtol=1e-6)
    assert {"psnr", "ssim", "sum/psnr", "sum/ssim", "sum/bits_per_dim"} <= set(m)
    _, m = objectives.vae_iwae_objective(vae, {"image": x}, key=jax.random.key(1), num_samples=4, chunk_size=2,
                                         dynamic_binarization=False)
    np.testing.assert_allclose(float(m["iwae_bits_per_dim"]), float(m["iwae_nll"]) / (32 * 32 * 3 * math.log(2)),
                               rtol=1e-6)
