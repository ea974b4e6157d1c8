"""LFQ and BSQ: codes and indices, entropy terms against enumeration of all 2^D codes, transforms,
vector-quantize-pytorch's ``LFQ`` and the NNX modules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import nn as vnn
from vqjax import quantizers as F
from vqjax.quantizers._lfq import bernoulli_entropy_terms


def _all_codes(d):
    """``[2^d, d]`` ±1 codes, row k = the code of index k (bit j of k is channel j)."""
    k = np.arange(2**d)
    return 2.0 * ((k[:, None] >> np.arange(d)) & 1) - 1.0


def _enumerated(z, codes, tau):
    """float64 reference: q = softmax(-‖z - c‖²/τ) over all codes; per-sample H, exact and per-bit codebook H."""
    z = np.asarray(z, np.float64).reshape(-1, codes.shape[1])
    logits = -np.sum((z[:, None, :] - codes[None]) ** 2, axis=-1) / tau
    logits -= logits.max(axis=1, keepdims=True)
    q = np.exp(logits)
    q /= q.sum(axis=1, keepdims=True)
    ent = lambda p: -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    per_sample = ent(q)
    mean = q.mean(axis=0)
    marginals = np.stack([mean[codes[:, j] > 0].sum() for j in range(codes.shape[1])])  # batch P(bit j = 1)
    factorised = np.sum(ent(np.stack([marginals, 1 - marginals], axis=-1)))
    return per_sample, ent(mean), factorised


def _correlated_z(d, n=64, seed=0, scale=1.0):
    """Inputs whose bits are correlated across the batch, so exact ≠ factorised codebook entropy."""
    r = np.random.default_rng(seed)
    base = r.normal(size=(n, 1))
    return (scale * (0.8 * base + 0.6 * r.normal(size=(n, d)))).astype(np.float32)


# ------------------------------------------------------------------------------------------ codes


def test_lfq_codes_indices_and_sign_of_zero(strict_promotion):
    z = jnp.array([[0.3, -2.0, 0.0], [-0.1, 0.0, 5.0]], jnp.float32)
    q = F.lfq(z)
    np.testing.assert_array_equal(q.z_q, [[1, -1, 1], [-1, 1, 1]])  # sign(0) = +1
    np.testing.assert_array_equal(q.indices, [1 + 4, 2 + 4])  # Σ [ẑ_d > 0] 2^d
    assert q.indices.dtype == jnp.int32
    idx = jnp.arange(2**6, dtype=jnp.int32)
    codes = F.lfq_indices_to_codes(idx, 6)
    np.testing.assert_array_equal(codes, _all_codes(6))
    np.testing.assert_array_equal(F.lfq_codes_to_indices(codes), idx)
    np.testing.assert_array_equal(F.lfq(codes).indices, idx)
    big = F.lfq(jnp.ones((2, 30)))
    assert int(big.indices[0]) == 2**30 - 1


def test_bsq_codes_on_the_sphere(strict_promotion):
    z = jax.random.normal(jax.random.key(0), (50, 7)) * 3.0
    q = F.bsq(z)
    np.testing.assert_allclose(jnp.abs(q.z_q), 1 / math.sqrt(7), rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(q.z_q, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(q.indices, F.lfq(z).indices)
    np.testing.assert_allclose(F.bsq_indices_to_codes(q.indices, 7), q.codes, rtol=1e-6)


def test_straight_through_gradients():
    z = jax.random.normal(jax.random.key(1), (4, 5))
    g = jax.grad(lambda x: jnp.sum(F.lfq(x).z_q * jnp.arange(5.0)))(z)
    np.testing.assert_allclose(g, jnp.broadcast_to(jnp.arange(5.0), (4, 5)))
    # BSQ: the gradient is that of u = z/‖z‖ (straight through the sign)
    w = jax.random.normal(jax.random.key(2), (4, 5))
    g_bsq = jax.grad(lambda x: jnp.sum(F.bsq(x).z_q * w))(z)
    g_u = jax.grad(lambda x: jnp.sum(F.l2_normalize(x) * w))(z)
    np.testing.assert_allclose(g_bsq, g_u, rtol=1e-5, atol=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="`z`"):
        F.lfq(jnp.ones((2, 31)))
    with pytest.raises(ValueError, match="`dim`"):
        F.lfq_indices_to_codes(jnp.zeros(3, jnp.int32), 0)
    with pytest.raises(ValueError, match="`indices`"):
        F.lfq_indices_to_codes(jnp.zeros(3), 3)
    with pytest.raises(ValueError, match="`temperature`"):
        F.lfq_entropy_loss(jnp.ones((2, 3)), temperature=0.0)
    with pytest.raises(ValueError, match="`key`"):
        F.lfq_entropy_loss(jnp.ones((2, 3)), sample_fraction=0.5)
    with pytest.raises(ValueError, match="`sample_fraction`"):
        F.bsq_entropy_loss(jnp.ones((2, 3)), sample_fraction=1.5)


# ----------------------------------------------------------------------- entropies vs enumeration


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 6])
def test_lfq_entropies_match_enumeration(d, strict_promotion):
    tau = 1.0 if d % 2 else 0.1
    z = _correlated_z(d, seed=d, scale=0.5)
    per_ref, exact_ref, fact_ref = _enumerated(z, _all_codes(d), tau)
    logits = 4.0 * jnp.asarray(z) / tau  # q_d(+1|z) = σ(4 z_d / τ)
    per, exact = bernoulli_entropy_terms(logits, exact=True)
    _, fact = bernoulli_entropy_terms(logits, exact=False)
    np.testing.assert_allclose(per, per_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exact, exact_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fact, fact_ref, rtol=1e-4, atol=1e-5)
    assert float(fact) >= float(exact) - 1e-5  # subadditivity: the factorised form is an upper bound
    loss = F.lfq_entropy_loss(z, temperature=tau, diversity_weight=0.7, exact=True)
    np.testing.assert_allclose(loss, per_ref - 0.7 * exact_ref, rtol=1e-4, atol=1e-4)
    loss_f = F.lfq_entropy_loss(z, temperature=tau, exact=False)
    np.testing.assert_allclose(loss_f, per_ref - fact_ref, rtol=1e-4, atol=1e-4)


def test_factorised_codebook_entropy_is_only_an_upper_bound():
    # two perfectly correlated bits: the batch uses 2 codes, each bit is balanced
    z = np.array([[1.0, 1.0], [-1.0, -1.0]] * 8, np.float32)
    _, exact = bernoulli_entropy_terms(4.0 * z / 0.01, exact=True)
    _, fact = bernoulli_entropy_terms(4.0 * z / 0.01, exact=False)
    np.testing.assert_allclose(exact, math.log(2), rtol=1e-5)
    np.testing.assert_allclose(fact, 2 * math.log(2), rtol=1e-5)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 6])
def test_bsq_entropies_match_enumeration(d, strict_promotion):
    tau = 0.3
    z = _correlated_z(d, seed=10 + d)
    u = z / np.linalg.norm(z, axis=-1, keepdims=True)
    per_ref, exact_ref, fact_ref = _enumerated(u, _all_codes(d) / math.sqrt(d), tau)
    loss = F.bsq_entropy_loss(z, temperature=tau)  # default: BSQ's factorised codebook entropy
    np.testing.assert_allclose(loss, per_ref - fact_ref, rtol=1e-4, atol=1e-4)
    loss_exact = F.bsq_entropy_loss(z, temperature=tau, exact=True, diversity_weight=2.0)
    np.testing.assert_allclose(loss_exact, per_ref - 2.0 * exact_ref, rtol=1e-4, atol=1e-4)


def test_loss_is_minus_mutual_information_and_bounded():
    d = 5
    for scale, tau in [(0.01, 1.0), (1.0, 0.01), (3.0, 0.1)]:
        z = jax.random.normal(jax.random.key(3), (256, d)) * scale
        loss = float(jnp.mean(F.lfq_entropy_loss(z, temperature=tau, exact=True)))
        assert -d * math.log(2) - 1e-4 <= loss <= 1e-5
    # confident, uniformly used codes reach the minimum -D log 2
    z = F.lfq_indices_to_codes(jnp.arange(2**d, dtype=jnp.int32), d)
    np.testing.assert_allclose(jnp.mean(F.lfq_entropy_loss(z, temperature=0.01, exact=True)),
                               -d * math.log(2), rtol=1e-4)


def test_sample_fraction_weights_the_per_sample_term():
    z = jax.random.normal(jax.random.key(4), (10, 8, 4))
    full = F.lfq_entropy_loss(z, temperature=0.5, diversity_weight=0.0)
    part = F.lfq_entropy_loss(z, temperature=0.5, diversity_weight=0.0, sample_fraction=0.25, key=jax.random.key(5))
    chosen = np.asarray(part) != 0
    assert chosen.sum() == 20
    np.testing.assert_allclose(np.asarray(part)[chosen], 4.0 * np.asarray(full)[chosen], rtol=1e-5)
    both = F.lfq_entropy_loss(z, temperature=0.5, sample_fraction=0.25, key=jax.random.key(5))
    codebook = float(jnp.mean(full - F.lfq_entropy_loss(z, temperature=0.5)))
    np.testing.assert_allclose(jnp.mean(both), np.asarray(full)[chosen].mean() - codebook, rtol=1e-5)


# ------------------------------------------------------------------------------ transformations


@pytest.mark.parametrize("fn", [F.lfq_entropy_loss, F.bsq_entropy_loss])
def test_jit_vmap_grad_finite(fn):
    z = jnp.concatenate([jax.random.normal(jax.random.key(6), (15, 6)) * 10.0, jnp.zeros((1, 6))])
    loss = lambda x: jnp.mean(fn(x, temperature=0.01, exact=True))
    g = jax.jit(jax.grad(loss))(z)
    assert np.all(np.isfinite(g))
    g_f = jax.grad(lambda x: jnp.mean(fn(x, temperature=0.01, exact=False)))(z)
    assert np.all(np.isfinite(g_f))
    batched = jax.vmap(lambda x: fn(x, temperature=0.1))(z.reshape(4, 4, 6))
    np.testing.assert_allclose(batched[1], fn(z[4:8], temperature=0.1), rtol=1e-5, atol=1e-6)
    for quant in (F.lfq, F.bsq):
        q = jax.vmap(quant)(z.reshape(4, 4, 6))
        np.testing.assert_array_equal(q.indices.reshape(-1), quant(z).indices)
        np.testing.assert_allclose(jax.jit(quant)(z).z_q, quant(z).z_q, rtol=1e-6)


def test_entropy_gradient_increases_code_usage():
    z = jax.random.normal(jax.random.key(7), (128, 3)) * 0.1 + 0.5  # all in one corner
    step = jax.jit(lambda x: x - 0.05 * jax.grad(lambda y: jnp.mean(F.lfq_entropy_loss(y, temperature=0.5)))(x))
    for _ in range(200):
        z = step(z)
    assert len(np.unique(np.asarray(F.lfq(z).indices))) > 2


# -------------------------------------------------------------------- vector-quantize-pytorch


@pytest.mark.parametrize("spherical", [False, True])
def test_matches_vector_quantize_pytorch(spherical):
    d = 5
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    x = (np.random.default_rng(d).normal(size=(2, 16, d)) * 0.3).astype(np.float32)
    inv_temperature = 1.0  # moderate probabilities: its log clamps p at 1e-5
    m = vqp.LFQ(dim=d, entropy_loss_weight=1.0, diversity_gamma=0.5, spherical=spherical)
    m.train()
    (out, idx, aux), parts = m(torch.tensor(x), inv_temperature=inv_temperature, return_loss_breakdown=True)
    q = (F.bsq if spherical else F.lfq)(x)
    np.testing.assert_allclose(out.detach().numpy(), q.z_q, atol=1e-6)
    # its indices put channel 0 in the most significant bit: reverse the bits
    reversed_idx = sum(((np.asarray(q.indices) >> j) & 1) << (d - 1 - j) for j in range(d))
    np.testing.assert_array_equal(reversed_idx, idx.numpy())
    fn = F.bsq_entropy_loss if spherical else F.lfq_entropy_loss
    loss = fn(x, temperature=1 / inv_temperature, diversity_weight=0.5, exact=True)
    np.testing.assert_allclose(float(jnp.mean(loss)), float(aux), rtol=1e-4, atol=1e-5)
    per = bernoulli_entropy_terms(
        4.0 * (x / np.linalg.norm(x, axis=-1, keepdims=True) / math.sqrt(d) if spherical else x), exact=True)[0]
    np.testing.assert_allclose(float(jnp.mean(per)), parts.per_sample_entropy.item(), rtol=1e-4)


# ------------------------------------------------------------------------------------- modules


@pytest.mark.parametrize("cls", [vnn.LookupFreeQuantizer, vnn.BinarySphericalQuantizer])
def test_modules(cls):
    d = 5
    m = cls(d, entropy_weight=0.1, temperature=0.05)
    assert (m.num_codes, m.code_dim, m.num_stages) == (32, 5, 1)
    z = jax.random.normal(jax.random.key(8), (2, 3, 4, d))
    out = m(z)
    assert isinstance(out, vnn.QuantizerOutput)
    assert out.z_q.shape == z.shape and out.indices.shape == z.shape[:-1]
    assert out.codebook_loss.shape == out.commitment_loss.shape == z.shape[:-1]
    assert out.codebook_loss.dtype == jnp.float32 and int(out.restarted) == 0
    np.testing.assert_array_equal(m.encode(z), out.indices)
    np.testing.assert_allclose(m.decode(out.indices), out.z_q, atol=1e-6)
    assert m.codebook_vectors().shape == (32, d)
    pure = F.bsq if cls is vnn.BinarySphericalQuantizer else F.lfq
    loss_fn = F.bsq_entropy_loss if cls is vnn.BinarySphericalQuantizer else F.lfq_entropy_loss
    exact = cls is vnn.LookupFreeQuantizer
    np.testing.assert_allclose(out.codebook_loss, 0.1 * loss_fn(z, temperature=0.05, exact=exact), rtol=1e-5)
    target = F.l2_normalize(z) if cls is vnn.BinarySphericalQuantizer else z
    np.testing.assert_allclose(out.commitment_loss, jnp.sum((target - pure(z).codes) ** 2, -1), rtol=1e-5)
    # bfloat16 in: z_q in bfloat16, indices and losses float32 as from the float32 input
    out16 = nnx.jit(lambda mod, x: mod(x))(m, z.astype(jnp.bfloat16))
    assert out16.z_q.dtype == jnp.bfloat16 and out16.codebook_loss.dtype == jnp.float32
    np.testing.assert_array_equal(out16.indices, m(z.astype(jnp.bfloat16).astype(jnp.float32)).indices)
    # the gradient of the total loss reaches z and is finite
    def total(x):
        o = m(x)
        return jnp.mean(jnp.sum(o.z_q**2, -1) + o.codebook_loss + o.commitment_loss)

    g = jax.jit(jax.grad(total))(z)
    assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0
    with pytest.raises(ValueError, match="`z`"):
        m(jnp.ones((3, d + 1)))
    with pytest.raises(ValueError, match="`d`"):
        cls(31)
    frac = cls(d, sample_fraction=0.5)
    with pytest.raises(ValueError, match="`key`"):
        frac(z)
    assert frac(z, key=jax.random.key(0)).codebook_loss.shape == z.shape[:-1]


def test_modules_all_codes_reachable():
    d = 4
    codes = F.lfq_indices_to_codes(jnp.arange(2**d, dtype=jnp.int32), d)
    np.testing.assert_array_equal(vnn.LookupFreeQuantizer(d).encode(codes), np.arange(2**d))
    np.testing.assert_array_equal(vnn.BinarySphericalQuantizer(d).encode(codes / 3.0), np.arange(2**d))
