"""Many runs in one program: a group of runs that share every array shape, stacked on a runs axis.

The group's train states are stacked on a leading axis ``[R, ...]`` and sharded over the mesh axis
``"runs"`` of a ``("runs", "data")`` mesh; one jitted step trains them all on the same batch, each
with its own hyperparameters (arrays ``[R]``) and its own seed. A run that diverges is frozen and
reported; the others go on. One Orbax checkpoint holds the stacked state, the diverged flags and the
data iterator, so a killed group resumes every run exactly. At the end each run is written out as
an ordinary run directory (``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``summary.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vqjax import data as data_lib
from vqjax.training import _checkpoints, _evaluation, _mesh, _rundir, _steps
from vqjax.training._loop import (
    check_batch_size,
    check_config,
    data_seed,
    initial_state,
    mean_metrics,
    report,
    run_summary,
    scalars,
    sources,
)
from vqjax.training._metrics import MetricsWriter
from vqjax.training._state import stack, unstack
from vqjax.training._sweep_spec import Overrides, apply_overrides, member_name
from vqjax.training._task import LEARNING_RATE, Task, task_hparams

__all__ = ["Member", "default_placement", "group_members", "make_members", "train_group", "train_sweep"]


@dataclasses.dataclass
class Member:
    """One run of a sweep: its index, name, overrides and full config."""

    index: int
    name: str
    overrides: Overrides
    config: object


def make_members(base_config, sweep: Sequence[Overrides]) -> list[Member]:
    """The sweep's runs, each ``base_config`` with its overrides (checked)."""
    members = [Member(i, member_name(o), dict(o), apply_overrides(base_config, o)) for i, o in enumerate(sweep)]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"The sweep has repeated members: {dup}.")
    return members


def sweepable(task: Task) -> set[str]:
    """Config paths whose values a group's runs may differ in: the seed and the task's hyperparameters."""
    return {"seed", LEARNING_RATE, *task.hparams, *task.state_hparams}


def _without(config_dict: dict, paths: set[str]) -> dict:
    out = json.loads(json.dumps(config_dict, default=str))
    for path in paths:
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return out


def group_members(members: Sequence[Member], build: Callable[[object], Task]) -> list[list[Member]]:
    """Members that differ only in sweepable paths (:func:`sweepable`) and build models of one
    structure (the same ``nnx`` graph: e.g. dead-code restarts on or off differ) form a group, in
    sweep order."""
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        task = build(m.config)
        graphdef = nnx.split(nnx.eval_shape(lambda t=task: t.model(nnx.Rngs(0))))[0]
        key = (json.dumps(_without(m.config.to_dict(), sweepable(task)), sort_keys=True), graphdef)
        groups.setdefault(key, []).append(m)
    return list(groups.values())


def default_placement() -> str:
    """``"waves"`` on XLA:CPU (one run per device at a time), ``"vmap"`` on GPU and TPU
    (``benchmarks/sweep.py`` measures each)."""
    return "waves" if jax.default_backend() == "cpu" else "vmap"


def group_id(members: Sequence[Member]) -> str:
    return hashlib.sha1(",".join(m.name for m in members).encode()).hexdigest()[:10]


def _check_same_shapes(members, states) -> None:
    ref = jax.tree_util.tree_structure(states[0]), [np.shape(x) for x in jax.tree.leaves(states[0])]
    for m, s in zip(members[1:], states[1:]):
        here = jax.tree_util.tree_structure(s), [np.shape(x) for x in jax.tree.leaves(s)]
        if here != ref:
            raise ValueError(f"Sweep member {m.name!r} has a train state of another structure or shape than "
                             f"{members[0].name!r} although they differ only in sweepable settings; a path the "
                             "experiment declares sweepable changes the model.")


def train_group(members: Sequence[Member], workdir: str, build: Callable[[object], Task], *,
                placement: str | None = None, devices: list | None = None, log=print) -> list[dict]:
    """Train the ``members`` of one group side by side; each run's summary (in member order).

    Run ``m`` is written to ``workdir/<m.name>/``; the group's checkpoints to
    ``workdir/_groups/<id>/checkpoints``. Running again resumes.
    """
    t_start = time.perf_counter()
    placement = placement or default_placement()
    config = members[0].config
    check_config(config)
    is_main = jax.process_index() == 0
    tasks = [build(m.config) for m in members]
    steps, batch_size = int(config.train.steps), int(config.data.batch_size)
    eval_batch_size = int(config.data.eval_batch_size)
    if (devices is None and jax.default_backend() == "cpu" and jax.process_count() == 1
            and not _mesh.device_count_from_environment()):
        # XLA:CPU can deadlock in a collective between its devices: with the CPU devices vqjax chose, a
        # run's batch is never split; the devices a group cannot fill with runs stay idle.
        runs_axis, _ = _mesh.sweep_mesh_shape(len(members), jax.device_count())
        devices = jax.devices()[:runs_axis]
    mesh = _mesh.make_sweep_mesh(len(members), devices)
    runs_axis, data_axis = mesh.shape[_mesh.RUNS_AXIS], mesh.shape[_mesh.DATA_AXIS]
    check_batch_size(batch_size, data_axis, what=f"devices of each run (the mesh is {runs_axis} runs x "
                                                f"{data_axis} data)")
    # Pad the group to a multiple of the runs axis with copies of its last run (not reported).
    padded = list(members) + [members[-1]] * (-len(members) % runs_axis)
    tasks += [tasks[-1]] * (len(padded) - len(members))
    quiet = lambda s: None
    train_src, test_src = sources(config, log=log if is_main else quiet)
    # Every process reads the whole batch: the runs axis may span processes.
    train_iter = data_lib.make_pipeline(train_src, batch_size=batch_size, seed=data_seed(config),
                                        process_index=0, process_count=1)
    built = [initial_state(t, m.config, train_src, steps) for t, m in zip(tasks, padded)]
    graphdef, _, optimizer = built[0]
    _check_same_shapes(padded, [b[1] for b in built])
    hparams = stack([{k: np.float32(v) for k, v in task_hparams(t, m.config).items()} for t, m in zip(tasks, padded)])
    # Chunks trained by turns, step by step: "waves" puts one run per device at a time.
    width = runs_axis if placement == "waves" else len(padded)
    chunks = [slice(i, i + width) for i in range(0, len(padded), width)]
    states = [stack([b[1] for b in built[c]]) for c in chunks]
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(built[0][1].params))
    del built
    hparams = [jax.tree.map(lambda x, c=c: x[c], hparams) for c in chunks]
    diverged = [np.zeros((c.stop - c.start,), bool) for c in chunks]
    runs = jax.P(_mesh.RUNS_AXIS)
    gdir = os.path.join(workdir, "_groups", group_id(members))
    run_dirs = [os.path.join(workdir, m.name) for m in members]
    saved_steps = _checkpoints.finished_steps(os.path.join(gdir, "checkpoints"))
    for m, d, t in zip(members, run_dirs, tasks):
        _rundir.check_workdir(d)
        if saved_steps:  # a resume: only safe settings may change
            _rundir.check_resume_config(d, m.config, step=saved_steps[-1], also=t.hparams,
                                        legacy=t.legacy_defaults, log=log if is_main else quiet)

    with jax.set_mesh(mesh):
        states, diverged, hparams = _mesh.put_global((states, diverged, hparams), mesh, runs)
        mgr = _checkpoints.checkpoint_manager(os.path.join(gdir, "checkpoints"),
                                              keep=int(config.train.get("keep_checkpoints", 3)))
        latest, restored, skipped = _checkpoints.restore_latest(mgr, {"state": states, "diverged": diverged},
                                                                train_iter, log=log)
        if latest is not None:
            states, diverged = restored["state"], restored["diverged"]
            log(f"Resumed the group of {len(members)} runs from its checkpoint at step {latest} in {gdir}.")
        elif skipped:  # no checkpoint restored: start afresh, the data from its first batch
            train_iter = data_lib.make_pipeline(train_src, batch_size=batch_size, seed=data_seed(config),
                                                process_index=0, process_count=1)
        start = latest or 0
        train_step = _steps.make_runs_train_step(graphdef, optimizer, tasks[0].objective, mesh, placement=placement)
        eval_step = _steps.make_runs_eval_step(graphdef, tasks[0].objective, mesh, placement=placement)
        writers = []
        for m, d in zip(members, run_dirs):
            if is_main:
                _checkpoints.write_json(os.path.join(d, "config.json"), m.config.to_dict())
            writers.append(MetricsWriter(d, start, enabled=is_main))

        def put_batch(tree):
            return _mesh.put_global(tree, mesh, jax.P(_mesh.DATA_AXIS))

        def evaluate(step_fn, size, desc=None):
            def all_chunks(b, w):
                outs = [_mesh.to_host(step_fn(s, b, w, hp)) for s, hp in zip(states, hparams)]
                return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

            totals = _evaluation.evaluate_totals(all_chunks, test_src, put_batch, batch_size=size, local=False,
                                                 multiple=data_axis, desc=desc)
            return [_evaluation.summarize({k: v[r] for k, v in totals.items()}) for r in range(len(members))]

        log_every, ckpt_every = int(config.train.log_every), int(config.train.checkpoint_every)
        eval_every = int(config.train.get("eval_every", 0))
        pending: list[dict] = []
        t_interval, n_interval, train_seconds = time.perf_counter(), 0, 0.0
        bar = tqdm(total=steps, initial=start, desc=f"train {len(members)} runs", dynamic_ncols=True,
                   disable=not is_main or start >= steps, mininterval=1.0)
        step = start
        while step < steps:
            batch = put_batch(next(train_iter))
            metrics = []
            for i in range(len(chunks)):
                states[i], diverged[i], m = train_step(states[i], diverged[i], batch, hparams[i])
                metrics.append(scalars(m, ndim=1))
            step += 1
            n_interval += 1
            pending.append(metrics)
            bar.update(1)
            if step % log_every == 0 or step % ckpt_every == 0 or step == steps:
                mean = mean_metrics([jax.tree.map(lambda *xs: np.concatenate(xs), *m) for m in _mesh.to_host(pending)])
                pending = []
                elapsed = time.perf_counter() - t_interval
                train_seconds += elapsed
                t_interval, n_interval = time.perf_counter(), 0
                flags = np.concatenate(_mesh.to_host(diverged))
                for r, writer in enumerate(writers):
                    if not flags[r]:
                        writer.write(step, "train", {k: v[r] for k, v in mean.items()})
                bar.set_postfix(diverged=int(flags[:len(members)].sum()))
                if step % ckpt_every == 0 or step == steps:
                    _checkpoints.save(mgr, step, {"state": states, "diverged": diverged}, train_iter)
            if eval_every and step % eval_every == 0 and step < steps:
                t_eval = time.perf_counter()
                for writer, ev in zip(writers, evaluate(eval_step, eval_batch_size)):
                    ev.pop("_counts", None)
                    writer.write(step, "eval", ev)
                t_interval += time.perf_counter() - t_eval
        bar.close()
        _checkpoints.wait(mgr, steps)
        mgr.close()

        tests = evaluate(eval_step, eval_batch_size)
        for name, extra in tasks[0].evaluations.items():
            more = evaluate(_steps.make_runs_eval_step(graphdef, extra.objective, mesh, placement=placement),
                            extra.batch_size, desc=f"test {name}")
            for ev, mo in zip(tests, more):
                ev.update({k: v for k, v in mo.items() if k not in ("num_examples", "_counts")})
        host_states, flags = _mesh.to_host((states, diverged))
        host_state, flags = jax.tree.map(lambda *xs: np.concatenate(xs), *host_states), np.concatenate(flags)

    summaries = []
    seconds_per_run = train_seconds / len(members)
    for r, (m, d, writer, ev) in enumerate(zip(members, run_dirs, writers, tests)):
        counts = ev.pop("_counts", None)
        writer.write(steps, "test", ev)
        writer.close()
        run_state = unstack(host_state, r)
        summary = run_summary(steps=steps, start=start, latest=latest, train_seconds=seconds_per_run,
                              batch_size=batch_size, sources=(train_src, test_src), num_devices=mesh.size,
                              num_params=num_params, test=ev, config=m.config,
                              wall_seconds=round(time.perf_counter() - t_start, 2))
        summary["sweep"] = {
            "name": m.name, "index": m.index, "overrides": m.overrides, "group": group_id(members),
            "group_size": len(members), "mesh": dict(mesh.shape), "placement": placement,
            "diverged": bool(flags[r]), "diverged_at_step": int(run_state.step) + 1 if flags[r] else None,
            "last_finite_step": int(run_state.step)}
        _write_run_checkpoint(d, run_state, steps, train_iter, keep=1)
        if is_main:
            if not flags[r]:  # a diverged run's last finite state may still decode to NaN: no pictures
                report(tasks[r], nnx.merge(graphdef, run_state.params, run_state.rest), counts, test_src, d, summary)
            _checkpoints.write_json(os.path.join(d, "summary.json"), summary)
        summaries.append(summary)
    return summaries


def _write_run_checkpoint(run_dir: str, state, step: int, data_iter, keep: int) -> None:
    """An ordinary run's checkpoint of one sweep member, which ``load_model`` and a run alone resume from.

    The group's data iterator is the one a single-process run alone of the same config would have.
    """
    mgr = _checkpoints.checkpoint_manager(os.path.join(run_dir, "checkpoints"), keep=keep)
    if mgr.latest_step() != step:
        _checkpoints.save(mgr, step, state, data_iter)
    _checkpoints.wait(mgr, step)
    mgr.close()
    # The iterator is a single-process run's (every process reads the whole batch): name its state so.
    if jax.process_count() > 1 and jax.process_index() == 0:
        d = os.path.join(run_dir, "checkpoints", str(step), "data")
        shutil.copyfile(os.path.join(d, f"process_0-of-{jax.process_count()}.json"),
                        os.path.join(d, "process_0-of-1.json"))


def train_sweep(base_config, sweep: Sequence[Overrides], workdir: str, build: Callable[[object], Task], *,
                index: int | None = None, placement: str | None = None, devices: list | None = None,
                log=print) -> list[dict]:
    """Train every member of ``sweep`` (or only member ``index``), group by group; the summaries.

    Members that differ only in the seed and the task's hyperparameters share one compiled program
    (:func:`group_members`); each group is trained by :func:`train_group`. All runs of a group read
    the same batches, in the order of ``config.data.seed``. ``devices`` (default: every device; on a
    single CPU host only as many as a group fills with runs, so that no run's batch is split across
    XLA:CPU devices) is the mesh's.
    """
    _mesh.maybe_initialize_distributed()
    members = make_members(base_config, sweep)
    if index is not None:
        if not 0 <= index < len(members):
            raise ValueError(f"`--sweep_index` must be in [0, {len(members)}); got {index}.")
        members = [members[index]]
    groups = group_members(members, build)
    log(f"{len(members)} runs in {len(groups)} group(s) of {[len(g) for g in groups]} on {jax.device_count()} "
        f"device(s), placement {placement or default_placement()!r}.")
    out: dict[int, dict] = {}
    for g in groups:
        for m, s in zip(g, train_group(g, workdir, build, placement=placement, devices=devices, log=log)):
            out[m.index] = s
    return [out[m.index] for m in members]
