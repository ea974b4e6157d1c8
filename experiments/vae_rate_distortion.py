"""The rate-distortion trade-off of the β-VAE: one trained model per β, one point per model.

    python -m experiments.vae_rate_distortion
    python -m experiments.vae_rate_distortion --config.betas='(0.5, 1, 2)' --config.train.steps=2000
    python -m experiments.vae_rate_distortion --config.betas='()' --config.model.beta=4   # one run

Each β trains the model of :mod:`experiments.vae_mnist` on ``-log p(x|z) + β KL`` in
``workdir/model.beta=<β>`` and reports the test rate ``KL(q(z|x) || p(z))`` and distortion
``-E_q log p(x|z)`` in nats. The runs train side by side in one compiled program
(:func:`vqjax.training.train_sweep`: states stacked, the same batches) and resume together (the
group's checkpoints are in ``workdir/_groups/``). β = 1 is the VAE; larger β buys a lower rate with
more distortion (Alemi et al., 2018, "Fixing a broken ELBO", draw the same plane). Writes
``rate_distortion.png`` and ``sweep.json``.

The config is :func:`experiments.vae_mnist.get_config` with the β-VAE objective and no IWAE bound
(the sweep reports rate and distortion; the IWAE bound is ``vae_mnist``'s), plus ``betas``.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import _program, vae_mnist
from vqjax import training

BETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def get_config() -> ml_collections.ConfigDict:
    c = vae_mnist.get_config()
    c.model.objective = "beta_vae"
    c.eval.iwae_samples = 0  # the sweep reports rate and distortion; the IWAE bound is vae_mnist's
    c.betas = BETAS  # the program's sweep: one run per β
    return c


# Every field of get_config(): experiments.vae_mnist's, and the β of the sweep (empty: one run).
CONFIG_RULES = {**vae_mnist.CONFIG_RULES, "betas": training.sequence(training.number(min=0))}


def check_betas(config, where: str = "--config") -> list[str]:
    """``betas`` sweep the β of the β-VAE."""
    if config.betas and config.model.objective != "beta_vae":
        objective = training.flag("model.objective", where)
        return [(f"{training.flag('betas', where)} sweeps the β of the β-VAE: {objective} must be 'beta_vae'; "
                f"got {config.model.objective!r}.")]
    return []


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`, vae_mnist's combinations, :func:`check_betas`)."""
    training.validate(config, CONFIG_RULES, where=where, extra=(vae_mnist.check_combinations, check_betas))


def get_sweep():
    """The program's β sweep (``python -m experiments.sweep --config=experiments/vae_rate_distortion.py``).

    One seed: :func:`experiments.vae_mnist.get_sweep` is the same β × 3 seeds.
    """
    return training.values("model.beta", BETAS)


def build(config: ml_collections.ConfigDict) -> training.Task:
    """:func:`experiments.vae_mnist.build`: β (``model.beta``) and the learning rate are sweepable."""
    return vae_mnist.build(config)


def sweep_betas(config: ml_collections.ConfigDict) -> list[float]:
    """``config.betas`` as floats, checked (the objective must be the β-VAE's)."""
    betas = [float(b) for b in config.betas]
    if not betas or any(not b >= 0 for b in betas):
        raise ValueError(f"`config.betas` must be non-negative numbers; got {tuple(config.betas)!r}.")
    if config.model.objective != "beta_vae":
        raise ValueError("`config.betas` sweeps the β of the β-VAE: `config.model.objective` must be 'beta_vae'; "
                         f"got {config.model.objective!r}.")
    return betas


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    """Train one model per β of ``config.betas`` side by side; returns ``{"runs": [...]}`` and writes
    ``rate_distortion.png`` and ``sweep.json``."""
    from vqjax import viz

    check_config(config)
    betas = sweep_betas(config)
    base = config.copy_and_resolve_references()
    base.betas = ()  # each run's config is one run
    summaries = training.train_sweep(base, training.values("model.beta", betas), workdir, build, log=log)
    rows = []
    for beta, s in zip(betas, summaries):
        t = s["test"]
        rows.append({"beta": beta, "rate": t["rate"], "distortion": t["distortion"], "elbo": t["elbo"],
                     "active_units": s.get("active_units"), "steps": s["steps"], "data_source": s["data_source"],
                     "run": s["sweep"]["name"], "diverged": s["sweep"]["diverged"]})
    result = {"runs": rows, "config": config.to_dict()}
    if jax.process_index() != 0:
        return result
    drawn = [r for r in rows if not r["diverged"]]
    if drawn:
        viz.save_curve(os.path.join(workdir, "rate_distortion.png"), [r["rate"] for r in drawn],
                       [r["distortion"] for r in drawn], labels=[f"β={r['beta']:g}" for r in drawn],
                       xlabel="rate: KL(q(z|x) || p(z)), nats", ylabel="distortion: −log p(x|z), nats",
                       title=f"β-VAE on binarized MNIST ({drawn[0]['steps']} steps per β)")
    training.write_json(os.path.join(workdir, "sweep.json"), result)
    return result


def format_table(result: dict) -> str:
    lines = ["| β | rate (nats) | distortion (nats) | −ELBO (nats) | active units |", "|---|---|---|---|---|"]
    for r in result["runs"]:
        beta = f"{r['beta']:g}" + (" (diverged)" if r.get("diverged") else "")
        lines.append(f"| {beta} | {r['rate']:.2f} | {r['distortion']:.2f} | {-r['elbo']:.2f} | "
                     f"{r['active_units']} |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size, config.eval.iwae_batch_size))
    if not config.betas:  # one run at config.model.beta
        summary = training.train_and_evaluate(config, _WORKDIR.value, build(config))
        print(vae_mnist.format_test(summary) + f"  -> {_WORKDIR.value}")
        return
    result = run(config, _WORKDIR.value)
    print(format_table(result))
    print(f"-> {_WORKDIR.value}/rate_distortion.png, sweep.json")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vae_rate_distortion", "Where the runs, the plot and sweep.json go.")
    app.run(main)
