"""The sweep engine: declaring sweeps, grouping, run-alone equality, divergence, resume, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import vqvae_mnist
from vqjax import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.hidden=8", "--config.model.residual_hidden=4", "--config.model.num_residual=1",
        "--config.model.quantizer.codebook.num_codes=16", "--config.model.quantizer.codebook.code_dim=4",
        "--config.data.batch_size=16", "--config.data.eval_batch_size=32"]


def _tiny(idx_dir, **train):
    c = vqvae_mnist.get_config()
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4)
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update({"steps": 6, "log_every": 2, "checkpoint_every": 3, "eval_every": 0}, **train)
    return c


QUIET = {"log": lambda s: None}


# --------------------------------------------------------------------------- declaring


def test_product_zip_and_the_command_line_form_agree():
    beta, seed = training.values("model.beta", [0.1, 1.0]), training.values("seed", [0, 1])
    assert training.product(beta, seed) == [{"model.beta": 0.1, "seed": 0}, {"model.beta": 0.1, "seed": 1},
                                            {"model.beta": 1.0, "seed": 0}, {"model.beta": 1.0, "seed": 1}]
    assert training.parse_sweep("model.beta=0.1,1.0 * seed=0,1") == training.product(beta, seed)
    lr = training.values("optimizer.learning_rate", [1e-3, 3e-4])
    assert training.parse_sweep("model.beta=0.1,1.0;optimizer.learning_rate=1e-3,3e-4") == training.zipped(beta, lr)
    assert training.parse_sweep("model.quantizer.kind=vq,ema") == [{"model.quantizer.kind": "vq"},
                                                                  {"model.quantizer.kind": "ema"}]
    assert training.member_name({"model.beta": 0.25, "seed": 1}) == "model.beta=0.25,seed=1"


@pytest.mark.parametrize("text, match", [
    ("model.beta", "path=v1,v2"),
    ("model.beta=", "no values"),
    ("model.beta=1,2;seed=0", "equal lengths"),
    ("model.beta=1 * model.beta=2", "twice"),
])
def test_malformed_sweeps_are_clear_errors(text, match):
    with pytest.raises(ValueError, match=match):
        training.parse_sweep(text)


def test_overrides_are_checked_against_the_config():
    c = vqvae_mnist.get_config()
    assert training.apply_overrides(c, {"model.beta": 1})["model"]["beta"] == 1.0  # int -> the float field
    with pytest.raises(ValueError, match="config.model.betta"):
        training.apply_overrides(c, {"model.betta": 1.0})
    with pytest.raises(ValueError, match="no `modle` block"):
        training.apply_overrides(c, {"modle.beta": 1.0})
    with pytest.raises(ValueError, match="config.model.beta"):
        training.apply_overrides(c, {"model.beta": "large"})
    with pytest.raises(ValueError, match="repeated"):
        training.make_members(c, [{"seed": 0}, {"seed": 0}])


@pytest.mark.parametrize("runs, devices, shape", [(8, 2, (2, 1)), (2, 8, (2, 4)), (3, 8, (2, 4)), (1, 8, (1, 8)),
                                                  (16, 8, (8, 1)), (5, 1, (1, 1))])
def test_mesh_puts_runs_first(runs, devices, shape):
    assert training.sweep_mesh_shape(runs, devices) == shape


def test_runs_differing_in_shape_form_groups(idx_dir):
    sweep = training.parse_sweep("model.quantizer.codebook.num_codes=16,32 * model.beta=0.1,0.25 * seed=0,1")
    members = training.make_members(_tiny(idx_dir), sweep)
    groups = training.group_members(members, vqvae_mnist.build)
    assert [len(g) for g in groups] == [4, 4]
    assert {m.config.model.quantizer.codebook.num_codes for m in groups[1]} == {32}


# --------------------------------------------------------------------------- training


def _params(run_dir):
    import orbax.checkpoint as ocp

    steps = sorted(int(p) for p in os.listdir(os.path.join(run_dir, "checkpoints")) if p.isdigit())
    state = ocp.StandardCheckpointer().restore(os.path.join(run_dir, "checkpoints", str(steps[-1]), "state"))
    return jax.tree.leaves(state["params"])


@pytest.mark.parametrize("placement", ["loop", "vmap"])
def test_a_run_in_a_sweep_ends_where_it_ends_alone(idx_dir, tmp_path, placement):
    """Both placements against the run alone. Runs alone average the gradient over 8 devices, in the
    sweep over 4 (mesh 2 runs x 4 data), and vmap batches the convolutions: the sums are reassociated,
    so equality holds to float32 rounding carried through 6 Adam steps, not bit for bit."""
    config = _tiny(idx_dir)
    sweep = training.parse_sweep("model.beta=0.1,0.5;seed=0,1")
    summaries = training.train_sweep(config, sweep, str(tmp_path / "sweep"), vqvae_mnist.build, placement=placement,
                                     devices=jax.devices(), **QUIET)  # all 8: each run's batch over 4 devices
    assert [s["sweep"]["group_size"] for s in summaries] == [2, 2]
    assert summaries[0]["sweep"]["mesh"] == {"runs": 2, "data": 4}
    for member, s in zip(training.make_members(config, sweep), summaries):
        alone = training.train_and_evaluate(member.config, str(tmp_path / member.name), vqvae_mnist.build(member.config),
                                            **QUIET)
        for k in ("loss", "mse", "reconstruction", "perplexity"):
            np.testing.assert_allclose(s["test"][k], alone["test"][k], rtol=2e-4, err_msg=k)
        for a, b in zip(_params(tmp_path / "sweep" / member.name), _params(tmp_path / member.name)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5)
    # The two runs really differ (their own β and seed).
    assert summaries[0]["test"]["loss"] != summaries[1]["test"]["loss"]


def test_a_diverging_run_is_frozen_and_the_others_go_on(idx_dir, tmp_path):
    config = _tiny(idx_dir, steps=8)
    config.optimizer.warmup_steps = 0
    sweep = training.values("optimizer.learning_rate", [1e-3, 1e30])
    good, bad = training.train_sweep(config, sweep, str(tmp_path), vqvae_mnist.build, **QUIET)
    assert good["sweep"]["mesh"] == {"runs": 2, "data": 1}  # on CPU a run's batch is never split
    assert not good["sweep"]["diverged"] and good["sweep"]["last_finite_step"] == 8
    assert bad["sweep"]["diverged"] and bad["sweep"]["diverged_at_step"] <= 8
    assert bad["sweep"]["diverged_at_step"] == bad["sweep"]["last_finite_step"] + 1
    assert all(np.isfinite(x).all() for x in _params(tmp_path / "optimizer.learning_rate=1e+30"))
    alone = training.train_and_evaluate(training.apply_overrides(config, sweep[0]), str(tmp_path / "alone"),
                                        vqvae_mnist.build(config), **QUIET)
    np.testing.assert_allclose(good["test"]["loss"], alone["test"]["loss"], rtol=2e-4)


def test_a_member_is_an_ordinary_run_directory(idx_dir, tmp_path):
    config = _tiny(idx_dir)
    (s,) = training.train_sweep(config, [{"model.beta": 0.5}], str(tmp_path), vqvae_mnist.build, **QUIET)
    run = tmp_path / "model.beta=0.5"
    for name in ("config.json", "summary.json", "metrics.jsonl", "reconstructions.png", "codebook_usage.png"):
        assert (run / name).is_file(), name
    assert training.saved_config(str(run))["model"]["beta"] == 0.5
    model = training.load_model(str(run), lambda rngs: vqvae_mnist.make_model(config, rngs))
    assert model.quantizer.num_codes == 16
    member = training.apply_overrides(config, {"model.beta": 0.5})
    again = training.train_and_evaluate(member, str(run), vqvae_mnist.build(member), **QUIET)
    assert again["trained_steps_this_run"] == 0
    np.testing.assert_allclose(again["test"]["loss"], s["test"]["loss"], rtol=2e-4)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 3, 4, 6]  # logged every 2 steps and at each checkpoint


# --------------------------------------------------------------------------- the command line


def _cli(workdir, idx_dir, *extra):
    return [sys.executable, "-m", "experiments.sweep", "--config=experiments/vqvae_mnist.py", f"--workdir={workdir}",
            f"--config.data.idx_dir={idx_dir}", *TINY, *extra]


def test_list_and_sweep_index(idx_dir, tmp_path):
    sweep = "--sweep=model.quantizer.codebook.num_codes=8,16 * model.beta=0.1,0.25"
    out = subprocess.run(_cli(tmp_path, idx_dir, sweep, "--list"), cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[2] == "2\tmodel.quantizer.codebook.num_codes=16,model.beta=0.1\tgroup 1"
    assert len(out) == 4
    out = subprocess.run(_cli(tmp_path, idx_dir, sweep, "--sweep_index=2", "--config.train.steps=2",
                              "--config.train.eval_every=0"),
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert "1 of 4 runs done" in out
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("model")) == [
        "model.quantizer.codebook.num_codes=16,model.beta=0.1"]
    for name in ("results.md", "results.csv", "sweep.json"):
        assert (tmp_path / name).is_file()


def test_killed_sweep_resumes_every_run_exactly(idx_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = ["--sweep=model.beta=0.1,0.25 * seed=0,1", "--config.train.steps=240", "--config.train.log_every=20",
            "--config.train.checkpoint_every=40", "--config.train.eval_every=0"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(whole, idx_dir, *args), cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(_cli(killed, idx_dir, *args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not list(killed.glob("_groups/*/checkpoints/40")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert list(killed.glob("_groups/*/checkpoints/40")), "no group checkpoint appeared before the kill"
    assert not (killed / "sweep.json").exists(), "the sweep finished before it could be killed"
    out = subprocess.run(_cli(killed, idx_dir, *args), cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True).stdout
    assert "Resumed the group of 4 runs" in out
    for name in ("model.beta=0.1,seed=0", "model.beta=0.25,seed=1"):
        for a, b in zip(_params(whole / name), _params(killed / name)):
            np.testing.assert_array_equal(a, b)
        rows = [[json.loads(line) for line in (d / name / "metrics.jsonl").read_text().splitlines()]
                for d in (whole, killed)]
        for r in rows[0] + rows[1]:
            r.pop("images_per_sec", None)
        assert rows[0] == rows[1]
        s = [json.loads((d / name / "summary.json").read_text()) for d in (whole, killed)]
        assert s[0]["test"] == s[1]["test"] and s[1]["resumed_from"] >= 40


def test_ema_decay_and_dead_code_threshold_are_swept_in_the_state(idx_dir, tmp_path):
    """γ and the threshold live in the quantizer's state: one group for every γ and every threshold > 0,
    another for no restarts (threshold 0 is another program); each run keeps its own values."""
    config = _tiny(idx_dir, steps=2, log_every=1, checkpoint_every=2)
    config.model.quantizer.kind = "ema"
    sweep = training.parse_sweep("model.quantizer.ema.decay=0.9,0.99 * model.quantizer.ema.dead_code_threshold=0,1,2")
    groups = training.group_members(training.make_members(config, sweep), vqvae_mnist.build)
    assert sorted(len(g) for g in groups) == [2, 4]
    summaries = training.train_sweep(config, sweep, str(tmp_path), vqvae_mnist.build, **QUIET)
    for s in summaries:
        q = training.load_model(str(tmp_path / s["sweep"]["name"]),
                                lambda rngs: vqvae_mnist.make_model(config, rngs)).quantizer
        np.testing.assert_allclose(q.decay[...], s["config"]["model"]["quantizer"]["ema"]["decay"], rtol=1e-6)
        np.testing.assert_allclose(q.dead_code_threshold[...],
                                   s["config"]["model"]["quantizer"]["ema"]["dead_code_threshold"])


def test_objectives_take_their_hyperparameters_as_arrays(idx_dir):
    """β and the capacity reach the VAE's objective as traced arrays: vmapped over runs, each run's loss is
    its own scalar call's."""
    import jax.numpy as jnp
    from flax import nnx

    from experiments import vae_mnist

    c = vae_mnist.get_config()
    c.model.update(objective="beta_vae", hidden=16, latents=2, capacity_max=5.0, capacity_steps=10)
    task = vae_mnist.build(c)
    assert set(task.hparams) == {"model.beta", "model.capacity_max"}
    model = task.model(nnx.Rngs(0))
    batch = {"image": np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32)}

    def loss(beta, capacity):
        hp = {"model.beta": beta, "model.capacity_max": capacity}
        return task.objective(model, batch, key=jax.random.key(0), step=jnp.int32(5), hparams=hp)[0]

    betas, capacities = jnp.array([0.5, 1.0, 4.0]), jnp.array([1.0, 5.0, 20.0])
    stacked = jax.jit(jax.vmap(loss))(betas, capacities)
    each = [float(loss(b, cap)) for b, cap in zip(betas, capacities)]
    np.testing.assert_allclose(stacked, each, rtol=1e-6)
    assert len(set(np.round(each, 4))) == 3
