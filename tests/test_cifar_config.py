"""The VQ-VAE paper's CIFAR-10 model (``--config=experiments/vqvae_mnist.py:cifar10``), end to end on
``tfds.testing.mock_data`` (random 32×32×3 images, read through ``tfds.data_source`` as a prepared
CIFAR-10 would be; nothing is downloaded), and the experiments following the data they are given."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags
from PIL import Image

from experiments import _program, vae_mnist, vqvae2_mnist, vqvae_mnist
from vqjax import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The program's real entry point (`python -m experiments.vqvae_mnist ...`), run inside TFDS's mock:
# the mock patches tfds.data_source in this process only, so the program runs in a process of its own.
DRIVER = """
import runpy, sys
import tensorflow_datasets as tfds
with tfds.testing.mock_data(num_examples=24):
    sys.argv = ["vqvae_mnist", *sys.argv[1:]]
    try:
        runpy.run_module("experiments.vqvae_mnist", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code:
            raise
"""


def test_the_preset_is_the_papers_model():
    c = vqvae_mnist.get_config("cifar10")
    vqvae_mnist.check_config(c)
    assert c.data.dataset == "cifar10" and c.data.batch_size == 128
    assert (c.optimizer.learning_rate, c.optimizer.warmup_steps, c.optimizer.schedule) == (2e-4, 0, "constant")
    assert c.train.steps == 250_000
    m = c.model
    assert (m.hidden, m.residual_hidden, m.num_residual, m.beta) == (256, 256, 2, 0.25)
    assert (m.likelihood, m.downsample, m.quantizer.kind) == ("discretized_logistic", 2, "vq")
    assert (m.quantizer.codebook.num_codes, m.quantizer.codebook.code_dim) == (512, 64)
    model = vqvae_mnist.make_model(c, nnx.Rngs(0), (32, 32, 3))
    assert model.encode(jnp.zeros((1, 32, 32, 3))).shape == (1, 8, 8)  # 32×32×3 -> an 8×8 grid of K = 512
    assert model(jnp.zeros((1, 32, 32, 3))).logits.shape == (1, 32, 32, 6)  # logistic location and log-scale
    assert vqvae_mnist.get_config() != c  # the MNIST default is unchanged
    with pytest.raises(ValueError, match="Unknown preset 'svhn'.*cifar10"):
        vqvae_mnist.get_config("svhn")


def test_the_config_string_selects_the_preset():
    """``--config=experiments/vqvae_mnist.py:cifar10`` as ml_collections' config_flags reads it (a
    FlagValues of its own: the program's flags are defined only when it runs)."""
    path = os.path.join(ROOT, "experiments", "vqvae_mnist.py")

    def parse(*args):
        argv, fv = ["prog", *args], flags.FlagValues()
        config_flags.DEFINE_config_file("config", path, flag_values=fv, sys_argv=argv)
        fv(argv)
        return fv.config

    c = parse(f"--config={path}:cifar10", "--config.model.hidden=32", "--config.train.steps=7")
    assert c.data.dataset == "cifar10" and c.model.hidden == 32 and c.train.steps == 7
    assert c.model.likelihood == "discretized_logistic" and c.optimizer.learning_rate == 2e-4
    c = parse()  # the program's default: this file's get_config()
    assert c.data.dataset == "mnist" and c.model.likelihood == "bernoulli"


def test_preset_end_to_end_on_mock_cifar10(tmp_path):
    """A few steps of the preset (tiny widths and batches by flags) through the program's entry point."""
    workdir = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = ["--config=experiments/vqvae_mnist.py:cifar10", f"--workdir={workdir}", "--config.model.hidden=16",
            "--config.model.residual_hidden=8", "--config.model.quantizer.codebook.num_codes=32",
            "--config.model.quantizer.codebook.code_dim=8", "--config.data.batch_size=8",
            "--config.data.eval_batch_size=16", "--config.train.steps=4", "--config.train.log_every=2",
            "--config.train.checkpoint_every=4", "--config.train.eval_every=0"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(driver), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bits/dim" in proc.stdout and "PSNR" in proc.stdout and "SSIM" in proc.stdout

    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["data_source"] == "tfds:cifar10" and summary["steps"] == 4
    test = summary["test"]
    assert test["num_examples"] == 24
    for key in ("bits_per_dim", "psnr", "ssim", "reconstruction", "mse", "perplexity"):
        assert np.isfinite(test[key]), key
    # -log p(x|z_q) in bits per dimension: the reconstruction term over 32·32·3 dimensions
    assert test["bits_per_dim"] == pytest.approx(test["reconstruction"] / (32 * 32 * 3 * np.log(2)), rel=1e-4)
    assert -1 <= test["ssim"] <= 1 and test["bits_per_dim"] > 0

    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["dataset"] == "cifar10" and config["model"]["likelihood"] == "discretized_logistic"
    train_rows = [r for r in training.read_metrics(str(workdir)) if r["split"] == "train"]
    assert train_rows and all("bits_per_dim" in r and not {"psnr", "ssim"} & set(r) for r in train_rows)

    with Image.open(workdir / "reconstructions.png") as img:  # 16 test images over their reconstructions, in colour
        assert img.mode == "RGB"
        assert img.size == (2 * (16 * (32 + 2) + 2), 2 * (2 * (32 + 2) + 2))
    for name in ("codebook_usage.png", "perplexity.png", "codebook_projection.png"):
        assert (workdir / name).exists(), name

    c = vqvae_mnist.get_config("cifar10")
    c.model.update(hidden=16, residual_hidden=8)
    c.model.quantizer.codebook.update(num_codes=32, code_dim=8)
    model = training.load_model(str(workdir), lambda rngs: vqvae_mnist.make_model(c, rngs, (32, 32, 3)))
    assert model.encode(jnp.zeros((2, 32, 32, 3))).shape == (2, 8, 8)


def test_the_experiments_follow_the_data():
    """Under TFDS's mock the programs read CIFAR-10's 32×32×3 images and build their models for them."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=8):
        c = vqvae_mnist.get_config("cifar10")
        c.model.update(hidden=8, residual_hidden=4)
        assert _program.image_shape(c) == (32, 32, 3)
        model = vqvae_mnist.build(c).model(nnx.Rngs(0))
        out = model(jnp.zeros((1, 32, 32, 3)))
        assert out.logits.shape == (1, 32, 32, 6) and out.indices.shape == (1, 8, 8)

        c.model.downsample = 3
        assert vqvae_mnist.build(c).model(nnx.Rngs(0)).encode(jnp.zeros((1, 32, 32, 3))).shape == (1, 4, 4)
        c.model.downsample = 6  # 32 is not a multiple of 64
        with pytest.raises(ValueError, match=r"`--config.model.downsample`=6 .*\(32, 32, 3\)"):
            vqvae_mnist.build(c)

        v = vae_mnist.get_config()
        v.data.update(dataset="cifar10", dynamic_binarization=False)
        v.model.update(arch="conv", likelihood="discretized_logistic", latents=4, conv_hidden=4)
        vae = vae_mnist.build(v).model(nnx.Rngs(0))
        assert vae.decoder.image_shape == (32, 32, 6) and vae.encoder.image_shape == (32, 32, 3)
        v.model.arch = "mlp"
        v.model.hidden = 8
        assert vae_mnist.build(v).model(nnx.Rngs(0)).decoder.image_shape == (32, 32, 6)

        q = vqvae2_mnist.get_config()
        q.data.dataset = "cifar10"
        q.model.update(hidden=8, residual_hidden=4, likelihood="discretized_logistic")
        q.model.quantizer.codebook.update(num_codes=8, code_dim=4)
        vq2 = vqvae2_mnist.build(q).model(nnx.Rngs(0))
        vq2.eval()  # (EMA codebooks with restarts by default: no restarts outside training)
        out = vq2(jnp.zeros((1, 32, 32, 3)))
        assert out.logits.shape == (1, 32, 32, 6) and out.top_indices.shape == (1, 4, 4)


def test_mnist_models_are_unchanged(idx_dir):
    c = vqvae_mnist.get_config()
    c.data.idx_dir = idx_dir
    assert _program.image_shape(c) == (28, 28, 1)
    model = vqvae_mnist.build(c).model(nnx.Rngs(0))
    assert model.encode(jnp.zeros((1, 28, 28, 1))).shape == (1, 7, 7)
    assert model(jnp.zeros((1, 28, 28, 1)), key=jax.random.key(0)).logits.shape == (1, 28, 28, 1)
