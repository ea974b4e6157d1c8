"""experiments/vqvae_quantizers.py: the study's members, their rates and labels, and its per-method report."""

import json

import numpy as np
import pytest

from experiments import vqvae_mnist, vqvae_quantizers
from vqjax import training


def test_the_study_is_17_methods_times_3_seeds_and_every_member_is_valid():
    sweep = vqvae_quantizers.get_sweep()
    assert len(sweep) == 51
    base = vqvae_quantizers.get_config()
    assert base.train.steps == vqvae_quantizers.STEPS == 500
    labels = []
    for overrides in sweep:
        config = training.apply_overrides(base, overrides)
        vqvae_mnist.check_config(config)
        labels.append(vqvae_quantizers.method_name(config))
    assert len(set(labels)) == 17 and all(labels.count(m) == 3 for m in set(labels))


@pytest.mark.parametrize(("overrides", "bits", "label"), [
    ({}, 9.0, "VQ K=512 + restarts"),
    ({"codebook.dead_code_threshold": 0.0, "codebook.num_codes": 4096, "codebook.rotation_trick": True}, 12.0,
     "VQ K=4096 + rotation"),
    ({"kind": "ema", "ema.dead_code_threshold": 1.0}, 9.0, "EMA + restarts"),
    ({"kind": "fsq", "fsq.levels": (8, 5, 5, 5)}, np.log2(1000), "FSQ 8×5×5×5"),
    ({"kind": "lfq", "lookup_free.bits": 9}, 9.0, "LFQ"),
    ({"kind": "grouped", "grouped.heads": 3, "codebook.num_codes": 8, "codebook.code_dim": 63}, 9.0, "grouped 3×8"),
    ({"kind": "residual", "residual.num_stages": 3, "codebook.num_codes": 8}, 9.0, "residual 3×8"),
])
def test_bits_per_latent_and_labels(overrides, bits, label):
    config = training.apply_overrides(vqvae_mnist.get_config(), {f"model.quantizer.{k}": v for k, v in overrides.items()})
    assert vqvae_quantizers.bits_per_latent(config) == pytest.approx(bits)
    assert vqvae_quantizers.method_name(config) == label


def _row(overrides, mse, used, diverged=False):
    return {"overrides": overrides, "diverged": diverged, "train_seconds": 10.0,
            "test": {"mse": mse, "reconstruction": 50.0, "perplexity": 100.0, "used_fraction": used}}


def test_report_gives_mean_and_range_over_seeds_and_draws_the_plot(tmp_path):
    vq = {"model.quantizer.codebook.dead_code_threshold": 0.0}
    rows = [_row({**vq, "seed": s}, mse, 0.25) for s, mse in enumerate((0.002, 0.004, 0.003))]
    rows += [_row({"model.quantizer.kind": "lfq", "model.quantizer.lookup_free.bits": 9, "seed": 0}, 0.01, 1.0),
             _row({"model.quantizer.kind": "lfq", "model.quantizer.lookup_free.bits": 9, "seed": 1}, 9.9, 1.0, True)]
    methods = {m["method"]: m for m in vqvae_quantizers.summarize(rows)}
    assert methods["VQ K=512"]["values"]["mse"] == [0.002, 0.004, 0.003]
    assert methods["VQ K=512"]["values"]["dead_codes"] == [384.0] * 3  # 512 · (1 − 0.25), no dead count given
    assert methods["LFQ"]["diverged"] == 1 and methods["LFQ"]["values"]["mse"] == [0.01]
    table = vqvae_quantizers.format_table(list(methods.values()))
    assert "| VQ K=512 | 9 | 3 | 0.00300 (0.00200–0.00400) |" in table and "| LFQ | 9 | 1 (1 diverged) |" in table
    vqvae_quantizers.report_sweep(rows, str(tmp_path))
    assert (tmp_path / "quantizers.md").read_text().strip() == table
    assert json.loads((tmp_path / "quantizers.json").read_text())["steps"] == vqvae_quantizers.STEPS
    assert (tmp_path / "mse_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
