"""Wall time of an experiment's second run, with and without JAX's persistent compilation cache.

    python benchmarks/compile_cache.py                 # the VQ-VAE default, 100 steps (~3 min)
    python benchmarks/compile_cache.py --quick         # a smoke test of the harness (tiny model, 2 steps)

For each mode (cache off: ``VQJAX_COMPILATION_CACHE=off``; on: a fresh cache directory) the same
command runs three times in a fresh workdir: the first run trains ``--steps`` steps, the second finds
the run finished and only evaluates and reports, the third resumes to ``2 × --steps``. Every run is
its own process, as a user's rerun is; the time is the process's wall time, start to exit. PyTorch
has no counterpart (it does not compile), so there is no peer row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import _common

TINY = ["--config.model.hidden=8", "--config.model.residual_hidden=4", "--config.model.num_residual=1",
        "--config.model.quantizer.codebook.num_codes=16", "--config.model.quantizer.codebook.code_dim=4"]


def _run(workdir: str, steps: int, cache: str, extra: list[str]) -> float:
    env = dict(os.environ, VQJAX_COMPILATION_CACHE=cache)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the mode decides, not an outer setting
    cmd = [sys.executable, "-m", "experiments.vqvae_mnist", f"--workdir={workdir}", f"--config.train.steps={steps}",
           "--config.train.eval_every=0", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_common.REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps, no resume: a smoke test")
    parser.add_argument("--out", default=None, help="JSON path (default: results/compile_cache[-quick].json)")
    args = parser.parse_args()
    steps = 2 if args.quick else args.steps
    extra = TINY if args.quick else []
    env = _common.environment()
    _common.warn_if_busy(env)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "on"):
            cache = "off" if mode == "off" else os.path.join(tmp, "cache")
            workdir = os.path.join(tmp, f"run-{mode}")
            row = {"first": _run(workdir, steps, cache, extra), "finished_rerun": _run(workdir, steps, cache, extra)}
            if not args.quick:
                row["resume"] = _run(workdir, 2 * steps, cache, extra)
            rows[mode] = row
    kinds = [k for k in ("first", "finished_rerun", "resume") if k in rows["off"]]
    names = {"first": f"first run ({steps} steps)", "finished_rerun": "rerun of the finished run",
             "resume": f"resume to {2 * steps} steps"}
    table = _common.markdown_table(
        ["run", "cache off (s)", "cache on (s)", "speed-up"],
        [[names[k], f"{rows['off'][k]:.1f}", f"{rows['on'][k]:.1f}", f"{rows['off'][k] / rows['on'][k]:.2f}×"]
         for k in kinds])
    print(_common.describe_environment(env))
    print(table)
    out = args.out or os.path.join(_common.RESULTS_DIR, f"compile_cache{'-quick' if args.quick else ''}.json")
    _common.write_json(out, {"environment": env, "quick": args.quick, "steps": steps, "seconds": rows})


if __name__ == "__main__":
    main()
