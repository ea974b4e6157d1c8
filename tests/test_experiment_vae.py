"""The VAE-family experiments end to end on tiny data: outputs, reported numbers, config errors."""

import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vae_mnist, vae_rate_distortion, vib_mnist
from vqjax import training


def _vae_config(idx_dir, **model):
    c = vae_mnist.get_config()
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.model.update({"hidden": 16, "latents": 2}, **model)
    c.train.update(steps=6, log_every=3, checkpoint_every=3)
    c.eval.update(iwae_samples=16, iwae_chunk=8, iwae_batch_size=32)
    return c


def test_vae_mnist_reports_elbo_rate_distortion_and_iwae(idx_dir, tmp_path):
    summary = vae_mnist.run(_vae_config(idx_dir), str(tmp_path))
    t = summary["test"]
    assert t["num_examples"] == 96
    np.testing.assert_allclose(-t["elbo"], t["distortion"] + t["rate"], rtol=1e-5)
    assert t["rate"] >= 0 and t["distortion"] > 0
    # The IWAE bound on -log p(x) (S=16) is tighter than -ELBO on the same binarized test images.
    assert t["iwae_nll"] < -t["elbo"]
    for name in ("reconstructions.png", "samples.png", "traversals.png", "manifold.png", "summary.json",
                 "metrics.jsonl"):
        assert (tmp_path / name).exists(), name
    assert 0 <= summary["active_units"] <= 2
    assert "IWAE NLL (S=16)" in vae_mnist.format_test(summary)
    # A finished run resumes, trains nothing and evaluates the same binarized test set again.
    again = vae_mnist.run(_vae_config(idx_dir), str(tmp_path))
    assert again["trained_steps_this_run"] == 0
    assert again["test"]["iwae_nll"] == t["iwae_nll"] and again["test"]["elbo"] == t["elbo"]


@pytest.mark.parametrize("model", [
    {"objective": "beta_vae", "beta": 4.0, "capacity_max": 10.0, "capacity_steps": 4},
    {"objective": "info_vae", "info_alpha": 1.0, "info_lambda": 100.0, "kernel": "rbf"},
    {"objective": "vae", "arch": "conv", "conv_hidden": 4},
    {"objective": "vae", "likelihood": "discretized_logistic"},
])
def test_every_objective_and_architecture_trains(idx_dir, model):
    config = _vae_config(idx_dir, **model)
    config.data.dynamic_binarization = model.get("likelihood") != "discretized_logistic"
    kw = vae_mnist.build(config)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(kw["model_fn"](nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, kw["objective"])
    x = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    batch = {"image": x, "label": np.zeros(16, np.int32)}
    for _ in range(3):
        state, m = step(state, batch)
    assert np.isfinite(float(m["loss"])) and float(m["rate"]) >= 0
    if model["objective"] == "beta_vae":  # the annealed capacity: C = 10 · step / 4 at step 2
        c = 10.0 * 2 / 4
        np.testing.assert_allclose(m["loss"], m["distortion"] + 4.0 * np.abs(m["rate"] - c), rtol=1e-4)


def test_capacity_schedule_reaches_the_step_through_the_train_step(idx_dir):
    config = _vae_config(idx_dir, objective="beta_vae", beta=1.0, capacity_max=1e4, capacity_steps=2)
    kw = vae_mnist.build(config)
    tx = optax.sgd(0.0)  # parameters fixed: only C changes from step to step
    graphdef, state = training.init_train_state(kw["model_fn"](nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, kw["objective"])
    batch = {"image": np.full((16, 28, 28, 1), 0.5, np.float32)}
    gaps = []
    for _ in range(3):
        state, m = step(state, batch)
        gaps.append(float(m["loss"] - m["distortion"] + m["rate"]))  # = C when C > rate
    np.testing.assert_allclose(gaps, [0.0, 5e3, 1e4], atol=1.0)


def test_bad_config_is_a_clear_error(idx_dir):
    with pytest.raises(ValueError, match="objective"):
        vae_mnist.build(_vae_config(idx_dir, objective="wae"))
    with pytest.raises(ValueError, match="arch"):
        vae_mnist.build_model(_vae_config(idx_dir, arch="resnet"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="beta"):
        vae_mnist.build(_vae_config(idx_dir, objective="beta_vae", beta=-1.0))
    with pytest.raises(ValueError, match="dynamic_binarization"):
        vae_mnist.build_model(_vae_config(idx_dir, likelihood="discretized_logistic"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="likelihood"):
        vae_mnist.build_model(_vae_config(idx_dir, likelihood="poisson"), nnx.Rngs(0))


def test_vib_sweep_writes_the_accuracy_rate_curve(idx_dir, tmp_path):
    c = vib_mnist.get_config()
    c.betas = (1e-3, 1.0)
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.model.update(hidden=(16,), latents=4, num_eval_samples=3)
    c.train.update(steps=4, log_every=2, checkpoint_every=4)
    result = vib_mnist.run(c, str(tmp_path), log=lambda s: None)
    assert [r["beta"] for r in result["runs"]] == [1e-3, 1.0]
    for r in result["runs"]:
        assert 0 <= r["error"] <= 1 and r["rate"] >= 0
        np.testing.assert_allclose(r["i_zy_lower_bound"], np.log(10) - r["cross_entropy"])
    assert (tmp_path / "vib_curve.png").exists() and (tmp_path / "beta=1" / "summary.json").exists()
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][0]["beta"] == 1e-3
    assert "| 0.001 |" in vib_mnist.format_table(result)


def test_rate_distortion_sweep_draws_one_point_per_beta(idx_dir, tmp_path):
    c = vae_rate_distortion.get_config()
    c.betas = (0.5, 8.0)
    c.vae = _vae_config(idx_dir, objective="beta_vae")
    c.vae.eval.iwae_samples = 0
    result = vae_rate_distortion.run(c, str(tmp_path), log=lambda s: None)
    assert len(result["runs"]) == 2 and (tmp_path / "rate_distortion.png").exists()
    for r in result["runs"]:
        np.testing.assert_allclose(-r["elbo"], r["rate"] + r["distortion"], rtol=1e-5)
    assert os.path.exists(tmp_path / "beta=8" / "summary.json")
    assert jax.device_count() == 8  # all of the above ran data-parallel over 8 devices
