"""The VAE-family experiments end to end on tiny data: outputs, reported numbers, config errors."""

import json
import os

import jax
import jax.numpy as jnp
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


def _hparams(task):
    """A task's hyperparameters as the train step takes them."""
    return {k: jnp.float32(v) for k, v in task.hparams.items()}


def _group_summaries(workdir, names):
    """The summaries a sweep wrote to ``workdir/<name>/summary.json``."""
    return [json.loads((workdir / n / "summary.json").read_text()) for n in names]


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
    task = vae_mnist.build(config)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, task.objective)
    x = np.random.default_rng(0).uniform(size=(16, 28, 28, 1)).astype(np.float32)
    batch = {"image": x, "label": np.zeros(16, np.int32)}
    for _ in range(3):
        state, m = step(state, batch, _hparams(task))
    assert np.isfinite(float(m["loss"])) and float(m["rate"]) >= 0
    if model["objective"] == "beta_vae":  # the annealed capacity: C = 10 · step / 4 at step 2
        c = 10.0 * 2 / 4
        np.testing.assert_allclose(m["loss"], m["distortion"] + 4.0 * np.abs(m["rate"] - c), rtol=1e-4)


def test_capacity_schedule_reaches_the_step_through_the_train_step(idx_dir):
    config = _vae_config(idx_dir, objective="beta_vae", beta=1.0, capacity_max=1e4, capacity_steps=2)
    task = vae_mnist.build(config)
    tx = optax.sgd(0.0)  # parameters fixed: only C changes from step to step
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, task.objective)
    batch = {"image": np.full((16, 28, 28, 1), 0.5, np.float32)}
    gaps = []
    for _ in range(3):
        state, m = step(state, batch, _hparams(task))
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
    # H(Y) of the 96 test labels 0..95 mod 10 (six classes of 10, four of 9): a little below log 10.
    p = np.array([10] * 6 + [9] * 4) / 96
    assert result["h_y"] == pytest.approx(-np.sum(p * np.log(p)), rel=1e-12) and result["h_y"] < np.log(10)
    for r in result["runs"]:
        assert 0 <= r["error"] <= 1 and r["rate"] >= 0
        np.testing.assert_allclose(r["i_zy_lower_bound"], result["h_y"] - r["cross_entropy"])
    assert (tmp_path / "vib_curve.png").exists() and (tmp_path / "model.beta=1" / "summary.json").exists()
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][0]["beta"] == 1e-3
    assert "| 0.001 |" in vib_mnist.format_table(result)


def test_vib_reports_the_entropy_of_the_test_labels(tmp_path, monkeypatch):
    """``H(Y)`` in ``H(Y) - CE`` is the entropy of the evaluated split's own labels: here a test split
    of 3 classes in proportions 1/2, 1/4, 1/4 (H = 1.5 log 2 nats), not log 10. (The training itself
    is stubbed out: only the reporting is under test.)"""
    from vqjax import data

    labels = np.array([0] * 8 + [3] * 4 + [7] * 4, np.uint8)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((len(labels), 28, 28), np.uint8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    c = vib_mnist.get_config()
    c.betas = (1e-3, 1e-1)
    c.data.idx_dir = str(tmp_path)

    def train_sweep(config, sweep, workdir, build, log):
        os.makedirs(workdir)
        return [{"test": {"accuracy": 0.9, "error": 0.1, "rate": 2.0, "cross_entropy": ce}, "steps": 1,
                 "train_seconds_this_run": 0.0, "data_source": "idx", "sweep": {"name": str(b), "diverged": False}}
                for b, ce in zip(c.betas, (0.25, 0.5))]

    monkeypatch.setattr(vib_mnist.training, "train_sweep", train_sweep)
    result = vib_mnist.run(c, str(tmp_path / "run"), log=lambda s: None)
    assert result["h_y"] == pytest.approx(1.5 * np.log(2), rel=1e-12)
    assert [r["i_zy_lower_bound"] for r in result["runs"]] == pytest.approx([1.5 * np.log(2) - 0.25,
                                                                            1.5 * np.log(2) - 0.5])
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["h_y"] == pytest.approx(1.5 * np.log(2))
    assert f"| {1.5 * np.log(2) - 0.25:.3f} |" in vib_mnist.format_table(result)
    with pytest.raises(ValueError, match="labels must be in"):
        vib_mnist.label_entropy(data.idx_source(tmp_path, "test"), 5)


def test_vib_sweep_trains_every_beta_in_one_group(idx_dir, tmp_path):
    """The β sweep goes through the sweep engine: one group of stacked runs, each with its own β; a
    run that diverges (β = ∞) is marked and left off the curve, the others finish."""
    c = vib_mnist.get_config()
    c.betas = (1e-3, 1e-2, float("inf"))
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.model.update(hidden=(8,), latents=2, num_eval_samples=2)
    c.train.update(steps=2, log_every=2, checkpoint_every=2)
    result = vib_mnist.run(c, str(tmp_path), log=lambda s: None)
    names = [r["run"] for r in result["runs"]]
    assert names == ["model.beta=0.001", "model.beta=0.01", "model.beta=inf"]
    summaries = _group_summaries(tmp_path, names)
    assert [s["sweep"]["group_size"] for s in summaries] == [3, 3, 3]
    assert len({s["sweep"]["group"] for s in summaries}) == 1
    assert [s["config"]["model"]["beta"] for s in summaries] == [1e-3, 1e-2, float("inf")]
    assert all(s["config"]["betas"] == [] for s in summaries)  # each run's config is one run
    assert [r["diverged"] for r in result["runs"]] == [False, False, True]
    assert summaries[0]["trained_steps_this_run"] == 2 and np.isfinite(result["runs"][1]["rate"])
    assert "| inf (diverged) |" in vib_mnist.format_table(result) and (tmp_path / "vib_curve.png").exists()
    assert (tmp_path / "_groups").is_dir()
    assert vib_mnist.get_sweep() == [{"model.beta": b} for b in vib_mnist.BETAS]
    with pytest.raises(ValueError, match="config.betas"):
        c.betas = (1.0, -1.0)
        vib_mnist.run(c, str(tmp_path / "bad"), log=lambda s: None)


def test_rate_distortion_sweep_draws_one_point_per_beta(idx_dir, tmp_path):
    c = _vae_config(idx_dir, objective="beta_vae")
    c.eval.iwae_samples = 0
    c.betas = (0.5, 8.0)
    result = vae_rate_distortion.run(c, str(tmp_path), log=lambda s: None)
    assert len(result["runs"]) == 2 and (tmp_path / "rate_distortion.png").exists()
    for r in result["runs"]:
        np.testing.assert_allclose(-r["elbo"], r["rate"] + r["distortion"], rtol=1e-5)
    assert os.path.exists(tmp_path / "model.beta=8" / "summary.json")
    # One group of stacked runs through the sweep engine, each at its β with the β-VAE objective.
    summaries = _group_summaries(tmp_path, [r["run"] for r in result["runs"]])
    assert [s["sweep"]["group_size"] for s in summaries] == [2, 2]
    assert len({s["sweep"]["group"] for s in summaries}) == 1
    assert [s["config"]["model"]["beta"] for s in summaries] == [0.5, 8.0]
    assert {s["config"]["model"]["objective"] for s in summaries} == {"beta_vae"}
    # A larger β buys a lower rate (the same batches, the same initialisation).
    assert result["runs"][1]["rate"] < result["runs"][0]["rate"]
    assert "| 8 |" in vae_rate_distortion.format_table(result)
    assert jax.device_count() == 8  # all of the above ran data-parallel over 8 devices


def test_rate_distortion_config_is_the_shared_schema():
    c = vae_rate_distortion.get_config()
    assert c.model.objective == "beta_vae" and c.eval.iwae_samples == 0
    assert c.data.batch_size == vae_mnist.get_config().data.batch_size and c.train.steps == 9375
    assert vae_rate_distortion.get_sweep() == [{"model.beta": b} for b in vae_rate_distortion.BETAS]
    c.model.objective = "vae"
    with pytest.raises(ValueError, match="beta_vae"):
        vae_rate_distortion.sweep_betas(c)
