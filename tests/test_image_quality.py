"""PSNR and SSIM (vqjax.evaluation._image_quality) against NumPy / SciPy references and known values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from vqjax.evaluation import psnr, ssim


def _ssim_reference(x, y, *, data_range=1.0, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
    """SSIM of one ``[H, W, C]`` pair the way scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, channel_axis=-1)`` computes it: float64, SciPy's reflect-padded
    Gaussian filter on each channel, the map cropped by the window's half-width, its mean, then the
    mean over channels."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    pad = int(truncate * sigma + 0.5)  # the half-width of the window: 5, an 11×11 window
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    per_channel = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch], y[..., ch]
        f = lambda v: ndimage.gaussian_filter(v, sigma=sigma, truncate=truncate, mode="reflect")
        ux, uy = f(a), f(b)
        vx, vy, vxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        per_channel.append(s[pad:-pad, pad:-pad].mean())
    return float(np.mean(per_channel))


def _pair(shape, seed, noise=0.1):
    r = np.random.default_rng(seed)
    x = r.uniform(0, 1, shape)
    x = ndimage.gaussian_filter(x, sigma=(0,) * (len(shape) - 3) + (2, 2, 0))  # some structure
    y = np.clip(x + noise * r.standard_normal(shape), 0, 1)
    return x.astype(np.float32), y.astype(np.float32)


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (64, 48, 3), (11, 15, 2)])
def test_ssim_matches_the_scipy_reference(shape):
    x, y = _pair(shape, seed=sum(shape))
    assert float(ssim(x, y)) == pytest.approx(_ssim_reference(x, y), abs=1e-6)


def test_ssim_convolution_path_matches_the_reference(monkeypatch):
    """Large images are filtered by a convolution instead of banded matrix products: the same SSIM."""
    from vqjax.evaluation import _image_quality

    x, y = _pair((2, 40, 36, 3), seed=2)
    by_matmul = np.asarray(ssim(x, y))
    monkeypatch.setattr(_image_quality, "_MATMUL_MAX_SIDE", 0)
    by_conv = np.asarray(jax.jit(ssim)(x, y))
    np.testing.assert_allclose(by_conv, by_matmul, atol=1e-5)
    np.testing.assert_allclose(by_conv, [_ssim_reference(x[i], y[i]) for i in range(2)], atol=1e-6)


def test_ssim_is_per_image_over_leading_axes():
    x, y = _pair((2, 3, 32, 32, 3), seed=0)
    got = np.asarray(ssim(x, y))
    assert got.shape == (2, 3)
    want = np.array([[_ssim_reference(x[i, j], y[i, j]) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_ssim_max_value_scales_with_the_data():
    x, y = _pair((32, 32, 3), seed=3)
    assert float(ssim(255 * x, 255 * y, max_value=255.0)) == pytest.approx(float(ssim(x, y)), abs=1e-5)
    assert float(ssim(255 * x, 255 * y, max_value=255.0)) == pytest.approx(
        _ssim_reference(255 * x, 255 * y, data_range=255.0), abs=1e-6)


def test_ssim_known_values():
    x, _ = _pair((32, 32, 3), seed=1)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    # Constant images a and b: σ = 0, so SSIM = (2ab + C1) / (a² + b² + C1) exactly.
    a, b, c1 = 0.3, 0.7, 0.01**2
    got = ssim(jnp.full((16, 16, 1), a), jnp.full((16, 16, 1), b))
    assert float(got) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)
    # Negated structure around the same mean: the contrast-structure term goes negative.
    r = np.random.default_rng(0).uniform(-0.2, 0.2, (24, 24, 1)).astype(np.float32)
    assert float(ssim(0.5 + r, 0.5 - r)) < 0


def test_ssim_channels_are_averaged():
    x, y = _pair((32, 32, 3), seed=5)
    per_channel = [float(ssim(x[..., c:c + 1], y[..., c:c + 1])) for c in range(3)]
    assert float(ssim(x, y)) == pytest.approx(np.mean(per_channel), abs=1e-6)


def test_ssim_under_jit_vmap_and_grad():
    x, y = _pair((4, 32, 32, 3), seed=7)
    direct = ssim(x, y)
    np.testing.assert_allclose(jax.jit(ssim)(x, y), direct, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(ssim)(x, y), direct, atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(ssim(x, v)))(jnp.asarray(y))
    assert g.shape == y.shape and bool(jnp.all(jnp.isfinite(g)))
    # A step along the gradient raises the SSIM (it is a smooth function of y).
    assert float(jnp.sum(ssim(x, y + 1e-3 * g / jnp.max(jnp.abs(g))))) > float(jnp.sum(direct))


def test_ssim_errors():
    with pytest.raises(ValueError, match=r"at least filter_size=11.*\(8, 8, 1\)"):
        ssim(jnp.zeros((8, 8, 1)), jnp.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="same shape"):
        ssim(jnp.zeros((16, 16, 1)), jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
        ssim(jnp.zeros((16, 16)), jnp.zeros((16, 16)))
    with pytest.raises(ValueError, match="filter_size"):
        ssim(jnp.zeros((16, 16, 1)), jnp.zeros((16, 16, 1)), filter_size=4)
    with pytest.raises(ValueError, match="max_value"):
        ssim(jnp.zeros((16, 16, 1)), jnp.zeros((16, 16, 1)), max_value=0.0)


# --------------------------------------------------------------------------- PSNR


def test_psnr_of_a_known_mse():
    x = jnp.zeros((2, 8, 8, 3))
    y = x.at[0].set(0.1).at[1].set(0.01)  # MSE 1e-2 and 1e-4
    np.testing.assert_allclose(psnr(x, y), [20.0, 40.0], rtol=1e-5)
    assert float(psnr(x[0], 25.5 + x[0], max_value=255.0)) == pytest.approx(20.0, rel=1e-5)
    assert float(psnr(x[0], x[0])) == math.inf


def test_psnr_matches_numpy():
    x, y = _pair((3, 28, 28, 1), seed=11)
    mse = np.mean((x.astype(np.float64) - y) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(x, y), 10 * np.log10(1.0 / mse), rtol=1e-5)
    np.testing.assert_allclose(jax.jit(psnr)(x, y), jax.vmap(psnr)(x, y), rtol=1e-6)
    g = jax.grad(lambda v: jnp.sum(psnr(x, v)))(jnp.asarray(y))
    assert bool(jnp.all(jnp.isfinite(g)))


def test_psnr_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(jnp.zeros((4, 4, 1)), jnp.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="max_value"):
        psnr(jnp.zeros((4, 4, 1)), jnp.zeros((4, 4, 1)), max_value=-1.0)


def test_strict_promotion_and_bfloat16_inputs(strict_promotion):
    x, y = _pair((2, 16, 16, 3), seed=13)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    for f in (psnr, ssim):
        got = f(xb, yb)
        assert got.dtype == jnp.float32  # computed in float32 whatever the inputs
        np.testing.assert_allclose(got, f(xb.astype(jnp.float32), yb.astype(jnp.float32)), rtol=1e-6)
