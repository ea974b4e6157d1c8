"""Mixed precision: networks compute in bfloat16, parameters, optimizer state and quantization stay float32.

The policy (:mod:`vqjax.nn._precision`): every network module takes ``dtype`` (its computation dtype,
default float32) and keeps float32 parameters; the quantizers compute distances, nearest codes, EMA
statistics, FSQ rounding, indices and usage in float32 whatever their input's dtype and return ``z_q``
in that dtype; losses upcast the decoder's output. ``--config.dtype=bfloat16`` selects it in every
experiment. These tests check numerics, not speed (bfloat16 pays on GPU/TPU; a CPU may emulate it).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import data, objectives, quantizers, training
from vqjax.nn import VQVAE, EMAVectorQuantizer, FiniteScalarQuantizer, VectorQuantizer

BF16 = jnp.bfloat16


def _tiny_vqvae(dtype, *, seed=0, quantizer=None):
    rngs = nnx.Rngs(seed)
    quantizer = quantizer or VectorQuantizer(32, 8, rngs=rngs)
    return VQVAE(hidden=16, residual_hidden=8, num_residual=1, quantizer=quantizer, rngs=rngs, dtype=dtype)


def _objective(model, batch, *, key, step, hparams):
    del step, hparams
    return objectives.vqvae_objective(model, batch, beta=0.25, key=key)


def _float_dtypes(tree) -> set[str]:
    return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_activations_with_float32_parameters():
    """The image is cast by the first layer; encoder output, z_q and logits are bfloat16; the
    parameters are float32; the quantizer's losses are float32."""
    model = nnx.eval_shape(lambda: _tiny_vqvae(BF16))  # shapes and dtypes only: nothing to compute
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)  # float32 data, as the pipeline gives it
    assert nnx.eval_shape(lambda m, x: m.encoder.conv1(x), model, x).dtype == BF16
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    assert out.z_e.dtype == out.z_q.dtype == out.logits.dtype == BF16
    assert out.indices.dtype == jnp.int32
    assert out.codebook_loss.dtype == out.commitment_loss.dtype == jnp.float32
    assert _float_dtypes(nnx.state(model)) == {"float32"}
    loss, metrics = nnx.eval_shape(lambda m, x: objectives.vqvae_objective(m, {"image": x}), model, x)
    assert loss.dtype == metrics["mse"].dtype == jnp.float32
    # The default is float32 throughout.
    assert nnx.eval_shape(lambda m, x: m(x), nnx.eval_shape(lambda: _tiny_vqvae(jnp.float32)), x).logits.dtype \
        == jnp.float32
    with pytest.raises(ValueError, match="`dtype` must be a floating dtype"):
        nnx.eval_shape(lambda: _tiny_vqvae(jnp.int32))


def _networks():
    """``{name: (build(dtype) -> module, forward(module) -> (its output, a float32 loss or None))}``."""
    from vqjax.evaluation import MNISTClassifier
    from vqjax.groups import row_groups
    from vqjax.nn import (
        VAE,
        VQVAE2,
        ConvDecoder,
        ConvEncoder,
        GatedPixelCNN,
        GroupedGenerator,
        HierarchicalPrior,
        MLPDecoder,
        MLPEncoder,
        VIBClassifier,
    )

    x, key, shape = jnp.zeros((2, 28, 28, 1)), jax.random.key(0), (28, 28, 1)
    codes, labels = jnp.zeros((2, 4, 4), jnp.int32), jnp.zeros((2,), jnp.int32)
    r = lambda: nnx.Rngs(0)
    small = {"hidden": 8, "residual_hidden": 4, "num_residual": 1}
    mlp = lambda dt, hidden=8: MLPEncoder(shape, 4, hidden=hidden, rngs=r(), dtype=dt)
    return {
        "VQVAE2": (lambda dt: VQVAE2(top=VectorQuantizer(16, 4, rngs=r()), bottom=VectorQuantizer(16, 4, rngs=r()),
                                     rngs=r(), dtype=dt, **small),
                   lambda m: (m(x).logits, objectives.vqvae2_objective(m, {"image": x})[0])),
        "HierarchicalPrior": (lambda dt: HierarchicalPrior((16, 16), num_classes=10, hidden=8, num_layers=2,
                                                           bottom_hidden=8, bottom_layers=2, cond_hidden=8,
                                                           rngs=r(), dtype=dt),
                              lambda m: (m(codes[:, :2, :2], codes, labels=labels)[1],
                                         objectives.hierarchical_prior_objective(m, codes[:, :2, :2], codes,
                                                                                 labels=labels)[0])),
        "GatedPixelCNN": (lambda dt: GatedPixelCNN(16, hidden=8, num_layers=2, rngs=r(), dtype=dt),
                          lambda m: (m(codes), objectives.prior_objective(m, codes)[0])),
        "VAE(MLP)": (lambda dt: VAE(mlp(dt), MLPDecoder(shape, 4, hidden=8, rngs=r(), dtype=dt), latents=4),
                     lambda m: (m(x, key=key).logits, objectives.vae_objective(m, {"image": x}, key=key)[0])),
        "VAE(conv)": (lambda dt: VAE(ConvEncoder(shape, 4, hidden=8, rngs=r(), dtype=dt),
                                     ConvDecoder(shape, 4, hidden=8, rngs=r(), dtype=dt), latents=4),
                      lambda m: (m(x, key=key).logits, m.iwae_log_likelihood(x, key=key, num_samples=4))),
        "oi-VAE": (lambda dt: VAE(mlp(dt), GroupedGenerator(row_groups(shape), shape, 4, hidden=4, rngs=r(), dtype=dt),
                                  latents=4),
                   lambda m: (m(x, key=key).logits,
                              objectives.oivae_objective(m, {"image": x}, key=key, group_lasso=0.1)[0])),
        "VIBClassifier": (lambda dt: VIBClassifier(mlp(dt, (8,)), latents=4, num_classes=10, rngs=r(), dtype=dt),
                          lambda m: (m(x, key=key)[0],
                                     objectives.vib_objective(m, {"image": x, "label": labels}, key=key, beta=0.1)[0])),
        "MNISTClassifier": (lambda dt: MNISTClassifier(rngs=r(), dtype=dt), lambda m: (m.features(x), None)),
    }


def test_every_network_module_computes_in_its_dtype():
    """Each model of vqjax.nn (and the evaluation classifier) built with ``dtype=bfloat16``: float32
    parameters, bfloat16 outputs, float32 objectives (shapes and dtypes only, by ``nnx.eval_shape``)."""
    for name, (build, forward) in _networks().items():
        module = nnx.eval_shape(lambda build=build: build(BF16))
        assert _float_dtypes(nnx.state(module)) == {"float32"}, name
        out, loss = nnx.eval_shape(forward, module)
        assert out.dtype == BF16, name
        assert loss is None or loss.dtype == jnp.float32, name


def test_fsq_indices_and_usage_in_bfloat16_equal_float32():
    """FSQ rounds in float32: bfloat16 inputs give exactly the indices of the same values in float32;
    the same bounding and rounding done in bfloat16 arithmetic would move inputs near a level boundary."""
    levels = (8, 5, 5, 5)
    zb = (jax.random.normal(jax.random.key(0), (4096, 4)) * 1.5).astype(BF16)
    fsq = jax.jit(FiniteScalarQuantizer(levels).__call__)
    qb, q32 = fsq(zb), fsq(zb.astype(jnp.float32))
    np.testing.assert_array_equal(qb.indices, q32.indices)
    assert qb.z_q.dtype == BF16
    np.testing.assert_array_equal(qb.z_q.astype(jnp.float32), q32.z_q)  # the levels are exact in bfloat16
    k = math.prod(levels)
    np.testing.assert_array_equal(quantizers.code_usage(qb.indices, k).counts, quantizers.code_usage(q32.indices, k).counts)

    def naive_fsq(z, eps=1e-3):  # quantizers.fsq's formula, in the input's dtype
        lv = np.asarray(levels)
        half_l = jnp.asarray((lv - 1) * (1 + eps) / 2, z.dtype)
        offset = jnp.asarray(np.where(lv % 2 == 0, 0.5, 0.0), z.dtype)
        bounded = jnp.tanh(z + jnp.arctanh(offset / half_l)) * half_l - offset
        return quantizers.fsq_codes_to_indices(jnp.round(bounded) / jnp.asarray(lv // 2, z.dtype), levels)

    naive_fsq = jax.jit(naive_fsq)
    np.testing.assert_array_equal(naive_fsq(zb.astype(jnp.float32)), q32.indices)  # the same formula...
    assert int(jnp.sum(naive_fsq(zb) != q32.indices)) > 10  # ... in bfloat16: 63 of 4096 differ here


def test_ema_vq_indices_statistics_and_usage_in_bfloat16_equal_float32():
    """Five EMA steps on bfloat16 encoder outputs and on the same values in float32: the same nearest
    codes at every step and the same float32 codebook and statistics; the nearest codes are those of
    exact (float64) distances, where bfloat16 distances (``||z||² - 2 z·e + ||e||²`` in bfloat16) pick
    a wrong code for some vectors (6 of 784 here)."""
    batches = jax.random.normal(jax.random.key(0), (5, 16, 7, 7, 8)).astype(BF16)
    codes = batches[0].reshape(-1, 8)[:64].astype(jnp.float32)  # codes among the data: near-ties happen
    codes = codes + 0.05 * jax.random.normal(jax.random.key(1), codes.shape)
    qb, q32 = (EMAVectorQuantizer(64, 8, decay=0.9, rngs=nnx.Rngs(0)) for _ in range(2))
    for q in (qb, q32):
        q.ema.set(quantizers.ema_init(codes))
    call = nnx.jit(lambda q, z: q(z))  # training mode: each call updates the EMA statistics
    counts_b = counts_32 = 0
    for zb in batches:
        ob, o32 = call(qb, zb), call(q32, zb.astype(jnp.float32))
        np.testing.assert_array_equal(ob.indices, o32.indices)
        assert ob.z_q.dtype == BF16 and o32.z_q.dtype == jnp.float32
        counts_b = counts_b + quantizers.code_usage(ob.indices, 64).counts
        counts_32 = counts_32 + quantizers.code_usage(o32.indices, 64).counts
    np.testing.assert_array_equal(counts_b, counts_32)
    for a, b in zip(jax.tree.leaves(nnx.state(qb.ema)), jax.tree.leaves(nnx.state(q32.ema)), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)  # bit for bit: the statistics are summed in float32

    z = batches[0].reshape(-1, 8)
    e = qb.ema.codebook[...]
    exact = np.argmin(((np.asarray(z, np.float64)[:, None] - np.asarray(e, np.float64)[None]) ** 2).sum(-1), -1)
    np.testing.assert_array_equal(nnx.jit(lambda q, z: q.encode(z))(qb, z), exact)

    @jax.jit
    def naive(z, e):
        e = e.astype(z.dtype)
        return jnp.argmin(jnp.sum(z * z, -1, keepdims=True) - 2 * z @ e.T + jnp.sum(e * e, -1), -1)

    np.testing.assert_array_equal(naive(z.astype(jnp.float32), e), exact)  # the same search...
    assert int(np.sum(np.asarray(naive(z, e)) != exact)) > 0  # ... in bfloat16: 6 of 784 wrong here


def test_usage_counts_are_float32_where_bfloat16_saturates():
    """A bfloat16 counter stops at 256 (its 8-bit significand); code_usage counts in float32."""
    idx = jnp.zeros((1000,), jnp.int32)
    assert float(jnp.zeros((4,), BF16).at[idx].add(1.0)[0]) == 256.0
    assert float(quantizers.code_usage(idx, 4).counts[0]) == 1000.0


STEPS, BATCH, WINDOW = 150, 32, 25
TOLERANCE = 0.10


def test_a_bfloat16_training_run_follows_the_float32_run():
    """150 Adam steps of a small VQ-VAE (hidden 16, K = 32, D = 8) on batches of 32 embedded MNIST
    digits, once in float32 and once in bfloat16, same seed and batches: no NaN, and the mean loss of
    every window of 25 steps within 10% of float32's.

    Measured here: the first step's losses agree to 4e-6; the window means differ by at most 3.2%
    (1.2% with an EMA codebook), while two float32 runs of seeds 0 and 1 differ by 12-37% in every
    window: the tolerance is ~3x the measured gap and below the seed-to-seed spread.
    """
    src = data.embedded_mnist_source("train")
    images = np.stack([src[i]["image"] for i in range(1024)]).astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    order = [rng.choice(len(images), BATCH, replace=False) for _ in range(STEPS)]
    curves = {}
    for dtype in (jnp.float32, BF16):
        tx = optax.adam(1e-3)
        graphdef, state = training.init_train_state(_tiny_vqvae(dtype), tx, seed=0)
        step = training.make_train_step(graphdef, tx, _objective)
        losses = []
        for i in range(STEPS):
            state, metrics = step(state, {"image": jnp.asarray(images[order[i]])})
            losses.append(metrics["loss"])
        curves[jnp.dtype(dtype).name] = np.asarray(jax.device_get(losses))
        for part in (state.params, state.opt_state):  # parameters, Adam's moments: float32 in both runs
            assert _float_dtypes(part) == {"float32"}
    f32, bf16 = curves["float32"], curves["bfloat16"]
    assert np.all(np.isfinite(bf16))
    assert abs(bf16[0] - f32[0]) <= 1e-4 * f32[0]
    win32, win16 = (c.reshape(-1, WINDOW).mean(axis=1) for c in (f32, bf16))
    gap = np.abs(win16 - win32) / win32
    assert np.all(gap <= TOLERANCE), gap


def test_the_vqvae_program_trains_in_bfloat16_and_its_checkpoint_is_float32(idx_dir, tmp_path):
    """``--config.dtype=bfloat16`` through the program's function API (tiny network, EMA codebook, 2
    steps): the checkpoint's parameters and EMA statistics are float32, and a rerun with
    ``dtype="float32"`` restores it and evaluates (``dtype`` may change on resume)."""
    config = vqvae_mnist.get_config()
    config = training.apply_overrides(config, {
        "data.idx_dir": idx_dir, "dtype": "bfloat16", "model.hidden": 16, "model.residual_hidden": 8,
        "model.num_residual": 1, "model.quantizer.kind": "ema", "model.quantizer.codebook.num_codes": 32,
        "model.quantizer.codebook.code_dim": 8,  # _tiny_vqvae's shapes: its initialisers are compiled already
        "train.steps": 2, "train.log_every": 1, "train.checkpoint_every": 2, "train.eval_every": 0})
    task = vqvae_mnist.build(config)
    assert nnx.eval_shape(lambda: task.model(nnx.Rngs(0))).encoder.dtype == BF16
    workdir = str(tmp_path / "run")
    devices = jax.devices()[:1]
    summary = training.train_and_evaluate(config, workdir, task, devices=devices, log=lambda s: None)
    assert summary["trained_steps_this_run"] == 2 and np.isfinite(summary["test"]["loss"])
    saved = training.load_model(workdir, lambda rngs: vqvae_mnist.make_model(config, rngs))
    assert _float_dtypes(nnx.state(saved)) == {"float32"}
    assert float(saved.quantizer.ema.weight[...]) > 0  # the EMA statistics were updated (and saved) in float32

    config = training.apply_overrides(config, {"dtype": "float32"})
    summary = training.train_and_evaluate(config, workdir, vqvae_mnist.build(config), devices=devices,
                                          log=lambda s: None)
    assert summary["trained_steps_this_run"] == 0 and np.isfinite(summary["test"]["loss"])
    with open(f"{workdir}/config_changes.jsonl") as f:
        changes = [json.loads(line)["changes"] for line in f]
    assert changes == [{"dtype": ["bfloat16", "float32"]}]
