"""The generation experiments end to end on tiny models: the prior trains on a VQ-VAE checkpoint,
resumes exactly, refuses a missing or mismatched checkpoint; VQ-VAE-2 runs both stages; the
sample-quality scores run; the classifier program refuses to ship a classifier of the embedded digits."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import mnist_classifier, vqvae2_mnist, vqvae_mnist, vqvae_prior_mnist
from vqjax import training

QUIET = {"log": lambda s: None}


def _vqvae_config(idx_dir):
    c = vqvae_mnist.get_config()
    c.model.update(num_codes=16, code_dim=4, hidden=8, residual_hidden=4, num_residual=1)
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update(steps=4, log_every=2, checkpoint_every=2, eval_every=0)
    return c


@pytest.fixture(scope="module")
def vqvae_dir(idx_dir, tmp_path_factory):
    """A finished tiny VQ-VAE run (16 codes)."""
    d = str(tmp_path_factory.mktemp("vqvae"))
    c = _vqvae_config(idx_dir)
    model_fn, objective, *_ = vqvae_mnist.build(c)
    training.train_and_evaluate(c, d, model_fn=model_fn, objective=objective, **QUIET)
    return d


def _prior_config(idx_dir, vqvae_dir, **train):
    c = vqvae_prior_mnist.get_config()
    c.vqvae_workdir = vqvae_dir
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.model.update(hidden=8, num_layers=2, out_hidden=8)
    c.train.update({"steps": 6, "log_every": 2, "checkpoint_every": 2, "eval_every": 3}, **train)
    c.sample.update(per_class=2, time_samples=8)
    return c


def test_prior_trains_on_the_vqvae_codes_and_draws_samples(idx_dir, vqvae_dir, tmp_path):
    summary = vqvae_prior_mnist.run(_prior_config(idx_dir, vqvae_dir), str(tmp_path), **QUIET)
    test = summary["test"]
    np.testing.assert_allclose(test["bits_per_code"], test["nll"] / (49 * np.log(2)), rtol=1e-5)
    assert 0 < test["bits_per_code"] < 2 * np.log2(16)  # near log2(K) after a few steps, not a sum over the batch
    assert summary["code_grid"] == [7, 7] and summary["seconds_to_sample_8"] > 0
    assert os.path.getsize(tmp_path / "samples.png") > 500
    with open(tmp_path / "metrics.jsonl") as f:
        assert any(json.loads(line)["split"] == "eval" for line in f)


def test_unconditional_prior_draws_samples_and_gets_no_cas(idx_dir, vqvae_dir, tmp_path):
    config = _prior_config(idx_dir, vqvae_dir, steps=2, eval_every=0)
    config.model.class_conditional = False
    config.sample.update(score_samples=128, cas_steps=2)
    summary = vqvae_prior_mnist.run(config, str(tmp_path), **QUIET)
    quality = summary["sample_quality"]
    assert set(quality) == {"model", "real", "uniform"}
    assert quality["model"]["cas"] is None and quality["model"]["fd"] >= 0
    assert all(0 <= quality[k]["cas"] <= 1 and quality[k]["fd"] >= 0 for k in ("real", "uniform"))
    assert os.path.getsize(tmp_path / "samples.png") > 500


def test_prior_resumes_exactly(idx_dir, vqvae_dir, tmp_path):
    full = _prior_config(idx_dir, vqvae_dir)
    vqvae, _ = vqvae_prior_mnist.load_vqvae(full, str(tmp_path), **QUIET)
    model_fn, objective = vqvae_prior_mnist.build(full, vqvae)
    training.train_and_evaluate(full, str(tmp_path / "a"), model_fn=model_fn, objective=objective, **QUIET)
    short = _prior_config(idx_dir, vqvae_dir, steps=4)
    training.train_and_evaluate(short, str(tmp_path / "b"), model_fn=model_fn, objective=objective, **QUIET)
    resumed = training.train_and_evaluate(full, str(tmp_path / "b"), model_fn=model_fn, objective=objective, **QUIET)
    assert resumed["resumed_from"] == 4 and resumed["trained_steps_this_run"] == 2
    a, b = (training.load_model(str(tmp_path / d), model_fn) for d in "ab")
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_missing_vqvae_checkpoint_is_a_clear_error(idx_dir, tmp_path):
    config = _prior_config(idx_dir, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="vqvae_workdir"):
        vqvae_prior_mnist.run(config, str(tmp_path / "prior"), **QUIET)


def test_vqvae_checkpoint_of_the_wrong_shape_is_a_clear_error(idx_dir, vqvae_dir, tmp_path):
    config = _prior_config(idx_dir, vqvae_dir)
    model_fn = vqvae_mnist.build(vqvae_prior_mnist.merge_saved(vqvae_mnist.get_config(),
                                                               training.saved_config(vqvae_dir)))[0]
    assert training.load_model(vqvae_dir, model_fn).num_codes == 16
    # A copy of the run whose saved config says 32 codes: the checkpoint holds 16.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    os.symlink(os.path.join(vqvae_dir, "checkpoints"), wrong / "checkpoints")
    saved = training.saved_config(vqvae_dir)
    saved["model"]["num_codes"] = 32
    (wrong / "config.json").write_text(json.dumps(saved))
    config.vqvae_workdir = str(wrong)
    with pytest.raises(ValueError, match=r"quantizer/codebook is \(16, 4\) in the checkpoint and \(32, 4\)"):
        vqvae_prior_mnist.run(config, str(tmp_path / "prior"), **QUIET)


def test_load_model_errors(vqvae_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        training.load_model(str(tmp_path), lambda rngs: None)
    with pytest.raises(FileNotFoundError, match="step 3"):
        training.load_model(vqvae_dir, lambda rngs: None, step=3)


def test_residual_vqvae_is_refused(idx_dir, vqvae_dir, tmp_path):
    config = _prior_config(idx_dir, vqvae_dir)
    wrong = tmp_path / "residual"
    wrong.mkdir()
    os.symlink(os.path.join(vqvae_dir, "checkpoints"), wrong / "checkpoints")
    saved = training.saved_config(vqvae_dir)
    saved["model"]["quantizer"] = "residual"
    (wrong / "config.json").write_text(json.dumps(saved))
    config.vqvae_workdir = str(wrong)
    with pytest.raises(ValueError, match="residual VQ"):
        vqvae_prior_mnist.run(config, str(tmp_path / "prior"), **QUIET)


def test_vqvae2_experiment_runs_both_stages(idx_dir, tmp_path):
    c = vqvae2_mnist.get_config()
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.model.update(num_codes=16, code_dim=4, hidden=8, residual_hidden=4, num_residual=1)
    c.train.update(steps=3, log_every=1, checkpoint_every=3, eval_every=0)
    c.prior.model.update(hidden=8, num_layers=2, bottom_hidden=8, bottom_layers=2, cond_hidden=8)
    c.prior.train.update(steps=3, log_every=1, checkpoint_every=3, eval_every=0)
    c.prior.sample.update(per_class=1, time_samples=8)  # the scores: test_unconditional_prior_...
    out = vqvae2_mnist.run(c, str(tmp_path), **QUIET)
    prior, first = out["prior"], out["vqvae2"]["test"]
    assert prior["top_grid"] == [4, 4] and prior["bottom_grid"] == [8, 8]
    for level in ("top", "bottom"):  # over the whole test split, from the summed counts
        assert 1 <= first[f"perplexity_{level}"] <= 16 and 0 < first[f"used_{level}"] <= 1
    t = prior["test"]
    np.testing.assert_allclose(t["bits_per_code"], (16 * t["bits_top"] + 64 * t["bits_bottom"]) / 80, rtol=1e-5)
    assert "sample_quality" not in prior and prior["seconds_to_sample_8"] > 0
    for name in ("vqvae2/reconstructions.png", "prior/samples.png"):
        assert os.path.getsize(tmp_path / name) > 500


def test_classifier_program_refuses_the_embedded_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing prepared there: the embedded digits
    c = mnist_classifier.get_config()
    c.data.tfds_data_dir = str(tmp_path)
    c.steps = 3
    with pytest.raises(ValueError, match="idx_dir"):
        mnist_classifier.run(c, str(tmp_path / "c.npz"), **QUIET)
    c.allow_embedded = True
    result = mnist_classifier.run(c, str(tmp_path / "c.npz"), **QUIET)
    assert os.path.exists(tmp_path / "c.npz") and 0 <= result["test_accuracy"] <= 1
