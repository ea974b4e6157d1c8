"""vqjax.training: 8 devices equal 1, exact resume after SIGKILL, the experiment's outputs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import data, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"hidden": 8, "residual_hidden": 4, "num_residual": 1}
TINY_CODEBOOK = {"num_codes": 16, "code_dim": 4}


def _tiny_config(idx_dir, **train):
    c = vqvae_mnist.get_config()
    c.model.update(TINY)
    c.model.quantizer.codebook.update(TINY_CODEBOOK)
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update({"steps": 6, "log_every": 2, "checkpoint_every": 3}, **train)
    return c


def _run_steps(mesh, config, batches):
    task = vqvae_mnist.build(config)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, task.objective)
    hparams = {k: np.float32(v) for k, v in task.hparams.items()}
    losses = []
    with jax.set_mesh(mesh):
        state = training.replicate(state, mesh)
        for b in batches:
            state, m = step(state, training.shard_batch(b, mesh), hparams)
            losses.append(float(m["loss"]))
    return jax.device_get(state.params), np.array(losses)


def test_eight_devices_equal_one(idx_dir):
    assert jax.device_count() == 8
    config = _tiny_config(idx_dir)
    it = data.make_pipeline(data.idx_source(idx_dir, "train"), batch_size=16, seed=0)
    batches = [next(it) for _ in range(4)]
    p8, l8 = _run_steps(training.make_mesh(), config, batches)
    p1, l1 = _run_steps(training.make_mesh(jax.devices()[:1]), config, batches)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.all(np.diff(l1) != 0)  # it trained


def _cli(workdir, idx_dir, steps, every):
    return [sys.executable, "-m", "experiments.vqvae_mnist", f"--workdir={workdir}",
            f"--config.data.idx_dir={idx_dir}", "--config.data.batch_size=16",
            "--config.data.eval_batch_size=32", f"--config.train.steps={steps}",
            "--config.train.log_every=10", f"--config.train.checkpoint_every={every}"] + [
            f"--config.model.{k}={v}" for k, v in TINY.items()] + [
            f"--config.model.quantizer.codebook.{k}={v}" for k, v in TINY_CODEBOOK.items()]


def _final_params(workdir, step):
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return jax.tree.leaves(restored["params"])


def _train_lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        r.pop("images_per_sec", None)
    return rows


def test_killed_run_resumes_exactly(idx_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    steps, every = 400, 40
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(whole, idx_dir, steps, every), cwd=ROOT, env=env, check=True, capture_output=True)

    proc = subprocess.Popen(_cli(killed, idx_dir, steps, every), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / str(every)
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "no checkpoint appeared before the kill"
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"

    out = subprocess.run(_cli(killed, idx_dir, steps, every), cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    assert "Resumed from the checkpoint at step" in out.stdout
    for a, b in zip(_final_params(whole, steps), _final_params(killed, steps)):
        np.testing.assert_array_equal(a, b)
    assert _train_lines(whole) == _train_lines(killed)
    s_whole = json.loads((whole / "summary.json").read_text())
    s_killed = json.loads((killed / "summary.json").read_text())
    assert s_whole["test"] == s_killed["test"] and s_killed["resumed_from"] >= every

    # The experiment's promised outputs.
    for name in ("metrics.jsonl", "summary.json", "reconstructions.png", "codebook_usage.png"):
        assert (whole / name).is_file(), name
    assert any((whole / "tensorboard").iterdir())
    assert s_whole["test"]["num_examples"] == 96 and 0 <= s_whole["test"]["mse"] < 1

    # A finished run only evaluates and reports.
    again = subprocess.run(_cli(whole, idx_dir, steps, every), cwd=ROOT, env=env, check=True,
                           capture_output=True, text=True)
    assert json.loads((whole / "summary.json").read_text())["trained_steps_this_run"] == 0
    assert "test: mse" in again.stdout


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    config = _tiny_config(idx_dir, steps=30, log_every=1, checkpoint_every=1)
    config.optimizer.update(learning_rate=1e30, warmup_steps=10)
    with pytest.raises(training.NonFiniteLossError, match="last good checkpoint"):
        training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config), log=lambda s: None)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "no checkpoint was kept"
    assert all(np.isfinite(x).all() for x in _final_params(tmp_path, steps[-1]))


def test_non_finite_loss_before_any_checkpoint_says_so(idx_dir, tmp_path):
    config = _tiny_config(idx_dir, steps=30, log_every=1, checkpoint_every=100)
    config.optimizer.update(learning_rate=1e30, warmup_steps=0)
    with pytest.raises(training.NonFiniteLossError, match="No checkpoint was saved before it"):
        training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config), log=lambda s: None)


def test_bad_batch_size_is_a_clear_error(idx_dir, tmp_path):
    config = _tiny_config(idx_dir)
    config.data.batch_size = 12  # not divisible by 8 devices
    with pytest.raises(ValueError, match="batch_size"):
        training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config))


def test_lloyd_codebook_init_fits_the_encoder_outputs(idx_dir):
    from vqjax import quantizers

    config = _tiny_config(idx_dir)
    config.model.quantizer.codebook.init = "lloyd"
    task = vqvae_mnist.build(config)
    model, init_fn = task.model(nnx.Rngs(0)), task.init
    images = np.stack([data.idx_source(idx_dir, "train")[i]["image"] for i in range(64)]) / np.float32(255)
    z_e = np.asarray(model.encoder(images)).reshape(-1, TINY_CODEBOOK["code_dim"])

    def distortion(codebook):
        idx = np.asarray(quantizers.nearest_code(z_e, codebook))
        return float(np.mean(np.sum((z_e - np.asarray(codebook)[idx]) ** 2, -1)))

    before = distortion(model.quantizer.codebook[...])
    init_fn(model, {"image": images}, jax.random.key(0))
    after = distortion(model.quantizer.codebook[...])
    assert after < 0.5 * before
    used = np.unique(np.asarray(quantizers.nearest_code(z_e, model.quantizer.codebook[...])))
    assert len(used) == TINY_CODEBOOK["num_codes"]  # every code is the centroid of a non-empty cell


def test_unknown_codebook_init_is_a_clear_error(idx_dir):
    config = _tiny_config(idx_dir)
    config.model.quantizer.codebook.init = "zeros"
    with pytest.raises(ValueError, match="quantizer.codebook.init"):
        vqvae_mnist.build(config)


def test_learning_rate_schedule_warms_up_then_holds_or_decays():
    import ml_collections

    cfg = ml_collections.ConfigDict({"learning_rate": 2e-3, "warmup_steps": 10})
    constant = training.learning_rate_schedule(cfg, 100)
    np.testing.assert_allclose([constant(0), constant(5), constant(10), constant(99)], [0, 1e-3, 2e-3, 2e-3],
                               rtol=1e-6)
    cfg.schedule = "cosine"
    cosine = training.learning_rate_schedule(cfg, 100)
    np.testing.assert_allclose([cosine(10), cosine(55), cosine(100)], [2e-3, 1e-3, 0.0], rtol=1e-5, atol=1e-9)
    cfg.schedule = "linear"
    with pytest.raises(ValueError, match="schedule"):
        training.learning_rate_schedule(cfg, 100)


def test_profile_steps_writes_a_trace_for_tensorboard(idx_dir, tmp_path):
    config = _tiny_config(idx_dir, steps=5, profile_steps=2)
    logs = []
    training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config), log=logs.append)
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert "Profiled steps 2-3 into" in "\n".join(logs)
