"""Codebooks that stay alive: the VQ-VAE of :mod:`experiments.vqvae_mnist` with each quantizer, side by side.

    python -m experiments.vqvae_codebooks --config.base.data.idx_dir=/path/to/mnist
    python -m experiments.vqvae_codebooks --config.variants='("vq", "ema_restart")' --config.base.train.steps=500
    python -m experiments.vqvae_codebooks --config.base.model.quantizer.codebook.num_codes=64

``config.base`` is :mod:`experiments.vqvae_mnist`'s config (every one of its flags, under ``base.``);
each variant overrides its ``model.quantizer`` (see ``VARIANTS``).

Every variant trains the same network for the same steps in ``workdir/<variant>`` (resumable; a finished
run only re-evaluates; each with vqvae_mnist's pictures: reconstructions, code usage, perplexity and the
codebook projection) and reports test MSE, perplexity, the share of codes used and the dead codes over
all 49 latents of every test image. Writes ``comparison.json``, ``comparison.md`` and
``perplexity_comparison.png`` (test-set perplexity over training, one curve per variant).
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import _program, vqvae_mnist
from vqjax import training

# name -> (description, config.model.quantizer overrides)
EMA_RESTART = {"kind": "ema", "ema": {"dead_code_threshold": 1.0}}
VARIANTS = {
    "vq": ("plain VQ (codebook loss), K = 512", {"codebook": {"dead_code_threshold": 0.0}}),  # the paper's
    "ema": ("EMA VQ, K = 512", {"kind": "ema"}),
    "ema_restart": ("EMA VQ + dead-code restarts (< 1 vector/batch)", EMA_RESTART),
    "ema_restart_kmeans": ("EMA + restarts, k-means init", {**EMA_RESTART, "codebook": {"init": "lloyd"}}),
    "fsq5555": ("FSQ (5, 5, 5, 5) = 625 codes", {"kind": "fsq", "fsq": {"levels": (5, 5, 5, 5)}}),
    "fsq5555_lloyd": ("FSQ with Lloyd-Max levels, 5⁴ = 625 codes",
                      {"kind": "fsq", "fsq": {"levels": (5, 5, 5, 5), "lloyd_max": True}}),
    "fsq8555": ("FSQ (8, 5, 5, 5) = 1000 codes", {"kind": "fsq", "fsq": {"levels": (8, 5, 5, 5)}}),
    "fsq5555_range": ("FSQ (5, 5, 5, 5) + range loss",
                      {"kind": "fsq", "fsq": {"levels": (5, 5, 5, 5), "range_loss": True}}),
    "fsq5555_lloyd_range": ("FSQ Lloyd-Max 5⁴ + range loss",
                            {"kind": "fsq", "fsq": {"levels": (5, 5, 5, 5), "lloyd_max": True, "range_loss": True}}),
    "fsq8555_range": ("FSQ (8, 5, 5, 5) + range loss",
                      {"kind": "fsq", "fsq": {"levels": (8, 5, 5, 5), "range_loss": True}}),
    "residual": ("residual VQ, 4 × 512 (codebook loss)", {"kind": "residual", "residual": {"num_stages": 4}}),
    "residual_ema_restart": ("residual VQ, 4 × 512, EMA + restarts",
                             {"kind": "residual", "residual": {"num_stages": 4, "ema": True},
                              "ema": {"dead_code_threshold": 1.0}}),
}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variants = tuple(VARIANTS)
    c.base = vqvae_mnist.get_config()
    return c


# Every field of get_config(): the variants' names and experiments.vqvae_mnist's rules under `base`.
CONFIG_RULES = {
    "variants": training.sequence(training.one_of(*VARIANTS), min_len=1),
    **training.nested("base", vqvae_mnist.CONFIG_RULES),
}


def variant_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The run config of variant ``name``: ``config.base`` with its ``model.quantizer`` overrides."""
    c = config.base.copy_and_resolve_references()
    c.model.quantizer.update(VARIANTS[name][1])
    return c


def check_variants(config, where: str = "--config") -> list[str]:
    """Each variant's config passes vqvae_mnist's checks (e.g. ``base``'s Lloyd initialisation and an FSQ variant)."""
    out = []
    for name in config.variants:
        found = training.problems(variant_config(config, name), vqvae_mnist.CONFIG_RULES, where=f"{where}.base",
                                  extra=(vqvae_mnist.check_quantizer,))
        out += [f"variant {name!r}: {msg}" for msg in found]
    return out


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` and of each variant's run config: a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where, extra=(check_variants,))


def _eval_curve(workdir: str, steps: int, final: float) -> tuple[list[int], list[float]]:
    rows = training.read_metrics(workdir)
    pts = [(r["step"], r["perplexity"]) for r in rows if r["split"] == "eval"] + [(steps, final)]
    return [p[0] for p in pts], [p[1] for p in pts]


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    from vqjax import viz

    check_config(config)  # every variant's flags, before the first trains
    rows, curves = [], {}
    for name in config.variants:
        description = VARIANTS[name][0]
        c = variant_config(config, name)
        log(f"{name}: {description}")
        sub = os.path.join(workdir, name)
        s = training.train_and_evaluate(c, sub, vqvae_mnist.build(c), log=log)
        t = s["test"]
        q = c.model.quantizer
        stages = q.residual.num_stages if q.kind == "residual" else 1
        codes = vqvae_mnist.codes_per_stage(c)
        rows.append({"variant": name, "description": description, "steps": s["steps"], "mse": t["mse"],
                     "reconstruction": t["reconstruction"], "perplexity": t["perplexity"],
                     "used_fraction": t["used_fraction"], "dead_codes": t["dead_codes"], "codes_per_stage": codes,
                     "stages": stages, "train_seconds_this_run": s["train_seconds_this_run"],
                     "data_source": s["data_source"]})
        curves[name] = _eval_curve(sub, s["steps"], t["perplexity"])
    viz.save_history(os.path.join(workdir, "perplexity_comparison.png"), curves, ylabel="test-set perplexity",
                     title=f"VQ-VAE codebook perplexity over training ({rows[0]['steps']} steps each)", logy=True)
    result = {"runs": rows, "config": config.to_dict()}
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(format_table(result) + "\n")
    return result


def format_table(result: dict) -> str:
    lines = ["| quantizer | test MSE | −log p(x\\|z_q) (nats) | perplexity | codes used | dead codes |",
             "|---|---|---|---|---|---|"]
    for r in result["runs"]:
        total = r["codes_per_stage"] * r["stages"]
        per = f" (mean of {r['stages']} stages)" if r["stages"] > 1 else ""
        lines.append(f"| {r['description']} | {r['mse']:.5f} | {r['reconstruction']:.2f} | {r['perplexity']:.1f}{per} | "
                     f"{r['used_fraction']:.1%} of {total} | {r['dead_codes']} |")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    b = config.base
    _program.start(cpu_devices_per_core=b.cpu_devices_per_core, batch_sizes=(b.data.batch_size, b.data.eval_batch_size))
    result = run(config, _WORKDIR.value)
    print(format_table(result))
    print(f"-> {_WORKDIR.value}/comparison.md, comparison.json, perplexity_comparison.png")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae_codebooks", "Where the runs and the comparison go.")
    app.run(main)
