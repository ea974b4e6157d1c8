"""vqjax.quantizers EMA codebook: ema_update and restart_dead_codes against NumPy, 1 vs 8 devices, jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers

pytestmark = pytest.mark.usefixtures("strict_promotion")

K, D = 8, 3


def _batch(n, seed, k=K, d=D):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, d)).astype(np.float32)


def _codebook(seed=100, k=K, d=D):
    return np.random.default_rng(seed).normal(size=(k, d)).astype(np.float32)


def _np_update(ref, z, idx, decay, eps):
    """The EMA step written out in float64: ``ref = (codebook, N, m, w)``."""
    codebook, n_ema, m_ema, w = ref
    k, d = codebook.shape
    counts, sums = np.zeros(k), np.zeros((k, d))
    for zi, i in zip(np.asarray(z, np.float64).reshape(-1, d), np.asarray(idx).reshape(-1)):
        if 0 <= i < k:
            counts[i] += 1
            sums[i] += zi
    n_ema = decay * n_ema + (1 - decay) * counts
    m_ema = decay * m_ema + (1 - decay) * sums
    w = decay * w + (1 - decay)
    n_hat, m_hat = n_ema / w, m_ema / w
    n = n_hat.sum()
    smoothed = (n_hat + eps) / (n + k * eps) * n
    new = codebook.copy()
    used = n_hat > 0
    new[used] = m_hat[used] / smoothed[used, None]
    return new, n_ema, m_ema, w


def _assert_state_close(state, ref, rtol=1e-5, atol=1e-6):
    for got, want in zip(state, ref):
        np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol)


def _assert_state_equal(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- ema_update


@pytest.mark.parametrize("decay, eps", [(0.99, 1e-5), (0.8, 1e-2), (0.0, 1e-5)])
def test_ema_update_matches_numpy_over_several_steps(decay, eps):
    e0 = _codebook()
    state = quantizers.ema_init(e0)
    ref = (e0.astype(np.float64), np.zeros(K), np.zeros((K, D)), 0.0)
    step = jax.jit(lambda s, z, i: quantizers.ema_update(s, z, i, decay=decay, eps=eps))
    for t in range(6):
        # A shifted batch drawn from the first 5 codes' neighbourhood: codes 5-7 are rarely or never used.
        z = _batch(40, seed=t) * 0.5 + e0[np.arange(40) % 5]
        idx = quantizers.nearest_code(z, state.codebook)
        state = step(state, z, idx)
        ref = _np_update(ref, z, np.asarray(idx), decay, eps)
        _assert_state_close(state, ref)
        np.testing.assert_allclose(float(state.weight), 1 - decay ** (t + 1), rtol=1e-6)
    assert all(x.dtype == jnp.float32 for x in state)


def test_never_assigned_codes_keep_their_value_bit_for_bit():
    e0 = _codebook()
    state = quantizers.ema_init(e0)
    for t in range(4):
        z = _batch(30, seed=t)
        idx = np.arange(30, dtype=np.int32) % 3  # only codes 0, 1, 2
        state = quantizers.ema_update(state, z, idx)
    np.testing.assert_array_equal(state.codebook[3:], e0[3:])
    np.testing.assert_array_equal(state.cluster_size[3:], 0.0)
    np.testing.assert_array_equal(state.embed_sum[3:], 0.0)
    assert not np.allclose(state.codebook[:3], e0[:3])


def test_laplace_smoothing_is_not_accumulated_into_the_state():
    decay, eps = 0.9, 0.5  # a large eps: smoothing in the state would show at once
    state = quantizers.ema_init(_codebook())
    plain = np.zeros(K)
    for t in range(5):
        idx = np.random.default_rng(t).integers(0, 4, size=50).astype(np.int32)
        state = quantizers.ema_update(state, _batch(50, seed=t), idx, decay=decay, eps=eps)
        plain = decay * plain + (1 - decay) * np.bincount(idx, minlength=K)
        np.testing.assert_allclose(state.cluster_size, plain, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(state.cluster_size[4:], 0.0)  # no ε leaked into unused codes
    np.testing.assert_allclose(np.sum(state.cluster_size), 50 * (1 - decay**5), rtol=1e-5)
    # The bias-corrected usage is the plain average count, not a smoothed one.
    np.testing.assert_allclose(quantizers.ema_usage(state), plain / (1 - decay**5), rtol=1e-5, atol=1e-6)


def test_bias_correction_first_step_gives_the_batch_means():
    e0 = _codebook()
    z = _batch(64, seed=3) + 2.0
    idx = np.random.default_rng(3).integers(0, 6, size=64).astype(np.int32)  # codes 6, 7 unused
    state = quantizers.ema_update(quantizers.ema_init(e0), z, idx, decay=0.99)
    for i in range(6):
        mean = z[idx == i].mean(0)
        np.testing.assert_allclose(state.codebook[i], mean, rtol=1e-4, atol=1e-6)  # not 1% of it
    np.testing.assert_array_equal(state.codebook[6:], e0[6:])
    np.testing.assert_allclose(quantizers.ema_usage(state), np.bincount(idx, minlength=K), rtol=1e-5)
    np.testing.assert_allclose(float(state.weight), 0.01, rtol=1e-5)


# In the codes e_i = m̂_i / Ñ_i the 1/w of the bias correction cancels except inside the Laplace
# smoothing Ñ_i = (N̂_i + ε) / (n + K ε) · n (uncorrected statistics smooth with ε / w instead of ε),
# and it does not cancel at all in the usage N̂ and in the dead-code test N̂ < threshold. The tests
# below make each of those matter: ε = 1 (a strong smoothing) and a restart after the third step.


def test_bias_corrected_codes_are_stationary_under_a_repeated_batch():
    """The same batch every step: N̂ and m̂ are that batch's counts and sums from the first step on, so
    the codes (smoothing included) are the same at every step. Uncorrected statistics, ``(1 - γ^t)``
    times smaller, would smooth ever less as t grows and move the codes."""
    e0 = _codebook()
    z = _batch(40, seed=7) * 0.3 + e0[np.arange(40) % 6]
    idx = np.arange(40, dtype=np.int32) % 6  # codes 6, 7 unused
    state = quantizers.ema_init(e0)
    step = jax.jit(lambda s: quantizers.ema_update(s, z, idx, decay=0.9, eps=1.0))
    usage = jax.jit(quantizers.ema_usage)
    counts = np.bincount(idx, minlength=K).astype(np.float64)
    sums = np.stack([z[idx == i].astype(np.float64).sum(0) if counts[i] else np.zeros(D) for i in range(K)])
    n = counts.sum()
    want = np.where((counts > 0)[:, None], sums / ((counts + 1.0) / (n + K * 1.0) * n)[:, None], e0)
    for _ in range(5):
        state = step(state)
        np.testing.assert_allclose(state.codebook, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(usage(state), counts, rtol=1e-5)


def test_bias_corrected_ema_over_different_batches_with_a_restart_matches_numpy():
    """Six different batches, γ = 0.9, ε = 1, dead-code restarts after step 3 (threshold 2.5 vectors
    per batch): the state, the usage and the restarted codes against the bias-corrected NumPy reference."""
    decay, eps, threshold = 0.9, 1.0, 2.5
    e0 = _codebook()
    state = quantizers.ema_init(e0)
    ref = (e0.astype(np.float64), np.zeros(K), np.zeros((K, D)), 0.0)
    update = jax.jit(lambda s, z, i: quantizers.ema_update(s, z, i, decay=decay, eps=eps))
    restart = jax.jit(lambda s, z, key: quantizers.restart_dead_codes(s, z, key=key, threshold=threshold))
    nearest, usage = jax.jit(quantizers.nearest_code), jax.jit(quantizers.ema_usage)
    for t in range(6):
        # Vectors near codes 0-5 (about 7 each); codes 6, 7 get none and die at the restart.
        z = _batch(40, seed=60 + t) * 0.3 + e0[np.arange(40) % 6]
        idx = nearest(z, state.codebook)
        state = update(state, z, idx)
        ref = _np_update(ref, z, np.asarray(idx), decay, eps)
        _assert_state_close(state, ref)
        np.testing.assert_allclose(usage(state), ref[1] / ref[3], rtol=1e-5, atol=1e-6)
        if t == 2:
            state, dead = restart(state, z, jax.random.key(t))
            codebook, n_ema, m_ema, w = (np.copy(x) for x in ref)
            want_dead = n_ema / w < threshold  # N̂ < threshold; uncorrected N = (1 - 0.9³) N̂ would kill all
            assert 0 < want_dead.sum() < K
            np.testing.assert_array_equal(dead, want_dead)
            seeds = np.asarray(state.codebook, np.float64)[want_dead]
            assert all((z == s.astype(np.float32)).all(1).any() for s in seeds)  # rows of the batch
            codebook[want_dead] = seeds
            n_ema[want_dead] = threshold * w
            m_ema[want_dead] = threshold * w * seeds
            ref = (codebook, n_ema, m_ema, w)
            _assert_state_close(state, ref)
            np.testing.assert_allclose(np.asarray(usage(state))[want_dead], threshold, rtol=1e-5)


# --------------------------------------------------------------------------- NaN-free corner cases


def test_empty_clusters_give_no_nan():
    state = quantizers.ema_init(_codebook())
    for t in range(5):
        state = quantizers.ema_update(state, _batch(10, seed=t), np.zeros(10, np.int32))  # all on code 0
        assert all(np.isfinite(np.asarray(x)).all() for x in state)
    np.testing.assert_array_equal(state.codebook[1:], _codebook()[1:])


@pytest.mark.parametrize("bad", [K, -1, 1000])
def test_batch_with_no_index_in_range(bad):
    e0 = _codebook()
    z = _batch(12, seed=0)
    idx = np.full(12, bad, np.int32)
    # From the initial state: only the weight moves.
    s1 = quantizers.ema_update(quantizers.ema_init(e0), z, idx, decay=0.9)
    assert all(np.isfinite(np.asarray(x)).all() for x in s1)
    np.testing.assert_array_equal(s1.codebook, e0)
    np.testing.assert_array_equal(s1.cluster_size, 0.0)
    np.testing.assert_array_equal(s1.embed_sum, 0.0)
    np.testing.assert_allclose(float(s1.weight), 0.1, rtol=1e-6)
    # From a state with statistics: the decayed averages, matching NumPy, still finite.
    warm = quantizers.ema_update(quantizers.ema_init(e0), z, np.arange(12, dtype=np.int32) % 4, decay=0.9)
    s2 = quantizers.ema_update(warm, z, idx, decay=0.9)
    ref = _np_update(_np_update((e0.astype(np.float64), np.zeros(K), np.zeros((K, D)), 0.0),
                                z, np.arange(12) % 4, 0.9, 1e-5), z, idx, 0.9, 1e-5)
    _assert_state_close(s2, ref)
    assert all(np.isfinite(np.asarray(x)).all() for x in s2)


def test_bfloat16_inputs_keep_a_float32_state():
    e0 = _codebook()
    z32 = _batch(64, seed=4)
    zbf = jnp.asarray(z32, jnp.bfloat16)
    idx = quantizers.nearest_code(z32, e0)
    state = quantizers.ema_init(e0)
    for _ in range(3):
        sbf = quantizers.ema_update(state, zbf, idx)
        state = sbf
    assert all(x.dtype == jnp.float32 for x in sbf)
    assert all(np.isfinite(np.asarray(x)).all() for x in sbf)
    s32 = quantizers.ema_init(e0)
    rounded = quantizers.ema_init(e0)
    for _ in range(3):
        s32 = quantizers.ema_update(s32, z32, idx)
        rounded = quantizers.ema_update(rounded, np.asarray(zbf.astype(jnp.float32)), idx)
    _assert_state_close(sbf, rounded, rtol=1e-6, atol=1e-7)  # summed in float32 from the bf16 values
    _assert_state_close(sbf, s32, rtol=2e-2, atol=2e-2)  # and close to the float32 inputs' result


# --------------------------------------------------------------------------- 1 vs 8 devices


def _mesh():
    assert jax.device_count() == 8
    return jax.make_mesh((8,), ("data",))


def _shard(x, mesh):
    return jax.device_put(jnp.asarray(x), jax.NamedSharding(mesh, jax.P("data")))


def test_ema_update_is_the_same_on_one_and_eight_devices():
    mesh = _mesh()
    e0 = _codebook()
    batches = [_batch(8 * 6, seed=10 + t) for t in range(3)]

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(jax.P(), jax.P("data"), jax.P("data")), out_specs=jax.P())
    def sharded(state, z, idx):
        return quantizers.ema_update(state, z, idx, decay=0.9, axis_name="data")

    one = eight = quantizers.ema_init(e0)
    with jax.set_mesh(mesh):
        for z in batches:
            idx = np.asarray(quantizers.nearest_code(z, one.codebook))
            one = quantizers.ema_update(one, z, idx, decay=0.9)
            eight = sharded(eight, _shard(z, mesh), _shard(idx, mesh))
            _assert_state_close(eight, one, rtol=1e-5, atol=1e-6)
    assert isinstance(eight, quantizers.EMAState)


def _restart_one_and_eight(check_vma):
    mesh = _mesh()
    e0 = _codebook()
    z = _batch(8 * 4, seed=20)
    idx = np.arange(32, dtype=np.int32) % 3  # codes 3..7 dead
    state = quantizers.ema_update(quantizers.ema_init(e0), z, idx, decay=0.9)
    key = jax.random.key(7)

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(jax.P(), jax.P("data"), jax.P()), out_specs=jax.P(), check_vma=check_vma)
    def sharded(state, z, key):
        return quantizers.restart_dead_codes(state, z, key=key, threshold=1.0, axis_name="data")

    with jax.set_mesh(mesh):
        s8, dead8 = sharded(state, _shard(z, mesh), key)
    s1, dead1 = quantizers.restart_dead_codes(state, z, key=key, threshold=1.0)
    np.testing.assert_array_equal(dead8, dead1)
    np.testing.assert_array_equal(dead1, np.arange(K) >= 3)
    _assert_state_close(s8, s1, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(s8.codebook, s1.codebook)  # the very same batch rows


def test_restart_dead_codes_is_the_same_on_one_and_eight_devices():
    """With shard_map's default check_vma=True: the restarted state is replicated, so out_specs=P() holds."""
    _restart_one_and_eight(check_vma=True)


def test_restart_dead_codes_values_on_eight_devices_without_the_replication_check():
    _restart_one_and_eight(check_vma=False)


def test_code_usage_is_the_same_on_one_and_eight_devices():
    mesh = _mesh()
    idx = np.random.default_rng(0).integers(0, 12, size=(8 * 20,)).astype(np.int32)  # codes 12..15 dead

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P())
    def sharded(i):
        u = quantizers.code_usage(i, 16, axis_name="data")
        return u.counts, u.perplexity, u.dead, u.used_fraction

    with jax.set_mesh(mesh):
        counts, ppl, dead, used = sharded(_shard(idx, mesh))
    whole = quantizers.code_usage(idx, 16)
    np.testing.assert_array_equal(counts, whole.counts)
    np.testing.assert_array_equal(counts, np.bincount(idx, minlength=16))
    np.testing.assert_allclose(ppl, whole.perplexity, rtol=1e-6)
    assert int(dead) == int(whole.dead) == 16 - len(np.unique(idx))
    np.testing.assert_allclose(used, whole.used_fraction)


# --------------------------------------------------------------------------- restart_dead_codes


def _state_with_usage(counts, decay=0.9, seed=0):
    """A state after one update whose codes were used ``counts[i]`` times (usage N̂ = counts)."""
    idx = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    z = _batch(len(idx), seed=seed, k=len(counts))
    return quantizers.ema_update(quantizers.ema_init(_codebook(k=len(counts))), z, idx, decay=decay)


def test_restart_reseeds_exactly_the_codes_below_threshold():
    counts = np.array([5, 0, 1, 2, 4, 0, 3, 1])
    state = _state_with_usage(counts)
    threshold = 1.5
    usage = np.asarray(quantizers.ema_usage(state))
    z = _batch(40, seed=50)  # >= K rows
    new, dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(0), threshold=threshold)
    dead = np.asarray(dead)
    np.testing.assert_array_equal(dead, usage < threshold)
    np.testing.assert_array_equal(dead, counts < 1.5)
    # Re-seeded codes are rows of the batch, each a different one.
    rows = [np.flatnonzero((z == np.asarray(new.codebook[i])).all(1)) for i in np.flatnonzero(dead)]
    assert all(len(r) == 1 for r in rows)
    assert len({int(r[0]) for r in rows}) == dead.sum()
    # Their statistics: usage threshold, codebook = m / N.
    new_usage = np.asarray(quantizers.ema_usage(new))
    np.testing.assert_allclose(new_usage[dead], threshold, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.embed_sum)[dead] / np.asarray(new.cluster_size)[dead, None],
                               np.asarray(new.codebook)[dead], rtol=1e-6, atol=1e-7)
    # Live codes and their statistics are untouched, bit for bit; so is the weight.
    for got, old in zip(new[:3], state[:3]):
        np.testing.assert_array_equal(np.asarray(got)[~dead], np.asarray(old)[~dead])
    np.testing.assert_array_equal(new.weight, state.weight)


def test_restarted_usage_is_the_threshold_and_not_dead_again():
    """N̂ = threshold up to float32 rounding (w = 1 - 0.99⁶ puts it 1 ulp below), yet the code is not dead."""
    state = quantizers.ema_init(_codebook())
    for t in range(6):
        state = quantizers.ema_update(state, _batch(4, seed=t), np.zeros(4, np.int32), decay=0.99)
    z = _batch(16, seed=9)
    new, dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(1), threshold=1.0)
    assert np.asarray(dead)[1:].all()
    np.testing.assert_allclose(np.asarray(quantizers.ema_usage(new))[1:], 1.0, rtol=1e-6)
    # So a restarted code is not dead: restarting again right away changes nothing.
    again, dead_again = quantizers.restart_dead_codes(new, z, key=jax.random.key(2), threshold=1.0)
    assert not np.asarray(dead_again).any()
    _assert_state_equal(again, new)


def test_restarted_codes_are_not_dead_again_for_any_weight():
    """Restart twice at once: the second call must re-seed nothing (usage >= threshold after a restart)."""
    z = _batch(16, seed=9)
    for decay in (0.9, 0.99):
        state = quantizers.ema_init(_codebook())
        for t in range(8):
            state = quantizers.ema_update(state, _batch(4, seed=t), np.zeros(4, np.int32), decay=decay)
            for threshold in (1.0, 0.3, 2.5):
                new, dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(1), threshold=threshold)
                assert np.asarray(dead)[1:].all()
                np.testing.assert_allclose(np.asarray(quantizers.ema_usage(new))[1:], threshold, rtol=1e-6)
                _, again = quantizers.restart_dead_codes(new, z, key=jax.random.key(1), threshold=threshold)
                assert not np.asarray(again).any(), (decay, t + 1, threshold)


def test_no_restart_before_the_first_update():
    state = quantizers.ema_init(_codebook())
    new, dead = quantizers.restart_dead_codes(state, _batch(20, seed=0), key=jax.random.key(0), threshold=1.0)
    assert not np.asarray(dead).any()
    _assert_state_equal(new, state)


def test_same_key_same_choice_other_key_other_choice():
    state = _state_with_usage(np.array([4, 0, 0, 0, 0, 0, 0, 4]))
    z = _batch(200, seed=1)
    a, _ = quantizers.restart_dead_codes(state, z, key=jax.random.key(3))
    b, _ = quantizers.restart_dead_codes(state, z, key=jax.random.key(3))
    c, _ = quantizers.restart_dead_codes(state, z, key=jax.random.key(4))
    _assert_state_equal(a, b)
    assert not np.array_equal(a.codebook, c.codebook)


def test_restart_with_fewer_rows_than_codes_still_uses_batch_rows():
    state = _state_with_usage(np.array([6, 0, 0, 0, 0, 0, 0, 0]))
    z = _batch(3, seed=2)
    new, dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(0))
    assert np.asarray(dead).sum() == 7
    for i in np.flatnonzero(np.asarray(dead)):
        assert (z == np.asarray(new.codebook[i])).all(1).any()
    assert all(np.isfinite(np.asarray(x)).all() for x in new)


# --------------------------------------------------------------------------- jit, vmap, grad


def test_jit_equals_eager():
    state = _state_with_usage(np.array([3, 0, 1, 2, 4, 0, 3, 1]))
    z = _batch(30, seed=5)
    idx = quantizers.nearest_code(z, state.codebook)
    _assert_state_close(jax.jit(quantizers.ema_update)(state, z, idx), quantizers.ema_update(state, z, idx),
                        rtol=1e-6, atol=1e-7)
    key = jax.random.key(2)
    f = jax.jit(lambda s, z, k: quantizers.restart_dead_codes(s, z, key=k, threshold=1.5))
    (sj, dj), (se, de) = f(state, z, key), quantizers.restart_dead_codes(state, z, key=key, threshold=1.5)
    np.testing.assert_array_equal(dj, de)
    _assert_state_close(sj, se, rtol=1e-6, atol=1e-7)


def test_vmap_over_stacked_states_and_batches():
    n = 3
    states = [_state_with_usage(np.roll([3, 0, 1, 2, 4, 0, 3, 1], s), seed=s) for s in range(n)]
    zs = np.stack([_batch(24, seed=30 + s) for s in range(n)])
    idxs = np.stack([np.asarray(quantizers.nearest_code(zs[s], states[s].codebook)) for s in range(n)])
    keys = jax.random.split(jax.random.key(0), n)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)

    def step(s, z, i, k):
        s = quantizers.ema_update(s, z, i, decay=0.9)
        return quantizers.restart_dead_codes(s, z, key=k, threshold=1.2)

    got, dead = jax.jit(jax.vmap(step))(stacked, zs, idxs, keys)
    for s in range(n):
        want, want_dead = step(states[s], zs[s], idxs[s], keys[s])
        np.testing.assert_array_equal(dead[s], want_dead)
        _assert_state_close(jax.tree.map(lambda x, s=s: x[s], got), want, rtol=1e-6, atol=1e-7)


def test_no_gradient_flows_through_the_updates():
    state = _state_with_usage(np.array([3, 0, 1, 2, 4, 0, 3, 1]))
    z = _batch(20, seed=6)
    idx = quantizers.nearest_code(z, state.codebook)

    def through_update(z):
        s = quantizers.ema_update(state, z, idx)
        return jnp.sum(s.codebook ** 2) + jnp.sum(s.embed_sum) + jnp.sum(s.cluster_size)

    def through_restart(z):
        s, _ = quantizers.restart_dead_codes(state, z, key=jax.random.key(0), threshold=1.5)
        return jnp.sum(s.codebook ** 2) + jnp.sum(s.embed_sum)

    for f in (through_update, through_restart):
        g = jax.jit(jax.grad(f))(z)
        assert g.shape == z.shape
        np.testing.assert_array_equal(g, 0.0)
        assert float(f(z)) != 0.0


# --------------------------------------------------------------------------- errors


def _state():
    return quantizers.ema_init(_codebook())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros(4, jnp.int32), decay=1.0), "decay"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros(4, jnp.int32), decay=-0.1), "decay"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros(4, jnp.int32), eps=0.0), "eps"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros(4, jnp.int32), eps=-1.0), "eps"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros(5, jnp.int32)), "indices"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros((4, 1), jnp.int32)), "indices"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D)), jnp.zeros(4)), "indices"),
        (lambda: quantizers.ema_update(_state(), jnp.zeros((4, D + 1)), jnp.zeros(4, jnp.int32)), "`z`"),
        (lambda: quantizers.restart_dead_codes(_state(), jnp.zeros((4, D + 1)), key=jax.random.key(0)), "`z`"),
        (lambda: quantizers.restart_dead_codes(_state(), jnp.zeros((4, D)), key=jax.random.key(0), threshold=0.0),
         "threshold"),
        (lambda: quantizers.restart_dead_codes(_state(), jnp.zeros((4, D)), key=jax.random.key(0), threshold=-1.0),
         "threshold"),
        (lambda: quantizers.ema_update(tuple(_state()), jnp.zeros((4, D)), jnp.zeros(4, jnp.int32)), "state"),
        (lambda: quantizers.restart_dead_codes(tuple(_state()), jnp.zeros((4, D)), key=jax.random.key(0)), "state"),
        (lambda: quantizers.ema_usage({"codebook": jnp.zeros((K, D))}), "state"),
        (lambda: quantizers.ema_init(jnp.zeros((K,))), "codebook"),
    ],
)
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
