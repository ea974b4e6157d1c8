"""The rate-distortion trade-off of the β-VAE: one trained model per β, one point per model.

    python -m experiments.vae_rate_distortion
    python -m experiments.vae_rate_distortion --config.betas='(0.5, 1, 2)' --config.vae.train.steps=2000

Each β trains the model of :mod:`experiments.vae_mnist` on ``-log p(x|z) + β KL`` in
``workdir/beta=<β>`` (resumable) and reports the test rate ``KL(q(z|x) || p(z))`` and distortion
``-E_q log p(x|z)`` in nats. β = 1 is the VAE; larger β buys a lower rate with more distortion
(Alemi et al., 2018, "Fixing a broken ELBO", draw the same plane). Writes ``rate_distortion.png``
and ``sweep.json``.
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import _program, vae_mnist


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.betas = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    c.vae = vae_mnist.get_config()
    c.vae.model.objective = "beta_vae"
    c.vae.eval.iwae_samples = 0  # the sweep reports rate and distortion; the IWAE bound is vae_mnist's
    return c


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    from vqjax import viz

    def set_beta(c, beta):
        c.model.objective, c.model.beta = "beta_vae", beta

    rows = []
    for beta, s in _program.beta_sweep(config.betas, config.vae, workdir, set_beta=set_beta,
                                       build=vae_mnist.build, log=log):
        t = s["test"]
        rows.append({"beta": beta, "rate": t["rate"], "distortion": t["distortion"], "elbo": t["elbo"],
                     "active_units": s.get("active_units"), "steps": s["steps"], "data_source": s["data_source"]})
    viz.save_curve(os.path.join(workdir, "rate_distortion.png"), [r["rate"] for r in rows],
                   [r["distortion"] for r in rows], labels=[f"β={r['beta']:g}" for r in rows],
                   xlabel="rate: KL(q(z|x) || p(z)), nats", ylabel="distortion: −log p(x|z), nats",
                   title=f"β-VAE on binarized MNIST ({rows[0]['steps']} steps per β)")
    result = {"runs": rows, "config": config.to_dict()}
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def format_table(result: dict) -> str:
    lines = ["| β | rate (nats) | distortion (nats) | −ELBO (nats) | active units |", "|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['beta']:g} | {r['rate']:.2f} | {r['distortion']:.2f} | {-r['elbo']:.2f} | "
                     f"{r['active_units']} |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    v = config.vae
    _program.start(cpu_devices_per_core=v.cpu_devices_per_core,
                   batch_sizes=(v.data.batch_size, v.data.eval_batch_size, v.eval.iwae_batch_size))
    result = run(config, _WORKDIR.value)
    print(format_table(result))
    print(f"-> {_WORKDIR.value}/rate_distortion.png, sweep.json")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vae_rate_distortion", "Where the runs, the plot and sweep.json go.")
    app.run(main)
