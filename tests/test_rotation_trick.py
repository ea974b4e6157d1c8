"""The rotation trick (Fifty et al., 2024): forward value, Jacobian λR against a dense NumPy
reference, degenerate inputs, jit/vmap/grad, vector-quantize-pytorch's ``rotate_to``, and a tiny
VQ-VAE training with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests._tiny_vqvae import train_tiny_vqvae
from vqjax import quantizers
from vqjax.nn import EMAVectorQuantizer, ResidualVectorQuantizer, VectorQuantizer, make_quantizer


def _dense_lambda_r(z, e):
    """λR in float64 as a D × D matrix: R = I - 2 r rᵀ + 2 ê ẑᵀ, r = (ẑ + ê)/||ẑ + ê||."""
    z, e = np.asarray(z, np.float64), np.asarray(e, np.float64)
    u, q = z / np.linalg.norm(z), e / np.linalg.norm(e)
    s = np.linalg.norm(u + q)
    r = (u + q) / s if s > 1e-9 else np.zeros_like(u)  # ê = -ẑ (D = 1 with opposite signs): a reflection
    rot = np.eye(z.size) - 2 * np.outer(r, r) + 2 * np.outer(q, u)
    return np.linalg.norm(e) / np.linalg.norm(z) * rot, rot, u, q


def _pairs(seed, n, d):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (n, d)), 2.0 * jax.random.normal(k2, (n, d))


def test_forward_value_is_exactly_the_codes():
    z, e = _pairs(0, 64, 8)
    z = 1000.0 * z  # |z| ≫ |e|: a rounding of λRz would show
    np.testing.assert_array_equal(quantizers.rotation_trick(z, e), e)
    zb, eb = z.astype(jnp.bfloat16), e.astype(jnp.bfloat16)
    out = quantizers.rotation_trick(zb, eb)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, eb)
    q = quantizers.quantize(z, e[:16], rotation_trick=True)
    np.testing.assert_array_equal(q.z_q, q.codes)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_jacobian_is_lambda_r(d):
    z, e = _pairs(d, 6, d)
    for zi, ei in zip(np.asarray(z), np.asarray(e)):
        jac = jax.jacobian(quantizers.rotation_trick)(jnp.asarray(zi), jnp.asarray(ei))
        lam_r, rot, u, q = _dense_lambda_r(zi, ei)
        np.testing.assert_allclose(jac, lam_r, rtol=1e-4, atol=1e-5)
        # R is orthogonal and maps ẑ to ê (so λ R z = e)
        np.testing.assert_allclose(rot @ rot.T, np.eye(d), atol=1e-12)
        np.testing.assert_allclose(rot @ u, q, atol=1e-12)
        np.testing.assert_allclose(lam_r @ zi, ei, atol=1e-9)
        if d >= 2:
            assert np.linalg.det(rot) == pytest.approx(1.0)  # a rotation, not a reflection


def test_codes_receive_no_gradient_and_identity_when_code_equals_input():
    z, e = _pairs(1, 4, 6)
    g_e = jax.grad(lambda c: jnp.sum(quantizers.rotation_trick(z, c) ** 2))(e)
    np.testing.assert_array_equal(g_e, 0.0)
    for zi in np.asarray(z):
        jac = jax.jacobian(quantizers.rotation_trick)(jnp.asarray(zi), jnp.asarray(zi))
        np.testing.assert_allclose(jac, np.eye(6), atol=1e-6)  # as straight-through


def test_jit_vmap_grad_and_leading_axes():
    z, e = _pairs(2, 24, 4)
    z3, e3 = z.reshape(2, 3, 4, 4), e.reshape(2, 3, 4, 4)
    f = lambda a, b: quantizers.rotation_trick(a, b)
    loss = lambda a, b: jnp.sum(jnp.sin(f(a, b)))
    ref = jax.grad(loss)(z3, e3)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(z3, e3), ref, rtol=1e-5, atol=1e-6)
    per_vector = jax.vmap(jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b)))))(z, e)
    np.testing.assert_allclose(per_vector.reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(f)(z3, e3), e3)
    # the gradient is λR applied to the cotangent, vector by vector
    g = np.asarray(ref).reshape(-1, 4)
    cot = np.cos(np.asarray(e, np.float64))
    for gi, zi, ei, ci in zip(g, np.asarray(z), np.asarray(e), cot):
        np.testing.assert_allclose(gi, _dense_lambda_r(zi, ei)[0].T @ ci, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        quantizers.rotation_trick(z, e[:3])


def test_degenerate_inputs_give_no_nan():
    d = 5
    e = jnp.arange(1.0, d + 1.0)
    jac = lambda z, c: jax.jacobian(lambda x: quantizers.rotation_trick(x, c))(z)
    # zero encoder output: straight-through
    np.testing.assert_array_equal(jac(jnp.zeros(d), e), np.eye(d))
    np.testing.assert_array_equal(quantizers.rotation_trick(jnp.zeros(d), e), e)
    # zero code: λ = 0
    j0 = jac(e, jnp.zeros(d))
    assert np.all(np.isfinite(j0))
    np.testing.assert_array_equal(j0, 0.0)
    # opposite directions (e = -2 z): the reflection I - 2 ẑ ẑᵀ, scaled by λ = 2
    z = e
    u = np.asarray(z) / np.linalg.norm(z)
    jo = jac(z, -2.0 * z)
    np.testing.assert_allclose(jo, 2.0 * (np.eye(d) - 2 * np.outer(u, u)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jo) @ np.asarray(z), -2.0 * np.asarray(z), rtol=1e-5)
    # both zero; and a batch under jit with zeros in it
    assert np.all(np.isfinite(jac(jnp.zeros(d), jnp.zeros(d))))
    zs = jnp.stack([jnp.zeros(d), z, z, jnp.zeros(d)])
    es = jnp.stack([e, jnp.zeros(d), -z, jnp.zeros(d)])
    g = jax.jit(jax.grad(lambda a: jnp.sum(quantizers.rotation_trick(a, es) ** 2)))(zs)
    assert np.all(np.isfinite(g))


def test_matches_vector_quantize_pytorch_rotate_to():
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch.vector_quantize_pytorch")
    z, e = _pairs(3, 40, 8)
    z = z.reshape(2, 5, 4, 8)
    e = e.reshape(2, 5, 4, 8)
    cot = jax.random.normal(jax.random.key(9), z.shape)
    out, vjp = jax.vjp(lambda a: quantizers.rotation_trick(a, e), z)
    (g,) = vjp(cot)
    zt = torch.tensor(np.asarray(z), dtype=torch.float64, requires_grad=True)
    et = torch.tensor(np.asarray(e), dtype=torch.float64)
    ot = vqp.rotate_to(zt, et)
    ot.backward(torch.tensor(np.asarray(cot), dtype=torch.float64))
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, zt.grad.numpy(), rtol=1e-4, atol=1e-5)
    # opposite directions: both give the reflection
    z1 = jnp.asarray([[1.0, 2.0, -0.5]])
    (g1,) = jax.vjp(lambda a: quantizers.rotation_trick(a, -3.0 * z1), z1)[1](jnp.ones_like(z1))
    zt1 = torch.tensor(np.asarray(z1), dtype=torch.float64, requires_grad=True)
    vqp.rotate_to(zt1, torch.tensor(-3.0 * np.asarray(z1), dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(g1, zt1.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_quantize_and_residual_quantize_with_the_rotation_trick():
    z, _ = _pairs(4, 32, 4)
    codebook = jax.random.normal(jax.random.key(5), (8, 4))
    plain = quantizers.quantize(z, codebook)
    rot = quantizers.quantize(z, codebook, rotation_trick=True)
    np.testing.assert_array_equal(rot.z_q, plain.z_q)
    np.testing.assert_array_equal(rot.indices, plain.indices)
    cot = jax.random.normal(jax.random.key(6), z.shape)
    g = jax.vjp(lambda a: quantizers.quantize(a, codebook, rotation_trick=True).z_q, z)[1](cot)[0]
    np.testing.assert_allclose(g, jax.vjp(lambda a: quantizers.rotation_trick(a, plain.codes), z)[1](cot)[0])
    # cosine: the rotation of the normalised vectors (λ = 1), composed with the normalisation
    gc = jax.grad(lambda a: jnp.sum(cot * quantizers.quantize(a, codebook, cosine=True, rotation_trick=True).z_q))(z)
    unit_codes = quantizers.l2_normalize(codebook)[quantizers.quantize(z, codebook, cosine=True).indices]
    ref = jax.grad(lambda a: jnp.sum(cot * quantizers.rotation_trick(quantizers.l2_normalize(a), unit_codes)))(z)
    np.testing.assert_allclose(gc, ref, rtol=1e-5, atol=1e-6)

    books = jax.random.normal(jax.random.key(7), (3, 8, 4)) * jnp.asarray([1.0, 0.3, 0.1])[:, None, None]
    r_plain = quantizers.residual_quantize(z, books)
    r_rot = quantizers.residual_quantize(z, books, rotation_trick=True)
    np.testing.assert_array_equal(r_rot.z_q, r_plain.z_q)
    np.testing.assert_array_equal(r_rot.indices, r_plain.indices)
    g = jax.vjp(lambda a: quantizers.residual_quantize(a, books, rotation_trick=True).z_q, z)[1](cot)[0]
    for i in range(4):  # ∂z_q/∂z = Σ_s λ_s R_s, vector by vector
        jac = sum(_dense_lambda_r(r_plain.residuals[s, i], r_plain.codes[s, i])[0] for s in range(3))
        np.testing.assert_allclose(g[i], jac.T @ np.asarray(cot[i], np.float64), rtol=1e-3, atol=1e-4)
    # the stages' codebooks still get their gradient from the codebook loss only
    gb = jax.grad(lambda b: jnp.sum(quantizers.residual_quantize(z, b, rotation_trick=True).z_q))(books)
    np.testing.assert_array_equal(gb, 0.0)


@pytest.mark.parametrize("kind", ["vq", "ema", "residual"])
def test_modules_pass_the_flag(kind):
    q = make_quantizer(kind, num_codes=8, code_dim=4, num_stages=2, rotation_trick=True, rngs=nnx.Rngs(0))
    assert isinstance(q, {"vq": VectorQuantizer, "ema": EMAVectorQuantizer,
                          "residual": ResidualVectorQuantizer}[kind])
    assert q.rotation_trick
    z = jax.random.normal(jax.random.key(1), (6, 4))
    plain = make_quantizer(kind, num_codes=8, code_dim=4, num_stages=2, rngs=nnx.Rngs(0))
    out, ref = q(z, key=jax.random.key(2)), plain(z, key=jax.random.key(2))
    np.testing.assert_array_equal(out.z_q, ref.z_q)
    cot = jax.random.normal(jax.random.key(3), z.shape)
    g = jax.grad(lambda a: jnp.sum(cot * nnx.clone(q)(a, key=jax.random.key(2)).z_q))(z)
    g_st = jax.grad(lambda a: jnp.sum(cot * nnx.clone(plain)(a, key=jax.random.key(2)).z_q))(z)
    assert np.all(np.isfinite(g))
    assert not np.allclose(g, g_st)  # not the straight-through copy


@pytest.mark.parametrize("cosine", [False, True])
def test_tiny_vqvae_trains_with_the_rotation_trick(cosine):
    quantizer = VectorQuantizer(16, 4, cosine=cosine, rotation_trick=True, rngs=nnx.Rngs(1))
    _, history = train_tiny_vqvae(quantizer, 8)
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0]
