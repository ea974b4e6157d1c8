"""Every script of benchmarks/ in its ``--quick`` mode: a smoke test of the harness, not a timing.

Each script runs as a subprocess (its workers are subprocesses of it), writes its JSON to a temporary
path and prints its table. The peers (torch, vector-quantize-pytorch, dm-haiku, faiss, ckwrap: the
``bench`` extra) are usually not installed here: their rows must say
"not installed" while the JAX rows run; a peer that is installed must run without an error.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _installed(modules) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _bench_module(name: str):
    """A benchmark script imported as a module (its constants: the quick cases, the peers it needs)."""
    sys.path.insert(0, BENCH)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCH)


def _run(script: str, tmp_path, *args, header: tuple[str, ...] = ("| Implementation |", "| model |")) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, f"{script}.py"), "--quick", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(h in proc.stdout for h in header), proc.stdout
    return json.loads(out.read_text()), proc.stdout


def _check_row(row: dict, requires, numbers: tuple[str, ...], stdout: str) -> None:
    """A JAX row (no ``requires``) or an installed peer ran and has its numbers; a missing peer says so."""
    assert "error" not in row, row["error"]
    if requires and not _installed(requires):
        assert row["not_installed"] == [m for m in requires if not _installed([m])]
        assert "not installed: " + ", ".join(row["not_installed"]) in stdout
    else:
        for key in numbers:
            assert row[key] > 0, (key, row)


@pytest.mark.parametrize("script, numbers", [("oivae", ("images_per_sec", "params")),
                                             ("sampling", ("seconds", "params")),
                                             ("train_step", ("images_per_s", "num_params"))])
def test_variant_benchmarks(tmp_path, script, numbers):
    """The scripts with one row per implementation: every row, JAX or peer, is in the JSON and the table."""
    payload, stdout = _run(script, tmp_path)
    module = _bench_module(script)
    assert payload["quick"] is True and list(payload["results"]) == list(module.VARIANTS)
    for name, label in module.VARIANTS.items():
        assert label in stdout
        _check_row(payload["results"][name], module.REQUIRES.get(name, ()), numbers, stdout)
    if script == "train_step":  # the three vqjax rows: the same tiny model, one device split, per core, unsplit
        r = payload["results"]
        assert payload["batch"] == 16
        assert r["vqjax"]["num_params"] == r["vqjax_per_core"]["num_params"] == r["vqjax_unsplit"]["num_params"]
        assert r["vqjax"]["devices"] == r["vqjax_unsplit"]["devices"] == 1 and r["vqjax_per_core"]["devices"] >= 1
        assert r["vqjax_unsplit"]["micro_batches"] == 1 and r["vqjax"]["micro_batches"] >= 1


def test_quantizer_benchmark(tmp_path):
    _variants, quantizer = _bench_module("_variants"), _bench_module("quantizer")
    cases = ("ema_restart", "lfq")  # EMA with restarts, the entropy loss: the harness and its checks, both sides
    payload, stdout = _run("quantizer", tmp_path, "--cases", *cases)
    assert [r["impl"] for r in payload["rows"]] == list(quantizer.IMPLS)
    for r in payload["rows"]:
        assert tuple(r["shape"]) == quantizer.QUICK_SHAPES[0]
        _check_row(r, quantizer.REQUIRES.get(r["impl"], ()), ("median_s", "vectors_per_s"), stdout)
    (check,) = payload["checks"].values()
    _check_row(check, quantizer.REQUIRES["check"], (), stdout)
    assert [(r["case"], r["impl"]) for r in payload["variant_rows"]] == [
        (c, i) for c in cases for i in quantizer.VARIANT_IMPLS]
    for r in payload["variant_rows"]:
        assert tuple(r["shape"]) == _variants.QUICK[r["case"]]
        assert _variants.RUNS[r["case"]][r["impl"]] in stdout
        _check_row(r, quantizer.REQUIRES.get(r["impl"], ()), ("median_s", "vectors_per_s"), stdout)
        if r["impl"] != "vqjax":
            continue
        peer = quantizer.REQUIRES["vqtorch"]
        _check_row(r["check"], peer, ("n",), stdout)
        if _installed(peer):  # both sides compute the same step: same codes, same gradient, same SGD update
            c = r["check"]
            assert c["indices_differing"] == 0, (r["case"], c)
            assert c["grad_z_max_abs_diff"] <= 1e-3 * c["grad_z_max_abs"], (r["case"], c)
            assert c.get("params_max_abs_diff", 0.0) <= 1e-6, (r["case"], c)


def test_quantization_benchmark(tmp_path):
    q = _bench_module("quantization")
    payload, stdout = _run("quantization", tmp_path)
    rows = payload["scalar"]["rows"]
    assert [(r["samples"], r["levels"], r["impl"]) for r in rows] == [
        (*c, i) for c in q.QUICK_SCALAR_CASES for i in q.SCALAR_IMPLS]
    for r in rows:
        _check_row(r, q.REQUIRES.get(r["impl"], ()), ("median_s", "mse"), stdout)
    for r in rows[:2]:  # the exact DP in float32 and x64: the MSE of the levels it reports
        assert r["mse"] == pytest.approx(r["mse_own"], rel=1e-4)
    rows = payload["vector"]["rows"]
    assert [(tuple(r["case"]), r["impl"]) for r in rows] == [(c, i) for c in q.QUICK_VECTOR_CASES for i in q.VECTOR_IMPLS]
    for r in rows:
        _check_row(r, q.REQUIRES.get(r["impl"], ()), ("median_s", "distortion"), stdout)
        assert r.get("iterations", q.QUICK_ITERATIONS) <= q.QUICK_ITERATIONS
    (init,) = payload["vector"]["init"].values()
    assert init["distinct_rows"] == q.QUICK_VECTOR_CASES[0][1]


def test_sweep_benchmark(tmp_path):
    """The harness with the sequential baseline, one engine placement and the cost analysis (the
    placements themselves are tested in tests/test_sweep.py)."""
    payload, stdout = _run("sweep", tmp_path, "--models", "vae", "--ways", "sequential,waves")
    assert payload["quick"] and payload["batch"]["vae"] == 16
    *ways, costs = payload["results"]
    assert [(r["model"], r["way"]) for r in ways] == [("vae", "sequential"), ("vae", "waves")]
    assert ways[0]["devices"] == 1 and ways[1]["devices"] >= 1  # waves: one device per core
    for r in ways:
        assert "error" not in r, r["error"]
        assert r["run_images_per_sec"] > 0 and r["runs"] == (1 if r["way"] == "sequential" else 8)
    assert "error" not in costs["costs"] and costs["costs"]["flops_per_step"] > 0
    assert "engine, waves" in stdout and "8 runs one after another" in stdout


def test_compile_cache_benchmark(tmp_path):
    result, _ = _run("compile_cache", tmp_path, header=("| rerun of the finished run |",))
    assert result["quick"] and set(result["seconds"]) == {"off", "on"}
    for row in result["seconds"].values():
        assert set(row) == {"first", "finished_rerun"} and all(v > 0 for v in row.values())


def test_memory_benchmark(tmp_path):
    """XLA's memory analysis of the quick models' train steps, and the accelerator arithmetic from it."""
    memory = _bench_module("memory")
    payload, stdout = _run("memory", tmp_path)
    assert payload["quick"] and payload["batch_sizes"] == list(memory.QUICK_BATCHES)
    assert list(payload["results"]) == list(memory.QUICK_MODELS)
    for name, r in payload["results"].items():
        assert "error" not in r, r["error"]
        assert f"| {name} |" in stdout
        assert r["params"] > 0 and r["state_bytes"] > r["params_bytes"] > 0  # Adam's moments join the parameters
        b1, b2 = (r["per_batch"][str(b)] for b in memory.QUICK_BATCHES)
        assert b2["temp_bytes"] > b1["temp_bytes"] > 0 and r["activation_bytes_per_example"] > 0
        assert b1["alias_bytes"] > 0  # the donated state is reused for the new one
        small, large = (r["devices"][f"{c}GiB"] for c in memory.CAPACITIES_GIB)
        assert 0 < small["max_batch"] < large["max_batch"]
        assert 0 < small["runs_at_default_batch"] < large["runs_at_default_batch"]


def test_precision_benchmark(tmp_path):
    """Both dtypes of the tiny VQ-VAE (and the float32 seed reference) train; their logged losses and
    test metrics are compared."""
    payload, stdout = _run("precision", tmp_path, header=("| step | float32 | bfloat16 | relative gap |",))
    assert payload["quick"] and list(payload["runs"]) == ["float32", "bfloat16", "float32_seed1"]
    for run in payload["runs"].values():
        assert "error" not in run, run["error"]
        assert list(run["curve"]) == ["2", "4"] and run["images_per_sec"] > 0
    assert set(payload["relative_gap"]) == set(payload["seed_to_seed_gap"]) == {"2", "4"}
    assert all(0 <= g < 0.05 for g in payload["relative_gap"].values())  # 4 steps from the same start
    assert "| perplexity |" in stdout


def test_stress_cpu_benchmark(tmp_path):
    """The stress harness: 2 tiny training runs of 20 steps under one load process, each with its row."""
    stress = _bench_module("stress_cpu")
    payload, stdout = _run("stress_cpu", tmp_path, header=("| run |",))
    assert payload["quick"] and payload["runs"] == stress.QUICK_RUNS and payload["steps"] == stress.QUICK_STEPS
    assert [r["run"] for r in payload["results"]] == list(range(1, stress.QUICK_RUNS + 1))
    for r in payload["results"]:
        assert not r["stalled"], r
        assert r["steps"] == stress.QUICK_STEPS and r["wall_s"] > 0 and r["images_per_s"] > 0
    assert payload["stalls"] == 0 and f"stalls: 0 of {stress.QUICK_RUNS} runs" in stdout


def test_dsprites_render_benchmark(tmp_path):
    """The renderer, the source and the Grain pipeline are timed; the training step is skipped in --quick."""
    payload, _ = _run("dsprites_render", tmp_path, header=("| render_dsprites, random batch of 64 |",))
    assert payload["quick"]
    for name in ("render_64", "render_256", "per_index", "pipeline"):
        assert payload["results"][name]["images_per_s"] > 0
