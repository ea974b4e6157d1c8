"""vqjax.quantizers: brute-force equality, blocking, jit/vmap/grad, straight-through, usage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("strict_promotion")

from vqjax import losses, quantizers
from vqjax.quantizers._vq import _argmin_block, _fused_block

RNG = np.random.default_rng(0)


def _data(n, k, d, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, d)).astype(np.float32), r.normal(size=(k, d)).astype(np.float32)


def _brute_force(z, e):
    d = ((z.astype(np.float64)[:, None, :] - e.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1), d


def test_squared_distances_match_numpy():
    z, e = _data(50, 13, 6)
    _, ref = _brute_force(z, e)
    np.testing.assert_allclose(quantizers.squared_distances(z, e), ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(params=["platform", "argmin", "fused"])
def kernel(request, monkeypatch):
    """The search kernel nearest_code uses: the platform's (fused on CPU), or one forced, so that the
    GPU/TPU branch (dense argmin) runs on CPU too."""
    jax.clear_caches()  # traces made with another kernel must not be reused
    if request.param != "platform":
        monkeypatch.setattr(quantizers._vq, "_FORCE_KERNEL", request.param)
    yield request.param
    jax.clear_caches()


@pytest.mark.parametrize("n, k, d", [(1, 1, 1), (300, 7, 3), (1000, 512, 64), (257, 1024, 16)])
def test_nearest_code_equals_brute_force(n, k, d, kernel):
    z, e = _data(n, k, d, seed=n + k)
    ref, dist = _brute_force(z, e)
    got = np.asarray(jax.jit(quantizers.nearest_code)(z, e))
    srt = np.sort(dist, axis=1)
    # Rows whose two nearest codes are closer than float32 can tell apart may go either way.
    clear = (srt[:, 1] - srt[:, 0] if k > 1 else np.ones(n)) > 1e-3 * (1 + srt[:, 0])
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], ref[clear])
    # Every chosen code is a nearest code to float32 precision.
    chosen = dist[np.arange(n), got]
    np.testing.assert_allclose(chosen, srt[:, 0], rtol=1e-4, atol=1e-3)


def test_forced_kernel_is_the_one_traced(monkeypatch):
    z, e = _data(20, 8, 4, seed=9)
    for forced, op, other in (("argmin", "argmin", "ceil"), ("fused", "ceil", "argmin"), (None, "platform_index", "")):
        monkeypatch.setattr(quantizers._vq, "_FORCE_KERNEL", forced)
        jax.clear_caches()  # make_jaxpr caches traces by function
        jaxpr = str(jax.make_jaxpr(quantizers.nearest_code)(z, e))
        assert op in jaxpr and (not other or other not in jaxpr), forced
    jax.clear_caches()


def test_fused_cpu_search_equals_argmin_and_breaks_ties_low():
    z, e = _data(2000, 300, 32, seed=3)
    e[150] = e[20]  # duplicate code: ties must go to the lower index, as jnp.argmin does
    z[:10] = e[20]
    e_sq = jnp.sum(jnp.square(e), -1)
    fused = np.asarray(jax.jit(_fused_block)(z, e, e_sq))
    dense = np.asarray(jax.jit(_argmin_block)(z, e, e_sq))
    np.testing.assert_array_equal(fused, dense)
    assert (fused[:10] == 20).all()


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_blocked_equals_unblocked(block_size, kernel):
    z, e = _data(333, 50, 8, seed=5)
    full = quantizers.nearest_code(z, e, block_size=10_000)
    np.testing.assert_array_equal(quantizers.nearest_code(z, e, block_size=block_size), full)


def test_large_inputs_are_searched_in_blocks(monkeypatch, kernel):
    monkeypatch.setattr(quantizers._vq, "_BLOCK_ELEMENTS", 64 * 100)  # 100 rows a block for K=64
    z, e = _data(1050, 64, 4, seed=6)
    jaxpr = str(jax.make_jaxpr(quantizers.nearest_code)(z, e))
    assert "scan" in jaxpr or "while" in jaxpr
    ref, _ = _brute_force(z, e)
    assert (np.asarray(quantizers.nearest_code(z, e)) == ref).mean() > 0.99


def test_arbitrary_leading_axes_and_empty(kernel):
    z, e = _data(2 * 3 * 5, 9, 4, seed=7)
    idx = quantizers.nearest_code(z.reshape(2, 3, 5, 4), e)
    assert idx.shape == (2, 3, 5) and idx.dtype == jnp.int32
    np.testing.assert_array_equal(idx.reshape(-1), quantizers.nearest_code(z, e))
    assert quantizers.nearest_code(jnp.zeros((0, 4)), e).shape == (0,)


def test_vmap_over_codebooks():
    z, _ = _data(40, 1, 4, seed=8)
    books = RNG.normal(size=(3, 6, 4)).astype(np.float32)
    got = jax.jit(jax.vmap(quantizers.nearest_code, in_axes=(None, 0)))(z, books)
    for i in range(3):
        np.testing.assert_array_equal(got[i], _brute_force(z, books[i])[0])


def test_bfloat16_and_nan_free():
    """bfloat16 inputs are searched in float32: the distances and nearest codes of the bfloat16 values
    themselves (exactly representable in float64), as the brute-force search finds them."""
    z, e = _data(64, 8, 4, seed=9)
    zb, eb = jnp.asarray(z, jnp.bfloat16), jnp.asarray(e, jnp.bfloat16)
    z16, e16 = np.asarray(zb).astype(np.float64), np.asarray(eb).astype(np.float64)
    ref, dist = _brute_force(z16, e16)
    idx = np.asarray(jax.jit(quantizers.nearest_code)(zb, eb))
    assert idx.dtype == np.int32
    srt = np.sort(dist, axis=1)
    clear = srt[:, 1] - srt[:, 0] > 1e-3 * (1 + srt[:, 0])  # float32 tells these rows' two nearest apart
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(idx[clear], ref[clear])
    np.testing.assert_allclose(dist[np.arange(64), idx], srt[:, 0], rtol=1e-5, atol=1e-5)
    d = quantizers.squared_distances(zb, e)  # bfloat16 vectors, float32 codes
    assert d.dtype == jnp.float32
    np.testing.assert_allclose(d, _brute_force(z16, e)[1], rtol=1e-5, atol=1e-5)


def test_lookup_and_quantize_forward():
    z, e = _data(20, 5, 3, seed=10)
    q = jax.jit(quantizers.quantize)(z, e)
    np.testing.assert_array_equal(q.codes, e[np.asarray(q.indices)])
    np.testing.assert_allclose(q.z_q, q.codes, atol=1e-6)
    np.testing.assert_array_equal(quantizers.lookup(q.indices, e), q.codes)


def test_straight_through_copies_the_gradient_to_the_encoder():
    z, e = _data(20, 5, 3, seed=11)
    w = RNG.normal(size=z.shape).astype(np.float32)

    def decoder_loss(z, e):  # a nonlinear "decoder" of z_q
        return jnp.sum(jnp.sin(quantizers.quantize(z, e).z_q) * w)

    gz, ge = jax.grad(decoder_loss, argnums=(0, 1))(z, e)
    codes = e[np.asarray(quantizers.nearest_code(z, e))]
    np.testing.assert_allclose(gz, np.cos(codes) * w, rtol=1e-5, atol=1e-6)  # dL/dz_q, unchanged
    np.testing.assert_array_equal(ge, 0.0)  # the decoder term does not move the codebook


def test_vq_losses_through_quantize_move_the_right_parameters():
    z, e = _data(30, 6, 4, seed=12)

    def codebook_term(z, e):
        q = quantizers.quantize(z, e)
        return losses.codebook_loss(z, q.codes).sum()

    def commitment_term(z, e):
        q = quantizers.quantize(z, e)
        return losses.commitment_loss(z, q.codes, beta=0.25).sum()

    idx = np.asarray(quantizers.nearest_code(z, e))
    gz, ge = jax.grad(codebook_term, argnums=(0, 1))(z, e)
    np.testing.assert_array_equal(gz, 0.0)
    ref = np.zeros_like(e)
    np.add.at(ref, idx, 2 * (e[idx] - z))
    np.testing.assert_allclose(ge, ref, rtol=1e-5, atol=1e-5)
    gz, ge = jax.grad(commitment_term, argnums=(0, 1))(z, e)
    np.testing.assert_allclose(gz, 0.5 * (z - e[idx]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ge, 0.0)


def test_code_usage_matches_numpy():
    idx = RNG.integers(0, 10, size=(4, 7, 7))
    u = jax.jit(quantizers.code_usage, static_argnums=1)(idx, 12)
    counts = np.bincount(idx.ravel(), minlength=12)
    p = counts / counts.sum()
    ref_ppl = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
    np.testing.assert_array_equal(u.counts, counts)
    np.testing.assert_allclose(u.perplexity, ref_ppl, rtol=1e-5)
    np.testing.assert_allclose(u.used_fraction, np.mean(counts > 0))
    assert float(quantizers.perplexity(np.eye(5)[0] * 3)) == pytest.approx(1.0)
    assert float(quantizers.perplexity(np.ones(5))) == pytest.approx(5.0)
    # Out-of-range indices (masked padding) are not counted, negative ones included.
    np.testing.assert_array_equal(quantizers.code_usage(jnp.array([-1, 0, 3, 12]), 12).counts[:4], [1, 0, 0, 1])


def test_code_usage_sums_across_devices_in_shard_map():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    idx = jnp.asarray(RNG.integers(0, 16, size=(8 * 50,)), jnp.int32)
    idx = jax.device_put(idx, jax.NamedSharding(mesh, jax.P("data")))

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P())
    def per_device(i):
        u = quantizers.code_usage(i, 16, axis_name="data")
        return u.counts, u.perplexity

    with jax.set_mesh(mesh):
        counts, ppl = per_device(idx)
    whole = quantizers.code_usage(np.asarray(idx), 16)
    np.testing.assert_array_equal(counts, whole.counts)
    np.testing.assert_allclose(ppl, whole.perplexity, rtol=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: quantizers.nearest_code(jnp.zeros((4, 3)), jnp.zeros((5, 2))), "D = codebook"),
        (lambda: quantizers.nearest_code(jnp.zeros((4, 3)), jnp.zeros((3,))), "codebook"),
        (lambda: quantizers.nearest_code(jnp.zeros((4, 3)), jnp.zeros((2, 3)), block_size=0), "block_size"),
        (lambda: quantizers.lookup(jnp.zeros((4,)), jnp.zeros((2, 3))), "indices"),
        (lambda: quantizers.straight_through(jnp.zeros((4, 3)), jnp.zeros((4, 2))), "same shape"),
        (lambda: quantizers.code_usage(jnp.zeros((4,), jnp.int32), 0), "num_codes"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
