"""Concurrent micro-batches (``train.micro_batches``): the same step as the unsplit batch's.

The split step's gradient is the mean of its parts' gradients; for the VQ-VAE's per-example loss
it equals the whole batch's, and its metrics (code usage recomputed from the summed counts) equal
the unsplit step's. Models whose state a step changes (EMA codebooks) are never split.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import training

TINY = {"hidden": 8, "residual_hidden": 4, "num_residual": 1}


def _config(kind="vq", **quantizer):
    c = vqvae_mnist.get_config()
    c.model.update(TINY)
    c.model.quantizer.kind = kind
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4, dead_code_threshold=0.0)  # no state: splittable
    for k, v in quantizer.items():
        c.model.quantizer[k].update(v)
    return c


def _batch(n=32, seed=0):
    return {"image": np.random.default_rng(seed).uniform(size=(n, 28, 28, 1)).astype(np.float32)}


def _two_steps(config, micro_batches):
    task = vqvae_mnist.build(config)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, task.objective, micro_batches=micro_batches)
    hparams = {k: np.float32(v) for k, v in task.hparams.items()}
    state, m1 = step(state, _batch(seed=0), hparams)
    state, m2 = step(state, _batch(seed=1), hparams)
    return jax.device_get(state.params), [jax.device_get(m1), jax.device_get(m2)]


@pytest.mark.parametrize("kind,extra", [("vq", {}), ("residual", {"residual": {"num_stages": 2}}),
                                        ("fsq", {"fsq": {"levels": (3, 3, 2, 2)}})])
def test_split_step_equals_the_whole_batch(kind, extra):
    config = _config(kind, **extra)
    p1, m1 = _two_steps(config, 1)
    p4, m4 = _two_steps(config, 4)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for whole, split in zip(m1, m4):
        assert whole.keys() == split.keys()
        for k in whole:
            np.testing.assert_allclose(split[k], whole[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # the statistics of the whole batch, not a mean over the parts: usage of the summed counts
    assert m4[0]["counts"].sum() == 32 * 7 * 7 * (2 if kind == "residual" else 1)


def test_micro_batch_metrics_combine_sums_and_recompute_usage():
    counts = [np.array([2.0, 0.0, 0.0, 2.0]), np.array([0.0, 4.0, 0.0, 0.0])]
    parts = [{"loss": np.float32(l), "sum/loss": np.float32(s), "weight": np.float32(4), "counts": c,
              "perplexity": np.float32(2.0), "used_fraction": np.float32(0.5), "dead_codes": np.float32(2)}
             for l, s, c in zip((1.0, 3.0), (4.0, 12.0), counts)]
    out = jax.device_get(training._steps.combine_micro_batch_metrics(parts))
    assert out["loss"] == 2.0 and out["sum/loss"] == 16.0 and out["weight"] == 8.0
    np.testing.assert_array_equal(out["counts"], [2, 4, 0, 2])
    p = np.array([2, 4, 2]) / 8
    np.testing.assert_allclose(out["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-6)
    assert out["used_fraction"] == 0.75 and out["dead_codes"] == 1.0


def test_auto_micro_batches():
    auto = training.auto_micro_batches
    assert auto(128, platform="cpu", threads_per_device=2) == 8  # 8 parts of 16
    assert auto(96, platform="cpu", threads_per_device=2) == 6  # the largest divisor <= 8 with >= 16 each
    assert auto(128, platform="cpu", threads_per_device=1) == 4
    assert auto(16, platform="cpu", threads_per_device=2) == 1  # parts would be smaller than 16
    assert auto(128, platform="gpu", threads_per_device=2) == 1
    assert auto(128, platform="tpu", threads_per_device=8) == 1


def test_a_model_with_ema_state_is_not_split():
    config = _config("ema")
    task = vqvae_mnist.build(config)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    with pytest.raises(ValueError, match="micro_batches`=4 needs a model whose only non-parameter state"):
        training.make_train_step(graphdef, tx, task.objective, micro_batches=4)(
            state, _batch(), {k: np.float32(v) for k, v in task.hparams.items()})


def test_the_loop_chooses_and_checks_micro_batches(tmp_path, idx_dir):
    config = _config()
    config.data.update(idx_dir=idx_dir, batch_size=32, eval_batch_size=64)
    config.train.update(steps=2, log_every=1, checkpoint_every=2)
    mesh = training.make_mesh(jax.devices()[:1])
    task = vqvae_mnist.build(config)
    _, state = training.init_train_state(task.model(nnx.Rngs(0)), optax.adam(1e-3), seed=0)
    choose = training._loop.micro_batches
    logs = []
    assert choose(config, task, state, mesh, log=logs.append) == training.auto_micro_batches(
        32, platform="cpu", threads_per_device=training._mesh.usable_cores())
    config.train.micro_batches = 3
    with pytest.raises(ValueError, match="micro_batches`=3 must divide each device's batch, 32"):
        choose(config, task, state, mesh)
    ema = _config("ema")
    ema.data.update(batch_size=32)
    ema.train.micro_batches = 2
    ema_task = vqvae_mnist.build(ema)
    _, ema_state = training.init_train_state(ema_task.model(nnx.Rngs(0)), optax.adam(1e-3), seed=0)
    with pytest.raises(ValueError, match="has state the objective updates"):
        choose(ema, ema_task, ema_state, mesh)
    ema.train.micro_batches = 0
    assert choose(ema, ema_task, ema_state, mesh) == 1  # automatic: never splits a stateful model
    config.train.micro_batches = 2  # the run records what it used
    summary = training.train_and_evaluate(config, str(tmp_path), task, devices=jax.devices()[:1],
                                          log=lambda s: None)
    assert summary["micro_batches"] == 2
