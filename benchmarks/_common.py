"""Helpers shared by the benchmark scripts: worker subprocesses, timing, memory, machine info, tables.

Every measurement runs in its own subprocess (``python <script> --worker NAME ...``) so that each
implementation has its own peak memory and its own library state (thread pools, allocators). A worker
prints one JSON object as the last line of its stdout; the parent collects them.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
REPO_ROOT = os.path.dirname(BENCH_DIR)
if REPO_ROOT not in sys.path:  # vqjax may not be installed (the benchmarks never import `experiments`)
    sys.path.insert(1, REPO_ROOT)
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "vector-quantize-pytorch", "dm-haiku",
            "faiss-cpu")


# --------------------------------------------------------------------------- subprocess workers


def missing(modules) -> list[str]:
    """The modules of ``modules`` that are not installed here (looked up, not imported)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def run_worker(script: str, worker: str, args: list[str], *, requires=()) -> dict:
    """Run ``python script --worker worker *args`` and return the JSON on its last stdout line.

    A worker whose peer library (a module of ``requires``, e.g. ``torch``: the ``bench`` extra) is not
    installed is not started: its row is ``{"not_installed": [...]}``, so the other rows still run.
    """
    absent = missing(requires)
    if absent:
        return {"not_installed": absent}
    cmd = [sys.executable, script, "--worker", worker, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # failures become rows
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def emit(result: dict) -> None:
    """A worker's answer: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def start_memory_window() -> int:
    """Return the RSS now (KiB) and reset the peak-RSS mark, so that a later :func:`peak_gib` is the
    peak of what follows. Freed heap memory is returned to the OS first (``malloc_trim``) so that the
    measured work cannot hide in memory left over from set-up or compilation."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")
    return _status_kib("VmRSS")


def peak_gib(baseline_kib: int) -> float:
    """Peak RSS since :func:`start_memory_window`, minus its baseline, in GiB."""
    return (_status_kib("VmHWM") - baseline_kib) / 2**20


# --------------------------------------------------------------------------- timing


def time_calls(fn, *, repeats: int, warmup: int) -> tuple[list[float], float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (which must block until its work is done) after
    ``warmup`` untimed calls, and the peak memory (GiB) of all of them above the RSS just before."""
    baseline = start_memory_window()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, peak_gib(baseline)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- machine description


def cpu_info() -> dict:
    model, flags, cores = "unknown", set(), 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model, cores = value.strip(), cores + 1
            elif key == "flags" and not flags:
                flags = set(value.split())
    return {
        "model": model,
        "logical_cpus": cores,
        "os_cpu_count": os.cpu_count(),
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "avx512f": "avx512f" in flags,
    }


def environment() -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "versions": versions,
    }


def describe_environment(env: dict) -> str:
    cpu, v = env["cpu"], env["versions"]
    isa = "AVX-512" if cpu["avx512f"] else ("AVX2/FMA" if cpu["avx2"] else "no AVX2")
    return (f"{env['date']} | {cpu['model']} ({cpu['logical_cpus']} logical CPUs, {isa}) | "
            f"jax {v['jax']}, flax {v['flax']}, torch {v['torch']}, vector-quantize-pytorch "
            f"{v['vector-quantize-pytorch']}, dm-haiku {v['dm-haiku']}, faiss-cpu {v['faiss-cpu']}, "
            f"numpy {v['numpy']} | load average at start {env['load_average_at_start'][0]}")


def warn_if_busy(env: dict) -> None:
    """Other processes on the CPU distort every number (PyTorch's OpenMP threads suffer most)."""
    load = env["load_average_at_start"][0]
    if load > 0.5:
        print(f"WARNING: 1-minute load average {load} before the run: other processes are using the CPU, "
              "and the timings will be distorted.", file=sys.stderr)


# --------------------------------------------------------------------------- output


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def not_run(result: dict, width: int = 80) -> str | None:
    """The table cell of a row that has no numbers (``"not installed: torch"`` or ``"failed: ..."``),
    or None for a row that ran."""
    if "not_installed" in result:
        return "not installed: " + ", ".join(result["not_installed"])
    if "error" in result:
        return "failed: " + result["error"][:width]
    return None


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"\nwrote {os.path.relpath(path)}")
