"""Grouped / product VQ, SimVQ and factorised (ViT-VQGAN) codes: against NumPy, brute force and
vector-quantize-pytorch (when installed)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vqjax import losses, quantizers
from vqjax.nn import FactorizedVectorQuantizer, FrozenCodebook, SimVQ, VectorQuantizer


def _normal(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------- grouped / product VQ


@pytest.mark.usefixtures("strict_promotion")
def test_grouped_equals_separate_quantize_per_part():
    heads, k, part = 4, 5, 3
    z, books = _normal((3, 7, heads * part), 0), _normal((heads, k, part), 1)
    g = quantizers.grouped_quantize(z, books)
    assert g.z_q.shape == g.codes.shape == z.shape and g.indices.shape == (3, 7, heads)
    assert g.indices.dtype == jnp.int32
    for h in range(heads):
        q = quantizers.quantize(z[..., h * part:(h + 1) * part], books[h])
        np.testing.assert_array_equal(g.indices[..., h], q.indices)
        np.testing.assert_array_equal(g.codes[..., h * part:(h + 1) * part], q.codes)
    np.testing.assert_array_equal(g.z_q, g.codes)
    np.testing.assert_array_equal(quantizers.grouped_lookup(g.indices, books), g.codes)


@pytest.mark.usefixtures("strict_promotion")
@pytest.mark.parametrize("shared", [False, True])
def test_grouped_is_nearest_point_of_the_product_codebook(shared):
    """The K^H-code product codebook, materialised, searched by brute force in float64."""
    heads, k, part = 3, 4, 2
    z = _normal((50, heads * part), 2)
    books = _normal((k, part) if shared else (heads, k, part), 3)
    per_part = np.broadcast_to(books, (heads, k, part)) if shared else books
    combos = np.array(list(itertools.product(range(k), repeat=heads)))  # [K^H, H]
    product = np.concatenate([per_part[h][combos[:, h]] for h in range(heads)], axis=-1).astype(np.float64)
    assert product.shape == (k**heads, heads * part)  # K^H code vectors from H·K stored codes
    d = ((z[:, None, :].astype(np.float64) - product[None]) ** 2).sum(-1)
    best = d.argmin(-1)
    g = quantizers.grouped_quantize(z, books)
    np.testing.assert_allclose(g.codes, product[best], rtol=0, atol=0)
    np.testing.assert_array_equal(g.indices, combos[best])
    np.testing.assert_allclose(jnp.sum(jnp.square(z - g.codes), -1), d.min(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("strict_promotion")
def test_grouped_shared_codebook_is_quantize_of_the_parts():
    heads, k, part = 4, 6, 2
    z, book = _normal((5, heads * part), 4), _normal((k, part), 5)
    g = quantizers.grouped_quantize(z, book)
    q = quantizers.quantize(z.reshape(5, heads, part), book)
    np.testing.assert_array_equal(g.indices, q.indices)
    np.testing.assert_array_equal(g.codes, q.codes.reshape(z.shape))
    np.testing.assert_array_equal(quantizers.grouped_lookup(g.indices, book), g.codes)
    # the shared case equals H copies of the codebook
    g2 = quantizers.grouped_quantize(z, jnp.broadcast_to(book, (heads, k, part)))
    np.testing.assert_array_equal(g2.indices, g.indices)


@pytest.mark.usefixtures("strict_promotion")
@pytest.mark.parametrize("shared", [False, True])
def test_grouped_jit_vmap_grad(shared):
    heads, k, part = 2, 5, 3
    z = _normal((4, 6, heads * part), 6)
    books = _normal((k, part) if shared else (heads, k, part), 7)
    eager = quantizers.grouped_quantize(z, books)
    jitted = jax.jit(quantizers.grouped_quantize)(z, books)
    mapped = jax.vmap(quantizers.grouped_quantize, in_axes=(0, None))(z, books)
    for out in (jitted, mapped):
        np.testing.assert_array_equal(out.indices, eager.indices)
        np.testing.assert_allclose(out.z_q, eager.z_q, rtol=1e-6)

    # straight-through: d sum(w * z_q) / dz = w; the codebook loss moves only the chosen codes, not z
    w = _normal(z.shape, 8)
    gz = jax.jit(jax.grad(lambda z: jnp.sum(w * quantizers.grouped_quantize(z, books).z_q)))(z)
    np.testing.assert_allclose(gz, w, rtol=1e-6)

    def cb(z, books):
        g = quantizers.grouped_quantize(z, books)
        return jnp.sum(losses.codebook_loss(z, g.codes))

    gz, gb = jax.jit(jax.grad(cb, argnums=(0, 1)))(z, books)
    np.testing.assert_array_equal(gz, 0.0)
    gb = np.asarray(gb).reshape(-1, k, part)
    idx = np.asarray(eager.indices).reshape(-1, heads)
    for h in range(gb.shape[0]):
        used = np.unique(idx) if shared else np.unique(idx[:, h])
        unused = np.setdiff1d(np.arange(k), used)
        np.testing.assert_array_equal(gb[h][unused], 0.0)
        assert np.all(np.abs(gb[h][used]).sum(-1) > 0)


def test_grouped_bfloat16_and_errors():
    z, books = _normal((9, 8), 9), _normal((2, 7, 4), 10)
    zb = jnp.asarray(z, jnp.bfloat16)
    g = quantizers.grouped_quantize(zb, books)
    assert g.z_q.dtype == jnp.bfloat16
    ref = quantizers.grouped_quantize(zb.astype(jnp.float32), books)  # same (rounded) input, float32 search
    np.testing.assert_array_equal(g.indices, ref.indices)
    with pytest.raises(ValueError, match="z"):
        quantizers.grouped_quantize(z, _normal((3, 7, 4), 0))  # D = 8 != 3·4
    with pytest.raises(ValueError, match="multiple"):
        quantizers.grouped_quantize(z, _normal((7, 3), 0))  # 8 not a multiple of 3
    with pytest.raises(ValueError, match="codebooks"):
        quantizers.grouped_quantize(z, _normal((1, 2, 7, 4), 0))
    with pytest.raises(ValueError, match="indices"):
        quantizers.grouped_lookup(jnp.zeros((3, 3), jnp.int32), books)


@pytest.mark.parametrize("separate", [True, False])
def test_grouped_matches_vector_quantize_pytorch(separate):
    """``VectorQuantize(heads=H, codebook_dim=D/H)`` splits ``'b n (h d) -> h b n d'``: our parts.

    With the default ``codebook_dim=None`` (= ``dim``) the torch module instead projects ``z`` by a
    learned ``Linear(D, H·D)`` and quantizes H heads of D channels each: not a split of ``z``, so
    only ``codebook_dim=D/H`` (no projection) is the same quantizer.
    """
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    heads, k, dim = 4, 16, 12
    part = dim // heads
    assert vqp.VectorQuantize(dim=dim, codebook_size=k, heads=heads).has_projections  # the default differs
    vq = vqp.VectorQuantize(dim=dim, codebook_size=k, heads=heads, separate_codebook_per_head=separate,
                            codebook_dim=part, rotation_trick=False).eval()
    assert not vq.has_projections
    books = _normal((heads if separate else 1, k, part), 11)
    with torch.no_grad():
        vq._codebook.embed.copy_(torch.from_numpy(books))
    z = _normal((3, 10, dim), 12)
    with torch.no_grad():
        quantized, indices, _ = vq(torch.from_numpy(z))
    g = quantizers.grouped_quantize(z, books if separate else books[0])
    np.testing.assert_array_equal(g.indices, indices.numpy())
    np.testing.assert_allclose(g.z_q, quantized.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- SimVQ


def test_simvq_forward_and_interface():
    m = SimVQ(16, 6, frozen_dim=4, rngs=nnx.Rngs(0))
    assert isinstance(m.frozen_codebook, FrozenCodebook) and not isinstance(m.frozen_codebook, nnx.Param)
    assert m.frozen_codebook[...].shape == (16, 4) and m.transform[...].shape == (4, 6)
    e = m.codebook_vectors()
    np.testing.assert_allclose(e, m.frozen_codebook[...] @ m.transform[...], rtol=1e-6)
    z = _normal((2, 5, 6), 13, scale=0.5)
    out = m(z)
    d = ((z[..., None, :] - np.asarray(e)) ** 2).sum(-1)
    np.testing.assert_array_equal(out.indices, d.argmin(-1))
    np.testing.assert_allclose(out.z_q, np.asarray(e)[d.argmin(-1)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.codebook_loss, d.min(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.commitment_loss, d.min(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(m.encode(z), out.indices)
    np.testing.assert_allclose(m.decode(out.indices), out.z_q, rtol=1e-6)
    assert (m.num_codes, m.code_dim, m.num_stages) == (16, 6, 1)
    zb = m(jnp.asarray(z, jnp.bfloat16))
    assert zb.z_q.dtype == jnp.bfloat16 and zb.codebook_loss.dtype == jnp.float32
    jitted = nnx.jit(lambda m, z: m(z))(m, z)
    np.testing.assert_array_equal(jitted.indices, out.indices)


def _codebook_step(model, codes_of, z, lr=0.5):
    """One SGD step of the mean codebook loss on the model's Params: (codes before, codes after, indices)."""
    before, indices = np.asarray(codes_of(model)), np.asarray(model(z).indices)
    opt = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.mean(m(z).codebook_loss))(model)
    opt.update(model, grads)
    return before, np.asarray(codes_of(model)), indices


def test_simvq_codebook_loss_moves_unselected_codes_unlike_plain_vq():
    k, dim = 32, 4
    z = _normal((6, dim), 14)  # 6 vectors: at most 6 of the 32 codes selected

    sim = SimVQ(k, dim, rngs=nnx.Rngs(1))
    frozen = np.asarray(sim.frozen_codebook[...]).copy()
    before, after, idx = _codebook_step(sim, lambda m: m.codebook_vectors(), z)
    unused = np.setdiff1d(np.arange(k), idx)
    assert unused.size >= k - 6
    assert np.all(np.abs(after[unused] - before[unused]).sum(-1) > 1e-6)  # every unselected code moved
    np.testing.assert_array_equal(sim.frozen_codebook[...], frozen)  # C is not a Param: not trained

    vq = VectorQuantizer(k, dim, rngs=nnx.Rngs(1))
    before, after, idx = _codebook_step(vq, lambda m: m.codebook[...], z)
    unused = np.setdiff1d(np.arange(k), idx)
    np.testing.assert_array_equal(after[unused], before[unused])  # plain VQ: unselected codes stay
    assert np.all(np.abs(after[np.unique(idx)] - before[np.unique(idx)]).sum(-1) > 0)


def test_simvq_matches_vector_quantize_pytorch():
    """Same ``C`` (torch buffer ``frozen_codebook``) and ``W`` (torch ``code_transform.weight = Wᵀ``).

    The torch module's single loss is ``mse(sg[x], q) + 0.25 · mse(x, sg[q])`` (means over all
    elements): ours are per-vector sums, so it equals ``mean(codebook + 0.25 · commitment) / D``.
    ``rotation_trick=False``: its default forwards the rotated input, equal to ``q`` only up to rounding.
    """
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    k, dim, frozen_dim = 64, 8, 5
    m = SimVQ(k, dim, frozen_dim=frozen_dim, rngs=nnx.Rngs(2))
    t = vqp.SimVQ(dim=dim, codebook_size=k, frozen_codebook_dim=frozen_dim, rotation_trick=False)
    with torch.no_grad():
        t.frozen_codebook.copy_(torch.from_numpy(np.array(m.frozen_codebook[...])))
        t.code_transform.weight.copy_(torch.from_numpy(np.asarray(m.transform[...]).T.copy()))
    z = _normal((3, 20, dim), 15, scale=0.3)
    with torch.no_grad():
        quantized, indices, loss = t(torch.from_numpy(z))
    out = m(z)
    np.testing.assert_array_equal(out.indices, indices.numpy())
    np.testing.assert_allclose(out.z_q, quantized.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.codebook.detach().numpy(), m.codebook_vectors(), rtol=1e-5, atol=1e-6)
    ours = jnp.mean(out.codebook_loss + 0.25 * out.commitment_loss) / dim
    np.testing.assert_allclose(ours, loss.item(), rtol=1e-5)


# --------------------------------------------------------------------------- factorised codes (ViT-VQGAN)


def test_factorized_lookup_is_cosine_in_the_low_space():
    k, dim, low = 12, 10, 3
    m = FactorizedVectorQuantizer(k, dim, code_dim_low=low, rngs=nnx.Rngs(3))
    z = _normal((2, 7, dim), 16)
    out = m(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 7)
    assert out.codebook_loss.shape == out.commitment_loss.shape == (2, 7)
    w_in, b_in = np.asarray(m.project_in.kernel[...], np.float64), np.asarray(m.project_in.bias[...], np.float64)
    w_out, b_out = np.asarray(m.project_out.kernel[...], np.float64), np.asarray(m.project_out.bias[...], np.float64)
    e = np.asarray(m.codebook[...], np.float64)
    u = z @ w_in + b_in
    cos = (u / np.linalg.norm(u, axis=-1, keepdims=True)) @ (e / np.linalg.norm(e, axis=-1, keepdims=True)).T
    best = cos.argmax(-1)
    np.testing.assert_array_equal(out.indices, best)
    e_hat = e / np.linalg.norm(e, axis=-1, keepdims=True)
    np.testing.assert_allclose(out.z_q, e_hat[best] @ w_out + b_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.codebook_loss, 2.0 - 2.0 * cos.max(-1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(m.encode(z), out.indices)
    np.testing.assert_allclose(m.decode(out.indices), out.z_q, rtol=1e-6)
    assert m.codebook_vectors().shape == (k, dim) and (m.num_codes, m.code_dim) == (k, dim)


def test_factorized_gradients_reach_both_projections():
    m = FactorizedVectorQuantizer(8, 6, code_dim_low=4, rngs=nnx.Rngs(4))
    z, target = _normal((16, 6), 17), _normal((16, 6), 18)

    def recon(m):
        return jnp.mean(jnp.square(m(z).z_q - target))

    g = nnx.grad(recon)(m)
    for proj in ("project_in", "project_out"):
        assert float(jnp.abs(g[proj]["kernel"][...]).sum()) > 0, proj  # decoder gradient, through the ST copy
    np.testing.assert_array_equal(g["codebook"][...], 0.0)  # straight-through: no reconstruction gradient to codes
    g = nnx.grad(lambda m: jnp.mean(m(z).codebook_loss))(m)
    assert float(jnp.abs(g["codebook"][...]).sum()) > 0
    np.testing.assert_array_equal(g["project_in"]["kernel"][...], 0.0)
    g = nnx.grad(lambda m: jnp.mean(m(z).commitment_loss))(m)
    assert float(jnp.abs(g["project_in"]["kernel"][...]).sum()) > 0
    np.testing.assert_array_equal(g["codebook"][...], 0.0)
