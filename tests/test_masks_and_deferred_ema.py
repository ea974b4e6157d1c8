"""Issue 17: padding masks (``weights``) for the VQ losses, the EMA update, dead-code restarts and
code usage, and the deferred EMA update (ema_accumulate / ema_apply) for gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import losses, quantizers

pytestmark = pytest.mark.usefixtures("strict_promotion")

K, D = 8, 3


def _rng(seed):
    return np.random.default_rng(seed)


def _codebook(seed=100):
    return _rng(seed).normal(size=(K, D)).astype(np.float32)


def _np_stats(z, idx, w=None):
    """Weighted counts and sums in float64."""
    z = np.asarray(z, np.float64).reshape(-1, D)
    shape = np.shape(idx)
    idx = np.asarray(idx).reshape(-1)
    w = np.ones(len(idx)) if w is None else np.broadcast_to(np.asarray(w, np.float64), shape).reshape(-1)
    counts, sums = np.zeros(K), np.zeros((K, D))
    for zi, i, wi in zip(z, idx, w):
        if 0 <= i < K and wi != 0:
            counts[i] += wi
            sums[i] += wi * zi
    return counts, sums


def _np_apply(ref, counts, sums, decay, eps):
    codebook, n_ema, m_ema, wt = ref
    n_ema = decay * n_ema + (1 - decay) * counts
    m_ema = decay * m_ema + (1 - decay) * sums
    wt = decay * wt + (1 - decay)
    n_hat, m_hat = n_ema / wt, m_ema / wt
    n = n_hat.sum()
    smoothed = (n_hat + eps) / (n + K * eps) * n
    new = codebook.copy()
    used = n_hat > 0
    new[used] = m_hat[used] / smoothed[used, None]
    return new, n_ema, m_ema, wt


def _assert_state(state, ref, **tol):
    for a, b in zip(state, ref):
        np.testing.assert_allclose(np.asarray(a), b, **tol)


# ---------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("fn", ["codebook", "commitment"])
def test_masked_losses_match_numpy(fn):
    r = _rng(0)
    z, e = r.normal(size=(2, 2, 5, 4, D)).astype(np.float32)
    w = (r.uniform(size=(2, 5, 4)) > 0.3).astype(np.float32) * r.uniform(0.5, 2, size=(2, 5, 4)).astype(np.float32)
    per_vec = np.sum((z.astype(np.float64) - e) ** 2, -1) * w
    scale = 0.3 if fn == "commitment" else 1.0
    kw = {"beta": 0.3} if fn == "commitment" else {}
    f = losses.codebook_loss if fn == "codebook" else losses.commitment_loss
    np.testing.assert_allclose(f(z, e, weights=w, **kw), scale * per_vec, rtol=1e-5)
    # event_ndim=2: a [T, D] sequence per example; the output keeps the [B] shape
    out = f(z, e, weights=w, event_ndim=2, **kw)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out, scale * per_vec.sum(-1), rtol=1e-5)
    # broadcastable weights: a per-sequence mask [B, T, 1]
    wb = w[..., :1]
    np.testing.assert_allclose(f(z, e, weights=wb, event_ndim=2, **kw),
                               scale * (np.sum((z.astype(np.float64) - e) ** 2, -1) * wb).sum(-1), rtol=1e-5)
    # all-ones weights: the unweighted loss
    np.testing.assert_allclose(f(z, e, weights=np.ones((2, 5, 4), np.float32), **kw), f(z, e, **kw), rtol=1e-6)


def test_masked_losses_padding_is_exactly_zero_and_gradients():
    r = _rng(1)
    z, e = r.normal(size=(2, 6, D)).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    z_pad = z.copy()
    z_pad[4:] = np.inf  # whatever the padding holds
    cb = losses.codebook_loss(z_pad, e, weights=mask)
    cm = losses.commitment_loss(z_pad, e, weights=mask)
    assert np.all(np.asarray(cb)[4:] == 0) and np.all(np.asarray(cm)[4:] == 0)
    np.testing.assert_array_equal(cb[:4], losses.codebook_loss(z[:4], e[:4]))
    # per example [T, D]: padded == unpadded
    np.testing.assert_allclose(losses.codebook_loss(z_pad, e, weights=mask, event_ndim=2),
                               losses.codebook_loss(z[:4], e[:4], event_ndim=2), rtol=1e-6)
    # gradients: nothing reaches padded rows; the codebook term moves only e, the commitment only z
    g_e = jax.grad(lambda e_: losses.codebook_loss(z, e_, weights=mask).sum())(e)
    g_z = jax.grad(lambda z_: losses.commitment_loss(z_, e, weights=mask).sum())(z)
    assert np.all(np.asarray(g_e)[4:] == 0) and np.all(np.asarray(g_z)[4:] == 0)
    np.testing.assert_allclose(g_e[:4], 2 * (e[:4] - z[:4]), rtol=1e-5)
    np.testing.assert_allclose(g_z[:4], 0.5 * (z[:4] - e[:4]), rtol=1e-5)
    assert np.all(np.asarray(jax.grad(lambda z_: losses.codebook_loss(z_, e, weights=mask).sum())(z)) == 0)
    # jit and vmap
    jitted = jax.jit(lambda z_, e_, w_: losses.commitment_loss(z_, e_, weights=w_))(z, e, mask)
    np.testing.assert_allclose(jitted, losses.commitment_loss(z, e, weights=mask), rtol=1e-6)
    zz, ee = np.stack([z, z + 1]), np.stack([e, e])
    mm = np.stack([mask, 1 - mask])
    vm = jax.vmap(lambda a, b, c: losses.codebook_loss(a, b, weights=c, event_ndim=2))(zz, ee, mm)
    np.testing.assert_allclose(vm, [losses.codebook_loss(zz[i], ee[i], weights=mm[i], event_ndim=2) for i in range(2)],
                               rtol=1e-6)


def test_vqvae_loss_weights():
    r = _rng(2)
    z, e = r.normal(size=(2, 3, 5, D)).astype(np.float32)
    ll = r.normal(size=(3,)).astype(np.float32)
    w = (r.uniform(size=(3, 5)) > 0.4).astype(np.float32)
    out = losses.vqvae_loss(ll, z, e, event_ndim=2, weights=w, beta=0.5)
    np.testing.assert_allclose(out.codebook, losses.codebook_loss(z, e, event_ndim=2, weights=w), rtol=1e-6)
    np.testing.assert_allclose(out.commitment, losses.commitment_loss(z, e, event_ndim=2, weights=w, beta=0.5), rtol=1e-6)
    np.testing.assert_allclose(out.reconstruction, -ll)
    np.testing.assert_allclose(out.loss, -ll + out.codebook + out.commitment, rtol=1e-6)


def test_loss_weights_bad_shape():
    z = np.zeros((4, D), np.float32)
    with pytest.raises(ValueError, match="weights"):
        losses.codebook_loss(z, z, weights=np.ones((5,), np.float32))
    with pytest.raises(ValueError, match="weights"):
        losses.commitment_loss(z, z, weights=np.ones((4, D), np.float32))  # would grow the output
    with pytest.raises(ValueError, match="event_ndim"):
        losses.codebook_loss(z, z, weights=np.ones((4,), np.float32), event_ndim=0)


# ---------------------------------------------------------------------------------- code_usage


def test_code_usage_weights():
    r = _rng(3)
    idx = r.integers(-1, K + 1, size=(4, 6))
    w = r.uniform(size=(4, 6)).astype(np.float32) * (r.uniform(size=(4, 6)) > 0.3)
    counts = np.zeros(K)
    for i, wi in zip(idx.reshape(-1), w.reshape(-1)):
        if 0 <= i < K:
            counts[i] += wi
    u = quantizers.code_usage(idx, K, weights=w)
    np.testing.assert_allclose(u.counts, counts, rtol=1e-6)
    np.testing.assert_allclose(u.perplexity, quantizers.perplexity(counts.astype(np.float32)), rtol=1e-6)
    assert int(u.dead) == int(np.sum(counts == 0))
    # a padded batch has exactly the usage of the unpadded one; ones == no weights
    mask = np.zeros((4, 9), np.float32)
    mask[:, :6] = 1
    idx_pad = np.concatenate([idx, r.integers(0, K, size=(4, 3))], 1)
    for a, b in zip(quantizers.code_usage(idx_pad, K, weights=mask), quantizers.code_usage(idx, K)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(quantizers.code_usage(idx, K, weights=np.ones(6, np.float32)), quantizers.code_usage(idx, K)):
        np.testing.assert_array_equal(a, b)
    jitted = jax.jit(lambda i, w_: quantizers.code_usage(i, K, weights=w_))(idx, w)
    np.testing.assert_allclose(jitted.counts, counts, rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        quantizers.code_usage(idx, K, weights=np.ones((5,), np.float32))


# ---------------------------------------------------------------------------------- ema_update


def _padded_batch(seed, n=12, pad=5):
    r = _rng(seed)
    z = r.normal(size=(n, D)).astype(np.float32)
    idx = np.asarray(quantizers.nearest_code(z, _codebook()))
    z_pad = np.concatenate([z, np.full((pad, D), 1e6, np.float32)])
    z_pad[-1] = np.nan
    idx_pad = np.concatenate([idx, r.integers(0, K, size=pad)])
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return z, idx, z_pad, idx_pad, mask


def test_ema_update_padded_equals_unpadded_exactly():
    state = quantizers.ema_init(_codebook())
    state_pad = state
    for t in range(3):
        z, idx, z_pad, idx_pad, mask = _padded_batch(t)
        state = quantizers.ema_update(state, z, idx, decay=0.9)
        state_pad = quantizers.ema_update(state_pad, z_pad, idx_pad, decay=0.9, weights=mask)
        for a, b in zip(state, state_pad):
            np.testing.assert_array_equal(a, b)
    # a bool mask and a [B, T] layout too
    state2 = quantizers.ema_update(quantizers.ema_init(_codebook()), z_pad.reshape(1, -1, D),
                                   idx_pad.reshape(1, -1), decay=0.9, weights=mask.astype(bool).reshape(1, -1))
    state1 = quantizers.ema_update(quantizers.ema_init(_codebook()), z, idx, decay=0.9)
    for a, b in zip(state1, state2):
        np.testing.assert_array_equal(a, b)


def test_ema_update_weighted_matches_numpy():
    r = _rng(5)
    ref = (_codebook().astype(np.float64), np.zeros(K), np.zeros((K, D)), 0.0)
    state = quantizers.ema_init(_codebook())
    for t in range(3):
        z = r.normal(size=(4, 5, D)).astype(np.float32)
        idx = r.integers(-1, K, size=(4, 5))
        w = (r.uniform(size=(4, 5)) * (r.uniform(size=(4, 5)) > 0.3)).astype(np.float32)
        state = quantizers.ema_update(state, z, idx, decay=0.8, eps=1e-3, weights=w)
        ref = _np_apply(ref, *_np_stats(z, idx, w), 0.8, 1e-3)
        _assert_state(state, ref, rtol=2e-5, atol=1e-6)
    # all-ones weights == no weights
    a = quantizers.ema_update(state, z, np.clip(idx, 0, K - 1), decay=0.8, weights=np.ones((4, 5), np.float32))
    b = quantizers.ema_update(state, z, np.clip(idx, 0, K - 1), decay=0.8)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        quantizers.ema_update(state, z, idx, weights=np.ones((5, 4), np.float32))


def test_ema_update_weights_jit_vmap_grad():
    z, idx, z_pad, idx_pad, mask = _padded_batch(6)
    state = quantizers.ema_init(_codebook())
    f = jax.jit(lambda s, z_, i_, w_: quantizers.ema_update(s, z_, i_, decay=0.9, weights=w_))
    eager = quantizers.ema_update(state, z_pad, idx_pad, decay=0.9, weights=mask)
    for a, b in zip(f(state, z_pad, idx_pad, mask), eager):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # vmap over two masks
    masks = np.stack([mask, np.roll(mask, 3)])
    zs = np.nan_to_num(z_pad, nan=0.0)
    out = jax.vmap(lambda w_: quantizers.ema_update(state, zs, idx_pad, decay=0.9, weights=w_))(masks)
    for i in range(2):
        one = quantizers.ema_update(state, zs, idx_pad, decay=0.9, weights=masks[i])
        for a, b in zip(out, one):
            np.testing.assert_allclose(a[i], b, rtol=1e-6)
    # no gradient flows into z through the statistics
    g = jax.grad(lambda z_: quantizers.ema_update(state, z_, idx, decay=0.9, weights=np.ones(len(idx), np.float32)).codebook.sum())(z)
    assert np.all(np.asarray(g) == 0)


# --------------------------------------------------------------------------- restart_dead_codes


def _stale_state():
    """A state after one update that used only code 0: codes 1..K-1 are dead."""
    state = quantizers.ema_init(_codebook())
    z = _rng(7).normal(size=(6, D)).astype(np.float32)
    return quantizers.ema_update(state, z, np.zeros(6, np.int32), decay=0.9)


@pytest.mark.parametrize("num_valid", [1, 3, 20])
def test_restart_never_seeds_from_padding(num_valid):
    state = _stale_state()
    n = 24
    z = _rng(8).normal(size=(n, D)).astype(np.float32)
    mask = np.zeros(n, np.float32)
    mask[_rng(9).permutation(n)[:num_valid]] = 1
    valid_rows = {tuple(row) for row in z[mask > 0]}
    for seed in range(4):
        new, dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(seed), weights=mask)
        dead = np.asarray(dead)
        assert dead.sum() == K - 1
        seeded = [tuple(row) for row in np.asarray(new.codebook)[dead]]
        assert all(row in valid_rows for row in seeded)
        # distinct rows while there are enough valid ones, then repeats
        assert len(set(seeded)) == min(num_valid, K - 1)


def test_restart_all_padding_restarts_nothing_and_jit():
    state = _stale_state()
    z = _rng(10).normal(size=(5, D)).astype(np.float32)
    new, dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(0), weights=np.zeros(5, np.float32))
    assert not np.any(dead)
    for a, b in zip(new, state):
        np.testing.assert_array_equal(a, b)
    mask = np.array([0, 1, 0, 1, 1], np.float32)
    f = jax.jit(lambda s, z_, w_, k_: quantizers.restart_dead_codes(s, z_, key=k_, weights=w_))
    a, da = f(state, z, mask, jax.random.key(3))
    b, db = quantizers.restart_dead_codes(state, z, key=jax.random.key(3), weights=mask)
    np.testing.assert_array_equal(da, db)
    np.testing.assert_allclose(a.codebook, b.codebook)


def _mesh():
    assert jax.device_count() == 8
    return jax.make_mesh((8,), ("data",))


def test_restart_weights_shard_map():
    state = _stale_state()
    z = _rng(11).normal(size=(16, D)).astype(np.float32)
    mask = np.zeros(16, np.float32)
    mask[[3, 9, 14]] = 1
    mesh = _mesh()

    @jax.shard_map(mesh=mesh, in_specs=(jax.P(), jax.P("data"), jax.P("data")), out_specs=jax.P())
    def sharded(s, z_, w_):
        return quantizers.restart_dead_codes(s, z_, key=jax.random.key(1), weights=w_, axis_name="data")

    put = lambda x: jax.device_put(jnp.asarray(x), jax.NamedSharding(mesh, jax.P("data")))
    new, dead = jax.jit(sharded)(state, put(z), put(mask))
    ref, ref_dead = quantizers.restart_dead_codes(state, z, key=jax.random.key(1), weights=mask)
    np.testing.assert_array_equal(dead, ref_dead)
    np.testing.assert_array_equal(new.codebook, ref.codebook)
    assert {tuple(r) for r in np.asarray(new.codebook)[np.asarray(dead)]} <= {tuple(r) for r in z[mask > 0]}


# ------------------------------------------------------------------------- deferred EMA update


def _micro_batches(seed, m=3, n=10):
    r = _rng(seed)
    zs = [r.normal(size=(n, D)).astype(np.float32) for _ in range(m)]
    idx = [np.asarray(quantizers.nearest_code(z, _codebook())) for z in zs]
    ws = [(r.uniform(size=n) > 0.3).astype(np.float32) for _ in range(m)]
    return zs, idx, ws


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_accumulate_apply_equals_one_update(weighted, cosine):
    zs, idx, ws = _micro_batches(12)
    if cosine:
        zs = [np.asarray(quantizers.l2_normalize(z)) for z in zs]
    state = quantizers.ema_init(_codebook())
    state = quantizers.ema_update(state, zs[0], idx[0], decay=0.9)  # a nonempty history
    stats = quantizers.ema_statistics_init(K, D)
    for z, i, w in zip(zs, idx, ws):
        stats = quantizers.ema_accumulate(stats, z, i, weights=w if weighted else None)
    deferred = quantizers.ema_apply(state, stats, decay=0.9, eps=1e-4, cosine=cosine)
    one = quantizers.ema_update(state, np.concatenate(zs), np.concatenate(idx), decay=0.9, eps=1e-4,
                                cosine=cosine, weights=np.concatenate(ws) if weighted else None)
    for a, b in zip(deferred, one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # NumPy reference for the statistics
    counts, sums = _np_stats(np.concatenate(zs), np.concatenate(idx), np.concatenate(ws) if weighted else None)
    np.testing.assert_allclose(stats.counts, counts, rtol=1e-6)
    np.testing.assert_allclose(stats.sums, sums, rtol=1e-5, atol=1e-6)


def test_accumulate_apply_jit_scan_vmap():
    zs, idx, ws = _micro_batches(13, m=4)
    state = quantizers.ema_init(_codebook())

    @jax.jit
    def step(state, zs, idx, ws):
        def body(stats, batch):
            return quantizers.ema_accumulate(stats, *batch[:2], weights=batch[2]), None

        stats, _ = jax.lax.scan(body, quantizers.ema_statistics_init(K, D), (zs, idx, ws))
        return quantizers.ema_apply(state, stats, decay=0.95)

    out = step(state, np.stack(zs), np.stack(idx), np.stack(ws))
    one = quantizers.ema_update(state, np.concatenate(zs), np.concatenate(idx), decay=0.95, weights=np.concatenate(ws))
    for a, b in zip(out, one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # vmap over independent runs (per-run decay, traced)
    decays = jnp.array([0.9, 0.99])
    stats = quantizers.ema_accumulate(quantizers.ema_statistics_init(K, D), zs[0], idx[0])
    runs = jax.vmap(lambda g: quantizers.ema_apply(state, stats, decay=g))(decays)
    for r_, g in enumerate([0.9, 0.99]):
        np.testing.assert_allclose(runs.codebook[r_], quantizers.ema_update(state, zs[0], idx[0], decay=g).codebook,
                                   rtol=1e-5, atol=1e-6)
    # no gradient through the statistics
    g = jax.grad(lambda z_: quantizers.ema_apply(
        state, quantizers.ema_accumulate(quantizers.ema_statistics_init(K, D), z_, idx[0])).codebook.sum())(zs[0])
    assert np.all(np.asarray(g) == 0)


def test_accumulate_apply_shard_map():
    zs, idx, ws = _micro_batches(14, m=2, n=16)
    state = quantizers.ema_init(_codebook())
    mesh = _mesh()

    @jax.shard_map(mesh=mesh, in_specs=(jax.P(), jax.P(None, "data"), jax.P(None, "data"), jax.P(None, "data")),
                   out_specs=jax.P())
    def sharded(s, zs_, idx_, ws_):
        stats = quantizers.ema_statistics_init(K, D)
        for m in range(zs_.shape[0]):  # local micro-batches, no collective
            stats = quantizers.ema_accumulate(stats, zs_[m], idx_[m], weights=ws_[m])
        return quantizers.ema_apply(s, stats, decay=0.9, axis_name="data")

    put = lambda x: jax.device_put(jnp.asarray(x), jax.NamedSharding(mesh, jax.P(None, "data")))
    out = jax.jit(sharded)(state, put(np.stack(zs)), put(np.stack(idx)), put(np.stack(ws)))
    one = quantizers.ema_update(state, np.concatenate(zs), np.concatenate(idx), decay=0.9, weights=np.concatenate(ws))
    for a, b in zip(out, one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_deferred_bad_input():
    state = quantizers.ema_init(_codebook())
    with pytest.raises(ValueError, match="stats"):
        quantizers.ema_apply(state, quantizers.ema_statistics_init(K + 1, D))
    with pytest.raises(ValueError, match="stats"):
        quantizers.ema_accumulate((np.zeros(K), np.zeros((K, D))), np.zeros((2, D)), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="z"):
        quantizers.ema_accumulate(quantizers.ema_statistics_init(K, D), np.zeros((2, D + 1)), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="num_codes"):
        quantizers.ema_statistics_init(0, D)
    with pytest.raises(ValueError, match="decay"):
        quantizers.ema_apply(state, quantizers.ema_statistics_init(K, D), decay=1.0)
