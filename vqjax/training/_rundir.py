"""The run directory: writable before anything runs; a resumed run's config checked against the saved one."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping

import jax

from vqjax.training import _checkpoints

# Settings a resumed run may change: they shape neither the train state nor the model, nor the
# meaning of the steps already taken (the data order, the seed). Everything else is fixed at start.
RESUMABLE = (
    "train.",  # steps, log_every, checkpoint_every, eval_every, keep_checkpoints
    "optimizer.",  # learning rate (e.g. lowered after a NonFiniteLossError), warm-up, schedule
    "eval.",  # an experiment's evaluation settings (e.g. the IWAE bound's K and batch)
    "data.eval_batch_size",
    "data.idx_dir",  # the same data may live in another folder on another machine
    "data.tfds_data_dir",
    "cpu_devices_per_core",
    # The computation dtype: parameters, optimizer state and EMA statistics are float32 in either, so the
    # checkpoint is the same pytree (e.g. continue a bfloat16 run from a TPU in float32 on a CPU).
    "dtype",
)


def check_workdir(workdir: str) -> None:
    """Create ``workdir`` and (on process 0) write a probe file there; ``OSError`` naming the path if it cannot."""
    probe = os.path.join(workdir, f".write-probe-{uuid.uuid4().hex}")
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
    except OSError as err:
        raise OSError(err.errno, f"The workdir {os.path.abspath(workdir)} is not a writable directory "
                                 f"({err.strerror}); choose another --workdir.") from err


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"model.quantizer.kind": "vq", ...}`` of a nested config dict."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, config: dict) -> dict[str, list]:
    """``{path: [saved value, new value]}`` of every leaf that differs (JSON-normalised: tuples are lists)."""
    old, new = flatten(saved), flatten(json.loads(json.dumps(config, default=str)))
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def resumable(path: str, also: Iterable[str] = ()) -> bool:
    """Whether a resumed run may change the setting ``path`` (:data:`RESUMABLE`, or one of ``also``)."""
    return path.startswith(RESUMABLE) or path in set(also)


def check_resume_config(workdir: str, config, *, step: int, also: Iterable[str] = (),
                        legacy: Mapping[str, object] | None = None, log=print) -> dict:
    """Before resuming ``workdir`` from its checkpoint of ``step``: compare ``config`` with the saved one.

    A changed setting that shapes the train state or the model (anything not :func:`resumable`; the
    task's loss weights ``also`` are; settings the saved config lacks, newer than the run, are, unless
    ``legacy`` gives the value they had then and the config differs from it) raises ``ValueError`` listing
    each change, and nothing is
    written. Allowed changes are logged and appended to ``config_changes.jsonl`` (with ``step``);
    ``config.json`` is then rewritten by the caller. Returns the changes.
    """
    saved = _checkpoints.saved_config(workdir)
    if saved is None:
        return {}
    changes = config_changes(saved, config.to_dict())
    # A setting the saved config does not have was added to vqjax after the run started: the run
    # resumes with its default (a new setting's default keeps the old behaviour), recorded as a change.
    known = flatten(saved)
    fixed = {k: v for k, v in changes.items() if not resumable(k, also) and k in known}
    # A newer setting whose default changed the behaviour (Task.legacy_defaults): the run had its legacy value.
    now = flatten(config.to_dict())
    older = {k: (old, now[k]) for k, old in (legacy or {}).items()
             if k not in known and k in now and now[k] != old and not resumable(k, also)}
    fixed.update(older)
    if fixed:
        lines = "\n".join(f"  --config.{k}: {old!r} when it started{' (before the setting existed)' * (k in older)}, "
                          f"{new!r} now" for k, (old, new) in fixed.items())
        raise ValueError(
            f"The run in {workdir} was started with another config, and these settings cannot change on resume "
            f"(they shape the model, its state or the steps already taken; its checkpoint is at step {step}):\n"
            f"{lines}\nRun with the saved values (in {os.path.join(workdir, 'config.json')}), or start a fresh "
            "run in a new --workdir.")
    if changes:
        log("Resuming with changed settings: " + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items()))
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "changes": changes}) + "\n")
    return changes
