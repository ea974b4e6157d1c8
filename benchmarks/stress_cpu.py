"""Stalls of the VQ-VAE experiment under a competing CPU load: N training runs, each in a fresh workdir.

    python benchmarks/stress_cpu.py                    # 20 runs x 3,000 steps of the default config, 1 load process
    python benchmarks/stress_cpu.py --extra=--config.cpu_devices_per_core=True   # one XLA device per core
    python benchmarks/stress_cpu.py --runs 5 --steps 1000 --load 0               # shorter, no competing load
    python benchmarks/stress_cpu.py --quick            # a smoke test of the harness (2 runs x 20 steps, tiny model)

Each run is ``python -m experiments.vqvae_mnist --workdir=<fresh temp dir> --config.train.steps=S`` with
the experiment's own defaults (plus the ``--extra`` flags), its own process, one after another, while
``--load`` separate processes keep cores busy (a single-threaded NumPy matrix-multiply loop each) for the
whole session. A run *stalls* when no new line reaches its ``metrics.jsonl`` for ``--stall`` seconds
(``--startup`` seconds before the first line and after the last step: compilation, the final evaluation
and pictures), when XLA reports a stuck collective or aborts one (``may be stuck``/``Termination
timeout`` in its stderr), when it exceeds ``--max-seconds``, or when it
exits non-zero. A stalled run's native stacks are captured (gdb or py-spy, see ``cpu_deadlock.py``), then
it is killed and the next run starts. Prints one row per run (steps reached, wall seconds, the training
images/s the experiment logged, stalled or not) and the count of stalls; writes
``results/stress_cpu[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import _common
import cpu_deadlock

QUICK_STEPS, QUICK_RUNS = 20, 2
TINY = ["--config.model.hidden=8", "--config.model.residual_hidden=4", "--config.model.num_residual=1",
        "--config.model.quantizer.codebook.num_codes=16", "--config.model.quantizer.codebook.code_dim=4",
        "--config.train.log_every=5", "--config.train.eval_every=0"]
XLA_STUCK = ("may be stuck", "Termination timeout")  # XLA's rendezvous warning and abort


def _metrics(workdir: str) -> list[dict]:
    rows = []
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line being written
                    pass
    except FileNotFoundError:
        pass
    return rows


def _tail(path: str, n: int = 12) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().strip().splitlines()[-n:])
    except FileNotFoundError:
        return ""


def _stop(proc: subprocess.Popen) -> None:
    """Kill the run and its children (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def one_run(index: int, tmp: str, args, extra: list[str]) -> dict:
    workdir = os.path.join(tmp, f"run-{index}")
    os.makedirs(workdir)
    cmd = [sys.executable, "-m", "experiments.vqvae_mnist", f"--workdir={workdir}",
           f"--config.train.steps={args.steps}", *extra]
    out_path, err_path = os.path.join(tmp, f"run-{index}.stdout"), os.path.join(tmp, f"run-{index}.stderr")
    t0 = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=_common.REPO_ROOT, stdout=out, stderr=err, start_new_session=True)
        lines, last_change, reason, stacks = 0, t0, None, None
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            rows = _metrics(workdir)
            if len(rows) != lines:
                lines, last_change = len(rows), now
            trained = any(r.get("split") == "train" and int(r.get("step", 0)) >= args.steps for r in rows)
            # start-up (compilation) and the final evaluation and pictures write no line for a while
            limit = args.stall if lines and not trained else args.startup
            stderr = _tail(err_path, 40)
            if any(s in stderr for s in XLA_STUCK):
                reason = "XLA: collective stuck"
            elif now - last_change > limit:
                reason = f"no metrics line for {limit:.0f} s"
            elif now - t0 > args.max_seconds:
                reason = f"over {args.max_seconds:.0f} s"
            if reason:
                text = cpu_deadlock.native_stacks(proc.pid)
                with open(os.path.join(tmp, f"run-{index}.stacks.txt"), "w") as f:
                    f.write(text)
                stacks = cpu_deadlock.summarize_stacks(text)
                _stop(proc)
                break
    wall = time.monotonic() - t0
    rows = _metrics(workdir)
    train = [r for r in rows if r.get("split") == "train"]
    steps = max((int(r["step"]) for r in train), default=0)
    rates = [r["images_per_sec"] for r in train if "images_per_sec" in r]
    if reason is None and proc.returncode != 0:
        reason = f"exit code {proc.returncode}"
    result = {"run": index, "steps": steps, "wall_s": round(wall, 1),
              "images_per_s": round(sum(rates) / len(rates), 1) if rates else None,
              "stalled": reason is not None, "reason": reason, "exit_code": proc.returncode}
    if reason:
        result["stderr_tail"] = _tail(err_path)
        if stacks:
            result["stacks"] = stacks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--extra", action="append", default=[],
                        help="a flag for the experiment, e.g. --extra=--config.cpu_devices_per_core=True (repeatable)")
    parser.add_argument("--load", type=int, default=1, help="competing load processes (0: none)")
    parser.add_argument("--stall", type=float, default=60.0, help="seconds without a new metrics.jsonl line = a stall")
    parser.add_argument("--startup", type=float, default=300.0,
                        help="the same, before the first line and after the last step")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="wall-clock limit of one run")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs x {QUICK_STEPS} steps, tiny model")
    parser.add_argument("--out", default=None, help="JSON path (default: results/stress_cpu[-quick].json)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.steps = QUICK_RUNS, QUICK_STEPS
    extra = (TINY if args.quick else []) + args.extra
    env = _common.environment()
    _common.warn_if_busy(env)
    loaders = cpu_deadlock.start_load(args.load, 10 ** 7) if args.load else []
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="stress_cpu-") as tmp:
            for i in range(1, args.runs + 1):
                r = one_run(i, tmp, args, extra)
                results.append(r)
                print(f"run {i}/{args.runs}: {r['steps']} steps, {r['wall_s']} s"
                      + (f", STALLED ({r['reason']})" if r["stalled"] else ""), flush=True)
                if r["stalled"]:
                    print(r.get("stacks") or r.get("stderr_tail", ""), flush=True)
    finally:
        for p in loaders:
            p.terminate()
            p.wait()
    stalls = sum(r["stalled"] for r in results)
    table = _common.markdown_table(
        ["run", "steps", "wall s", "images/s", "stalled?"],
        [[r["run"], r["steps"], f"{r['wall_s']:.1f}", "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}",
          f"yes: {r['reason']}" if r["stalled"] else "no"] for r in results])
    print(_common.describe_environment(env))
    print(f"`python -m experiments.vqvae_mnist --config.train.steps={args.steps} {' '.join(extra)}`".replace(" `", "`")
          + f", {args.runs} runs, {args.load} load process(es)")
    print(table)
    print(f"\nstalls: {stalls} of {len(results)} runs")
    out = args.out or os.path.join(_common.RESULTS_DIR, f"stress_cpu{'-quick' if args.quick else ''}.json")
    _common.write_json(out, {"environment": env, "quick": args.quick, "runs": args.runs, "steps": args.steps,
                             "extra": extra, "load_processes": args.load, "stall_seconds": args.stall,
                             "stalls": stalls, "results": results})


if __name__ == "__main__":
    main()
