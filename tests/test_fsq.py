"""vqjax.quantizers.fsq: finite scalar quantization against NumPy, index round trips, straight-through gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers as F

LEVELS = (8, 5, 3, 2)


def _numpy_fsq(z, levels, eps=1e-3):
    lv = np.asarray(levels, np.float64)
    half_l = (lv - 1) * (1 + eps) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    bounded = np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset
    return np.round(bounded) / (np.asarray(levels) // 2)


def test_matches_numpy_and_uses_exactly_the_levels(strict_promotion):
    z = np.asarray(jax.random.normal(jax.random.key(0), (20000, 4)) * 3, np.float32)
    q = F.fsq(z, LEVELS)
    np.testing.assert_allclose(q.z_q, _numpy_fsq(z.astype(np.float64), LEVELS), atol=1e-6)
    for d, n in enumerate(LEVELS):
        assert len(np.unique(np.asarray(q.z_q[:, d]))) == n
    assert float(jnp.max(jnp.abs(q.z_q))) <= 1.0
    np.testing.assert_array_equal(q.indices, F.fsq_codes_to_indices(q.z_q, LEVELS))
    assert 0 <= int(q.indices.min()) and int(q.indices.max()) < F.fsq_codebook_size(LEVELS) == 240


def test_index_round_trip_covers_the_grid():
    idx = jnp.arange(F.fsq_codebook_size(LEVELS))
    codes = F.fsq_indices_to_codes(idx, LEVELS)
    np.testing.assert_array_equal(F.fsq_codes_to_indices(codes, LEVELS), idx)
    grid = {tuple(np.round(c, 6)) for c in np.asarray(codes)}
    expected = {tuple(np.round((np.array(k) - np.array(LEVELS) // 2) / (np.array(LEVELS) // 2), 6))
                for k in itertools.product(*(range(n) for n in LEVELS))}
    assert grid == expected
    q = F.fsq(jax.random.normal(jax.random.key(1), (7, 4)), LEVELS)
    np.testing.assert_array_equal(F.fsq_indices_to_codes(q.indices, LEVELS), q.codes)


def test_gradient_is_that_of_the_bound_straight_through_the_rounding():
    z = jax.random.normal(jax.random.key(2), (5, 4))
    g = jax.grad(lambda z: jnp.sum(F.fsq(z, LEVELS).z_q))(z)
    lv = np.asarray(LEVELS, np.float64)
    half_l, offset = (lv - 1) * (1 + 1e-3) / 2, np.where(lv % 2 == 0, 0.5, 0.0)
    t = np.tanh(np.asarray(z, np.float64) + np.arctanh(offset / half_l))
    # atol: for L = 2 the shift puts tanh near saturation, where float32 1 - t² keeps ~3 digits.
    np.testing.assert_allclose(g, (1 - t**2) * half_l / (lv // 2), rtol=1e-5, atol=2e-6)
    assert float(jnp.sum(jnp.abs(jax.grad(lambda z: jnp.sum(F.fsq(z, LEVELS).codes))(z)))) == 0.0


def test_jit_vmap_and_bfloat16():
    z = jax.random.normal(jax.random.key(3), (3, 6, 4)) * 4
    eager = F.fsq(z, LEVELS)
    jitted = jax.jit(lambda z: F.fsq(z, LEVELS))(z)
    mapped = jax.vmap(lambda z: F.fsq(z, LEVELS))(z)
    for a, b in ((eager, jitted), (eager, mapped)):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.z_q, b.z_q, atol=1e-6)
    low = F.fsq(z.astype(jnp.bfloat16), LEVELS)
    assert low.z_q.dtype == jnp.float32 and np.all(np.isfinite(low.z_q))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: F.fsq(jnp.zeros((2, 3)), LEVELS), "len\\(levels\\)"),
    (lambda: F.fsq(jnp.zeros((2, 2)), (1, 4)), "levels"),
    (lambda: F.fsq_codebook_size(()), "levels"),
    (lambda: F.fsq_indices_to_codes(jnp.zeros((2,)), LEVELS), "integers"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_range_loss_against_numpy_and_its_gradient_pulls_saturated_channels_back():
    z = np.array([[0.5, 3.0, -4.0, 1.9], [2.0, -2.0, 10.0, 0.0]], np.float32)
    want = np.sum(np.maximum(np.abs(z) - 2.0, 0.0) ** 2, axis=-1)
    np.testing.assert_allclose(F.fsq_range_loss(z), want, rtol=1e-6)
    g = np.asarray(jax.grad(lambda v: jnp.sum(F.fsq_range_loss(v)))(jnp.asarray(z)))
    np.testing.assert_allclose(g, 2 * np.sign(z) * np.maximum(np.abs(z) - 2.0, 0.0), rtol=1e-6)
    # Where FSQ's own gradient has vanished (tanh saturated), the penalty's has not.
    fsq_grad = jax.grad(lambda v: jnp.sum(F.fsq(v, (5, 5, 5, 5)).z_q))(jnp.asarray(z))
    assert abs(float(fsq_grad[1, 2])) < 1e-6 and float(g[1, 2]) == 16.0
    np.testing.assert_allclose(F.fsq_range_loss(z, bound=5.0), [0.0, 25.0])
    with pytest.raises(ValueError, match="bound"):
        F.fsq_range_loss(z, bound=0.0)
