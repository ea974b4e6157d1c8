"""vqjax.nn.PixelCNNDecoder: causality in the pixels and dependence on z (by perturbation), the receptive
field, the exact likelihood (NumPy reference, normalisation over all images), sampling (greedy,
determinism, the distribution), both conditioning networks, errors, a jitted training step."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tests._numpy_init import numpy_init as _numpy_init
from vqjax.nn import PixelCNNDecoder

pytestmark = pytest.mark.usefixtures("strict_promotion")

NUM_LAYERS, KERNEL = 2, 3
LATENTS = {"vector": (5,), "grid": (2, 2, 3)}  # for 8x8 images; the grid is upsampled x4
TINY_LATENTS = {"vector": (3,), "grid": (1, 1, 2)}  # for the 2x2 and 3x3 images
TOL = 1e-6  # float32 rounding allowance (one batch: unchanged logits come out bitwise equal in practice)


@functools.cache
def _decoder(kind, image=(8, 8), tiny=False, seed=0):
    latent = (TINY_LATENTS if tiny else LATENTS)[kind]
    return _numpy_init(lambda: PixelCNNDecoder(
        (*image, 1), latent, hidden=8, num_layers=NUM_LAYERS, kernel_size=KERNEL, cond_channels=4,
        cond_hidden=4, out_hidden=8, rngs=nnx.Rngs(0)), seed)


_logits = nnx.jit(lambda m, x, z: m.logits(x, z))
_log_likelihood = nnx.jit(lambda m, x, z: m.log_likelihood(x, z))


def _z(decoder, b, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, *decoder.latent_shape)).astype(np.float32))


def _x(b, h, w, seed=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 2, (b, h, w, 1)).astype(np.int32))


def _receptive_field(h, w):
    """``[H, W, H, W]`` bool: does (i, j) see pixel (i', j')? As documented: ``L·r + 1`` pixels to the
    left in its row, ``L·r + 1`` rows above within ``L·r`` columns either side."""
    reach = NUM_LAYERS * (KERNEL // 2)
    i, j, ii, jj = np.meshgrid(*(np.arange(n) for n in (h, w, h, w)), indexing="ij")
    d, c = i - ii, jj - j
    return ((d == 0) & (-c >= 1) & (-c <= reach + 1)) | ((d >= 1) & (d <= reach + 1) & (np.abs(c) <= reach))


def _before(h, w):
    """``[H, W, H, W]`` bool: (i', j') strictly before (i, j) in raster order."""
    r = np.arange(h * w).reshape(h, w)
    return r[:, :, None, None] > r[None, None, :, :]


# --------------------------------------------------------------------------- causality, receptive field


def _influence(decoder, x, z):
    """``[H, W, H, W]`` bool: do the logits at (i, j) change when pixel (i', j') of ``x [1, H, W, 1]`` flips?
    Also checks that re-drawing every pixel at or after (i', j') leaves the logits up to (i', j') as
    they were."""
    _, h, w, _ = x.shape
    n = h * w
    flip = np.asarray(x)[0, ..., 0].reshape(-1)[None].repeat(n, 0)  # [n, n]: row p flips pixel p
    flip[np.arange(n), np.arange(n)] ^= 1
    suffix = np.asarray(x)[0, ..., 0].reshape(-1)[None].repeat(n, 0)  # row p redraws pixels >= p
    redraw = np.random.default_rng(3).integers(0, 2, (n, n))
    after = np.arange(n)[None, :] >= np.arange(n)[:, None]
    suffix = np.where(after, redraw, suffix)
    suffix[np.arange(n), np.arange(n)] = 1 - np.asarray(x)[0, ..., 0].reshape(-1)  # pixel p always changes
    all_x = np.concatenate([np.asarray(x)[0, ..., 0].reshape(1, n), flip, suffix])  # the base image first
    out = np.asarray(_logits(decoder, jnp.asarray(all_x.reshape(-1, h, w, 1).astype(np.int32)),
                             jnp.broadcast_to(z, (2 * n + 1, *z.shape[1:]))))
    diff = np.abs(out[1:] - out[:1]).max(-1).reshape(2, n, n)  # [variant, p (changed), q (position)]
    up_to = np.arange(n)[None, :] <= np.arange(n)[:, None]  # [p, q]: q <= p
    assert diff[1][up_to].max() < TOL  # logits at q <= p: unchanged by the pixels >= p (up to rounding)
    assert np.all(diff[1][:-1].max(-1) > 1e-3)  # (and the redrawn pixels do reach later positions)
    return (diff[0] > TOL).T.reshape(h, w, h, w)  # [q, p]


@pytest.mark.parametrize("kind", ["vector", "grid"])
def test_causal_in_the_pixels_with_the_documented_receptive_field(kind):
    """Over all positions of an 8x8 image: the logits at (i, j) never change when pixels at or after
    (i, j) change, and flipping one pixel changes exactly the positions whose documented receptive field
    holds it (union over three images, as one image may hide a path behind a dead ReLU)."""
    decoder = _decoder(kind)
    h, w = 8, 8
    z = _z(decoder, 1)
    seen = np.zeros((h, w, h, w), bool)
    for seed in range(3):
        seen |= _influence(decoder, _x(1, h, w, seed=seed), z)
    field, before = _receptive_field(h, w), _before(h, w)
    assert np.all(field <= before) and field.sum() < before.sum()  # a strict subset of the past
    assert np.all(seen <= field)
    np.testing.assert_array_equal(seen, field)
    assert seen[4, 4, 4, 3] and seen[4, 4, 3, 4] and seen[4, 4, 2, 6]  # left, above, two up-right


@pytest.mark.parametrize("kind", ["vector", "grid"])
def test_logits_depend_on_z_at_every_position(kind):
    """Changing z changes the logits everywhere, including (0, 0), which sees no pixel."""
    decoder = _decoder(kind)
    x = _x(2, 8, 8)
    a = np.asarray(_logits(decoder, x, _z(decoder, 2, seed=1)))
    b = np.asarray(_logits(decoder, x, _z(decoder, 2, seed=5)))
    assert a.shape == (2, 8, 8, 2) and a.dtype == np.float32
    assert np.all(np.abs(a - b).max(-1) > 0)


# --------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("kind", ["vector", "grid"])
def test_log_likelihood_equals_numpy_reference(kind):
    decoder = _decoder(kind)
    x, z = _x(4, 8, 8), _z(decoder, 4)
    logits = np.asarray(_logits(decoder, x, z), np.float64)
    log_p = logits - np.logaddexp(logits[..., :1], logits[..., 1:])
    want = np.take_along_axis(log_p, np.asarray(x), axis=-1)[..., 0].sum((1, 2))
    got = _log_likelihood(decoder, x, z)
    assert got.shape == (4,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(decoder.log_likelihood(x.astype(jnp.float32), z)), want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["vector", "grid"])
def test_likelihood_sums_to_one_over_all_images(kind):
    """Σ_x p(x | z) = 1 over all 2^9 binary 3x3 images, for two latents."""
    decoder = _decoder(kind, image=(3, 3), tiny=True)
    images = np.array(list(itertools.product((0, 1), repeat=9)), np.int32).reshape(-1, 3, 3, 1)
    n = len(images)
    z = _z(decoder, 2)
    x = jnp.asarray(np.concatenate([images, images]))
    zz = jnp.repeat(z, n, axis=0)
    p = np.exp(np.asarray(_log_likelihood(decoder, x, zz), np.float64)).reshape(2, n)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.abs(p[0] - p[1]).max() > 1e-4  # and the two latents give different distributions


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("kind", ["vector", "grid"])
def test_sample_shape_determinism_and_greedy_decoding(kind):
    decoder = _decoder(kind)
    z = _z(decoder, 4)
    s = decoder.sample(z, key=jax.random.key(0))
    assert s.shape == (4, 8, 8, 1) and s.dtype == jnp.int32
    assert set(np.unique(np.asarray(s))) <= {0, 1}
    np.testing.assert_array_equal(s, decoder.sample(z, key=jax.random.key(0)))  # a function of the key
    assert not np.array_equal(s, decoder.sample(z, key=jax.random.key(1)))
    g0 = decoder.sample(z, key=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(g0, decoder.sample(z, key=jax.random.key(7), temperature=0.0))
    # greedy: each pixel is the argmax of the model's own (teacher-forced) logits given the pixels before it
    np.testing.assert_array_equal(np.argmax(np.asarray(_logits(decoder, g0, z)), -1), np.asarray(g0)[..., 0])
    # different latents, different images (the same key; and greedily)
    other = _z(decoder, 4, seed=9)
    assert not np.array_equal(s, decoder.sample(other, key=jax.random.key(0)))
    assert not np.array_equal(g0, decoder.sample(other, key=jax.random.key(0), temperature=0.0))
    assert len({np.asarray(g).tobytes() for g in g0}) > 1


@pytest.mark.parametrize("kind", ["vector", "grid"])
def test_samples_follow_the_likelihood(kind):
    """8000 draws of a 2x2 image for one z: a chi-square test against exp(log p(x | z)) over the 16 images."""
    decoder = _decoder(kind, image=(2, 2), tiny=True)
    n = 8000
    z = jnp.repeat(_z(decoder, 1), n, axis=0)
    s = np.asarray(decoder.sample(z, key=jax.random.key(3)))[..., 0].reshape(n, 4)
    index = s @ (2 ** np.arange(3, -1, -1))
    counts = np.bincount(index, minlength=16)
    images = np.array(list(itertools.product((0, 1), repeat=4)), np.int32).reshape(16, 2, 2, 1)
    p = np.exp(np.asarray(_log_likelihood(decoder, jnp.asarray(images), z[:16]), np.float64))
    assert abs(p.sum() - 1) < 1e-5
    assert stats.chisquare(counts, n * p / p.sum()).pvalue > 1e-3


# --------------------------------------------------------------------------- training


def test_jitted_training_step_reaches_every_part_and_z():
    """-mean log p(x|z) under nnx.jit: finite, gradients in the conditioning network, the PixelCNN and z."""
    decoder = _decoder("vector")
    x, z = _x(3, 8, 8), _z(decoder, 3)

    @nnx.jit
    def step(m, z):
        return nnx.value_and_grad(lambda m, z: -m.log_likelihood(x, z).mean(), argnums=(0, 1))(m, z)

    loss, (grads, gz) = step(decoder, z)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert float(jnp.abs(grads.project.kernel[...]).max()) > 0
    assert float(jnp.abs(grads.pixelcnn.out.kernel[...]).max()) > 0
    assert gz.shape == z.shape and float(jnp.abs(gz).max()) > 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, name", [
    ({"latent_shape": ()}, "latent_shape"),
    ({"latent_shape": (0,)}, "latent_shape"),
    ({"latent_shape": (2, 2)}, "latent_shape"),
    ({"latent_shape": (1, 2, 2, 2)}, "latent_shape"),
    ({"latent_shape": (4.0,)}, "latent_shape"),
    ({"latent_shape": 5}, "latent_shape"),
    ({"latent_shape": (3, 3, 4)}, "image_shape"),  # 8x8 is not a multiple of 3x3
    ({"image_shape": (8, 8, 3)}, "image_shape"),
    ({"image_shape": (8,)}, "image_shape"),
    ({"image_shape": (0, 8)}, "image_shape"),
    ({"cond_channels": 0}, "cond_channels"),
    ({"cond_hidden": 0}, "cond_hidden"),
    ({"hidden": 0}, "hidden"),
    ({"kernel_size": 2}, "kernel_size"),
])
def test_constructor_errors_name_the_argument(kwargs, name):
    args = {"image_shape": (8, 8, 1), "latent_shape": (4,)} | kwargs
    with pytest.raises(ValueError, match=f"`{name}`"):
        nnx.eval_shape(lambda: PixelCNNDecoder(**args, rngs=nnx.Rngs(0)))


def test_call_errors_name_the_argument():
    decoder = _decoder("grid")
    z, x = _z(decoder, 2), _x(2, 8, 8)
    with pytest.raises(ValueError, match="`z`"):
        decoder.logits(x, z[:, :1])  # [2, 1, 2, 3]: the wrong grid
    with pytest.raises(ValueError, match="`z`"):
        decoder.sample(z[0], key=jax.random.key(0))
    with pytest.raises(ValueError, match="`z`"):
        decoder.condition(z.astype(jnp.int32))
    with pytest.raises(ValueError, match="`x`"):
        decoder.log_likelihood(x[..., 0], z)  # no channel axis
    with pytest.raises(ValueError, match="`x`"):
        decoder.log_likelihood(x[:1], z)  # batch of x != batch of z
    with pytest.raises(ValueError, match="`x`"):
        decoder.logits(x * 2, z)  # not binary
    with pytest.raises(ValueError, match="`x`"):
        decoder.log_likelihood(x.astype(jnp.float32) * 0.5, z)
    with pytest.raises(ValueError, match="`temperature`"):
        decoder.sample(z, key=jax.random.key(0), temperature=-1.0)
