"""Classical quantizer design: the exact 1-D optimum and vector k-means, vqjax against ckwrap
(Ckmeans.1d.dp), scikit-learn and faiss, each implementation × case in its own subprocess.

    python benchmarks/quantization.py                     # all cases below, median of 5 calls
    python benchmarks/quantization.py --parts scalar      # only the 1-D optimum (or: --parts vector)
    python benchmarks/quantization.py --scalar-cases 1000000x64 --vector-cases 100000x256x16
    python benchmarks/quantization.py --quick             # smoke run of the harness: tiny cases, 1 call

1-D optimum, S samples ~ N(0, 1) (float32 values, fixed seed), K levels (S×K in 10^5, 10^6 × 4, 16, 64):

* vqjax ``optimal_scalar_quantizer`` (exact DP), in float32 (JAX's default) and with ``jax_enable_x64``;
* vqjax ``lloyd_1d`` (1-D k-means on sorted samples, quantile start, its defaults: to an exact fixed
  point or 1000 steps; a local optimum, for reference);
* ckwrap ``ckmeans(x, K)`` (Ckmeans.1d.dp, C++, float64, exact; the reference);
* scikit-learn ``KMeans(n_clusters=K, n_init=1, random_state=0)`` (k-means++ then Lloyd; local optimum).

Each MSE is recomputed the same way for every row: float64, every sample to its nearest level among the
implementation's own levels; "MSE / ckwrap − 1" compares it with ckwrap's.

Vector k-means, N vectors ~ N(0, I_D) float32, K codes, I Lloyd iterations from one initial codebook
(vqjax ``kmeans_plusplus``, key 0, computed once and given to all): vqjax ``generalized_lloyd(init=
codebook, max_iter=I, tol=0)`` vs scikit-learn ``KMeans(init=codebook, n_init=1, max_iter=I, tol=0,
algorithm="lloyd")`` vs faiss ``Kmeans(D, K, niter=I, max_points_per_centroid=N)`` trained with
``init_centroids=codebook``. Same start and iteration count, so Lloyd should reach (nearly) the same
distortion; each final codebook's distortion (mean squared error per vector) is recomputed in float64.

Timings: median of the timed calls after one untimed first call (for JAX it includes compilation; the
compile time of the whole call as one ``jax.jit`` program is measured and reported separately).
Peers that are not installed (ckwrap, scikit-learn, faiss: the ``bench`` extra) get rows that say so;
the vqjax rows still run. Results: markdown tables on stdout and ``benchmarks/results/quantization.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import tempfile
import time

import _common
import numpy as np

SCALAR_CASES = ((100_000, 4), (100_000, 16), (100_000, 64), (1_000_000, 4), (1_000_000, 16), (1_000_000, 64))
QUICK_SCALAR_CASES = ((2_000, 4),)  # --quick: a smoke run of the harness
VECTOR_CASES = ((100_000, 256, 16), (1_000_000, 256, 16))
QUICK_VECTOR_CASES = ((2_000, 16, 4),)
ITERATIONS, QUICK_ITERATIONS = 20, 3
REPEATS, QUICK_REPEATS = 5, 1
THREADS = 2  # faiss's OpenMP threads; scikit-learn and XLA use every core (2 here)
EXACT_RTOL = 1e-6  # "exact": MSE within this relative distance of ckwrap's
SCALAR_TARGET = 3.0  # vqjax optimal_scalar_quantizer within 3× of ckwrap's time
EXTRA_PACKAGES = ("ckwrap", "scikit-learn", "faiss-cpu", "jax", "jaxlib", "numpy")

SCALAR_IMPLS = {
    "osq": "vqjax optimal_scalar_quantizer (float32)",
    "osq_x64": "vqjax optimal_scalar_quantizer (x64)",
    "lloyd_1d": "vqjax lloyd_1d (quantile start, max_iter=1000)",
    "ckwrap": "ckwrap ckmeans (Ckmeans.1d.dp, C++)",
    "sklearn_1d": "scikit-learn KMeans (n_init=1)",
}
VECTOR_IMPLS = {
    "gla": "vqjax generalized_lloyd",
    "sklearn": "scikit-learn KMeans (lloyd)",
    "faiss": "faiss Kmeans",
}
# The peers' modules (the `bench` extra): a worker whose modules are missing is not started.
REQUIRES = {"ckwrap": ("ckwrap",), "sklearn_1d": ("sklearn",), "sklearn": ("sklearn",), "faiss": ("faiss",)}


# --------------------------------------------------------------------------- data and evaluation


def scalar_data(s: int) -> np.ndarray:
    """``[S]`` float32 ~ N(0, 1), fixed seed (the same values for every implementation)."""
    return np.random.default_rng(0).standard_normal(s, dtype=np.float32)


def vector_data(n: int, d: int) -> np.ndarray:
    """``[N, D]`` float32 ~ N(0, I), fixed seed."""
    return np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)


def scalar_mse(x: np.ndarray, levels) -> float:
    """float64 MSE of quantizing ``x`` to the nearest of ``levels`` (thresholds at the midpoints)."""
    x = x.astype(np.float64)
    lv = np.sort(np.asarray(levels, np.float64).ravel())
    cell = np.searchsorted(0.5 * (lv[1:] + lv[:-1]), x)
    return float(np.mean(np.square(x - lv[cell])))


def vector_distortion(x: np.ndarray, codebook, block: int = 65536) -> float:
    """float64 mean over vectors of ``min_k ||x_i - e_k||²`` (summed over the D coordinates)."""
    e = np.asarray(codebook, np.float64)
    e2 = np.sum(e * e, axis=1)
    total = 0.0
    for i in range(0, x.shape[0], block):
        xb = x[i:i + block].astype(np.float64)
        idx = np.argmin(e2 - 2.0 * xb @ e.T, axis=1)
        total += float(np.sum(np.square(xb - e[idx])))
    return total / x.shape[0]


# --------------------------------------------------------------------------- workers: 1-D


def _aot_compile(fn, *args) -> float:
    """Seconds to trace, lower and compile ``fn`` as one ``jax.jit`` program for ``args``."""
    import jax

    t0 = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t0


def _jax(x64: bool = False):
    import jax

    if x64:
        jax.config.update("jax_enable_x64", True)
    return jax


def setup_osq(x, k, x64=False):
    jax = _jax(x64)
    from vqjax.quantization import optimal_scalar_quantizer

    xj = jax.device_put(x)

    def call():
        r = jax.block_until_ready(optimal_scalar_quantizer(xj, k))
        return np.asarray(r.levels), float(r.mse), None

    return call, lambda: _aot_compile(lambda a: optimal_scalar_quantizer(a, k), xj)


def setup_osq_x64(x, k):
    return setup_osq(x, k, x64=True)


def setup_lloyd_1d(x, k):
    jax = _jax()
    from vqjax.quantization import lloyd_1d

    xj = jax.device_put(x)

    def call():
        r = jax.block_until_ready(lloyd_1d(xj, k))
        return np.asarray(r.levels), float(r.mse), int(r.iterations)

    return call, lambda: _aot_compile(lambda a: lloyd_1d(a, k), xj)


def setup_ckwrap(x, k):
    import ckwrap

    def call():
        r = ckwrap.ckmeans(x, k)
        return r.centers, float(np.sum(r.withinss)) / x.size, None

    return call


def setup_sklearn_1d(x, k):
    from sklearn.cluster import KMeans

    x2 = x.reshape(-1, 1)

    def call():
        km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x2)
        return km.cluster_centers_[:, 0], float(km.inertia_) / x.size, int(km.n_iter_)

    return call


# --------------------------------------------------------------------------- workers: vector k-means


def make_init(n: int, k: int, d: int, path: str) -> dict:
    """vqjax ``kmeans_plusplus`` (key 0) on the case's data, saved to ``path`` for every worker."""
    jax = _jax()
    from vqjax.quantization import kmeans_plusplus

    xj = jax.device_put(vector_data(n, d))
    key = jax.random.key(0)
    t0 = time.perf_counter()
    init = jax.block_until_ready(kmeans_plusplus(xj, k, key=key))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    init = jax.block_until_ready(kmeans_plusplus(xj, k, key=key))
    second = time.perf_counter() - t0
    init = np.asarray(init, np.float32)
    np.save(path, init)
    return {"first_call_s": first, "median_s": second, "distinct_rows": int(np.unique(init, axis=0).shape[0]),
            "distortion": vector_distortion(vector_data(n, d), init)}


def setup_gla(x, init, iters):
    jax = _jax()
    from vqjax.quantization import generalized_lloyd

    xj, ij = jax.device_put(x), jax.device_put(init)

    def fit(a, i):
        return generalized_lloyd(a, init.shape[0], init=i, max_iter=iters, tol=0.0)

    def call():
        r = jax.block_until_ready(fit(xj, ij))
        return np.asarray(r.codebook), float(r.distortion), int(r.num_iterations)

    return call, lambda: _aot_compile(fit, xj, ij)


def setup_sklearn(x, init, iters):
    from sklearn.cluster import KMeans

    def call():
        km = KMeans(n_clusters=init.shape[0], init=init, n_init=1, max_iter=iters, tol=0.0,
                    algorithm="lloyd").fit(x)
        return km.cluster_centers_, float(km.inertia_) / x.shape[0], int(km.n_iter_)

    return call


def setup_faiss(x, init, iters):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    n, d = x.shape

    def call():
        # max_points_per_centroid = N: train on every vector (faiss subsamples to 256·K by default).
        km = faiss.Kmeans(d, init.shape[0], niter=iters, max_points_per_centroid=n, seed=0)
        km.train(x, init_centroids=init)
        # obj[t] is the distortion of the assignment of iteration t, before its centroid update.
        return km.centroids, float(km.obj[-1]) / n, len(km.obj)

    return call


def run_timed(setup, repeats: int) -> tuple[dict, tuple]:
    """One untimed call (JAX: compile + run, timed as ``first_call_s``), then ``repeats`` timed calls.

    ``setup`` is a call, or for JAX ``(call, compile)``: ``compile()`` runs after the timed calls (so that
    nothing it caches helps them) and returns the seconds to compile the whole call as one jit program.
    """
    call, compile_fn = setup if isinstance(setup, tuple) else (setup, None)
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    out = []

    def timed():
        out[:] = [call()]

    times, peak = _common.time_calls(timed, repeats=repeats, warmup=0)
    res = {"times_s": times, "median_s": _common.median(times), "first_call_s": first, "peak_gib": peak}
    if compile_fn is not None:
        res["compile_s"] = compile_fn()
    return res, out[0]


def run_scalar_worker(impl: str, case, repeats: int) -> dict:
    s, k = case
    x = scalar_data(s)
    res, (levels, own_mse, iterations) = run_timed(globals()[f"setup_{impl}"](x, k), repeats)
    res.update(mse=scalar_mse(x, levels), mse_own=own_mse, iterations=iterations)
    return res


def run_vector_worker(impl: str, case, repeats: int, iters: int, init_path: str) -> dict:
    n, _, d = case
    x, init = vector_data(n, d), np.load(init_path)
    res, (codebook, own, iterations) = run_timed(globals()[f"setup_{impl}"](x, init, iters), repeats)
    codebook = np.asarray(codebook, np.float32)
    np.save(f"{init_path[:-4]}-{impl}.npy", codebook)  # compared with vqjax's by the parent
    res.update(distortion=vector_distortion(x, codebook), distortion_own=own, iterations=iterations)
    return res


# --------------------------------------------------------------------------- the parent: run and report


def parse_case(text: str, parts: int) -> tuple[int, ...]:
    items = text.replace(",", "x").lower().split("x")
    if len(items) != parts:
        raise argparse.ArgumentTypeError(f"expected {parts} numbers joined by x; got {text!r}")
    return tuple(int(float(p)) for p in items)


def case_str(case) -> str:
    return "×".join(str(c) for c in case)


def case_arg(case) -> str:
    return "x".join(str(c) for c in case)


def measure_scalar(case, impls, repeats: int) -> list[dict]:
    script, rows = os.path.abspath(__file__), []
    for impl in impls:
        print(f"  1-D {case_str(case)}  {impl} ...", file=sys.stderr, flush=True)
        res = _common.run_worker(script, impl, ["--case", case_arg(case), "--repeats", str(repeats)],
                                 requires=REQUIRES.get(impl, ()))
        rows.append({"impl": impl, "label": SCALAR_IMPLS[impl], "samples": case[0], "levels": case[1], **res})
    ref = next((r for r in rows if r["impl"] == "ckwrap" and "median_s" in r), None)
    for r in rows:
        if ref and "median_s" in r:
            r["time_vs_ckwrap"] = r["median_s"] / ref["median_s"]
            r["mse_rel_ckwrap"] = r["mse"] / ref["mse"] - 1.0
            r["exact"] = abs(r["mse_rel_ckwrap"]) <= EXACT_RTOL
    return rows


def measure_vector(case, impls, repeats: int, iters: int, tmp: str) -> tuple[list[dict], dict]:
    script, rows = os.path.abspath(__file__), []
    init_path = os.path.join(tmp, f"init-{case_arg(case)}.npy")
    print(f"  k-means {case_str(case)}  k-means++ init ...", file=sys.stderr, flush=True)
    init = _common.run_worker(script, "init", ["--case", case_arg(case), "--init-path", init_path])
    if "error" in init:
        return [{"impl": i, "label": VECTOR_IMPLS[i], "case": list(case), "error": "init: " + init["error"]}
                for i in impls], init
    for impl in impls:
        print(f"  k-means {case_str(case)}  {impl} ...", file=sys.stderr, flush=True)
        res = _common.run_worker(script, impl, ["--case", case_arg(case), "--repeats", str(repeats),
                                                "--iters", str(iters), "--init-path", init_path],
                                 requires=REQUIRES.get(impl, ()))
        rows.append({"impl": impl, "label": VECTOR_IMPLS[impl], "case": list(case), "max_iter": iters, **res})
    ref = next((r for r in rows if r["impl"] == "gla" and "median_s" in r), None)
    ref_cb = np.load(f"{init_path[:-4]}-gla.npy") if ref else None
    for r in rows:
        if "median_s" not in r:
            continue
        r["s_per_iteration"] = r["median_s"] / max(r["iterations"], 1)
        if ref:
            r["vqjax_speedup"] = r["median_s"] / ref["median_s"]
            r["distortion_rel_vqjax"] = r["distortion"] / ref["distortion"] - 1.0
            cb = np.load(f"{init_path[:-4]}-{r['impl']}.npy")
            r["codebook_max_abs_diff_vs_vqjax"] = float(np.max(np.abs(cb - ref_cb)))
    return rows, init


def _num(v: float, fmt: str = ".4f") -> str:
    return format(v, fmt)


def scalar_table(rows: list[dict]) -> str:
    header = ["Implementation", "S", "K", "Median s", "First call s", "Compile s", "Time / ckwrap",
              "MSE (float64)", "MSE / ckwrap − 1", "Iterations", "Peak mem GiB"]
    body = []
    for r in rows:
        cells = [r["label"], f"{r['samples']:.0e}".replace("e+0", "e"), r["levels"]]
        if _common.not_run(r, 100):
            body.append(cells + [_common.not_run(r, 100)] + [""] * 7)
            continue
        compile_s = _num(r["compile_s"], ".2f") if "compile_s" in r else "—"
        ratio = f"{r['time_vs_ckwrap']:.2f}×" if "time_vs_ckwrap" in r else "—"
        rel = f"{r['mse_rel_ckwrap']:+.1e}" if "mse_rel_ckwrap" in r else "—"
        it = str(r["iterations"]) if r.get("iterations") is not None else "—"
        body.append(cells + [_num(r["median_s"]), _num(r["first_call_s"], ".2f"), compile_s, ratio,
                             f"{r['mse']:.6g}", rel, it, _num(r["peak_gib"], ".2f")])
    return _common.markdown_table(header, body)


def vector_table(rows: list[dict]) -> str:
    header = ["Implementation", "N×K×D", "Iterations", "Median s", "s / iteration", "First call s",
              "Compile s", "vqjax speedup", "Distortion (float64)", "vs vqjax − 1",
              "Max Δcodebook vs vqjax", "Peak mem GiB"]
    body = []
    for r in rows:
        cells = [r["label"], case_str(r["case"])]
        if _common.not_run(r, 100):
            body.append(cells + [_common.not_run(r, 100)] + [""] * 9)
            continue
        compile_s = _num(r["compile_s"], ".2f") if "compile_s" in r else "—"
        speed = f"{r['vqjax_speedup']:.2f}×" if "vqjax_speedup" in r else "—"
        rel = f"{r['distortion_rel_vqjax']:+.1e}" if "distortion_rel_vqjax" in r else "—"
        dcb = f"{r['codebook_max_abs_diff_vs_vqjax']:.1e}" if "codebook_max_abs_diff_vs_vqjax" in r else "—"
        body.append(cells + [str(r["iterations"]), _num(r["median_s"]), _num(r["s_per_iteration"]),
                             _num(r["first_call_s"], ".2f"), compile_s,
                             speed, f"{r['distortion']:.6g}", rel, dcb, _num(r["peak_gib"], ".2f")])
    return _common.markdown_table(header, body)


def scalar_summary(rows: list[dict]) -> list[str]:
    out = []
    for impl in ("osq", "osq_x64"):
        mine = [r for r in rows if r["impl"] == impl and "time_vs_ckwrap" in r]
        if not mine:
            continue
        worst = max(mine, key=lambda r: r["time_vs_ckwrap"])
        inexact = [r for r in mine if not r["exact"]]
        out.append(
            f"{SCALAR_IMPLS[impl]}: time / ckwrap {min(r['time_vs_ckwrap'] for r in mine):.2f}×–"
            f"{worst['time_vs_ckwrap']:.2f}× (target ≤ {SCALAR_TARGET:.0f}×: "
            + ("met" if worst["time_vs_ckwrap"] <= SCALAR_TARGET else
               f"missed at S={worst['samples']:.0e}, K={worst['levels']}") + "); "
            + (f"exact (|MSE / ckwrap − 1| ≤ {EXACT_RTOL:.0e}) in every case." if not inexact else
               f"NOT exact in {len(inexact)} of {len(mine)} cases: " + ", ".join(
                   f"S={r['samples']:.0e} K={r['levels']}: {r['mse_rel_ckwrap']:+.1e}" for r in inexact)
               + "."))
    return out


def vector_summary(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if r["impl"] == "sklearn" and "vqjax_speedup" in r:
            out.append(f"{case_str(r['case'])}: vqjax {r['vqjax_speedup']:.2f}× scikit-learn's speed "
                       f"(target > 1×: {'met' if r['vqjax_speedup'] > 1 else 'missed'}), distortion "
                       f"{r['distortion_rel_vqjax']:+.1e} relative to vqjax's.")
    return out


def scalar_notes() -> list[str]:
    return [
        ("Median of the timed calls after one untimed first call, each implementation × case in its own "
         "process. First call s: that first call (for JAX it includes tracing and compiling the library's "
         "jitted pieces). Compile s (JAX rows): tracing + lowering + compiling the whole call as one jax.jit "
         "program (measured after the timed calls); compilation is excluded from the median."),
        ("MSE (float64): every sample to the nearest of the row's own levels, in float64, the same code for "
         "every row; MSE / ckwrap − 1 compares it with ckwrap's (the exact optimum). "
         f"An exact method should give |MSE / ckwrap − 1| ≤ {EXACT_RTOL:.0e}."),
        ("vqjax float32 is JAX's default; x64 runs with jax_enable_x64 (float64 prefix sums, as ckwrap). "
         "ckwrap (single-threaded C++) takes the same float32 values as float64; scikit-learn gets them as a "
         "float32 [S, 1] array and runs k-means++ + Lloyd (default max_iter=300, tol=1e-4), random_state=0."),
        ("Iterations: lloyd_1d's steps (it stops at an exact fixed point or after max_iter=1000); "
         "scikit-learn's n_iter_."),
        "Peak mem = peak RSS during the timed calls minus the RSS just before them (after the first call).",
    ]


def vector_notes(iters: int) -> list[str]:
    return [
        (f"All three start from the same k-means++ codebook (vqjax kmeans_plusplus, key 0) and run at most "
         f"{iters} Lloyd iterations (tol = 0; vqjax and scikit-learn stop earlier only at an exact fixed "
         "point). Times exclude the initialisation. First call s: the untimed first call (JAX: with "
         "compilation); Compile s: tracing + lowering + compiling the whole call as one jax.jit program."),
        ("Distortion (float64): mean over vectors of the squared distance to the nearest code of the row's "
         "final codebook, recomputed in float64 by the same code for every row; Max Δcodebook: the largest "
         "absolute difference of a coordinate from vqjax's final codebook. vqjax and scikit-learn return "
         "the codebook after I centroid updates and assign once more (I + 1 assignments); faiss also makes I "
         "updates but only I assignments (its reported objective is that of the codebook before the last "
         "update), so it does one assignment less for the same codebook."),
        ("vqjax speedup = the row's time ÷ vqjax's (above 1×: vqjax is faster). vqjax receives JAX arrays "
         "already on the device; every call still runs its input checks."),
        (f"faiss: omp_set_num_threads({THREADS}), max_points_per_centroid = N (no subsampling), "
         "init_centroids = the shared codebook. scikit-learn: OpenMP on every core, float32 data. "
         "XLA: its intra-op threads on every core."),
    ]


def describe(env: dict) -> str:
    cpu, v = env["cpu"], env["versions"]
    isa = "AVX-512" if cpu["avx512f"] else ("AVX2/FMA" if cpu["avx2"] else "no AVX2")
    pkgs = ", ".join(f"{p} {v.get(p)}" for p in EXTRA_PACKAGES)
    return (f"{env['date']} | {cpu['model']} ({cpu['logical_cpus']} logical CPUs, {isa}) | {pkgs} | "
            f"load average at start {env['load_average_at_start'][0]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=["scalar", "vector"], default=["scalar", "vector"])
    p.add_argument("--scalar-cases", nargs="+", type=lambda t: parse_case(t, 2), metavar="SxK",
                   help="1-D cases, e.g. 1000000x64 (or 1e6x64)")
    p.add_argument("--vector-cases", nargs="+", type=lambda t: parse_case(t, 3), metavar="NxKxD",
                   help="k-means cases, e.g. 1000000x256x16")
    p.add_argument("--scalar-impls", nargs="+", choices=list(SCALAR_IMPLS), default=list(SCALAR_IMPLS))
    p.add_argument("--vector-impls", nargs="+", choices=list(VECTOR_IMPLS), default=list(VECTOR_IMPLS))
    p.add_argument("--iters", type=int, help=f"Lloyd iterations for k-means (default {ITERATIONS})")
    p.add_argument("--repeats", type=int, help=f"timed calls per implementation × case (default {REPEATS})")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run of the harness: {case_str(QUICK_SCALAR_CASES[0])} (1-D), "
                        f"{case_str(QUICK_VECTOR_CASES[0])} (k-means), {QUICK_REPEATS} call")
    p.add_argument("--out", help="JSON path (default benchmarks/results/quantization[-quick].json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--init-path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    iters = args.iters or (QUICK_ITERATIONS if args.quick else ITERATIONS)

    if args.worker == "init":
        return _common.emit(make_init(*parse_case(args.case, 3), args.init_path))
    if args.worker in SCALAR_IMPLS:
        return _common.emit(run_scalar_worker(args.worker, parse_case(args.case, 2), repeats))
    if args.worker in VECTOR_IMPLS:
        return _common.emit(run_vector_worker(args.worker, parse_case(args.case, 3), repeats, iters,
                                              args.init_path))
    if args.worker:
        p.error(f"unknown worker {args.worker!r}")

    scalar_cases = args.scalar_cases or (QUICK_SCALAR_CASES if args.quick else SCALAR_CASES)
    vector_cases = args.vector_cases or (QUICK_VECTOR_CASES if args.quick else VECTOR_CASES)
    env = _common.environment()
    for pkg in EXTRA_PACKAGES:
        try:
            env["versions"][pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env["versions"][pkg] = None
    print(describe(env), file=sys.stderr)
    _common.warn_if_busy(env)

    payload = {"environment": env, "repeats": repeats}
    if "scalar" in args.parts:
        rows = []
        for case in scalar_cases:
            rows += measure_scalar(case, args.scalar_impls, repeats)
        print(f"\n## 1-D optimal quantization, N(0, 1) samples, median of {repeats} calls\n")
        print(describe(env) + "\n")
        print(scalar_table(rows) + "\n")
        summary = scalar_summary(rows)
        print("\n".join("- " + n for n in summary + scalar_notes()))
        payload["scalar"] = {"rows": rows, "summary": summary, "notes": scalar_notes(),
                             "exact_rtol": EXACT_RTOL, "target_time_vs_ckwrap": SCALAR_TARGET}
    if "vector" in args.parts:
        rows, inits = [], {}
        with tempfile.TemporaryDirectory(prefix="vqjax-bench-") as tmp:
            for case in vector_cases:
                case_rows, inits[case_str(case)] = measure_vector(case, args.vector_impls, repeats, iters,
                                                                  tmp)
                rows += case_rows
        print(f"\n## Vector k-means, N(0, I) vectors, {iters} Lloyd iterations from one k-means++ codebook, "
              f"median of {repeats} calls\n")
        print(describe(env) + "\n")
        print(vector_table(rows) + "\n")
        summary = vector_summary(rows)
        init_lines = [f"k-means++ initialisation {c}: " + (
            f"{i['median_s']:.3f} s (first call {i['first_call_s']:.2f} s), {i['distinct_rows']} distinct "
            f"codes, distortion {i['distortion']:.6g}" if "error" not in i else "failed: " + i["error"])
            for c, i in inits.items()]
        print("\n".join("- " + n for n in summary + init_lines + vector_notes(iters)))
        payload["vector"] = {"rows": rows, "init": inits, "max_iter": iters, "summary": summary,
                             "notes": vector_notes(iters)}

    out = args.out or os.path.join(_common.RESULTS_DIR,
                                   "quantization-quick.json" if args.quick else "quantization.json")
    _common.write_json(out, payload)


if __name__ == "__main__":
    main()
