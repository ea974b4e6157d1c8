"""Which quantizer tricks matter: the main job's VQ-VAE with every quantizer, crossed with the main options.

    python -m experiments.sweep --config=experiments/vqvae_quantizers.py --config.data.idx_dir=DIR \\
        --workdir=runs/vqvae_quantizers                        # the study: 51 runs (get_sweep)
    python -m experiments.sweep --config=experiments/vqvae_quantizers.py --list   # its members, by group

The model, data and optimizer are those of ``experiments/vqvae_mnist.py`` (K = 512, D = 64, β = 0.25,
Adam 1e-3, batch 128), trained for ``train.steps`` = 500 steps per run (a quarter of the main job's 2,000,
so that the 51 runs fit in about an hour on 2 CPU cores; ``--config.train.steps=2000`` for the full length).
:func:`get_sweep` crosses, on the paper's learned codebook (``kind=vq``), the rotation trick on/off ×
dead-code restarts on/off × K ∈ {512, 4096} × 3 seeds, and adds, at 9 bits per latent (the 512-code
codebook's rate) and 3 seeds each: EMA with restarts, LFQ and BSQ (9 binary channels), SimVQ (512 codes),
FSQ (8, 8, 8) with and without our range loss, ViT-VQGAN's factorised codes (512 codes of dimension 8),
grouped VQ (3 parts of 21 channels × 8 codes) and residual VQ (3 stages × 8 codes).

After the sweep, :func:`report_sweep` writes ``quantizers.md`` (one row per method: mean and min–max over
the seeds of test MSE, reconstruction nats, perplexity, share of codes used, dead codes and training
seconds) and ``mse_vs_bits.png`` (test MSE against bits per latent, one point per method with its seeds'
range).
"""

from __future__ import annotations

import math
import os

import ml_collections
import numpy as np

from experiments import vqvae_mnist
from vqjax import training

STEPS = 500
SEEDS = (0, 1, 2)

build = vqvae_mnist.build
check_config = vqvae_mnist.check_config


def get_config() -> ml_collections.ConfigDict:
    """The main job's config (:func:`experiments.vqvae_mnist.get_config`) for 500 steps, tested once at the end."""
    c = vqvae_mnist.get_config()
    c.train.steps, c.train.eval_every = STEPS, 0
    return c


Q = "model.quantizer."


def _method(**overrides) -> list[dict]:
    """One method (``{quantizer path: value}``) over the seeds."""
    return training.product([{Q + k: v for k, v in overrides.items()}], training.values("seed", SEEDS))


def get_sweep() -> list[dict]:
    """The study's members (see the module docstring): 24 crossed + 27 at 9 bits per latent."""
    crossed = training.product(
        training.values(Q + "codebook.num_codes", [512, 4096]),
        training.values(Q + "codebook.rotation_trick", [False, True]),
        training.values(Q + "codebook.dead_code_threshold", [0.0, 1.0]),
        training.values("seed", SEEDS))
    return [
        *crossed,
        *_method(kind="ema", **{"ema.dead_code_threshold": 1.0}),
        *_method(kind="lfq", **{"lookup_free.bits": 9}),
        *_method(kind="bsq", **{"lookup_free.bits": 9}),
        *_method(kind="simvq"),
        *_method(kind="fsq", **{"fsq.levels": (8, 8, 8)}),
        *_method(kind="fsq", **{"fsq.levels": (8, 8, 8), "fsq.range_loss": True}),
        *_method(kind="factorized", **{"factorized.code_dim_low": 8}),
        *_method(kind="grouped", **{"grouped.heads": 3, "codebook.num_codes": 8, "codebook.code_dim": 63}),
        *_method(kind="residual", **{"residual.num_stages": 3, "codebook.num_codes": 8}),
    ]


def bits_per_latent(config) -> float:
    """``log2`` of the number of distinct codes a latent vector can take."""
    q = config.model.quantizer
    if q.kind == "fsq":
        return float(sum(math.log2(level) for level in q.fsq.levels))
    if q.kind in ("lfq", "bsq"):
        return float(q.lookup_free.bits)
    stages = {"grouped": q.grouped.heads, "residual": q.residual.num_stages}.get(q.kind, 1)
    return stages * math.log2(q.codebook.num_codes)


def method_name(config) -> str:
    """A row label: the kind and the options that differ from the main job's defaults."""
    q, default = config.model.quantizer, vqvae_mnist.quantizer_config()
    if q.kind == "vq":
        parts = [f"VQ K={q.codebook.num_codes}"]
        parts += ["rotation"] if q.codebook.rotation_trick else []
        parts += ["restarts"] if vqvae_mnist.dead_code_threshold(q) > 0 else []
        return " + ".join(parts)
    label = {"ema": "EMA", "lfq": "LFQ", "bsq": "BSQ", "simvq": "SimVQ", "fsq": "FSQ", "factorized": "factorized",
             "grouped": "grouped", "residual": "residual"}.get(q.kind, q.kind)
    if q.kind == "ema" and q.ema.dead_code_threshold > 0:
        label += " + restarts"
    if q.kind == "fsq":
        label += " " + "×".join(str(v) for v in q.fsq.levels) + (" + range loss" if q.fsq.range_loss else "")
    if q.kind == "grouped":
        label += f" {q.grouped.heads}×{q.codebook.num_codes}"
    if q.kind == "residual":
        label += f" {q.residual.num_stages}×{q.codebook.num_codes}"
    if q.kind in ("simvq", "factorized", "ema") and q.codebook.num_codes != default.codebook.num_codes:
        label += f" K={q.codebook.num_codes}"
    return label


def _codes_total(config) -> int:
    """Codes counted by ``used_fraction``: K per stage or part times their number (FSQ: Π L, LFQ: 2^bits)."""
    q = config.model.quantizer
    stages = {"grouped": q.grouped.heads, "residual": q.residual.num_stages}.get(q.kind, 1)
    return vqvae_mnist.codes_per_stage(config) * stages


METRICS = (("mse", "test MSE", "{:.5f}"), ("reconstruction", "−log p(x|z_q), nats", "{:.2f}"),
           ("perplexity", "perplexity", "{:.1f}"), ("used_fraction", "codes used", "{:.1%}"),
           ("dead_codes", "dead codes", "{:.0f}"), ("train_seconds", "train s", "{:.0f}"))


def summarize(rows: list[dict]) -> list[dict]:
    """Rows of the sweep grouped by method (all overrides but the seed): per metric the seeds' values."""
    base = get_config()
    methods: dict[str, dict] = {}
    for r in rows:
        config = training.apply_overrides(base, {k: v for k, v in r["overrides"].items() if k != "seed"})
        name = method_name(config)
        m = methods.setdefault(name, {"method": name, "bits": bits_per_latent(config), "values": {}, "diverged": 0,
                                      "codes": _codes_total(config)})
        if r["diverged"]:
            m["diverged"] += 1
            continue
        t = dict(r["test"], train_seconds=r["train_seconds"])
        t.setdefault("dead_codes", round(m["codes"] * (1.0 - t["used_fraction"])))
        for key, _, _ in METRICS:
            if t.get(key) is not None:
                m["values"].setdefault(key, []).append(float(t[key]))
    return list(methods.values())


def format_table(methods: list[dict]) -> str:
    """Markdown: one row per method, each metric as ``mean (min–max)`` over the seeds."""
    head = ["method", "bits", "seeds", *(label for _, label, _ in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [m["method"], f"{m['bits']:.3g}", str(len(m["values"].get("mse", [])))
                 + (f" ({m['diverged']} diverged)" if m["diverged"] else "")]
        for key, _, fmt in METRICS:
            v = m["values"].get(key)
            cells.append("–" if not v else fmt.format(np.mean(v)) + (
                f" ({fmt.format(min(v))}–{fmt.format(max(v))})" if len(v) > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_sweep(rows: list[dict], workdir: str) -> None:
    """``quantizers.md``/``quantizers.json`` (per method, over seeds) and ``mse_vs_bits.png``."""
    from vqjax import viz

    methods = summarize(rows)
    if not methods:
        return
    table = format_table(methods)
    with open(os.path.join(workdir, "quantizers.md"), "w") as f:
        f.write(table + "\n")
    training.write_json(os.path.join(workdir, "quantizers.json"), {"methods": methods, "steps": STEPS})
    print(table)
    points = {m["method"]: (m["bits"], m["values"]["mse"]) for m in methods if m["values"].get("mse")}
    viz.save_labeled_points(os.path.join(workdir, "mse_vs_bits.png"), points, xlabel="bits per latent",
                            ylabel="test MSE per pixel (log)", logy=True, spread=0.8,
                            title=f"VQ-VAE on MNIST, {STEPS} steps: mean and min–max over seeds")
