"""vqjax.nn: the sub-pixel transposed convolution, encoder/decoder shapes, the VQ-VAE wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import quantizers
from vqjax.nn import VQVAE, SubpixelConvTranspose


def _conv_transpose_reference(x, kernel):
    """Direct definition of ConvTranspose2d(k=4, s=2, p=1): y[2i+u-1, 2j+v-1] += x[i, j] @ k[u, v]."""
    b, h, w, _ = x.shape
    y = np.zeros((b, 2 * h, 2 * w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            for u in range(4):
                for v in range(4):
                    o, p = 2 * i + u - 1, 2 * j + v - 1
                    if 0 <= o < 2 * h and 0 <= p < 2 * w:
                        y[:, o, p] += x[:, i, j] @ kernel[u, v]
    return y


def test_subpixel_conv_transpose_equals_the_dilated_definition():
    layer = SubpixelConvTranspose(3, 5, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.arange(5, dtype=jnp.float32)
    x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    ref = _conv_transpose_reference(x, np.asarray(layer.kernel[...])) + np.arange(5)
    np.testing.assert_allclose(layer(jnp.asarray(x)), ref, rtol=1e-5, atol=1e-5)
    # And equal to XLA's own transposed convolution (lhs-dilated, flipped kernel).
    k = jnp.flip(layer.kernel[...], axis=(0, 1))
    xla = jax.lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(layer(jnp.asarray(x)), xla + jnp.arange(5.0), rtol=1e-5, atol=1e-5)


def test_vqvae_shapes_and_quantization():
    model = VQVAE(num_codes=16, code_dim=4, hidden=8, residual_hidden=4, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    out = model(x)
    assert out.logits.shape == (3, 28, 28, 1)
    assert out.z_e.shape == out.z_q.shape == (3, 7, 7, 4)
    assert out.indices.shape == (3, 7, 7) and out.indices.dtype == jnp.int32
    codebook = model.quantizer.codebook[...]
    np.testing.assert_array_equal(out.indices, quantizers.nearest_code(out.z_e, codebook))
    np.testing.assert_allclose(out.z_q, codebook[out.indices], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.codebook_loss, np.sum((out.z_e - codebook[out.indices]) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(out.commitment_loss, out.codebook_loss, rtol=1e-6)
    np.testing.assert_array_equal(model.encode(x), out.indices)
    np.testing.assert_allclose(model.decode(out.indices), out.logits, rtol=1e-5, atol=1e-5)


def test_vqvae_reconstruction_gradient_reaches_the_encoder_through_straight_through():
    model = VQVAE(num_codes=16, code_dim=4, hidden=8, residual_hidden=4, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    graphdef, params = nnx.split(model, nnx.Param)

    def recon(params):
        return jnp.sum(nnx.merge(graphdef, params)(x).logits ** 2)

    grads = jax.grad(recon)(params)
    enc = jax.tree.leaves(grads["encoder"])
    assert all(np.isfinite(g).all() for g in enc) and any(np.abs(g).max() > 0 for g in enc)
    np.testing.assert_array_equal(grads["quantizer"]["codebook"][...], 0.0)  # only the VQ loss moves the codebook


@pytest.mark.parametrize("kw, match", [({"num_codes": 0}, "num_codes"), ({"hidden": 7}, "hidden")])
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        VQVAE(rngs=nnx.Rngs(0), **kw)


def test_bad_input_shape_is_a_clear_error():
    model = VQVAE(num_codes=4, code_dim=2, hidden=4, residual_hidden=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="B, H, W, C"):
        model(jnp.zeros((28, 28, 1)))
