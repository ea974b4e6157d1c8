"""The loop of one run: train, checkpoint, resume, evaluate on the test split, report."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from vqjax import data as data_lib
from vqjax.training import _checkpoints, _evaluation, _mesh, _rundir, _steps
from vqjax.training._metrics import MetricsWriter
from vqjax.training._state import all_finite, init_train_state
from vqjax.training._task import LEARNING_RATE, Task, learning_rate_schedule, task_hparams


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def check_config(config) -> None:
    """The shared config blocks' values a loop relies on (:data:`vqjax.training.CONFIG_RULES`): a
    ValueError listing every bad value with its flag (``--config.train.log_every``)."""
    from vqjax.training._config import CONFIG_RULES, validate

    validate(config, CONFIG_RULES)


def check_batch_size(batch_size: int, num_devices: int, *, what: str = "devices") -> None:
    """The global training batch is split evenly over the data devices: a clear error if it cannot be."""
    if batch_size % num_devices:
        up = -(-batch_size // num_devices) * num_devices
        raise ValueError(
            f"`--config.data.batch_size`={batch_size} must be a multiple of the number of {what}, {num_devices}: "
            f"each takes an equal share of the global batch (e.g. --config.data.batch_size={up}, "
            f"{up // num_devices} per device).")


def sources(config, *, log=print):
    """``(train, test)`` sources of ``config.data``."""
    kw = data_lib.source_options(config.data)
    return (data_lib.get_source(split="train", log=log, **kw),
            data_lib.get_source(split="test", log=lambda s: None, **kw))


def data_seed(config) -> int:
    """The seed of the training data's order: ``config.data.seed``, else ``config.seed``."""
    seed = config.data.get("seed", None)
    return int(config.seed if seed is None or seed < 0 else seed)


def initial_state(task: Task, config, train_src, steps: int):
    """``(graphdef, TrainState, optimizer)`` of a fresh run: the model from ``config.seed``, ``task.init`` applied."""
    model = task.model(nnx.Rngs(int(config.seed)))
    if task.init is not None:  # a resumed run overwrites this with the checkpoint
        order = np.random.default_rng(data_seed(config)).permutation(len(train_src))[:int(config.data.batch_size)]
        images = np.stack([train_src[int(i)]["image"] for i in np.sort(order)])
        task.init(model, {"image": images.astype(np.float32) / 255.0},
                  jax.random.fold_in(jax.random.key(int(config.seed)), 1))

    def optimizer(hparams):
        return task.optimizer(learning_rate_schedule(config.optimizer, steps, hparams.get(LEARNING_RATE)), hparams)

    hp = {k: jnp.float32(v) for k, v in task_hparams(task, config).items()}
    graphdef, state = init_train_state(model, optimizer(hp), seed=int(config.seed))
    return graphdef, state, optimizer


def report(task: Task, model, counts, test_src, workdir: str, summary: dict) -> None:
    """Each reporter of ``task`` on the trained model; their entries join ``summary``. The test-set code
    counts (or None) are ``summary["_counts"]`` while they run, and are not written."""
    if counts is not None:
        summary["_counts"] = counts
    for reporter in task.reporters:
        summary.update(reporter(model, test_src, workdir, summary) or {})
    summary.pop("_counts", None)


def run_summary(*, steps: int, start: int, latest, train_seconds: float, batch_size: int, sources, num_devices: int,
                num_params: int, test: dict, config, wall_seconds: float | None = None) -> dict:
    """The entries of a run's ``summary.json`` (a sweep adds ``"sweep"``)."""
    train_src, test_src = sources
    return {
        "steps": steps,
        "resumed_from": latest,
        "trained_steps_this_run": steps - start,
        "train_seconds_this_run": round(train_seconds, 2),
        "images_per_sec": round((steps - start) * batch_size / train_seconds, 1) if train_seconds else None,
        "wall_seconds_this_run": wall_seconds,
        "data_source": train_src.name,
        "train_examples": len(train_src),
        "test_examples": len(test_src),
        "num_devices": num_devices,
        "num_params": num_params,
        "test": test,
        "config": config.to_dict(),
    }


def mean_metrics(pending: list[dict]) -> dict:
    """The mean over logged steps of each scalar metric (``[R]`` per run for stacked runs)."""
    return {k: np.mean(np.stack([np.asarray(m[k]) for m in pending]), axis=0) for k in pending[0]}


# Steps dispatched but not finished, at most. XLA's CPU client lets 32 computations per device queue up
# and runs them on a pool of one thread per device: with several CPU devices and a collective, a host
# 32 steps ahead starves the pool and the all-reduce deadlocks (docs/cpu-devices.md). A few steps in
# flight keep any device busy.
MAX_STEPS_IN_FLIGHT = 8


def scalars(metrics: dict, ndim: int = 0) -> dict:
    """The metrics worth a log line: no ``sum/`` or ``counts`` entries, ``ndim``-dimensional values."""
    return {k: v for k, v in metrics.items() if "/" not in k and jnp.ndim(v) == ndim}


def train_and_evaluate(config, workdir: str, task: Task, *, devices=None, log=print) -> dict:
    """Train one run of ``task``, checkpoint, resume, evaluate on the test split, report; the summary.

    ``config`` has the shared blocks ``seed``, ``data`` (``dataset``, ``idx_dir``,
    ``tfds_data_dir``, ``seed``, ``batch_size``, ``eval_batch_size``), ``optimizer``
    (``learning_rate``, ``warmup_steps``, ``schedule``) and ``train`` (``steps``, ``log_every``,
    ``checkpoint_every``, ``eval_every``, ``keep_checkpoints``), as ``experiments/configs/common.py``
    declares them. ``devices`` (default: all) form the ``"data"`` mesh; the global batch is split
    evenly over them (evaluation batches are padded to a multiple of their number).

    Running again with the same ``workdir`` resumes from the newest checkpoint that restores (a
    damaged one is set aside, see :func:`restore_latest`); a finished run only evaluates and
    reports. On resume, settings that shape the model or its state must be unchanged (a clear
    ``ValueError`` lists any that differ); the learning rate, the step count and the logging
    cadence may change and are recorded in ``config_changes.jsonl``. A non-finite loss or
    parameters stop the run with :class:`NonFiniteLossError` (its last good checkpoint stays). An
    unwritable workdir or a failed checkpoint write raises ``OSError`` naming the path (and the
    last complete step).

    After training the test split is evaluated with ``task.objective`` and each of
    ``task.evaluations``; on process 0 the reporters draw pictures, and ``summary.json`` is written.
    """
    _mesh.maybe_initialize_distributed()
    t_start = time.perf_counter()
    check_config(config)
    _rundir.check_workdir(workdir)
    is_main = jax.process_index() == 0
    steps, batch_size = int(config.train.steps), int(config.data.batch_size)
    eval_batch_size = int(config.data.eval_batch_size)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if saved_steps := _checkpoints.finished_steps(ckpt_dir):  # a resume: only safe settings may change
        _rundir.check_resume_config(workdir, config, step=saved_steps[-1], also=task.hparams,
                                    legacy=task.legacy_defaults, log=log if is_main else (lambda s: None))
    if is_main:  # what load_model's callers rebuild the model from
        _checkpoints.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    mesh = _mesh.make_mesh(devices)
    check_batch_size(batch_size, mesh.size)

    train_src, test_src = sources(config, log=log if is_main else (lambda s: None))
    train_iter = data_lib.make_pipeline(train_src, batch_size=batch_size, seed=data_seed(config))
    graphdef, state, optimizer = initial_state(task, config, train_src, steps)
    hparams = {k: jnp.float32(v) for k, v in task_hparams(task, config).items()}
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    with jax.set_mesh(mesh):
        state, hparams = _mesh.replicate((state, hparams), mesh)
        mgr = _checkpoints.checkpoint_manager(ckpt_dir, keep=int(config.train.get("keep_checkpoints", 3)))
        latest, restored, skipped = _checkpoints.restore_latest(mgr, state, train_iter, log=log)
        if latest is not None:
            state = _mesh.replicate(restored, mesh)
            log(f"Resumed from the checkpoint at step {latest} in {workdir}.")
        elif skipped:  # no checkpoint restored: start afresh, the data from its first batch
            train_iter = data_lib.make_pipeline(train_src, batch_size=batch_size, seed=data_seed(config))
        start = int(state.step)
        micro = micro_batches(config, task, state, mesh, log=log if is_main and start < steps else (lambda s: None))
        train_step = jax.jit(_steps.train_step_fn(graphdef, optimizer, task.objective, micro_batches=micro),
                             donate_argnums=0)
        eval_step = _steps.make_eval_step(graphdef, task.objective)
        writer = MetricsWriter(workdir, start, enabled=is_main)

        log_every, ckpt_every = int(config.train.log_every), int(config.train.checkpoint_every)
        eval_every = int(config.train.get("eval_every", 0))
        pending: list[dict] = []
        t_interval, n_interval, train_seconds = time.perf_counter(), 0, 0.0
        bar = tqdm(total=steps, initial=start, desc="train", disable=not is_main or start >= steps,
                   dynamic_ncols=True, mininterval=1.0)
        step = start
        profile = _Profile(int(config.train.get("profile_steps", 0)), start, workdir, log, enabled=is_main)
        while step < steps:
            profile.before(step)
            state, metrics = train_step(state, _mesh.shard_batch(next(train_iter), mesh), hparams)
            step += 1
            profile.after(step, state)
            n_interval += 1
            pending.append(scalars(metrics))
            if len(pending) > MAX_STEPS_IN_FLIGHT:  # the host never runs far ahead of the devices
                jax.block_until_ready(pending[-1 - MAX_STEPS_IN_FLIGHT]["loss"])
            bar.update(1)
            if step % log_every == 0 or step % ckpt_every == 0 or step == steps:
                mean = {k: float(v) for k, v in mean_metrics(pending).items()}
                losses = np.array([float(m["loss"]) for m in pending])
                pending = []
                elapsed = time.perf_counter() - t_interval
                train_seconds += elapsed
                mean["images_per_sec"] = n_interval * batch_size / elapsed
                t_interval, n_interval = time.perf_counter(), 0
                # A finite loss does not prove the update after it was finite: check both.
                if not (np.all(np.isfinite(losses)) and bool(jax.jit(all_finite)(state.params))):
                    bar.close()
                    _checkpoints.wait(mgr, step)
                    raise NonFiniteLossError(_non_finite_message(step, losses[-1], mgr.latest_step(), workdir))
                writer.write(step, "train", mean)
                bar.set_postfix(loss=f"{mean['loss']:.2f}", img_s=f"{mean['images_per_sec']:.0f}")
                if step % ckpt_every == 0 or step == steps:
                    _checkpoints.save(mgr, step, state, train_iter)
            if eval_every and step % eval_every == 0 and step < steps:
                t_eval = time.perf_counter()
                ev = _evaluation.evaluate(eval_step, state, test_src, mesh, batch_size=eval_batch_size, hparams=hparams)
                ev.pop("_counts", None)
                writer.write(step, "eval", ev)
                t_interval += time.perf_counter() - t_eval  # evaluation time is not training time
        bar.close()
        profile.after(steps, state, last=True)
        _checkpoints.wait(mgr, steps)
        mgr.close()

        ev = _evaluation.evaluate(eval_step, state, test_src, mesh, batch_size=eval_batch_size, hparams=hparams)
        for name, extra in task.evaluations.items():
            more = _evaluation.evaluate(_steps.make_eval_step(graphdef, extra.objective), state, test_src, mesh,
                                        batch_size=extra.batch_size, desc=f"test {name}", hparams=hparams)
            ev.update({k: v for k, v in more.items() if k not in ("num_examples", "_counts")})
        counts = ev.pop("_counts", None)
        writer.write(steps, "test", ev)
        writer.close()

        summary = run_summary(steps=steps, start=start, latest=latest, train_seconds=train_seconds,
                              batch_size=batch_size, sources=(train_src, test_src), num_devices=mesh.size,
                              num_params=num_params, test=ev, config=config)
        summary["micro_batches"] = micro
        if is_main:
            report(task, nnx.merge(graphdef, jax.device_get(state.params), jax.device_get(state.rest)), counts,
                   test_src, workdir, summary)
            summary["wall_seconds_this_run"] = round(time.perf_counter() - t_start, 2)
            _checkpoints.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def micro_batches(config, task: Task, state, mesh, *, log=print) -> int:
    """``config.train.micro_batches``, or (0) :func:`auto_micro_batches` for a per-example task whose
    model has no state a step changes; 1 otherwise. An explicit value > 1 that the task cannot take
    is a ``ValueError`` naming the flag."""
    asked = int(config.train.get("micro_batches", 0))
    per_device = int(config.data.batch_size) // mesh.size
    splittable = task.per_example and _steps.has_only_hyperparameter_state(state.rest)
    if asked > 1 and not splittable:
        why = ("its objective is not a mean of per-example terms" if not task.per_example else
               "its model has state the objective updates (an EMA codebook or batch statistics)")
        raise ValueError(f"`--config.train.micro_batches`={asked} cannot split this task's batch: {why}, so the "
                         "parts' mean would not be the batch's gradient. Use 0 (automatic) or 1.")
    if asked > 1 and per_device % asked:
        raise ValueError(f"`--config.train.micro_batches`={asked} must divide each device's batch, "
                         f"{per_device} (--config.data.batch_size={config.data.batch_size} over {mesh.size} devices).")
    if asked:
        return asked
    if not splittable:
        return 1
    device = mesh.devices.flat[0]
    threads = max(1, _mesh.usable_cores() // max(1, len(mesh.local_devices)))
    m = _steps.auto_micro_batches(per_device, platform=device.platform, threads_per_device=threads)
    if m > 1:
        log(f"Each step's batch runs as {m} concurrent micro-batches of {per_device // m} per device "
            "(the gradient is their mean; --config.train.micro_batches=1 turns this off).")
    return m


class _Profile:
    """A ``jax.profiler`` trace of ``num_steps`` training steps after the first one of this run (which
    compiles), written to ``workdir/tensorboard`` (TensorBoard's profile tab; process 0 only)."""

    def __init__(self, num_steps: int, start: int, workdir: str, log, *, enabled: bool = True):
        self.first, self.last = start + 1, start + 1 + num_steps
        self.on = enabled and num_steps > 0
        self.dir, self.log, self.tracing = os.path.join(workdir, "tensorboard"), log, False

    def before(self, step: int) -> None:
        if self.on and step == self.first:
            jax.profiler.start_trace(self.dir)
            self.tracing = True

    def after(self, step: int, state, *, last: bool = False) -> None:
        if self.tracing and (step == self.last or last):
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False
            self.log(f"Profiled steps {self.first + 1}-{step} into {self.dir} (TensorBoard's profile tab).")


def _non_finite_message(step: int, loss: float, good: int | None, workdir: str) -> str:
    kept = (f"The last good checkpoint (step {good}) is kept in {workdir}/checkpoints; lower the learning rate "
            "(--config.optimizer.learning_rate) and run again to resume from it."
            if good is not None else
            "No checkpoint was saved before it; lower the learning rate (--config.optimizer.learning_rate) and "
            f"start again (remove {workdir}).")
    return f"Non-finite loss or parameters at or before step {step} (loss={loss}); stopping. {kept}"
