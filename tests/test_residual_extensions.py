"""Issue 17's residual-quantization extensions against NumPy references and enumeration: quantize dropout,
a shared codebook, grouped residual VQ, residual FSQ and residual LFQ (pure functions, modules, the VQ-VAE)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import data, losses, quantizers, training
from vqjax.nn import (
    GroupedResidualVectorQuantizer,
    ResidualFSQ,
    ResidualLFQ,
    ResidualVectorQuantizer,
    make_quantizer,
)


def _normal(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _np_residual(z, books, n=None):
    """Residual VQ in float64 by brute force; ``n [B]``: example b uses its first n_b stages (SoundStream)."""
    z = np.asarray(z, np.float64)
    s_count = len(books)
    n = np.full(z.shape[0], s_count) if n is None else np.asarray(n)
    z_q, idx = np.zeros_like(z), np.full(z.shape[:-1] + (s_count,), -1)
    for b in range(z.shape[0]):
        r = z[b].reshape(-1, z.shape[-1])
        out = np.zeros_like(r)
        for s in range(n[b]):
            e = np.asarray(books[s], np.float64)
            k = ((r[:, None] - e[None]) ** 2).sum(-1).argmin(1)
            idx[b].reshape(-1, s_count)[:, s] = k
            out, r = out + e[k], r - e[k]
        z_q[b] = out.reshape(z[b].shape)
    return z_q, idx


# --------------------------------------------------------------------------- quantize dropout


@pytest.mark.usefixtures("strict_promotion")
def test_quantize_dropout_uses_exactly_the_first_n_stages():
    z = _normal((6, 5, 3), seed=0)
    books = _normal((4, 7, 3), seed=1) * np.array([1.0, 0.5, 0.25, 0.1], np.float32)[:, None, None]
    n = np.array([1, 2, 3, 4, 1, 3], np.int32)
    r = jax.jit(quantizers.residual_quantize)(z, books, num_active=n)
    z_q, idx = _np_residual(z, books, n)
    np.testing.assert_array_equal(r.indices, idx)  # -1 exactly for the stages s > n
    np.testing.assert_allclose(r.z_q, z_q, rtol=1e-5, atol=1e-5)
    dropped = np.arange(4)[:, None] >= n[None]  # [S, B]
    assert np.all(np.asarray(r.codes)[dropped] == 0) and np.all(np.asarray(r.codes)[~dropped] != 0)
    np.testing.assert_allclose(quantizers.residual_lookup(r.indices, books), r.z_q, rtol=1e-6, atol=1e-6)
    rot = quantizers.residual_quantize(z, books, num_active=n, rotation_trick=True)  # same forward pass
    np.testing.assert_array_equal(rot.indices, r.indices)
    np.testing.assert_allclose(rot.z_q, r.z_q, rtol=1e-6, atol=1e-6)
    # num_active = S and no num_active are the same; a scalar n applies to every vector
    full = quantizers.residual_quantize(z, books)
    np.testing.assert_array_equal(quantizers.residual_quantize(z, books, num_active=4).indices, full.indices)
    np.testing.assert_array_equal(quantizers.residual_quantize(z, books, num_active=np.int32(2)).indices,
                                  _np_residual(z, books, np.full(6, 2))[1])


@pytest.mark.usefixtures("strict_promotion")
def test_quantize_dropout_stages_cover_one_to_s_uniformly():
    n = np.asarray(quantizers.quantize_dropout_stages(jax.random.key(0), (8000,), 4))
    assert n.dtype == np.int32 and set(np.unique(n)) == {1, 2, 3, 4}
    np.testing.assert_allclose(np.bincount(n, minlength=5)[1:] / 8000, 0.25, atol=0.02)
    m = np.asarray(quantizers.quantize_dropout_stages(jax.random.key(1), (2, 500), 5, min_stages=3))
    assert m.shape == (2, 500) and set(np.unique(m)) == {3, 4, 5}
    assert quantizers.quantize_dropout_stages(jax.random.key(2), (), 3).shape == ()


def test_module_quantize_dropout_per_example_in_training_all_stages_in_eval():
    q = ResidualVectorQuantizer(8, 3, 4, quantize_dropout=True, rngs=nnx.Rngs(0))
    q.codebooks[...] = jnp.asarray(_normal((4, 8, 3), seed=2) * np.array([1, 0.5, 0.25, 0.1], np.float32)[:, None, None])
    z = jnp.asarray(_normal((64, 2, 2, 3), seed=3))
    with pytest.raises(ValueError, match="quantize_dropout needs `key`"):
        q(z)
    out = q(z, key=jax.random.key(5))
    used = np.asarray(out.indices) >= 0  # [B, 2, 2, S]
    n = used.sum(-1)
    assert np.all(n == n[:, :1, :1]), "one n per example (image), shared by its positions"
    assert np.all(used == (np.arange(4) < n[..., None])), "a prefix of the stages"
    assert set(np.unique(n)) == {1, 2, 3, 4}
    z_q, idx = _np_residual(z, q.codebooks[...], n[:, 0, 0])
    np.testing.assert_array_equal(out.indices, idx)
    np.testing.assert_allclose(out.z_q, z_q, rtol=1e-5, atol=1e-5)
    # losses: only the stages used, summed
    r = quantizers.residual_quantize(z, q.codebooks[...])
    per_stage = np.asarray(jax.vmap(lambda res, c: losses.commitment_loss(res, c, beta=1.0))(r.residuals, r.codes))
    expect = np.sum(np.where(np.moveaxis(used, -1, 0), per_stage, 0.0), axis=0)
    np.testing.assert_allclose(out.commitment_loss, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.codebook_loss, expect, rtol=1e-5, atol=1e-6)
    # eval: every stage, no key needed; num_active picks a bitrate explicitly
    q.eval()
    np.testing.assert_array_equal(q(z).indices, r.indices)
    np.testing.assert_array_equal(q(z, num_active=2).indices, _np_residual(z, q.codebooks[...], np.full(64, 2))[1])


def test_ema_residual_with_quantize_dropout_does_not_count_dropped_stages():
    q = ResidualVectorQuantizer(8, 3, 3, ema=True, quantize_dropout=True, rngs=nnx.Rngs(0))
    z = jnp.asarray(_normal((32, 3), seed=4))
    before = q.ema.get()
    out = q(z, key=jax.random.key(0))
    counts = np.stack([np.bincount(np.asarray(out.indices)[:, s][np.asarray(out.indices)[:, s] >= 0], minlength=8)
                       for s in range(3)])
    expect = np.asarray(before.cluster_size) * 0.99 + 0.01 * counts
    np.testing.assert_allclose(q.ema.cluster_size[...], expect, rtol=1e-5, atol=1e-6)
    assert np.sum(counts[2]) < 32  # some examples dropped the last stage


# --------------------------------------------------------------------------- shared codebook


@pytest.mark.usefixtures("strict_promotion")
def test_shared_codebook_equals_the_codebook_tiled_s_times():
    z = _normal((40, 4), seed=5)
    book = _normal((9, 4), seed=6)
    tiled = np.tile(book[None], (3, 1, 1))
    shared = quantizers.residual_quantize(z, book, num_stages=3)
    ref = quantizers.residual_quantize(z, tiled)
    for a, b in zip(shared, ref):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(quantizers.residual_lookup(shared.indices, book), shared.z_q, rtol=1e-6, atol=1e-6)

    def loss(b, tile):
        r = quantizers.residual_quantize(z, jnp.tile(b[None], (3, 1, 1)) if tile else b, num_stages=None if tile else 3)
        return jnp.sum(jax.vmap(losses.codebook_loss)(r.residuals, r.codes))

    np.testing.assert_allclose(jax.grad(loss)(book, False), jax.grad(loss)(book, True), rtol=1e-6, atol=1e-6)


def test_shared_codebook_module_one_param_and_one_ema_update():
    q = ResidualVectorQuantizer(8, 4, 3, shared_codebook=True, rngs=nnx.Rngs(0))
    assert q.codebooks[...].shape == (8, 4) and q.codebook_vectors().shape == (8, 4)
    z = jnp.asarray(_normal((20, 4), seed=7))
    out = q(z)
    ref = quantizers.residual_quantize(z, jnp.tile(q.codebooks[...][None], (3, 1, 1)))
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_allclose(q.decode(out.indices), out.z_q, rtol=1e-6, atol=1e-6)
    e = ResidualVectorQuantizer(8, 4, 3, ema=True, shared_codebook=True, rngs=nnx.Rngs(0))
    state = e.ema.get()
    r = quantizers.residual_quantize(z, state.codebook, num_stages=3)
    e(z)
    expect = quantizers.ema_update(state, r.residuals.reshape(-1, 4), r.indices.T.reshape(-1))
    np.testing.assert_allclose(e.ema.codebook[...], expect.codebook, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.ema.cluster_size[...], expect.cluster_size, rtol=1e-6)


# --------------------------------------------------------------------------- grouped residual VQ


@pytest.mark.usefixtures("strict_promotion")
def test_grouped_residual_equals_per_group_residual_quantize():
    z = _normal((3, 10, 6), seed=8)
    books = _normal((3, 2, 5, 2), seed=9)  # G=3 groups of 2 channels, S=2 stages, K=5
    n = np.array([1, 2, 2], np.int32)
    g = quantizers.grouped_residual_quantize(z, books, num_active=n)
    assert g.indices.shape == (3, 10, 3, 2) and g.codes.shape == g.residuals.shape == (2, 3, 10, 6)
    for h in range(3):
        ref = quantizers.residual_quantize(z[..., 2 * h:2 * h + 2], books[h], num_active=n)
        np.testing.assert_array_equal(g.indices[..., h, :], ref.indices)
        np.testing.assert_allclose(g.z_q[..., 2 * h:2 * h + 2], ref.z_q, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(quantizers.grouped_residual_lookup(g.indices, books), g.z_q, rtol=1e-6, atol=1e-6)
    shared = quantizers.grouped_residual_quantize(z, books[:, 0], num_stages=2)
    np.testing.assert_array_equal(
        shared.indices, quantizers.grouped_residual_quantize(z, np.repeat(books[:, :1], 2, axis=1)).indices)


def test_grouped_module_flattens_indices_to_g_times_s_stages():
    q = GroupedResidualVectorQuantizer(6, 4, 3, 2, rngs=nnx.Rngs(0))
    assert q.num_stages == 6 and q.num_codes == 6 and q.codebook_vectors().shape == (36, 4)
    for sub in q.group_quantizers:
        sub.codebooks[...] = jnp.asarray(_normal((3, 6, 2), seed=10))
    z = jnp.asarray(_normal((5, 3, 3, 4), seed=11))
    out = q(z)
    books = jnp.stack([sub.codebooks[...] for sub in q.group_quantizers])
    ref = quantizers.grouped_residual_quantize(z, books)
    np.testing.assert_array_equal(out.indices, ref.indices.reshape(5, 3, 3, 6))
    np.testing.assert_allclose(out.z_q, ref.z_q, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(q.encode(z), out.indices)
    np.testing.assert_allclose(q.decode(out.indices), out.z_q, rtol=1e-5, atol=1e-5)
    stage_loss = jax.vmap(lambda res, c: losses.commitment_loss(res, c, beta=1.0))(ref.residuals, ref.codes)
    np.testing.assert_allclose(out.commitment_loss, jnp.sum(stage_loss, 0), rtol=1e-5, atol=1e-6)
    # quantize dropout: one n per example, shared by the groups
    d = GroupedResidualVectorQuantizer(6, 4, 3, 2, quantize_dropout=True, rngs=nnx.Rngs(0))
    used = np.asarray(d(z, key=jax.random.key(3)).indices).reshape(5, 3, 3, 2, 3) >= 0
    assert np.all(used[..., 0, :] == used[..., 1, :])


# --------------------------------------------------------------------------- residual FSQ and LFQ


def _np_residual_fsq(z, levels, stages):
    lv = np.asarray(levels, np.float64)
    c = 1 + 1 / (lv - 1)
    r = np.tanh(z.astype(np.float64) / c) * c
    out, idx = np.zeros_like(r), []
    basis = np.concatenate([[1], np.cumprod(levels[:-1])])
    for s in range(stages):
        u = np.clip(r * lv**s, -1, 1)
        j = np.floor((lv - 1) * (u + 1) / 2 + 0.5)
        q = (2 * j / (lv - 1) - 1) / lv**s
        out, r = out + q, r - q
        idx.append((j * basis).sum(-1).astype(np.int64))
    return out, np.stack(idx, -1)


@pytest.mark.usefixtures("strict_promotion")
@pytest.mark.parametrize("levels", [(5, 4, 3), (8, 8), (2, 3)])
def test_residual_fsq_matches_numpy_and_its_error_shrinks(levels):
    z = _normal((3000, len(levels)), seed=12, scale=1.5)
    errors = []
    for stages in (1, 2, 3, 4):
        r = quantizers.residual_fsq(z, levels, stages)
        z_q, idx = _np_residual_fsq(z, levels, stages)
        same = np.all(np.asarray(r.indices) == idx, axis=-1)
        assert np.mean(same) > 0.998  # float32 vs float64 differ only at rounding ties
        np.testing.assert_allclose(np.asarray(r.z_q)[same], z_q[same], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(quantizers.residual_fsq_indices_to_codes(r.indices, levels), r.z_q, atol=1e-6)
        bounded = r.residuals[0]
        errors.append(float(jnp.max(jnp.abs(r.z_q - bounded))))
        bound = np.max(1.0 / ((np.asarray(levels) - 1.0) * np.asarray(levels, np.float64) ** (stages - 1)))
        assert errors[-1] <= bound + 1e-6  # float32 rounding of the residuals
    assert all(b < a for a, b in itertools.pairwise(errors))


@pytest.mark.usefixtures("strict_promotion")
def test_residual_fsq_enumerates_every_code_of_every_stage():
    levels, stages = (3, 4), 2
    k = 12
    idx = np.array(list(itertools.product(range(k), repeat=stages)), np.int32)[:, ::-1]  # [K^S, S]
    values = np.asarray(quantizers.residual_fsq_indices_to_codes(idx, levels))
    assert len(np.unique(values.round(6), axis=0)) == k**stages  # every index pair a different point
    back = quantizers.residual_fsq(jnp.arctanh(values / (1 + 1 / (np.array(levels) - 1.0))) * (
        1 + 1 / (np.array(levels) - 1.0)), levels, stages)
    np.testing.assert_array_equal(back.indices, idx)  # each reachable point re-encodes to its own indices


@pytest.mark.usefixtures("strict_promotion")
def test_residual_lfq_is_a_binary_expansion():
    z = _normal((2000, 5), seed=13)
    errors = []
    for stages in (1, 2, 3, 5, 8):
        r = quantizers.residual_lfq(z, stages)
        ref, rr, idx = np.zeros_like(z, np.float64), z.astype(np.float64), []
        for s in range(stages):
            q = np.where(rr >= 0, 1.0, -1.0) * 2.0**-s
            idx.append(((rr >= 0) * 2 ** np.arange(5)).sum(-1))
            ref, rr = ref + q, rr - q
        np.testing.assert_allclose(r.z_q, ref, atol=1e-6)
        np.testing.assert_array_equal(r.indices, np.stack(idx, -1))
        np.testing.assert_allclose(quantizers.residual_lfq_indices_to_codes(r.indices, 5), r.z_q, atol=1e-6)
        inside = np.all(np.abs(z) <= 2 - 2.0 ** (1 - stages), axis=-1)
        errors.append(float(np.max(np.abs(np.asarray(r.z_q) - z)[inside])))
        assert errors[-1] <= 2.0 ** (1 - stages) + 1e-6
    assert all(b < a for a, b in itertools.pairwise(errors))


@pytest.mark.usefixtures("strict_promotion")
def test_residual_straight_through_gradients():
    z = _normal((7, 3), seed=14)
    w = _normal((7, 3), seed=15)
    books = _normal((3, 5, 3), seed=16)
    n = np.array([1, 2, 3, 1, 2, 3, 3], np.int32)
    g = jax.grad(lambda a: jnp.sum(quantizers.residual_quantize(a, books, num_active=n).z_q * w))(z)
    np.testing.assert_allclose(g, w, rtol=1e-6)  # identity, whatever the stages used
    g = jax.grad(lambda a: jnp.sum(quantizers.residual_lfq(a, 4, num_active=n).z_q * w))(z)
    np.testing.assert_allclose(g, w, rtol=1e-6)
    levels = (5, 4, 3)
    g = jax.grad(lambda a: jnp.sum(quantizers.residual_fsq(a, levels, 3).z_q * w))(z)
    c = 1 + 1 / (np.asarray(levels, np.float32) - 1)
    np.testing.assert_allclose(g, w * (1 - np.tanh(z / c) ** 2), rtol=1e-5)  # through the bounding
    # dropped stages' codes carry no codebook gradient
    gb = jax.grad(lambda b: jnp.sum(quantizers.residual_quantize(z, b, num_active=1).codes ** 2))(books)
    assert np.all(np.asarray(gb[1:]) == 0) and np.any(np.asarray(gb[0]) != 0)


@pytest.mark.usefixtures("strict_promotion")
def test_residual_fsq_and_lfq_modules():
    z = jnp.asarray(_normal((4, 3, 3, 3), seed=17)).astype(jnp.bfloat16)
    f = ResidualFSQ((5, 4, 3), 3)
    out = f(z)
    assert out.z_q.dtype == jnp.bfloat16 and f.num_codes == 60 and f.codebook_vectors().shape == (180, 3)
    ref = quantizers.residual_fsq(z.astype(jnp.float32), (5, 4, 3), 3)
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_allclose(f.decode(out.indices), ref.z_q, atol=1e-6)
    assert np.all(np.asarray(out.commitment_loss) == 0) and np.all(np.asarray(out.codebook_loss) == 0)
    lfq = ResidualLFQ(3, 4, entropy_weight=0.5)
    out = lfq(z)
    r = quantizers.residual_lfq(z.astype(jnp.float32), 4)
    np.testing.assert_array_equal(out.indices, r.indices)
    np.testing.assert_allclose(out.commitment_loss, jnp.sum(jnp.square(r.residuals - r.codes), axis=(0, -1)),
                               rtol=1e-5, atol=1e-6)
    entropy = sum(quantizers.lfq_entropy_loss(r.residuals[s] * 2.0**s) for s in range(4))
    np.testing.assert_allclose(out.codebook_loss, 0.5 * entropy, rtol=1e-5, atol=1e-5)
    d = ResidualLFQ(3, 4, quantize_dropout=True)
    out = d(z, key=jax.random.key(0))
    assert np.all((np.asarray(out.indices) >= 0) == (np.arange(4) < (np.asarray(out.indices) >= 0).sum(-1)[..., None]))
    d.eval()
    np.testing.assert_array_equal(d(z).indices, r.indices)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("call, name", [
    (lambda: quantizers.residual_quantize(np.zeros((2, 3)), np.zeros((4, 3))), "num_stages"),
    (lambda: quantizers.residual_quantize(np.zeros((2, 3)), np.zeros((2, 4, 3)), num_stages=3), "num_stages"),
    (lambda: quantizers.residual_quantize(np.zeros((2, 3)), np.zeros((4, 3, 3, 3))), "codebooks"),
    (lambda: quantizers.residual_quantize(np.zeros((2, 3)), np.zeros((2, 4, 3)), num_active=np.ones(3, np.int32)),
     "num_active"),
    (lambda: quantizers.residual_quantize(np.zeros((2, 3)), np.zeros((2, 4, 3)), num_active=np.ones(2)),
     "num_active"),
    (lambda: quantizers.quantize_dropout_stages(jax.random.key(0), (3,), 0), "num_stages"),
    (lambda: quantizers.quantize_dropout_stages(jax.random.key(0), (3,), 3, min_stages=4), "min_stages"),
    (lambda: quantizers.grouped_residual_quantize(np.zeros((2, 5)), np.zeros((2, 3, 4, 2))), "z"),
    (lambda: quantizers.residual_fsq(np.zeros((2, 3)), (3, 3), 2), "z"),
    (lambda: quantizers.residual_fsq(np.zeros((2, 2)), (3, 1), 2), "levels"),
    (lambda: quantizers.residual_fsq(np.zeros((2, 2)), (3, 3), 0), "num_stages"),
    (lambda: quantizers.residual_lfq(np.zeros((2, 31)), 2), "z"),
    (lambda: quantizers.residual_lfq_indices_to_codes(np.zeros((2, 2), np.int32), 0), "dim"),
    (lambda: GroupedResidualVectorQuantizer(4, 5, 2, 2, rngs=nnx.Rngs(0)), "code_dim"),
    (lambda: ResidualLFQ(3, 2, entropy_weight=-1.0), "entropy_weight"),
    (lambda: ResidualFSQ((3, 3), 0), "num_stages"),
    (lambda: ResidualFSQ((3, 3), 2, quantize_dropout=True)(jnp.zeros((2, 2))), "key"),
    (lambda: make_quantizer("grouped_residual", code_dim=6, groups=4, rngs=nnx.Rngs(0)), "code_dim"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


# --------------------------------------------------------------------------- the VQ-VAE


NEW_KINDS = {
    "residual_dropout_shared": {"kind": "residual", "residual": {"num_stages": 3, "quantize_dropout": True,
                                                                 "shared_codebook": True}},
    "residual_ema_dropout": {"kind": "residual", "residual": {"num_stages": 2, "ema": True, "quantize_dropout": True}},
    "grouped_residual": {"kind": "grouped_residual", "residual": {"num_stages": 2, "groups": 2,
                                                                  "quantize_dropout": True}},
    "residual_fsq": {"kind": "residual_fsq", "fsq": {"levels": (4, 3, 3)}, "residual": {"num_stages": 2}},
    "residual_lfq": {"kind": "residual_lfq", "lookup_free": {"bits": 4}, "residual": {"num_stages": 3,
                                                                                    "quantize_dropout": True}},
}


@pytest.mark.parametrize("kind", list(NEW_KINDS))
def test_vqvae_trains_two_steps_with_each_new_kind(idx_dir, kind):
    c = vqvae_mnist.get_config()
    c.model.update({"hidden": 8, "residual_hidden": 4, "num_residual": 1})
    c.model.quantizer.codebook.update({"num_codes": 16, "code_dim": 4})
    c.model.quantizer.update(NEW_KINDS[kind])
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    vqvae_mnist.check_config(c)
    task = vqvae_mnist.build(c)
    model = task.model(nnx.Rngs(0))
    stages = {"grouped_residual": 4, "residual_fsq": 2, "residual_lfq": 3}.get(kind, c.model.quantizer.residual.num_stages)
    assert model.quantizer.num_stages == stages
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(model, tx, seed=0)
    first = jax.device_get(state.params)
    step = training.make_train_step(graphdef, tx, task.objective)
    hparams = {k: np.float32(v) for k, v in task.hparams.items()}
    it = data.make_pipeline(data.idx_source(idx_dir, "train"), batch_size=16, seed=0)
    mesh = training.make_mesh(jax.devices()[:1])
    with jax.set_mesh(mesh):
        state, hparams = training.replicate((state, hparams), mesh)
        for _ in range(2):
            state, m = step(state, training.shard_batch(next(it), mesh), hparams)
            assert np.isfinite(float(m["loss"]))
            assert 1.0 <= float(m["perplexity"]) <= model.quantizer.num_codes
            assert np.asarray(m["counts"]).shape == (stages, model.quantizer.num_codes)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(jax.device_get(state.params)))]
    assert any(moved)
