"""Checkpoints: an Orbax ``CheckpointManager`` of the train state and the Grain iterator; ``load_model``."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils


def checkpoint_manager(directory: str, *, keep: int = 3) -> ocp.CheckpointManager:
    """An Orbax manager of ``directory`` that keeps the newest ``keep`` steps; the loop decides when to save."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=1,
        create=True,
        cleanup_tmp_directories=True,  # a save cut short by a kill is removed on restart
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def finished_steps(directory: str) -> list[int]:
    """The steps whose checkpoint was finalised (renamed from its temporary name) in ``directory``."""
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _save_error(mgr: ocp.CheckpointManager, step: int, err: Exception) -> OSError:
    try:  # an earlier step may still be writing in the background
        mgr.wait_until_finished()
    except Exception:  # noqa: BLE001 - the same failure again
        pass
    good = finished_steps(str(mgr.directory))
    last = (f"the last complete checkpoint is step {good[-1]}, which a run with the same --workdir resumes from"
            if good else "no checkpoint was completed before it")
    return OSError(getattr(err, "errno", None) or errno.EIO,
                   f"Could not write the checkpoint of step {step} to {mgr.directory} ({type(err).__name__}: "
                   f"{str(err).splitlines()[0] if str(err) else ''}); {last}. Free space there (or fix its "
                   "permissions) and run again.")


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter) -> None:
    """Save ``state`` (any pytree: a run's :class:`TrainState` or a sweep group's) and the iterator at ``step``.

    A failed write (a full or read-only disk) raises ``OSError`` naming the directory and the last
    complete step; a save cut short by a kill leaves only a temporary directory, removed on restart.
    """
    try:
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=grain.checkpoint.CheckpointSave(data_iter)))
    except Exception as err:  # Orbax and TensorStore raise many types for an I/O failure
        raise _save_error(mgr, step, err) from err


def wait(mgr: ocp.CheckpointManager, step: int) -> None:
    """Wait for the background writes of ``mgr`` (the checkpoint of ``step`` the latest); errors as :func:`save`."""
    try:
        mgr.wait_until_finished()
    except Exception as err:
        raise _save_error(mgr, step, err) from err


def restore(mgr: ocp.CheckpointManager, step: int, target: Any, data_iter) -> Any:
    """The state saved at ``step``, laid out like ``target``; ``data_iter`` is moved to where it was."""
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                         data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored["state"]


def _mismatch(metadata: Any, target: Any) -> str | None:
    """``"<array> is <saved shape> in the checkpoint and <shape> in ..."`` for the first array whose shape
    (or presence) differs between a checkpoint's ``metadata`` and ``target``; None when all fit."""
    saved, want = _shapes(metadata), _shapes(target)
    for name in sorted(set(want) | set(saved)):
        if want.get(name) != saved.get(name):
            return f"{name} is {saved.get(name, 'missing')} in the checkpoint and {want.get(name, 'absent')}"
    return None


def _check_fits(directory: str, step: int, metadata: Any, target: Any) -> None:
    """Raise ``ValueError`` naming the first array that differs between the checkpoint's ``metadata``
    and ``target``: a changed config, not a damaged file."""
    if (bad := _mismatch(metadata, target)) is not None:
        raise ValueError(f"The checkpoint of step {step} in {directory} does not fit the train state: {bad} now. "
                         "Run with the config it was trained with, or start a fresh --workdir.")


def set_aside(directory: str, step: int) -> str:
    """Move the checkpoint of ``step`` out of ``directory`` to ``<directory>_broken/<step>``; its new path."""
    aside = os.path.join(f"{directory}_broken", str(step))
    n = 1
    while os.path.exists(aside):
        aside, n = os.path.join(f"{directory}_broken", f"{step}.{n}"), n + 1
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.move(os.path.join(directory, str(step)), aside)
    return aside


def restore_latest(mgr: ocp.CheckpointManager, target: Any, data_iter, *, log=print) -> tuple[int | None, Any, list]:
    """``(step, state, skipped)``: the newest checkpoint of ``mgr`` that restores.

    A checkpoint whose files are damaged (cut short, deleted, unreadable) is skipped: it is moved
    to ``<checkpoints>_broken/<step>`` (kept, not deleted), the log says which step and why, and the
    next newer one is tried. ``skipped`` lists the skipped steps; ``(None, None, skipped)`` when
    none restores (then ``data_iter`` may have moved: make a fresh one). A checkpoint that is whole
    but does not fit ``target`` (another model) raises ``ValueError`` instead.
    """
    directory, skipped = str(mgr.directory), []
    for step in sorted(mgr.all_steps(), reverse=True):
        why = "its metadata does not read"
        try:
            saved = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "state"))
            saved = getattr(saved, "item_metadata", saved)
        except Exception as err:  # noqa: BLE001 - Orbax and TensorStore raise many types for a damaged file
            saved, why = None, _first_line(err)
        if saved and jax.tree.leaves(saved):  # readable metadata (Orbax returns none when it cannot read it)
            _check_fits(directory, step, saved, target)  # whole files of another model: a clear error
            try:
                return step, restore(mgr, step, target, data_iter), skipped
            except Exception as err:  # noqa: BLE001
                why = _first_line(err)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"vqjax_set_aside_{step}")
        aside = set_aside(directory, step) if jax.process_index() == 0 else f"{directory}_broken/{step}"
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"vqjax_set_aside_done_{step}")
        log(f"Skipped the checkpoint at step {step}: its files do not restore (damaged or cut short: {why}); "
            f"moved it to {aside}.")
        skipped.append(step)
        mgr.reload()
    return None, None, skipped


def _first_line(err: Exception, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:limit]}"


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: a temporary file, then a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
    finally:  # a failed dump leaves the old file whole and no temporary behind
        if os.path.exists(tmp):
            os.remove(tmp)


def saved_config(workdir: str) -> dict | None:
    """The config a run in ``workdir`` was started with, as a dict, or None."""
    for name, key in (("config.json", None), ("summary.json", "config")):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            return saved if key is None else saved.get(key)
    return None


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """``{"encoder/conv1/kernel": shape}`` of a state or of its checkpoint metadata."""
    def name(path) -> str:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        return "/".join(p for p in parts if p != "value")

    return {name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def load_model(workdir: str, model_fn: Callable[[nnx.Rngs], nnx.Module], *, step: int | None = None) -> nnx.Module:
    """The model a :func:`train_and_evaluate` run saved in ``workdir``: ``model_fn``'s architecture
    with the parameters and other variables of its latest checkpoint (or of ``step``). Only those are
    read (a partial restore), so it works whatever optimizer the run used.

    Raises ``FileNotFoundError`` when ``workdir`` holds no checkpoint and ``ValueError`` naming the
    first variable whose shape (or presence) differs between the checkpoint and ``model_fn``'s model.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = sorted(ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)).all_steps()) \
        if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {directory}: train the model there first (or point to the "
                                "workdir of a run that saved checkpoints).")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"No checkpoint of step {step} in {directory}; it has steps {steps}.")
    graphdef, params, rest = nnx.split(model_fn(nnx.Rngs(0)), nnx.Param, ...)
    target = {"params": params, "rest": rest}
    saved = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "state"))
    saved = getattr(saved, "item_metadata", saved)
    for part in ("params", "rest"):
        if (bad := _mismatch(saved[part], target[part])) is not None:
            raise ValueError(f"The checkpoint in {directory} (step {step}) does not fit the model: {part}/{bad} "
                             "in the model. Build the model with the config the checkpoint was trained with.")
    mgr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                     partial_restore=True)  # params and rest; not the optimizer state
    state = mgr.restore(step, args=ocp.args.Composite(state=args))["state"]
    mgr.close()
    # Host (NumPy) values, as reporters get: usable on any device or mesh.
    return nnx.merge(graphdef, jax.device_get(state["params"]), jax.device_get(state["rest"]))
