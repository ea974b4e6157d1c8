"""The main VQ-VAE trained in float32 and in bfloat16 (``--config.dtype``): loss curves and their gap.

    python benchmarks/precision.py                 # experiments.vqvae_mnist's default, 2,000 steps per run
    python benchmarks/precision.py --steps 500     # shorter (three runs on a shared 2-core CPU)
    python benchmarks/precision.py --quick         # a smoke test of the harness (tiny model, 4 steps)

Three ``python -m experiments.vqvae_mnist`` processes, one after the other, each in a fresh workdir and
with the same data order: float32 and bfloat16 with the same seed, and float32 with another seed (the
reference: how far two float32 runs that differ only in their initialisation drift apart). The table
gives the training loss (the mean over each logging interval of ``--log_every`` steps, nats per image)
at several steps and the relative gaps ``|bf16 - f32| / f32`` and ``|f32' - f32| / f32``, then the
test-set metrics and the throughput. bfloat16 pays on GPU/TPU; a CPU without bfloat16 instructions
emulates it, so the throughput row says little about accelerators. There is no peer row: the
comparison is of vqjax with itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import _common

# run name -> (dtype, seed); "float32_seed1" is the seed-to-seed reference
RUNS = {"float32": ("float32", 0), "bfloat16": ("bfloat16", 0), "float32_seed1": ("float32", 1)}
TINY = ["--config.model.hidden=8", "--config.model.residual_hidden=4", "--config.model.num_residual=1",
        "--config.model.quantizer.codebook.num_codes=16", "--config.model.quantizer.codebook.code_dim=4"]
TEST_KEYS = ("loss", "reconstruction", "mse", "perplexity", "used_fraction")


def _train(workdir: str, dtype: str, seed: int, steps: int, log_every: int, extra: list[str]) -> dict:
    """One run; its training curve ``{step: loss}``, test metrics, throughput and wall time."""
    cmd = [sys.executable, "-m", "experiments.vqvae_mnist", f"--workdir={workdir}", f"--config.dtype={dtype}",
           f"--config.seed={seed}",
           f"--config.train.steps={steps}", f"--config.train.log_every={log_every}",
           f"--config.train.checkpoint_every={steps}", "--config.train.eval_every=0",
           # the paper's codebook, the model these curves were measured on (the default now adds restarts)
           "--config.model.quantizer.codebook.dead_code_threshold=0", *extra]
    proc = subprocess.run(cmd, cwd=_common.REPO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"error": f"{' '.join(cmd)} failed: {proc.stderr.strip()[-1500:]}"}
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    curve, reconstruction = {}, {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == "train":
                curve[int(row["step"])] = float(row["loss"])
                reconstruction[int(row["step"])] = float(row["reconstruction"])
    return {"curve": curve, "reconstruction_curve": reconstruction, "test": {k: summary["test"][k] for k in TEST_KEYS},
            "images_per_sec": summary["images_per_sec"], "train_seconds": summary["train_seconds_this_run"],
            "wall_seconds": summary["wall_seconds_this_run"], "num_params": summary["num_params"]}


def _percent(gap: float) -> str:
    return f"{gap:.2%}" if gap >= 1e-4 else f"{gap:.1e}"


def _table_steps(steps: list[int], rows: int = 8) -> list[int]:
    """About ``rows`` of the logged steps, spread evenly, always with the first and the last."""
    if len(steps) <= rows:
        return steps
    picks = {steps[round(i * (len(steps) - 1) / (rows - 1))] for i in range(rows)}
    return sorted(picks)


def plot(runs: dict, path: str) -> None:
    """The training-loss and reconstruction curves of the three runs, one panel each, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = {"float32": "float32", "bfloat16": "bfloat16", "float32_seed1": "float32, seed 1"}
    for ax, key, title in zip(axes, ("curve", "reconstruction_curve"), ("training loss", "−log p(x|z_q)")):
        for name, run in runs.items():
            steps = sorted(int(s) for s in run[key])
            ax.plot(steps, [run[key][str(s)] if str(s) in run[key] else run[key][s] for s in steps],
                    label=labels.get(name, name), lw=1.5, ls="--" if name == "float32_seed1" else "-")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{title} (nats per image, mean over each logged interval)", fontsize=9)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="training steps per dtype (default: the experiment's)")
    parser.add_argument("--log_every", type=int, default=50, help="steps per logged (mean) training loss")
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 steps: a smoke test")
    parser.add_argument("--out", default=None, help="JSON path (default: results/precision[-quick].json)")
    parser.add_argument("--plot", default=None, help="also draw the curves into this PNG")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only draw the curves of an earlier run's JSON into --plot, no training")
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f)["runs"], args.plot or "precision_curves.png")
        return
    steps, log_every = (4, 2) if args.quick else (args.steps, args.log_every)
    extra = TINY if args.quick else []
    env = _common.environment()
    _common.warn_if_busy(env)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dtype, seed) in RUNS.items():
            runs[name] = _train(os.path.join(tmp, name), dtype, seed, steps, log_every, extra)
    print(_common.describe_environment(env))
    errors = {d: r["error"] for d, r in runs.items() if "error" in r}
    gaps, seed_gaps, rec_gaps, rec_seed = {}, {}, {}, {}
    if errors:
        for d, e in errors.items():
            print(f"{d}: {e}")
    else:
        f32, bf16, ref = (runs[n]["curve"] for n in RUNS)
        common = sorted(set(f32) & set(bf16) & set(ref))
        gaps = {s: abs(bf16[s] - f32[s]) / abs(f32[s]) for s in common}
        seed_gaps = {s: abs(ref[s] - f32[s]) / abs(f32[s]) for s in common}
        print(f"Training loss (nats per image, mean over each {log_every} steps) of experiments.vqvae_mnist, "
              f"{steps} steps:")
        print(_common.markdown_table(
            ["step", "float32", "bfloat16", "relative gap", "float32, seed 1", "seed-to-seed gap"],
            [[str(s), f"{f32[s]:.2f}", f"{bf16[s]:.2f}", _percent(gaps[s]), f"{ref[s]:.2f}", _percent(seed_gaps[s])]
             for s in _table_steps(common)]))
        mean = lambda g: sum(g.values()) / len(g)
        print(f"Over all {len(common)} logged intervals: bfloat16 vs float32 at most {_percent(max(gaps.values()))} "
              f"(mean {_percent(mean(gaps))}); float32 seed 1 vs seed 0 at most {_percent(max(seed_gaps.values()))} "
              f"(mean {_percent(mean(seed_gaps))}).")
        r32, r16, rref = (runs[n]["reconstruction_curve"] for n in RUNS)
        rec_gaps = {s: abs(r16[s] - r32[s]) / abs(r32[s]) for s in common}
        rec_seed = {s: abs(rref[s] - r32[s]) / abs(r32[s]) for s in common}
        print(f"The reconstruction term alone (-log p(x|z_q)): bfloat16 vs float32 at most {_percent(max(rec_gaps.values()))} "
              f"(mean {_percent(mean(rec_gaps))}); seed 1 vs seed 0 at most {_percent(max(rec_seed.values()))} "
              f"(mean {_percent(mean(rec_seed))}).\n")
        t32, t16, tref = (runs[n]["test"] for n in RUNS)
        rel = lambda a, b: _percent(abs(a - b) / abs(b))
        print(_common.markdown_table(
            ["test set", "float32", "bfloat16", "relative gap", "float32, seed 1", "seed-to-seed gap"],
            [[k, f"{t32[k]:.4g}", f"{t16[k]:.4g}", rel(t16[k], t32[k]), f"{tref[k]:.4g}", rel(tref[k], t32[k])]
             for k in TEST_KEYS]
            + [["training images/s", *(f"{runs[n]['images_per_sec']:.0f}" for n in ("float32", "bfloat16")), "",
                f"{runs['float32_seed1']['images_per_sec']:.0f}", ""]]))
    out = args.out or os.path.join(_common.RESULTS_DIR, f"precision{'-quick' if args.quick else ''}.json")
    _common.write_json(out, {"environment": env, "quick": args.quick, "steps": steps, "log_every": log_every,
                             "runs": runs, "relative_gap": {str(s): g for s, g in gaps.items()},
                             "seed_to_seed_gap": {str(s): g for s, g in seed_gaps.items()},
                             "reconstruction_gap": {str(s): g for s, g in rec_gaps.items()},
                             "reconstruction_seed_to_seed_gap": {str(s): g for s, g in rec_seed.items()}})
    if args.plot and not errors:
        plot(runs, args.plot)
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
