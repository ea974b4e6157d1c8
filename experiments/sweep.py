"""Run any experiment's sweep: many runs per compiled program, one group per shape.

    python -m experiments.sweep --config=experiments/vqvae_mnist.py \\
        --sweep='model.beta=0.1,0.25,0.5,1 * seed=0,1' --workdir=runs/vqvae_beta
    python -m experiments.sweep --config=experiments/vae_mnist.py --workdir=runs/vae_rd   # its get_sweep()
    python -m experiments.sweep --config=experiments/vae_mnist.py --list                  # the members
    python -m experiments.sweep --config=experiments/vae_mnist.py --sweep_index=3         # member 3 only
    python -m experiments.sweep --config=experiments/vae_mnist.py --collect               # table of what is done

``--config`` is the experiment's file (its ``get_config()``; ``--config.train.steps=500`` and other
overrides apply to every member). ``--sweep`` is factors joined by ``*`` (their product), each
``path=v1,v2,...``; paths joined by ``;`` in one factor are zipped. Without it the experiment's
``get_sweep()`` is used.

Runs that differ only in the seed and the experiment's hyperparameters (β, the learning rate, ...)
train together in one program (their states stacked on a runs axis of a ``("runs", "data")`` mesh)
and read the same batches (``config.data.seed``); runs of another shape (codebook size,
architecture) form another group. A run that diverges is frozen and marked; the others go on.

Output: ``<workdir>/<run name>/`` for each run (an ordinary run directory: ``config.json``,
``checkpoints/``, ``metrics.jsonl``, ``summary.json``, pictures), then ``sweep.json``,
``results.md``, ``results.csv``, ``<metric>_vs_<hyperparameter>.png`` (seeds as spread) and the
experiment's own picture if it has a ``report_sweep(rows, workdir)`` (the VAE: ``rate_distortion.png``).
The same ``--workdir`` resumes every run exactly.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import _program
from vqjax import training, viz

_PLACEMENT = flags.DEFINE_enum("placement", None, ["vmap", "loop", "waves"],
                               "How a device trains its runs: vmapped in one program (GPU/TPU default), one after "
                               "another in one program, or one run per device per program call (CPU default).")
_SWEEP = flags.DEFINE_string("sweep", None, "The sweep, e.g. 'model.beta=0.1,1 * seed=0,1'; default: get_sweep().")
_INDEX = flags.DEFINE_integer("sweep_index", None, "Train only this member (for a cluster's job arrays).")
_CPU_DEVICES = flags.DEFINE_bool("cpu_devices_per_core", True,
                                 "On a CPU host, one XLA device per core, each training its own runs (no collectives).")
_LIST = flags.DEFINE_bool("list", False, "Print the members (index, name, group) and exit.")
_COLLECT = flags.DEFINE_bool("collect", False, "Only gather the finished runs' summaries into the table and plots.")


def experiment_module(config_path: str):
    """The experiment program a ``--config=experiments/<name>.py`` flag points to."""
    path = os.path.abspath(config_path.split(":")[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rel = os.path.relpath(path, here)
    if not rel.startswith("..") and rel.endswith(".py"):
        return importlib.import_module(rel[:-3].replace(os.sep, "."))
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_of(module, text: str | None):
    if text:
        return training.parse_sweep(text)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{module.__name__} has no get_sweep(): give the sweep with --sweep='path=v1,v2 * ...'.")
    return module.get_sweep()


def check_members(module, members) -> None:
    """Every member's config against the experiment's rules (its ``check_config``; without one, the
    shared blocks' :data:`vqjax.training.CONFIG_RULES`), before any run trains: a ValueError naming
    each bad member and flag."""
    check = getattr(module, "check_config", None) or (lambda c: training.validate(c, training.CONFIG_RULES))
    bad = []
    for m in members:
        try:
            check(m.config)
        except ValueError as err:
            lines = str(err).splitlines()
            bad.append(f"Sweep member {m.index} ({m.name}): " + "\n    ".join(lines))
    if bad:
        raise ValueError("\n".join(bad))


def swept_paths(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r["overrides"]))


def collect(workdir: str, members) -> list[dict]:
    """One row per member that has a ``summary.json``: overrides, test metrics, diverged, time."""
    rows = []
    for m in members:
        path = os.path.join(workdir, m.name, "summary.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            s = json.load(f)
        sweep = s.get("sweep", {})
        rows.append({"index": m.index, "name": m.name, "overrides": m.overrides,
                     "diverged": bool(sweep.get("diverged", False)),
                     "diverged_at_step": sweep.get("diverged_at_step"),
                     "train_seconds": s.get("train_seconds_this_run"),
                     "test": {k: v for k, v in s["test"].items() if isinstance(v, (int, float))}})
    return rows


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_results(workdir: str, rows: list[dict], *, wall_seconds: float | None = None) -> str:
    """``sweep.json``, ``results.md``, ``results.csv`` and the plots; returns the markdown table."""
    paths = swept_paths(rows)
    metrics = list(dict.fromkeys(k for r in rows for k in r["test"] if k != "num_examples"))
    training.write_json(os.path.join(workdir, "sweep.json"), {"runs": rows, "wall_seconds": wall_seconds})
    header = [*paths, *metrics, "diverged", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            cells = [r["overrides"].get(p, "") for p in paths] + [r["test"].get(k, "") for k in metrics] + [
                f"at step {r['diverged_at_step']}" if r["diverged"] else "no", r["train_seconds"]]
            w.writerow(cells)
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    table = "\n".join(lines)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    seeds = [p for p in paths if p == "seed"]
    for x in (p for p in paths if p != "seed"):
        others = [p for p in paths if p not in (x, *seeds)]
        for metric in metrics:
            series = {}
            for r in rows:
                if r["diverged"] or not isinstance(r["overrides"].get(x), (int, float)) or metric not in r["test"]:
                    continue
                label = ", ".join(f"{p}={_fmt(r['overrides'].get(p))}" for p in others) or metric
                series.setdefault(label, []).append((r["overrides"][x], r["test"][metric]))
            if series:
                viz.save_sweep_plot(os.path.join(workdir, f"{metric}_vs_{x.split('.')[-1]}.png"), series,
                                    xlabel=x, ylabel=f"test {metric}")
    return table


def run(module, config, workdir: str | None = None, *, sweep_text: str | None = None, index: int | None = None,
        placement: str | None = None, cpu_devices_per_core: bool = True, list_only: bool = False,
        collect_only: bool = False) -> None:
    """Train (or list, or collect) the sweep of the experiment ``module`` on ``config`` (this program's
    flags, one argument each): what ``python -m experiments.sweep`` does, for programs that run their
    own sweep (``python -m experiments.disentanglement``)."""
    _program.start()
    sweep = sweep_of(module, sweep_text)
    members = training.make_members(config, sweep)
    if not collect_only:  # a bad value in any run fails now, not after the runs before it trained
        check_members(module, members)
    if cpu_devices_per_core:  # one single-threaded XLA:CPU device per core, at most one per run
        training.use_cpu_cores_as_devices((), max_devices=1 if index is not None else len(members))
    build = getattr(module, "sweep_build", module.build)  # a program whose build needs more than the config
    workdir = workdir or os.path.join("runs", f"sweep_{module.__name__.split('.')[-1]}")
    if list_only:
        groups = training.group_members(members, build)
        gid = {m.index: g for g, group in enumerate(groups) for m in group}
        for m in members:
            print(f"{m.index}\t{m.name}\tgroup {gid[m.index]}")
        return
    wall = None
    if not collect_only:
        t0 = time.perf_counter()
        training.train_sweep(config, sweep, workdir, build, index=index, placement=placement)
        wall = time.perf_counter() - t0
    if jax.process_index() == 0:
        rows = collect(workdir, members)
        table = write_results(workdir, rows, wall_seconds=wall if index is None else None)
        if hasattr(module, "report_sweep"):  # the experiment's own picture of its sweep
            module.report_sweep(rows, workdir)
        print(table)
        print(f"{len(rows)} of {len(members)} runs done -> {workdir}/results.md, results.csv, sweep.json")


def run_with_flags(module, config, workdir: str | None) -> None:
    """:func:`run` with this module's flags (``--sweep``, ``--sweep_index``, ``--placement``, ``--list``,
    ``--collect``, ``--cpu_devices_per_core``): the ``main`` of a program that runs its own sweep."""
    run(module, config, workdir, sweep_text=_SWEEP.value, index=_INDEX.value, placement=_PLACEMENT.value,
        cpu_devices_per_core=_CPU_DEVICES.value, list_only=_LIST.value, collect_only=_COLLECT.value)


def main(argv):
    del argv
    run_with_flags(experiment_module(config_flags.get_config_filename(flags.FLAGS["config"])), _CONFIG.value,
                   _WORKDIR.value)


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_file("config", None, "The experiment's file, e.g. experiments/vae_mnist.py.")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs and the results go (default runs/sweep_<name>).")
    flags.mark_flag_as_required("config")
    app.run(main)
