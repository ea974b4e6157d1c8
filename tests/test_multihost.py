"""Multi-host through ``jax.distributed``, for real: 2 processes on localhost, 4 CPU devices each.

A tiny VQ-VAE sweep (4 runs: β × seed) trains over the 8 global devices of two processes (a
``("runs", "data")`` mesh of 4 × 2: runs 0-1 on process 0, runs 2-3 on process 1; the processes
talk through the coordinator and gloo on 127.0.0.1 only). The 2-process job is SIGKILLed once the
group's first checkpoint is written and restarted; its final results must equal, bit for bit, those
of the same sweep in one process with 8 devices, and only process 0 may write run files.

How each process is set up (JAX 0.10.2)::

    JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=4
    JAX_COORDINATOR_ADDRESS=127.0.0.1:<port> JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1>

``vqjax.training`` (``maybe_initialize_distributed``) then selects the gloo CPU collectives and calls
``jax.distributed.initialize``, with the coordinator bound to the loopback address.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_multihost_worker.py")
STEPS, CHECKPOINT_EVERY = 6, 3
SWEEP = "model.beta=0.1,0.25 * seed=0,1"
RUNS = ["model.beta=0.1,seed=0", "model.beta=0.1,seed=1", "model.beta=0.25,seed=0", "model.beta=0.25,seed=1"]
TIMEOUT = 600  # seconds for a whole launch; a loaded 2-core machine needs ~2 min


def _flags(workdir, idx_dir):
    return ["--config=experiments/vqvae_mnist.py", f"--sweep={SWEEP}", f"--workdir={workdir}",
            f"--config.data.idx_dir={idx_dir}", "--config.model.hidden=8", "--config.model.residual_hidden=4",
            "--config.model.num_residual=1", "--config.model.quantizer.codebook.num_codes=16",
            "--config.model.quantizer.codebook.code_dim=4", "--config.data.batch_size=16",
            "--config.data.eval_batch_size=32", f"--config.train.steps={STEPS}", "--config.train.log_every=2",
            f"--config.train.checkpoint_every={CHECKPOINT_EVERY}", "--config.train.eval_every=0"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict:
    """The test's environment without anything that would configure JAX's processes or devices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "VQJAX_DISTRIBUTED"}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    return env


class Job:
    """The processes of one launch of the sweep: ``n`` processes with ``8 / n`` CPU devices each."""

    def __init__(self, name, tmp_path, workdir, idx_dir, n):
        self.name, self.procs, self.logs, self.writes = name, [], [], []
        port = _free_port()
        for i in range(n):
            env = _base_env()
            env["JAX_NUM_CPU_DEVICES"] = str(8 // n)
            self.writes.append(tmp_path / f"{name}.writes{i}")
            env["VQJAX_TEST_WRITES"] = str(self.writes[i])
            if n > 1:
                env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n),
                           JAX_PROCESS_ID=str(i))
            self.logs.append(tmp_path / f"{name}.log{i}")
            with open(self.logs[i], "w") as out:
                self.procs.append(subprocess.Popen([sys.executable, WORKER, *_flags(workdir, idx_dir)], cwd=ROOT,
                                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def log(self, i=0) -> str:
        return self.logs[i].read_text() if self.logs[i].exists() else ""

    def report(self) -> str:
        return "\n".join(f"--- {self.name} process {i} (exit {p.poll()}):\n{self.log(i)[-3000:]}"
                         for i, p in enumerate(self.procs))

    def running(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def wait(self, deadline) -> None:
        while any(p.poll() is None for p in self.procs):
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} timed out\n{self.report()}")
            if any(p.poll() not in (None, 0) for p in self.procs):
                time.sleep(2)  # let the other process say why, then stop it
                self.kill()
                break
            time.sleep(0.2)
        assert all(p.returncode == 0 for p in self.procs), f"{self.name} failed\n{self.report()}"

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the session this test started for the process
        for p in self.procs:
            p.wait()

    def written(self, i, workdir) -> list[str]:
        """Run files process ``i`` wrote under ``workdir`` (relative paths), checkpoints left out."""
        root = os.path.abspath(workdir)
        paths = self.writes[i].read_text().split() if self.writes[i].exists() else []
        rel = [os.path.relpath(p, root) for p in paths if p.startswith(root + os.sep)]
        return sorted({r for r in rel if "checkpoints" not in r.split(os.sep)})


def _summary(workdir, run):
    with open(os.path.join(workdir, run, "summary.json")) as f:
        return json.load(f)


def _metrics(workdir, run):
    with open(os.path.join(workdir, run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(workdir, run):
    import orbax.checkpoint as ocp

    restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, run, "checkpoints", str(STEPS), "state"))
    return [np.asarray(x) for x in __import__("jax").tree.leaves(restored["params"])]


def _files(workdir, run):
    """A run directory's files, without the checkpoints' insides and TensorBoard's event file names."""
    d = os.path.join(workdir, run)
    return sorted(n for n in os.listdir(d) if n not in ("checkpoints", "tensorboard"))


def test_two_processes_train_a_sweep_and_resume_after_sigkill_like_one(idx_dir, tmp_path):
    t0 = time.time()
    one, two = tmp_path / "one", tmp_path / "two"
    jobs = []
    try:
        # The reference (one process, 8 devices) runs beside the 2-process job that is killed.
        jobs.append(single := Job("single", tmp_path, one, idx_dir, 1))
        jobs.append(killed := Job("killed", tmp_path, two, idx_dir, 2))
        first = os.path.join(two, "_groups", "*", "checkpoints", str(CHECKPOINT_EVERY))
        while not glob.glob(first) and killed.running() and time.time() < t0 + TIMEOUT:
            time.sleep(0.05)
        killed.kill()
        assert glob.glob(first), f"no group checkpoint appeared before the kill\n{killed.report()}"
        assert not any(os.path.exists(os.path.join(two, r, "summary.json")) for r in RUNS), \
            "the sweep finished before it could be killed"
        assert killed.written(1, two) == [], "process 1 wrote run files"

        jobs.append(resumed := Job("resumed", tmp_path, two, idx_dir, 2))
        resumed.wait(time.time() + TIMEOUT)
        single.wait(t0 + 2 * TIMEOUT)
    finally:
        for job in jobs:
            job.kill()

    # It was a 2-process job over 8 devices, and it resumed from the group's checkpoint.
    assert "4 runs in 1 group(s) of [4] on 8 device(s)" in resumed.log(0)
    assert f"Resumed the group of 4 runs from its checkpoint at step {CHECKPOINT_EVERY}" in resumed.log(0)
    for run in RUNS:
        s1, s2 = _summary(one, run), _summary(two, run)
        assert s2["num_devices"] == s1["num_devices"] == 8
        assert s2["sweep"]["mesh"] == s1["sweep"]["mesh"] == {"runs": 4, "data": 2}
        assert s2["resumed_from"] == CHECKPOINT_EVERY and s2["trained_steps_this_run"] == STEPS - CHECKPOINT_EVERY
        # The same results as one process, exactly: test metrics, every logged line, final parameters.
        assert s2["test"] == s1["test"], run
        assert s2["test"]["num_examples"] == 96
        assert _metrics(two, run) == _metrics(one, run), run
        for a, b in zip(_params(two, run), _params(one, run), strict=True):
            np.testing.assert_array_equal(a, b)
        # The same outputs (config, metrics, summary, pictures), each written once, no temporary left.
        assert _files(two, run) == _files(one, run), run
        assert {"config.json", "metrics.jsonl", "summary.json", "reconstructions.png"} <= set(_files(two, run))
        assert len(os.listdir(os.path.join(two, run, "tensorboard"))) >= 1
    assert not glob.glob(os.path.join(two, "**", "*.tmp*"), recursive=True)
    # Distinct runs really differ (β and the seed reach each run).
    assert len({json.dumps(_summary(one, r)["test"], sort_keys=True) for r in RUNS}) == len(RUNS)

    # Only process 0 writes run files and the sweep's results; process 1 only its checkpoint shards.
    assert resumed.written(1, two) == []
    written0 = resumed.written(0, two)
    for run in RUNS:
        for name in ("summary.json", "metrics.jsonl", "reconstructions.png"):
            assert any(p.startswith(os.path.join(run, name)) for p in written0), (run, name, written0)
    assert {"results.md", "results.csv", "sweep.json"} <= set(written0)
    assert "runs done" in resumed.log(0) and "runs done" not in resumed.log(1)
