"""8 devices equal 1, step by step, for each experiment's objective.

The jitted train step of each experiment's task (built by its ``build(config)`` at tiny sizes) runs
the same batches on a 1-device and an 8-device mesh from the same state. The per-step loss and
gradient norm must agree: a step that summed the gradient over devices instead of averaging it would
give an 8× gradient norm at the first step (with Adam the parameters could still end close, as
Adam's update does not depend on the gradient's scale). Plain SGD keeps the final parameters
sensitive to that scale as well.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import oivae, vae_mnist, vqvae_mnist, vqvae_prior_mnist
from vqjax import data, training

STEPS, BATCH, LR = 3, 16, 0.05


def _vqvae_config(idx_dir):
    c = vqvae_mnist.get_config()
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4)
    c.data.update(idx_dir=idx_dir)
    return c


def _vqvae(idx_dir):
    return vqvae_mnist.build(_vqvae_config(idx_dir)), optax.sgd(LR), "mnist"


def _vae(idx_dir):
    c = vae_mnist.get_config()
    c.model.update(hidden=16, latents=4)
    c.eval.iwae_samples = 0
    return vae_mnist.build(c), optax.sgd(LR), "mnist"


def _oivae(idx_dir):
    # The experiment's optimizer: Adam on the encoder and generators, SGD + the group-lasso prox on W.
    c = oivae.get_config()
    c.model.update(encoder_hidden=16, generator_hidden="(8,)", w_optimizer="sgd", w_learning_rate=LR,
                   group_lasso=0.5)
    task = oivae.build(c)
    return task, task.optimizer(optax.constant_schedule(1e-3), {k: np.float32(v) for k, v in task.hparams.items()}), \
        "bars"


def _prior(idx_dir):
    c = vqvae_prior_mnist.get_config()
    c.model.update(hidden=8, num_layers=2, out_hidden=8)
    vqvae = vqvae_mnist.make_model(_vqvae_config(idx_dir), nnx.Rngs(1))
    vqvae.eval()
    task = vqvae_prior_mnist.build(c, vqvae, log=lambda s: None)
    return dataclasses.replace(task, reporters=()), optax.sgd(LR), "mnist"


def _run(mesh, graphdef, state, tx, objective, batches, hparams):
    step = training.make_train_step(graphdef, tx, objective)
    metrics = []
    with jax.set_mesh(mesh):
        state, hparams = training.replicate((state, hparams), mesh)
        for b in batches:
            state, m = step(state, training.shard_batch(b, mesh), hparams)
            metrics.append({k: float(v) for k, v in m.items() if np.ndim(v) == 0})
    return jax.device_get(state), metrics


@pytest.mark.parametrize("experiment", [_vqvae, _vae, _oivae, _prior], ids=["vqvae", "vae", "oivae", "prior"])
def test_each_step_on_eight_devices_equals_one(idx_dir, experiment):
    assert jax.device_count() == 8
    task, tx, dataset = experiment(idx_dir)
    source = data.bars_source("train") if dataset == "bars" else data.idx_source(idx_dir, "train")
    it = data.make_pipeline(source, batch_size=BATCH, seed=0)
    batches = [next(it) for _ in range(STEPS)]
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    state = jax.device_get(state)  # host copies: each run donates its own
    hparams = {k: np.float32(v) for k, v in task.hparams.items()}
    s1, m1 = _run(training.make_mesh(jax.devices()[:1]), graphdef, state, tx, task.objective, batches, hparams)
    s8, m8 = _run(training.make_mesh(), graphdef, state, tx, task.objective, batches, hparams)
    assert set(m1[0]) >= {"loss", "grad_norm"} and set(m8[0]) == set(m1[0])
    for key, rtol in (("grad_norm", 1e-5), ("loss", 1e-5)):
        np.testing.assert_allclose([m[key] for m in m8], [m[key] for m in m1], rtol=rtol, err_msg=key)
    for key in m1[0]:  # every other logged number too (rates, code usage, ...)
        # The KL's decomposition (vqjax.objectives.tc_metrics) is a difference of log-densities of tens of
        # nats per image summed over the batch; its float32 rounding depends on how the batch is split.
        cancels = key.endswith(("mutual_information", "total_correlation", "dimension_wise_kl"))
        np.testing.assert_allclose([m[key] for m in m8], [m[key] for m in m1], rtol=1e-4,
                                   atol=1e-4 if cancels else 1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves((s8.params, s8.rest)), jax.tree.leaves((s1.params, s1.rest)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(m["grad_norm"] > 0 for m in m1)
    assert not np.allclose(m1[0]["loss"], m1[-1]["loss"])  # it trained
