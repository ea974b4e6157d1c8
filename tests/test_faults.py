"""Faults of a run directory: a kill during a checkpoint write, a damaged checkpoint, a changed config,
an unwritable or full disk, a cut metrics line, a resume after a non-finite loss. Nothing is lost
but the work since the last complete checkpoint, and every failure says what to do."""

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from experiments import vqvae_mnist
from tests._fault_worker import tiny_config
from vqjax import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_fault_worker.py")


def _run(workdir, idx_dir, steps, *, logs=None, **changes):
    config = tiny_config(idx_dir, steps)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    log = (lambda s: None) if logs is None else logs.append
    return training.train_and_evaluate(config, str(workdir), vqvae_mnist.build(config), log=log)


def _params(workdir, step):
    restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return jax.tree.leaves(restored["params"])


def _assert_same_params(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(idx_dir, tmp_path_factory):
    """An uninterrupted 9-step run (checkpoints at 3, 6, 9): its workdir and summary."""
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, _run(workdir, idx_dir, 9)


def _run_in_a_process(workdir, idx_dir, steps, *more):
    """The tiny run in a process of its own, as a user's next run would be (TensorStore's in-process
    cache would otherwise hide damage done to files the same process wrote)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, WORKER, str(workdir), idx_dir, str(steps), *more],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_kill_during_a_checkpoint_write_loses_nothing(idx_dir, tmp_path, reference):
    """SIGKILL while step 6's files sit in Orbax's temporary directory: the resume cleans it up,
    starts from step 3 and ends where an uninterrupted run ends."""
    proc = _run_in_a_process(tmp_path, idx_dir, 9, "--kill-at-save", "6")
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "3" in names and "6" not in names and any(n.startswith("6.orbax-checkpoint-tmp") for n in names), names

    logs = []
    summary = _run(tmp_path, idx_dir, 9, logs=logs)
    assert summary["resumed_from"] == 3 and any("step 3" in s for s in logs)
    assert not [n for n in os.listdir(tmp_path / "checkpoints") if "tmp" in n]  # the cut save is gone
    _assert_same_params(_params(tmp_path, 9), _params(reference[0], 9))
    assert summary["test"] == reference[1]["test"]


def _damage(step_dir, how):
    state = step_dir / "state"
    arrays = sorted((p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"),
                    key=lambda p: p.stat().st_size)
    if how == "truncated array file":
        for p in arrays:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "deleted array files":  # every data file (OCDBT keeps copies under state/d and the process's d)
        for p in arrays:
            p.unlink()
    elif how == "garbage metadata":
        (state / "_METADATA").write_text("{ not json")
    elif how == "deleted iterator state":
        for p in (step_dir / "data").glob("process_*.json"):
            p.unlink()
    else:
        raise AssertionError(how)


@pytest.fixture(scope="module")
def six_steps(idx_dir, tmp_path_factory):
    """A 6-step run (checkpoints at 3 and 6) written by another process; tests damage copies of it."""
    workdir = tmp_path_factory.mktemp("six_steps")
    proc = _run_in_a_process(workdir, idx_dir, 6)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return workdir


@pytest.mark.parametrize("how", ["truncated array file", "deleted array files", "garbage metadata",
                                 "deleted iterator state"])
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(idx_dir, tmp_path, reference, six_steps,
                                                                             how):
    shutil.copytree(six_steps, tmp_path, dirs_exist_ok=True)
    _damage(tmp_path / "checkpoints" / "6", how)

    logs = []
    summary = _run(tmp_path, idx_dir, 9, logs=logs)  # also a safe change: more steps
    assert any("Skipped the checkpoint at step 6" in s for s in logs), logs
    assert summary["resumed_from"] == 3
    assert (tmp_path / "checkpoints_broken" / "6" / "state").is_dir()  # kept aside, not deleted
    _assert_same_params(_params(tmp_path, 9), _params(reference[0], 9))
    assert summary["test"] == reference[1]["test"]


def test_every_checkpoint_damaged_starts_afresh_from_the_first_batch(idx_dir, tmp_path, reference, six_steps):
    shutil.copytree(six_steps, tmp_path, dirs_exist_ok=True)
    for step in (3, 6):
        _damage(tmp_path / "checkpoints" / str(step), "truncated array file")
    logs = []
    summary = _run(tmp_path, idx_dir, 9, logs=logs)
    assert sum("Skipped the checkpoint" in s for s in logs) == 2 and summary["resumed_from"] is None
    assert sorted(os.listdir(tmp_path / "checkpoints_broken")) == ["3", "6"]
    _assert_same_params(_params(tmp_path, 9), _params(reference[0], 9))


def test_changed_model_on_resume_is_a_clear_error_and_the_saved_config_stays(idx_dir, tmp_path):
    _run(tmp_path, idx_dir, 3)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError) as err:
        _run(tmp_path, idx_dir, 6, model__hidden=16, model__quantizer__codebook__num_codes=32)
    message = str(err.value)
    assert "--config.model.hidden: 8 when it started, 16 now" in message
    assert "--config.model.quantizer.codebook.num_codes: 16 when it started, 32 now" in message
    assert "new --workdir" in message
    assert (tmp_path / "config.json").read_text() == before  # load_model's readers still see the truth
    assert training.saved_config(str(tmp_path))["model"]["hidden"] == 8


def test_safe_changes_on_resume_are_allowed_and_recorded(idx_dir, tmp_path):
    _run(tmp_path, idx_dir, 3)
    logs = []
    summary = _run(tmp_path, idx_dir, 6, logs=logs, train__log_every=2, optimizer__learning_rate=5e-4,
                   model__beta=0.5)  # the loss weight β is the task's hyperparameter: safe too
    assert summary["resumed_from"] == 3 and summary["trained_steps_this_run"] == 3
    rows = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert rows == [{"step": 3, "changes": {"model.beta": [0.25, 0.5], "optimizer.learning_rate": [1e-3, 5e-4],
                                            "train.log_every": [1, 2], "train.steps": [3, 6]}}]
    assert training.saved_config(str(tmp_path))["optimizer"]["learning_rate"] == 5e-4
    assert any("Resuming with changed settings" in s for s in logs)


def test_a_run_saved_before_a_setting_existed_resumes(idx_dir, tmp_path):
    """A run started by an older vqjax has no entry for a newer setting: it resumes with the default."""
    _run(tmp_path, idx_dir, 3)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["data"]["image_size"], saved["train"]["micro_batches"]  # settings this round added
    (tmp_path / "config.json").write_text(json.dumps(saved))
    summary = _run(tmp_path, idx_dir, 6)
    assert summary["resumed_from"] == 3
    rows = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert rows[0]["changes"]["data.image_size"] == [None, 0]


def _diverging_above(task, threshold):
    """``task`` whose loss turns NaN from its 5th step when the learning rate exceeds ``threshold``:
    a divergence that a lower learning rate cures (a real blow-up leaves every checkpoint kept at
    every step at huge but finite parameters; this one is deterministic)."""
    def objective(model, batch, *, key, step, hparams, weights=None):
        loss, metrics = task.objective(model, batch, key=key, step=step, hparams=hparams, weights=weights)
        blow_up = (hparams["optimizer.learning_rate"] > threshold) & (step >= 4)
        loss = loss * jnp.where(blow_up, jnp.nan, 1.0)  # NaN loss and gradients
        return loss, dict(metrics, loss=loss)
    return dataclasses.replace(task, objective=objective)


def test_resume_after_a_non_finite_loss_with_a_lower_learning_rate(idx_dir, tmp_path):
    """What NonFiniteLossError's message promises: lower the learning rate and run again."""
    config = tiny_config(idx_dir, 8)
    config.train.checkpoint_every = 1
    config.optimizer.learning_rate = 2e-2
    with pytest.raises(training.NonFiniteLossError, match="lower the learning rate") as err:
        training.train_and_evaluate(config, str(tmp_path), _diverging_above(vqvae_mnist.build(config), 1e-2),
                                    log=lambda s: None)
    assert "at or before step 5" in str(err.value) and "last good checkpoint (step 4)" in str(err.value)

    config.optimizer.learning_rate = 1e-3
    logs = []
    summary = training.train_and_evaluate(config, str(tmp_path), _diverging_above(vqvae_mnist.build(config), 1e-2),
                                          log=logs.append)
    assert summary["resumed_from"] == 4 and summary["trained_steps_this_run"] == 4
    assert any("optimizer.learning_rate 0.02 -> 0.001" in s for s in logs)
    assert np.isfinite(summary["test"]["loss"]) and all(np.isfinite(x).all() for x in _params(tmp_path, 8))


def test_unwritable_workdir_is_a_clear_error_before_anything_runs(idx_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="is not a writable directory") as err:
        _run(blocker / "run", idx_dir, 3)
    assert str(blocker / "run") in str(err.value)


def test_full_disk_at_a_save_names_the_path_and_the_last_good_step(idx_dir, tmp_path, monkeypatch):
    save = ocp.CheckpointManager.save

    def full_at_six(self, step, *args, **kwargs):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_six)
    with pytest.raises(OSError, match="No space left on device") as err:
        _run(tmp_path, idx_dir, 9)
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"checkpoint of step 6 to {tmp_path / 'checkpoints'}" in message
    assert "last complete checkpoint is step 3" in message
    monkeypatch.undo()
    assert _run(tmp_path, idx_dir, 9)["resumed_from"] == 3  # and the run resumes from it


def test_cut_metrics_line_is_skipped_on_resume(idx_dir, tmp_path):
    _run(tmp_path, idx_dir, 3)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "tra')  # a kill in the middle of a line
    _run(tmp_path, idx_dir, 6)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert training.read_metrics(str(tmp_path)) == rows


def test_json_files_are_written_atomically(tmp_path):
    """config.json, summary.json and sweep.json go through write_json: a dump that fails half-way
    leaves the old file whole and no temporary file behind."""
    path = str(tmp_path / "summary.json")
    training.write_json(path, {"steps": 1})
    with pytest.raises(TypeError):
        training.write_json(path, {"steps": 2, "bad": object.__new__(type("Unserializable", (), {"__str__": None}))})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 1}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_changed_model_on_a_sweep_resume_is_a_clear_error(idx_dir, tmp_path):
    sweep = training.parse_sweep("model.beta=0.1,1")
    base = tiny_config(idx_dir, 3)
    training.train_sweep(base, sweep, str(tmp_path), vqvae_mnist.build, log=lambda s: None)
    before = (tmp_path / "model.beta=0.1" / "config.json").read_text()
    base.train.steps, base.model.hidden = 6, 16
    with pytest.raises(ValueError, match=r"--config.model.hidden: 8 when it started, 16 now"):
        training.train_sweep(base, sweep, str(tmp_path), vqvae_mnist.build, log=lambda s: None)
    assert (tmp_path / "model.beta=0.1" / "config.json").read_text() == before


def test_load_model_with_another_architecture_names_the_array(idx_dir, tmp_path):
    _run(tmp_path, idx_dir, 3)
    other = tiny_config(idx_dir, 3)
    other.model.hidden = 16
    with pytest.raises(ValueError, match=r"does not fit the model: params/decoder/conv1/bias is \(8,\) in the "
                                         r"checkpoint and \(16,\) in the model"):
        training.load_model(str(tmp_path), lambda rngs: vqvae_mnist.make_model(other, rngs))
    same = training.load_model(str(tmp_path), lambda rngs: vqvae_mnist.make_model(tiny_config(idx_dir, 3), rngs))
    _assert_same_params(jax.tree.leaves(nnx.state(same, nnx.Param)), _params(tmp_path, 3))
