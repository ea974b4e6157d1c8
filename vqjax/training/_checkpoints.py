"""Checkpoints: an Orbax ``CheckpointManager`` of the train state and the Grain iterator; ``load_model``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx


def checkpoint_manager(directory: str, *, keep: int = 3) -> ocp.CheckpointManager:
    """An Orbax manager of ``directory`` that keeps the newest ``keep`` steps; the loop decides when to save."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=1,
        create=True,
        cleanup_tmp_directories=True,  # a save cut short by a kill is removed on restart
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter) -> None:
    """Save ``state`` (any pytree: a run's :class:`TrainState` or a sweep group's) and the iterator at ``step``."""
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           data=grain.checkpoint.CheckpointSave(data_iter)))


def restore(mgr: ocp.CheckpointManager, step: int, target: Any, data_iter) -> Any:
    """The state saved at ``step``, laid out like ``target``; ``data_iter`` is moved to where it was."""
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                         data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored["state"]


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: a temporary file, then a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


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
        want, got = _shapes(target[part]), _shapes(saved[part])
        for name in sorted(set(want) | set(got)):
            if want.get(name) != got.get(name):
                raise ValueError(
                    f"The checkpoint in {directory} (step {step}) does not fit the model: {part}/{name} is "
                    f"{got.get(name, 'missing')} in the checkpoint and {want.get(name, 'absent')} in the model. "
                    "Build the model with the config the checkpoint was trained with.")
    mgr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                     partial_restore=True)  # params and rest; not the optimizer state
    state = mgr.restore(step, args=ocp.args.Composite(state=args))["state"]
    mgr.close()
    # Host (NumPy) values, as reporters get: usable on any device or mesh.
    return nnx.merge(graphdef, jax.device_get(state["params"]), jax.device_get(state["rest"]))
