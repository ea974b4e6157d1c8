"""Residual VQ, scalar (Lloyd-Max) quantization, cosine VQ and the nn quantizer modules, against NumPy."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import losses, quantization, quantizers
from vqjax.nn import (
    EMAVectorQuantizer,
    FiniteScalarQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
    make_quantizer,
)

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _normal(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


@functools.cache
def _lloyd_levels(num_levels):
    return np.asarray(quantizers.lloyd_max_levels(num_levels))


# --------------------------------------------------------------------------- residual VQ


def _np_residual(z, books):
    """Stage by stage, brute-force nearest code of the residual, in float64."""
    r = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    codes, indices, residuals = [], [], []
    for e in np.asarray(books, np.float64):
        k = ((r[:, None, :] - e[None]) ** 2).sum(-1).argmin(1)
        residuals.append(r.copy())
        codes.append(e[k])
        indices.append(k)
        r = r - e[k]
    lead = z.shape[:-1]
    return (np.stack(codes).reshape(len(books), *lead, -1), np.stack(indices, -1).reshape(*lead, -1),
            np.stack(residuals).reshape(len(books), *lead, -1))


def test_residual_quantize_matches_a_numpy_loop():
    z = _normal((2, 15, 4), seed=0)
    books = _normal((3, 6, 4), seed=1) * np.array([1.0, 0.5, 0.25], np.float32)[:, None, None]
    r = jax.jit(quantizers.residual_quantize)(z, books)
    codes, indices, residuals = _np_residual(z, books)
    assert r.indices.shape == (2, 15, 3) and r.indices.dtype == jnp.int32
    assert r.codes.shape == r.residuals.shape == (3, 2, 15, 4)
    np.testing.assert_array_equal(r.indices, indices)
    np.testing.assert_allclose(r.codes, codes, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.residuals, residuals, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.z_q, codes.sum(0), rtol=1e-5, atol=1e-5)  # forward: the sum of the codes


def test_residual_lookup_decodes_the_indices_to_z_q():
    z = _normal((40, 5), seed=2)
    books = _normal((4, 7, 5), seed=3)
    r = quantizers.residual_quantize(z, books)
    np.testing.assert_allclose(quantizers.residual_lookup(r.indices, books), r.z_q, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(r.codes, 0), r.z_q, rtol=1e-6, atol=1e-6)


def test_residual_straight_through_gradient():
    z = _normal((25, 4), seed=4)
    books = _normal((3, 5, 4), seed=5)
    w = _normal((25, 4), seed=6)
    gz, gb = jax.grad(lambda z, b: jnp.sum(quantizers.residual_quantize(z, b).z_q * w), argnums=(0, 1))(z, books)
    np.testing.assert_array_equal(gz, w)  # exactly copied to the encoder
    np.testing.assert_array_equal(gb, 0.0)  # the decoder term does not move the codebooks


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_per_stage_codebook_loss_moves_only_its_codebook(stage):
    z = _normal((30, 4), seed=7)
    books = _normal((3, 6, 4), seed=8)

    def loss(z, b):
        r = quantizers.residual_quantize(z, b)
        return jnp.sum(losses.codebook_loss(r.residuals[stage], r.codes[stage]))

    gz, gb = jax.grad(loss, argnums=(0, 1))(z, books)
    np.testing.assert_array_equal(gz, 0.0)
    codes, indices, residuals = _np_residual(z, books)
    ref = np.zeros(books.shape)
    np.add.at(ref[stage], indices[:, stage], 2 * (codes[stage] - residuals[stage]))
    np.testing.assert_allclose(gb, ref, rtol=1e-4, atol=1e-5)
    others = [s for s in range(3) if s != stage]
    np.testing.assert_array_equal(np.asarray(gb)[others], 0.0)
    assert np.abs(np.asarray(gb)[stage]).sum() > 0


def test_per_stage_commitment_loss_moves_only_the_encoder():
    z = _normal((30, 4), seed=9)
    books = _normal((3, 6, 4), seed=10)

    def loss(z, b):
        r = quantizers.residual_quantize(z, b)
        return jnp.sum(losses.commitment_loss(r.residuals[1], r.codes[1], beta=1.0))

    gz, gb = jax.grad(loss, argnums=(0, 1))(z, books)
    np.testing.assert_array_equal(gb, 0.0)
    codes, _, residuals = _np_residual(z, books)
    np.testing.assert_allclose(gz, 2 * (residuals[1] - codes[1]), rtol=1e-4, atol=1e-5)


def test_lloyd_fitted_residual_stages_each_reduce_the_residual():
    z = _normal((500, 4), seed=11)
    r, books = jnp.asarray(z), []
    for s in range(3):
        book = quantization.generalized_lloyd(r, 8, key=jax.random.key(s), max_iter=30).codebook
        r = r - quantizers.lookup(quantizers.nearest_code(r, book), book)
        books.append(book)
    out = quantizers.residual_quantize(z, jnp.stack(books))
    energy = [float(jnp.mean(jnp.sum(out.residuals[s] ** 2, -1))) for s in range(3)]
    energy.append(float(jnp.mean(jnp.sum((z - out.z_q) ** 2, -1))))
    np.testing.assert_allclose(out.residuals[-1] - out.codes[-1], r, rtol=1e-5, atol=1e-5)
    for before, after in itertools.pairwise(energy):
        assert after < 0.9 * before, energy


# --------------------------------------------------------------------------- scalar quantization


def _np_scalar(z, table):
    """tanh, then the nearest level: k_d = #{j : u_d > midpoint_j} (a tie goes to the lower level)."""
    table = np.broadcast_to(np.asarray(table, np.float64), (z.shape[-1], np.shape(table)[-1]))
    u = np.tanh(np.asarray(z, np.float64))
    b = 0.5 * (table[:, 1:] + table[:, :-1])
    digits = (u[..., None] > b).sum(-1)
    codes = np.take_along_axis(np.broadcast_to(table, (*u.shape, table.shape[1])), digits[..., None], -1)[..., 0]
    index = (digits * table.shape[1] ** np.arange(z.shape[-1])).sum(-1)
    return codes, index, u, b


@pytest.mark.parametrize("num_levels", [2, 5, 8])
def test_scalar_quantize_matches_numpy(num_levels):
    levels = _lloyd_levels(num_levels)
    z = _normal((300, 3), seed=num_levels, scale=1.5)
    q = jax.jit(quantizers.scalar_quantize)(z, levels)
    codes, index, u, b = _np_scalar(z, levels)
    clear = (np.abs(u[..., None] - b[0]) > 1e-6).all((-1, -2))  # rows with no value at a threshold
    assert clear.mean() > 0.99
    np.testing.assert_allclose(np.asarray(q.codes)[clear], codes[clear], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(q.indices)[clear], index[clear])
    np.testing.assert_allclose(q.z_q, q.codes, atol=1e-6)
    assert q.indices.dtype == jnp.int32 and set(np.unique(q.codes)) <= set(levels)


def test_scalar_quantize_ties_go_to_the_lower_level():
    levels = np.array([-0.6, -0.2, 0.2, 0.6], np.float32)  # the middle threshold is exactly 0
    q = quantizers.scalar_quantize(jnp.zeros((1, 2)), levels)
    np.testing.assert_array_equal(q.codes, np.float32(-0.2))
    np.testing.assert_array_equal(q.indices, [1 + 4 * 1])
    q2 = quantizers.scalar_quantize(jnp.zeros((3,)), np.array([-0.5, 0.5], np.float32))
    np.testing.assert_array_equal(q2.codes, np.float32(-0.5))


def test_scalar_quantize_gradient_is_that_of_tanh():
    z = _normal((20, 3), seed=12, scale=2.0)
    w = _normal((20, 3), seed=13)
    g = jax.grad(lambda z: jnp.sum(quantizers.scalar_quantize(z, _lloyd_levels(5)).z_q * w))(z)
    np.testing.assert_allclose(g, w * (1 - np.tanh(z.astype(np.float64)) ** 2), rtol=1e-5, atol=1e-7)
    gc = jax.grad(lambda z: jnp.sum(quantizers.scalar_quantize(z, _lloyd_levels(5)).codes))(z)
    np.testing.assert_array_equal(gc, 0.0)


@pytest.mark.parametrize("num_levels, dim", [(5, 3), (8, 2)])
def test_scalar_indices_round_trip_through_the_module_decode(num_levels, dim):
    z = _normal((4, 6, dim), seed=14, scale=1.5)
    module = FiniteScalarQuantizer((num_levels,) * dim, lloyd_max=True)
    np.testing.assert_array_equal(module.table[...], _lloyd_levels(num_levels))
    q = quantizers.scalar_quantize(z, module.table[...])
    np.testing.assert_array_equal(module.decode(q.indices), q.codes)
    np.testing.assert_array_equal(module.encode(z), q.indices)
    every = module.decode(jnp.arange(num_levels**dim, dtype=jnp.int32))
    assert len({tuple(v) for v in np.asarray(every)}) == num_levels**dim


def test_scalar_quantize_with_a_per_channel_level_table():
    table = np.stack([np.linspace(-0.9, 0.9, 4), [-0.8, -0.1, 0.3, 0.95], _lloyd_levels(8)[::2]]).astype(np.float32)
    z = _normal((50, 3), seed=15, scale=1.5)
    q = quantizers.scalar_quantize(z, table)
    codes, index, _, _ = _np_scalar(z, table)
    np.testing.assert_allclose(q.codes, codes, atol=1e-7)
    np.testing.assert_array_equal(q.indices, index)
    for d in range(3):  # each channel on its own row, as with a shared [L] table of that row
        np.testing.assert_array_equal(q.codes[:, d], quantizers.scalar_quantize(z[:, d:d + 1], table[d]).codes[:, 0])


# --------------------------------------------------------------------------- Lloyd-Max levels


@functools.cache
def _tanh_normal_sample():
    return np.tanh(np.random.default_rng(0).standard_normal(2_000_000))


def _np_mse(u, levels):
    levels = np.sort(np.asarray(levels, np.float64))
    k = np.searchsorted(0.5 * (levels[1:] + levels[:-1]), u)
    return np.mean((u - levels[k]) ** 2)


@pytest.mark.parametrize("num_levels", [2, 5, 8])
def test_lloyd_max_levels_are_the_centroids_of_their_cells(num_levels):
    a = _lloyd_levels(num_levels).astype(np.float64)
    assert a.shape == (num_levels,) and (np.diff(a) > 0).all() and (np.abs(a) < 1).all()
    np.testing.assert_allclose(a, -a[::-1], atol=1e-5)  # symmetric
    u = _tanh_normal_sample()
    cell = np.searchsorted(0.5 * (a[1:] + a[:-1]), u)  # thresholds at the midpoints
    means = np.array([u[cell == j].mean() for j in range(num_levels)])
    np.testing.assert_allclose(a, means, atol=1e-3)


@pytest.mark.parametrize("num_levels", [5, 8])
def test_lloyd_max_levels_beat_the_uniform_fsq_levels(num_levels):
    u = _tanh_normal_sample()
    fsq_levels = np.asarray(quantizers.fsq_indices_to_codes(jnp.arange(num_levels), (num_levels,)))[:, 0]
    lloyd = _np_mse(u, _lloyd_levels(num_levels))
    assert lloyd < _np_mse(u, fsq_levels)
    assert lloyd < _np_mse(u, np.linspace(-1, 1, num_levels))
    assert lloyd < _np_mse(u, (np.arange(num_levels) + 0.5) / num_levels * 2 - 1)  # mid-rise uniform grid
    # And the module's own error agrees with NumPy's.
    z = np.arctanh(u[:20000]).astype(np.float32)
    q = quantizers.scalar_quantize(z[:, None], _lloyd_levels(num_levels))
    np.testing.assert_allclose(float(jnp.mean((jnp.tanh(z[:, None]) - q.codes) ** 2)),
                               _np_mse(np.tanh(z.astype(np.float64)), _lloyd_levels(num_levels)), rtol=1e-3)


# --------------------------------------------------------------------------- cosine VQ


def test_cosine_quantize_picks_the_largest_cosine_similarity():
    z = _normal((60, 4), seed=16)
    e = _normal((9, 4), seed=17) * np.random.default_rng(18).uniform(0.1, 5.0, size=(9, 1)).astype(np.float32)
    q = jax.jit(functools.partial(quantizers.quantize, cosine=True))(z, e)
    z64, e64 = z.astype(np.float64), e.astype(np.float64)
    cos = (z64 @ e64.T) / np.linalg.norm(z64, axis=1, keepdims=True) / np.linalg.norm(e64, axis=1)
    np.testing.assert_array_equal(q.indices, cos.argmax(1))
    assert (np.asarray(q.indices) != np.asarray(quantizers.nearest_code(z, e))).any()  # not the l2 choice
    unit = e64[cos.argmax(1)] / np.linalg.norm(e64[cos.argmax(1)], axis=1, keepdims=True)
    np.testing.assert_allclose(q.codes, unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(q.z_q, np.float64), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(q.codes, np.float64), axis=1), 1.0, rtol=1e-5)


def test_l2_normalize_of_zero_is_zero_without_nan():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], np.float32)
    y = quantizers.l2_normalize(x)
    np.testing.assert_array_equal(y[0], 0.0)
    np.testing.assert_allclose(y[1], [0.6, 0.0, 0.8], rtol=1e-6)
    assert np.isfinite(jax.jit(jax.grad(lambda x: jnp.sum(quantizers.l2_normalize(x))))(jnp.zeros(3))).all()
    # A zero input or a zero code in cosine VQ: finite output.
    e = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    q = jax.jit(functools.partial(quantizers.quantize, cosine=True))(x, e)
    assert all(np.isfinite(np.asarray(a)).all() for a in q)
    np.testing.assert_array_equal(q.z_q[0], 0.0)


def test_l2_normalize_and_cosine_quantize_of_bfloat16_under_strict_promotion():
    x = jnp.asarray([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], jnp.bfloat16)
    y = quantizers.l2_normalize(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), [[0, 0, 0], [0.6, 0, 0.8]], atol=4e-3)
    q = quantizers.quantize(x, jnp.eye(3), cosine=True)
    assert q.z_q.dtype == jnp.bfloat16 and np.isfinite(np.asarray(q.z_q.astype(jnp.float32))).all()


# --------------------------------------------------------------------------- nn modules


SMALL = {"num_codes": 8, "code_dim": 3, "fsq_levels": (5, 4, 3), "num_stages": 2}


@nnx.jit
def _call(module, z, key=None):
    """One compiled call (the training loop's way; eager calls compile every op separately)."""
    return module(z, key=key)


@nnx.jit
def _round_trip(module, z):
    indices = module.encode(z)
    return module(z), indices, module.decode(indices)


@pytest.mark.parametrize("kind, residual_ema", [("vq", False), ("ema", False), ("fsq", False),
                                                ("residual", False), ("residual", True)])
def test_module_output_shapes(kind, residual_ema):
    q = make_quantizer(kind, residual_ema=residual_ema, rngs=nnx.Rngs(0), **SMALL)
    z = jnp.asarray(_normal((2, 5, 3), seed=19))
    out = _call(q, z, jax.random.key(0))
    assert out.z_q.shape == z.shape and out.z_q.dtype == z.dtype
    assert out.indices.shape == ((2, 5, 2) if kind == "residual" else (2, 5)) and out.indices.dtype == jnp.int32
    assert out.codebook_loss.shape == out.commitment_loss.shape == (2, 5)
    assert out.restarted.shape == () and out.restarted.dtype == jnp.int32
    assert q.codebook_vectors().shape == (q.num_stages * q.num_codes, q.code_dim)


def test_make_quantizer_builds_each_kind_and_rejects_others():
    assert isinstance(make_quantizer("vq", rngs=nnx.Rngs(0), **SMALL), VectorQuantizer)
    assert isinstance(make_quantizer("ema", rngs=nnx.Rngs(0), **SMALL), EMAVectorQuantizer)
    assert isinstance(make_quantizer("fsq", rngs=nnx.Rngs(0), **SMALL), FiniteScalarQuantizer)
    assert isinstance(make_quantizer("residual", rngs=nnx.Rngs(0), **SMALL), ResidualVectorQuantizer)
    with pytest.raises(ValueError, match="kind"):
        make_quantizer("bad", rngs=nnx.Rngs(0))


def _ema_arrays(module):
    return {name: np.asarray(getattr(module.ema, name)[...]) for name in ("codebook", "cluster_size", "embed_sum",
                                                                          "weight")}


def test_ema_module_updates_in_training_mode_only():
    q = EMAVectorQuantizer(8, 3, decay=0.9, rngs=nnx.Rngs(0))
    z = jnp.asarray(_normal((40, 3), seed=20))
    before = _ema_arrays(q)
    out = q(z)  # training mode by default (eager)
    after = _ema_arrays(q)
    assert not np.array_equal(after["codebook"], before["codebook"])
    assert after["weight"] > 0
    # The statistics are those of ema_update on the indices the call returned.
    want = quantizers.ema_update(quantizers.ema_init(before["codebook"]), z, out.indices, decay=0.9)
    np.testing.assert_allclose(after["codebook"], want.codebook, rtol=1e-6, atol=1e-7)
    q.eval()
    frozen = _ema_arrays(q)
    q(z)
    _call(q, z * 3.0)
    for name, value in _ema_arrays(q).items():
        np.testing.assert_array_equal(value, frozen[name], err_msg=name)
    q.train()
    _call(q, z * 3.0)
    assert not np.array_equal(_ema_arrays(q)["codebook"], frozen["codebook"])


def test_ema_module_with_restarts_needs_a_key_in_training_mode():
    q = EMAVectorQuantizer(8, 3, dead_code_threshold=1.0, rngs=nnx.Rngs(0))
    z = jnp.asarray(_normal((40, 3), seed=21))
    with pytest.raises(ValueError, match="key"):
        q(z)
    before = _ema_arrays(q)
    out = _call(q, z, jax.random.key(0))
    # After the first update N̂ is this batch's counts: the codes no vector chose (N̂ = 0 < 1) are
    # re-seeded with rows of the batch, the others keep their EMA means.
    used = np.bincount(np.asarray(out.indices).reshape(-1), minlength=8) > 0
    assert 0 < used.sum() < 8
    assert int(out.restarted) == int(np.sum(~used))
    after = _ema_arrays(q)
    want = quantizers.ema_update(quantizers.ema_init(before["codebook"]), z, out.indices, decay=0.99)
    np.testing.assert_allclose(after["codebook"][used], np.asarray(want.codebook)[used], rtol=1e-6, atol=1e-7)
    assert all((np.asarray(z) == row).all(1).any() for row in after["codebook"][~used])
    q.eval()
    q(z)  # no update in eval mode, so no key needed


def test_residual_module_with_ema_updates_every_stage():
    q = ResidualVectorQuantizer(8, 3, 3, ema=True, decay=0.9, rngs=nnx.Rngs(0))
    z = jnp.asarray(_normal((64, 3), seed=22))
    before = _ema_arrays(q)
    out = _call(q, z)
    after = _ema_arrays(q)
    assert after["codebook"].shape == (3, 8, 3)
    for s in range(3):
        assert not np.array_equal(after["codebook"][s], before["codebook"][s]), s
        np.testing.assert_allclose(after["weight"][s], 0.1, rtol=1e-6)
        # γ is float32 state (a sweep's per-run value), so 1 - γ is 0.1 to float32 rounding
        np.testing.assert_allclose(after["cluster_size"][s],
                                   0.1 * np.bincount(np.asarray(out.indices[:, s]), minlength=8), rtol=1e-6)
    np.testing.assert_array_equal(out.codebook_loss, 0.0)
    q.eval()
    _call(q, z)
    for name, value in _ema_arrays(q).items():
        np.testing.assert_array_equal(value, after[name], err_msg=name)


@pytest.mark.parametrize("kind, extra", [("vq", {}), ("vq", {"cosine": True}), ("ema", {}), ("fsq", {}),
                                         ("fsq", {"lloyd_max": True, "fsq_levels": (5, 5, 5)}),
                                         ("residual", {}), ("residual", {"residual_ema": True})])
def test_encode_decode_round_trip_equals_z_q(kind, extra):
    q = make_quantizer(kind, rngs=nnx.Rngs(1), **{**SMALL, **extra})
    q.eval()
    z = jnp.asarray(_normal((3, 4, 3), seed=23))
    out, indices, decoded = _round_trip(q, z)
    np.testing.assert_array_equal(indices, out.indices)
    np.testing.assert_allclose(decoded, out.z_q, rtol=1e-6, atol=1e-6)
