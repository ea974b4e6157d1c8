"""Every experiment's default config trains and evaluates on 1, 2, 4 and 8 devices (a CPU host, a
GPU box, a TPU v3-8 / v4-8), and gives the same test loss on each.

What a device count can break is how batches split: the default batch sizes, evaluation batch
sizes and every evaluation's settings are kept as shipped; the step count is 2 and the data a small
IDX folder (96 test images: the default evaluation batches of 500 and the IWAE batch of 40 neither
fill nor divide it). The pictures are left out (they do not depend on the devices).

Each run compiles its programs anew (~25 s cold here), so the suite runs the 8-device case, the
one where every batch is split (a batch 8 devices share, 1, 2 and 4 share too; evaluation pads to
any count), with the networks shrunk (:data:`TINY`). The whole matrix, and the default networks:

    VQJAX_DEVICE_COUNTS=1,2,4,8 python -m pytest tests/test_defaults.py -n 2          # 7.5 min here
    VQJAX_FULL_DEFAULTS=1 VQJAX_DEVICE_COUNTS=1,2,4,8 python -m pytest tests/test_defaults.py -n 2
"""

import dataclasses
import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import (
    mnist_classifier,
    oivae,
    vae_mnist,
    vae_rate_distortion,
    vib_mnist,
    vqvae2_mnist,
    vqvae_mnist,
    vqvae_prior_mnist,
)
from vqjax import training

DEVICE_COUNTS = tuple(int(n) for n in os.environ.get("VQJAX_DEVICE_COUNTS", "8").split(","))


def _prior(config):
    vqvae = vqvae_mnist.make_model(vqvae_prior_mnist.vqvae_config(config), nnx.Rngs(0))
    vqvae.eval()
    return vqvae_prior_mnist.build(config, vqvae, log=lambda s: None)


def _vqvae2_prior(config):
    vqvae2 = vqvae2_mnist.make_vqvae2(config, nnx.Rngs(0))
    vqvae2.eval()
    return vqvae2_mnist.build_prior(config, vqvae2, log=lambda s: None), vqvae2_mnist.prior_config(config)


PROGRAMS = {
    "vae_mnist": lambda c: (vae_mnist.build(c), c),
    "vae_rate_distortion": lambda c: (vae_rate_distortion.build(c), c),
    "vib_mnist": lambda c: (vib_mnist.build(c), c),
    "vqvae_mnist": lambda c: (vqvae_mnist.build(c), c),
    "vqvae_prior_mnist": lambda c: (_prior(c), c),
    "vqvae2_mnist": lambda c: (vqvae2_mnist.build(c), c),
    "vqvae2_mnist_prior": _vqvae2_prior,
    "oivae": lambda c: (oivae.build(c), c),
    "mnist_classifier": lambda c: (mnist_classifier.build(c), c),
}
MODULES = {"vqvae2_mnist_prior": vqvae2_mnist}
_TINY_VQVAE = {"model.hidden": 8, "model.residual_hidden": 4, "model.num_residual": 1,
               "model.quantizer.codebook.num_codes": 16, "model.quantizer.codebook.code_dim": 4}
_TINY_VAE = {"model.hidden": 16, "model.latents": 4}
TINY = {  # network sizes, and the IWAE bound's sample count (its batch of 40 stays)
    "vae_mnist": {**_TINY_VAE, "eval.iwae_samples": 100},
    "vae_rate_distortion": _TINY_VAE,
    "vib_mnist": {"model.hidden": (16, 16), "model.latents": 4},
    "vqvae_mnist": _TINY_VQVAE,
    "vqvae_prior_mnist": {"model.hidden": 8, "model.num_layers": 2, "model.out_hidden": 8,
                          **{f"vqvae.{k}": v for k, v in _TINY_VQVAE.items()}},
    "vqvae2_mnist": _TINY_VQVAE,
    "vqvae2_mnist_prior": {**_TINY_VQVAE, "prior.model.hidden": 8, "prior.model.num_layers": 2,
                           "prior.model.bottom_hidden": 8, "prior.model.bottom_layers": 2,
                           "prior.model.cond_hidden": 8},
    "oivae": {},  # small already
    "mnist_classifier": {},  # a fixed network
}
FULL = os.environ.get("VQJAX_FULL_DEFAULTS") == "1"


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_default_config_runs_on_every_device_count(program, idx_dir, tmp_path):
    module = MODULES.get(program) or globals()[program]
    losses = {}
    for n in DEVICE_COUNTS:
        config = module.get_config()
        config.data.idx_dir = idx_dir
        if not FULL:
            config = training.apply_overrides(config, TINY[program])
        task, loop_config = PROGRAMS[program](config)
        loop_config.train.update(steps=2, log_every=1, checkpoint_every=2, eval_every=0)
        task = dataclasses.replace(task, reporters=())
        summary = training.train_and_evaluate(loop_config, str(tmp_path / str(n)), task,
                                              devices=jax.devices()[:n], log=lambda s: None)
        assert summary["num_devices"] == n and summary["trained_steps_this_run"] == 2
        assert summary["test"]["num_examples"] == summary["test_examples"]
        test = summary["test"]
        losses[n] = test["loss"] if "loss" in test else test["cross_entropy"]
    first = losses[DEVICE_COUNTS[0]]
    assert np.isfinite(first)
    np.testing.assert_allclose([losses[n] for n in DEVICE_COUNTS], first, rtol=2e-4)
