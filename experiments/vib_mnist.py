"""The information bottleneck on MNIST: a classifier through a stochastic bottleneck, swept over β.

    python -m experiments.vib_mnist                                          # 7 values of β, ~20 min on 2 cores
    python -m experiments.vib_mnist --config.betas='(1e-4, 1e-2)' --workdir=runs/vib_two
    python -m experiments.vib_mnist --config.data.idx_dir=/path/to/mnist
    python -m experiments.vib_mnist --config.betas='()' --config.model.beta=1e-3   # one run

For each β it trains the deep VIB of Alemi et al. (2017) — an MLP encoder 784-1024-1024 to a
Gaussian ``q(z|x)`` over K = 256 latents, a softmax classifier ``q(y|z)`` — on
``-log q(y|z) + β KL(q(z|x) || N(0, I))``, in ``workdir/model.beta=<β>``. The runs train side by
side in one compiled program (:func:`vqjax.training.train_sweep`: states stacked, the same batches)
and resume together (the group's checkpoints are in ``workdir/_groups/``). It then reports test
accuracy against the rate (the KL, an upper bound on ``I(x; z)``) and ``H(Y) - cross-entropy`` (a
lower bound on ``I(z; Y)``, with ``H(Y)`` the entropy of the test split's own labels, not ``log 10``),
writes ``sweep.json`` and draws ``vib_curve.png``: the notes' ``max I(z; Y) - β I(x; z)`` traded off
along β. With ``--config.betas='()'`` it trains one model at
``config.model.beta`` in ``workdir``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import _program
from experiments.configs import common
from vqjax import data, objectives, training
from vqjax.nn import MLPEncoder, VIBClassifier

BETAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def get_config() -> ml_collections.ConfigDict:
    """Alemi et al.'s MNIST model, trained for ~5 epochs per β (the paper: 200 epochs of batch 100, lr 1e-4).

    The batch is 128 rather than the paper's 100 so that it splits over 1, 2, 4 or 8 devices.

    One device per CPU core (``cpu_devices_per_core``) helps conv nets, not these MLPs (XLA's
    threaded matmul is as fast), and XLA:CPU can deadlock an all-reduce when a large threaded
    matmul shares the pool: off by default.
    """
    c = common.base_config(
        data={"batch_size": 128, "eval_batch_size": 500},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 0},
        train={"steps": 2400, "log_every": 100, "checkpoint_every": 1000, "keep_checkpoints": 2})
    c.betas = BETAS  # the program's sweep: one run per β
    c.model = ml_collections.ConfigDict({
        "hidden": (1024, 1024), "latents": 256, "num_classes": 10,
        "beta": 1e-3,  # one run's β; a sweep sets it per run from c.betas
        "num_eval_samples": 12,  # softmax averaged over 12 samples of z at test time, as in the paper
    })
    return c


def get_sweep():
    """The program's β sweep (``python -m experiments.sweep --config=experiments/vib_mnist.py``)."""
    return training.values("model.beta", BETAS)


# Every field of get_config(). β = inf is accepted: a run that diverges is marked and the sweep goes on.
CONFIG_RULES = {
    **training.CONFIG_RULES,
    "betas": training.sequence(training.number(min=0, allow_inf=True)),  # empty: one run at model.beta
    "model.hidden": training.int_sequence(min_len=0, min=1),  # the encoder's widths
    "model.latents": training.integer(min=1),
    "model.num_classes": training.integer(min=2),
    "model.beta": training.number(min=0, allow_inf=True),
    "model.num_eval_samples": training.integer(min=1),
}


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`): a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where)


def build_model(config: ml_collections.ConfigDict, rngs) -> VIBClassifier:
    m = config.model
    dtype = jnp.dtype(config.dtype)
    enc = MLPEncoder(_program.image_shape(config), m.latents, hidden=tuple(m.hidden), rngs=rngs,  # the data's
                     dtype=dtype)
    return VIBClassifier(enc, latents=m.latents, num_classes=m.num_classes, rngs=rngs, dtype=dtype)


def build(config: ml_collections.ConfigDict) -> training.Task:
    """The loop's task: β (``model.beta``) and the learning rate are sweepable."""
    check_config(config)
    m = config.model

    def objective(model, batch, *, key, step, hparams, weights=None):
        del step
        return objectives.vib_objective(model, batch, key=key, beta=hparams["model.beta"],
                                        num_eval_samples=m.num_eval_samples, weights=weights)

    return training.Task(model=lambda rngs: build_model(config, rngs), objective=objective,
                         hparams={"model.beta": m.beta})


def sweep_betas(config: ml_collections.ConfigDict) -> list[float]:
    """``config.betas`` as floats, checked."""
    betas = [float(b) for b in config.betas]
    if not betas or any(not b >= 0 for b in betas):
        raise ValueError(f"`config.betas` must be non-negative numbers; got {tuple(config.betas)!r}.")
    return betas


def eval_source(config: ml_collections.ConfigDict) -> data.ImageSource:
    """The test split the runs are evaluated on (the loop's choice of source for ``config.data``)."""
    return data.get_source(split="test", log=lambda s: None, **data.source_options(config.data))


def label_entropy(source: data.ImageSource, num_classes: int) -> float:
    """``H(Y)`` in nats of the labels of ``source``: the entropy of their empirical distribution, so
    that ``H(Y) - cross-entropy`` on that split is a lower bound on ``I(z; Y)`` (``log num_classes``
    only for exactly balanced classes)."""
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{source.name}: labels must be in [0, {num_classes}) (`config.model.num_classes`); "
                         f"got {len(labels)} labels in [{labels.min(initial=0)}, {labels.max(initial=0)}].")
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    """Train one model per β of ``config.betas`` side by side (:func:`vqjax.training.train_sweep`);
    returns ``{"runs": [...], "h_y": ...}`` and writes ``vib_curve.png`` and ``sweep.json``."""
    betas = sweep_betas(config)
    base = config.copy_and_resolve_references()
    base.betas = ()  # each run's config is one run
    summaries = training.train_sweep(base, training.values("model.beta", betas), workdir, build, log=log)
    rows = []
    for beta, s in zip(betas, summaries):
        t = s["test"]
        rows.append({"beta": beta, "accuracy": t["accuracy"], "error": t["error"], "rate": t["rate"],
                     "cross_entropy": t["cross_entropy"], "steps": s["steps"],
                     "train_seconds": s["train_seconds_this_run"], "data_source": s["data_source"],
                     "run": s["sweep"]["name"], "diverged": s["sweep"]["diverged"]})
    h_y = label_entropy(eval_source(config), config.model.num_classes)  # the split the CE is measured on
    for r in rows:
        r["i_zy_lower_bound"] = h_y - r["cross_entropy"]
    result = {"runs": rows, "h_y": h_y, "config": config.to_dict()}
    if jax.process_index() == 0:
        plot(result, os.path.join(workdir, "vib_curve.png"))
        training.write_json(os.path.join(workdir, "sweep.json"), result)
    return result


def plot(result: dict, path: str) -> None:
    """Test error against rate, both on log scales, one labelled point per β (diverged runs left out)."""
    from vqjax import viz

    rows = [r for r in result["runs"] if not r.get("diverged")]
    if not rows:
        return
    viz.save_curve(path, [r["rate"] for r in rows], [100 * r["error"] for r in rows],
                   labels=[f"β={r['beta']:g}" for r in rows], xlabel="rate: KL(q(z|x) || r(z)) ≥ I(x; z), nats",
                   ylabel="test error, %", title=f"VIB on MNIST ({rows[0]['steps']} steps per β)", logx=True,
                   logy=True)


def format_table(result: dict) -> str:
    lines = ["| β | test error | rate KL (nats) ≥ I(x;z) | I(z;Y) ≥ H(Y) − CE (nats) |", "|---|---|---|---|"]
    for r in result["runs"]:
        beta = f"{r['beta']:g}" + (" (diverged)" if r.get("diverged") else "")
        lines.append(f"| {beta} | {100 * r['error']:.2f} % | {r['rate']:.2f} | {r['i_zy_lower_bound']:.3f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    if not config.betas:  # one run at config.model.beta
        summary = training.train_and_evaluate(config, _WORKDIR.value, build(config))
        t = summary["test"]
        print(f"β = {config.model.beta:g}: test error {100 * t['error']:.2f} %, rate {t['rate']:.2f} nats, "
              f"cross-entropy {t['cross_entropy']:.3f} nats  -> {_WORKDIR.value}")
        return
    result = run(config, _WORKDIR.value)
    print(format_table(result))
    print(f"-> {_WORKDIR.value}/vib_curve.png, sweep.json")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vib_mnist", "Where the runs, the curve and sweep.json go.")
    app.run(main)
