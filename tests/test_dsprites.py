"""The procedural dSprites (vqjax.data._dsprites) and the disentanglement_lib networks
(vqjax.nn._disentangle_nets): the factor grid, the renderer's conventions, the source and its Grain
pipeline, and a VAE built from the networks."""

from __future__ import annotations

import itertools

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import data, objectives
from vqjax.data import _dsprites
from vqjax.nn import VAE, DisentanglementDecoder, DisentanglementEncoder, SubpixelConvTranspose

SIZES = (3, 6, 40, 32, 32)


def _grid(shape=range(3), scale=range(6), orientation=range(40), pos_x=range(32), pos_y=range(32)) -> np.ndarray:
    return np.array(list(itertools.product(shape, scale, orientation, pos_x, pos_y)), np.int64)


def _canvas(factors: np.ndarray) -> np.ndarray:
    """The whole-canvas rendering (no window): the reference for the windowed renderer."""
    return _dsprites._render(np.asarray(factors, np.int64), window=64)[..., None]


# ------------------------------------------------------------------------------ the factor grid


def test_the_grid_is_the_originals():
    assert data.DSPRITES_FACTORS == (("shape", 3), ("scale", 6), ("orientation", 40), ("posX", 32), ("posY", 32))
    assert data.DSPRITES_SIZE == 737_280 == int(np.prod(SIZES))
    assert data.DSPRITES_SHAPES == ("square", "ellipse", "heart")
    v = data.dsprites_values(np.array([[0, 0, 0, 0, 0], [2, 5, 39, 31, 31]]))
    np.testing.assert_array_equal(v[0], [1.0, 0.5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(v[1], [3.0, 1.0, 2 * np.pi, 1.0, 1.0])
    # the original's metadata: orientation linspace(0, 2π, 40) (both ends), scale 0.5, 0.6, ..., 1
    orient = data.dsprites_values(_grid(range(1), range(1), range(40), range(1), range(1)))[:, 2]
    np.testing.assert_allclose(orient[[1, 13, 38]], [0.16110732, 2.0943951, 6.12207799], atol=5e-9)
    scales = data.dsprites_values(_grid(range(1), range(6), range(1), range(1), range(1)))[:, 1]
    np.testing.assert_allclose(scales, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])


def test_index_and_factors_are_the_mixed_radix_of_the_enumeration():
    for start in (0, 300_000, data.DSPRITES_SIZE - 3000):  # slices of the itertools.product enumeration
        expected = np.array(list(itertools.islice(itertools.product(*map(range, SIZES)), start, start + 3000)))
        index = np.arange(start, start + 3000)
        np.testing.assert_array_equal(data.dsprites_factors(index), expected)
        np.testing.assert_array_equal(data.dsprites_index(expected), index)
    every = np.arange(data.DSPRITES_SIZE)
    np.testing.assert_array_equal(data.dsprites_index(data.dsprites_factors(every)), every)
    assert data.dsprites_factors(5).tolist() == [0, 0, 0, 0, 5]
    assert data.dsprites_index([1, 0, 0, 0, 0]) == 40 * 32 * 32 * 6  # the original's latents_bases
    with pytest.raises(IndexError):
        data.dsprites_factors(data.DSPRITES_SIZE)
    with pytest.raises(ValueError, match="factor indices"):
        data.render_dsprites(np.array([[3, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="factor indices"):
        data.dsprites_index(np.zeros((2, 4), np.int64))


# ------------------------------------------------------------------------------ the renderer


def test_rendering_is_deterministic_binary_and_the_window_changes_nothing():
    rng = np.random.default_rng(0)
    f = data.dsprites_factors(rng.integers(0, data.DSPRITES_SIZE, 400))
    f = np.concatenate([f, _grid(range(3), (0, 5), range(0, 40, 3), (0, 31), (0, 31))])  # the corners
    images = data.render_dsprites(f)
    assert images.dtype == np.uint8 and images.shape == (len(f), 64, 64, 1)
    assert set(np.unique(images)) == {0, 255}
    np.testing.assert_array_equal(images, data.render_dsprites(f))
    np.testing.assert_array_equal(images, _canvas(f))  # only the square around the sprite is tested
    np.testing.assert_array_equal(images[7], data.render_dsprites(f[7:8])[0])  # alone as in a batch
    train = data.dsprites_source("train")  # one at a time (source[i]: its own code path) as in a batch
    one = np.stack([train[int(i)]["image"] for i in data.dsprites_index(f)])
    np.testing.assert_array_equal(one, images)


def test_the_heart_constants():
    """The heart's centroid (about which it turns) and reach, measured on a fine grid of the curve."""
    t = np.linspace(-1.5, 1.5, 1501)
    x, y = np.meshgrid(t, t)
    inside = (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    assert abs(y[inside].mean() - _dsprites._HEART_CENTROID_Y) < 1e-3
    assert abs(inside.mean() * 9 - 3.662) < 5e-3  # the area, units²
    reach = np.hypot(x[inside], y[inside] - _dsprites._HEART_CENTROID_Y).max()
    assert abs(reach - _dsprites._HEART_REACH) < 2e-3
    assert _dsprites._REACH == pytest.approx(7.5 * np.sqrt(2))  # the 45° square reaches farthest


def test_every_sprite_is_non_empty_and_inside_the_canvas():
    f = _grid(range(3), (0, 5), range(40), (0, 31), (0, 31))  # every shape and orientation, the extremes
    images = data.render_dsprites(f)[..., 0] > 0
    assert images.sum(axis=(1, 2)).min() >= 20
    border = images[:, [0, -1], :].any(axis=(1, 2)) | images[:, :, [0, -1]].any(axis=(1, 2))
    assert not border.any()
    # the corners are reached: at posX = 0 the sprite is within 4 pixels of the left edge, at 1 of the right
    cols = np.where(images.any(axis=1), np.arange(64), np.nan)
    left, right = np.nanmin(cols, axis=1), np.nanmax(cols, axis=1)
    big = f[:, 1] == 5
    assert left[big & (f[:, 3] == 0)].min() <= 3 and right[big & (f[:, 3] == 31)].max() >= 60


def test_the_three_shapes_differ_and_grow_with_scale():
    for orientation, x, y in ((0, 16, 16), (7, 3, 28), (25, 30, 0)):
        f = _grid(range(3), range(6), (orientation,), (x,), (y,))
        images = data.render_dsprites(f)[..., 0].reshape(3, 6, 64, 64) > 0
        for a, b in itertools.combinations(range(3), 2):
            assert (images[a] != images[b]).sum(axis=(1, 2)).min() >= 8, (a, b)
        counts = images.sum(axis=(2, 3))  # [shape, scale]
        assert (np.diff(counts, axis=1) > 0).all(), counts
    # areas at scale 1 (pixels): square 15², ellipse π·9·4.5, heart 3.662 units² · 6.5²
    area = (data.render_dsprites(_grid(range(3), (5,), (0,), (15,), (15,)))[..., 0] > 0).sum(axis=(1, 2))
    np.testing.assert_allclose(area, [225, np.pi * 9 * 4.5, 3.662 * 6.5**2], rtol=0.05)


def test_orientation_0_and_2pi_are_the_same_image():
    """The original's orientations are linspace(0, 2π, 40): its first and last are the same rotation."""
    first = data.render_dsprites(_grid(range(3), range(6), (0,), (0, 13, 31), (5, 31)))
    last = data.render_dsprites(_grid(range(3), range(6), (39,), (0, 13, 31), (5, 31)))
    np.testing.assert_array_equal(first, last)
    second = data.render_dsprites(_grid(range(3), range(6), (1,), (0, 13, 31), (5, 31)))
    assert (second != first).any(axis=(1, 2, 3)).all()  # every other step turns the sprite


def test_positions_move_right_and_down_and_the_heart_points_down():
    images = data.render_dsprites(_grid((2,), (5,), (0,), range(32), (10,)))[..., 0] > 0
    cols = np.array([np.nonzero(im)[1].mean() for im in images])
    assert (np.diff(cols) > 0.8).all() and (np.diff(cols) < 1.8).all()  # 40/31 = 1.29 pixels a step
    images = data.render_dsprites(_grid((1,), (5,), (0,), (10,), range(32)))[..., 0] > 0
    rows = np.array([np.nonzero(im)[0].mean() for im in images])
    assert (np.diff(rows) > 0.8).all()  # posY grows downwards, as the rows
    heart = data.render_dsprites(np.array([[2, 5, 0, 15, 15]]))[0, ..., 0] > 0
    width = heart.sum(axis=1)
    lit = np.nonzero(width)[0]
    assert width[lit[-1]] <= 2 and width[lit[:4]].sum() > width[lit[-4:]].sum()  # point down, lobes up
    ellipse = data.render_dsprites(np.array([[1, 5, 0, 15, 15]]))[0, ..., 0] > 0
    assert ellipse.any(axis=0).sum() == 2 * ellipse.any(axis=1).sum()  # long along x at orientation 0


# ------------------------------------------------------------------------------ the source


def test_source_records_and_splits():
    train, test = data.dsprites_source("train"), data.dsprites_source("test")
    assert len(train) == data.DSPRITES_SIZE and len(test) == 10_000
    assert train.image_shape == test.image_shape == (64, 64, 1) and train.has_labels
    assert train.classes == ("square", "ellipse", "heart")
    index = test.indices(np.arange(len(test)))
    assert (np.diff(index) > 0).all() and index[0] >= 0 and index[-1] < data.DSPRITES_SIZE
    np.testing.assert_array_equal(index, data.dsprites_source("test").indices(np.arange(10_000)))
    # the documented rule, written out: the 10,000 indices whose splitmix64 hash is smallest
    def splitmix64(i: int) -> int:
        m = 2**64 - 1
        z = (i + 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    others = np.setdiff1d(np.random.default_rng(1).integers(0, data.DSPRITES_SIZE, 3000), index)
    assert max(map(splitmix64, index.tolist())) < min(map(splitmix64, others.tolist()))
    counts = np.bincount(data.dsprites_factors(index)[:, 0], minlength=3)
    assert counts.min() > 3000  # a spread-out subset, about a third of each shape
    for src, i in ((train, 123_456), (test, 9_999), (test, 0)):
        r = src[i]
        assert set(r) == {"image", "label", "factors", "index"}
        assert r["image"].dtype == np.uint8 and r["image"].shape == (64, 64, 1)
        assert r["factors"].dtype == np.int32 and r["factors"].shape == (5,) and r["label"].dtype == np.int32
        assert r["label"] == r["factors"][0] and data.dsprites_index(r["factors"]) == r["index"]
        np.testing.assert_array_equal(r["image"], data.render_dsprites(r["factors"][None])[0])
    assert train[123_456]["index"] == 123_456
    batch = test._getitems([5, 0, 9_999])
    for got, i in zip(batch, (5, 0, 9_999), strict=True):
        np.testing.assert_array_equal(got["image"], test[i]["image"])
        np.testing.assert_array_equal(got["factors"], test[i]["factors"])
    with pytest.raises(IndexError):
        test[10_000]
    with pytest.raises(ValueError, match="split"):
        data.dsprites_source("validation")
    assert len(data.dsprites_source("test", num_test=64)) == 64


def test_get_source_names_it_and_grain_batches_it():
    src = data.get_source(split="test", dataset="dsprites")
    assert isinstance(src, data.DSpritesSource) and len(src) == 10_000
    small = data.get_source(split="test", dataset="dsprites", image_size=32)
    assert small.image_shape == (32, 32, 1) and small[0]["image"].shape == (32, 32, 1)
    batch = next(data.make_pipeline(src, batch_size=8, seed=0))
    assert batch["image"].shape == (8, 64, 64, 1) and batch["image"].dtype == np.float32
    assert set(np.unique(batch["image"])) <= {0.0, 1.0} and batch["image"].sum() > 0
    assert batch["label"].shape == (8,) and set(batch["label"].tolist()) <= {0, 1, 2}
    # the pipeline keeps each image's factors: rendering them gives the image back
    assert batch["factors"].shape == (8, 5) and batch["factors"].dtype == np.int32
    np.testing.assert_array_equal(data.render_dsprites(batch["factors"]).astype(np.float32) / 255, batch["image"])
    np.testing.assert_array_equal(batch["factors"][:, 0], batch["label"])
    # Grain's own batching keeps the factors
    raw = grain.MapDataset.source(src).batch(4)[1]
    assert raw["factors"].shape == (4, 5) and raw["image"].shape == (4, 64, 64, 1)
    np.testing.assert_array_equal(raw["factors"][0], src[4]["factors"])


# ------------------------------------------------------------------------------ the networks


def _kernels(module) -> list[tuple[int, ...]]:
    """The kernel shapes of a network's layers, input to output."""
    if isinstance(module, DisentanglementEncoder):
        layers = [*module.convs, module.hidden, module.head]
    else:
        layers = [module.hidden, module.project, *module.ups]
    return [tuple(layer.kernel.shape) for layer in layers]


def test_the_networks_are_disentanglement_libs():
    enc = nnx.eval_shape(lambda: DisentanglementEncoder((64, 64, 1), 10, rngs=nnx.Rngs(0)))  # shapes only
    dec = nnx.eval_shape(lambda: DisentanglementDecoder((64, 64, 1), 10, rngs=nnx.Rngs(1)))
    assert _kernels(enc) == [(4, 4, 1, 32), (4, 4, 32, 32), (2, 2, 32, 64), (2, 2, 64, 64), (1024, 256), (256, 20)]
    assert _kernels(dec) == [(10, 256), (256, 1024), (4, 4, 64, 64), (4, 4, 64, 32), (4, 4, 32, 32), (4, 4, 32, 1)]
    paper = nnx.eval_shape(lambda: DisentanglementEncoder((64, 64, 3), 10, kernel_sizes=(4, 4, 4, 4),
                                                          rngs=nnx.Rngs(0)))
    assert _kernels(paper)[:4] == [(4, 4, 3, 32), (4, 4, 32, 32), (4, 4, 32, 64), (4, 4, 64, 64)]
    # any multiple of 16, in bfloat16 (shapes and dtypes only: nothing is computed)
    half = nnx.eval_shape(lambda: DisentanglementEncoder((16, 32, 2), 3, rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    mean, log_variance = nnx.eval_shape(lambda m, x: m(x), half, jnp.ones((2, 16, 32, 2)))
    assert mean.shape == log_variance.shape == (2, 3) and mean.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="multiples of 16"):
        DisentanglementEncoder((28, 28, 1), 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kernel_sizes"):
        DisentanglementEncoder((64, 64, 1), 10, kernel_sizes=(4, 4, 2), rngs=nnx.Rngs(0))


def test_the_transposed_convolutions_have_tensorflows_same_padding():
    layer = SubpixelConvTranspose(3, 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    tf_same = jax.lax.conv_transpose(x, jnp.flip(layer.kernel[...], (0, 1)), (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(layer(jnp.asarray(x)), tf_same, rtol=1e-5, atol=1e-5)


def test_a_vae_with_the_networks_has_a_finite_elbo():
    rngs = nnx.Rngs(0)
    model = VAE(DisentanglementEncoder((64, 64, 1), 10, rngs=rngs), DisentanglementDecoder((64, 64, 1), 10, rngs=rngs),
                latents=10, likelihood="bernoulli")
    images = data.render_dsprites(data.dsprites_factors(np.array([0, 200_000, 400_000, 737_279])))
    batch = {"image": jnp.asarray(images, jnp.float32) / 255}

    @nnx.jit  # one compilation: quicker than the layers one by one
    def run(model, batch):
        loss, metrics = objectives.vae_objective(model, batch, key=jax.random.key(0), dynamic_binarization=False)
        return loss, metrics, model(batch["image"], key=jax.random.key(1))

    loss, metrics, out = run(model, batch)
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics["elbo"])) and float(metrics["rate"]) >= 0
    assert float(metrics["elbo"]) < 0 and -float(metrics["elbo"]) == pytest.approx(float(loss), rel=1e-5)
    assert out.logits.shape == (4, 64, 64, 1) and out.z.shape == out.mean.shape == out.log_variance.shape == (4, 10)
    assert np.isfinite(np.asarray(out.logits)).all()
    samples = nnx.eval_shape(lambda m, z: m.decode(z), model, jnp.zeros((3, 2, 10)))  # [S, B, L], as the IWAE bound
    assert samples.shape == (3, 2, 64, 64, 1)
