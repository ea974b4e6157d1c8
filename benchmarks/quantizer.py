"""The vector quantizer with its losses, forward + backward, against dm-haiku, vector-quantize-pytorch,
and (nearest-code search only) faiss, each implementation × shape in its own subprocess.

    python benchmarks/quantizer.py                          # the four default shapes, median of 7
    python benchmarks/quantizer.py --shapes 65536x1024x64   # a subset (any N×K×D)
    python benchmarks/quantizer.py --quick                  # smoke run of the harness: tiny shapes, 1 repeat
    python benchmarks/quantizer.py --parts variants         # only the codebook variants (a few minutes)
    python benchmarks/quantizer.py --parts variants --cases lfq bsq   # some of them

Work timed per call, float32, z [N, D] ~ N(0, 1), codebook [K, D] ~ N(0, 1):

* fwd+bwd: loss = codebook loss + 0.25 · commitment loss (per element, as haiku's ``loss``) plus a linear
  "decoder" term ``sum(z_q · w) / N`` so that the straight-through path is in the backward; the
  gradient with respect to z and the codebook (haiku: its parameters and inputs). vector-quantize-pytorch
  runs its defaults (EMA codebook, ``rotation_trick`` on for dim > 1): commitment loss + decoder term,
  ``loss.backward()``.
* search only: the nearest-code indices (vqjax ``nearest_code``, faiss ``IndexFlatL2`` with k=1).
* reference: NumPy's (N×D)·(D×K) float32 matrix product, the machine's own rate at that shape.

Codebook variants (``--parts variants``, workers in ``_variants.py``): one training step of the quantizer
alone (forward, backward, codebook update) for every quantizer both vqjax and vector-quantize-pytorch have,
with the same settings on both sides: EMA VQ, EMA VQ with dead-code restarts, EMA VQ with the rotation
trick, a learned codebook (SGD) with the rotation trick, a cosine-similarity EMA codebook, grouped VQ (4 heads,
a codebook each), SimVQ, LFQ and BSQ with their entropy losses (10 bits), FSQ and residual VQ; 16,384
vectors, K = 1024, D = 64 (LFQ/BSQ: D = 10 bits; FSQ: D = 4). Each row's table cell "What runs" says the
call on each side; ``_variants.py``'s docstring has the exact work. Peak memory of both sides: the worker's
peak RSS over the warm-up and timed calls above its RSS just before them. Each vqjax worker then checks one
step of both sides from the same inputs and codebook (indices, gradient w.r.t. z, SGD-updated parameters).

Peers that are not installed (the ``bench`` extra) get rows that say so; the vqjax rows still run.
Results: markdown tables on stdout and ``benchmarks/results/quantizer.json`` (``--parts variants`` alone:
``quantizer_variants.json``; ``--quick``: ``*-quick.json``).
"""

from __future__ import annotations

import argparse
import os
import sys

import _common
import _variants
import numpy as np

SHAPES = ((16384, 512, 64), (65536, 1024, 64), (262144, 1024, 64), (65536, 8192, 64))
QUICK_SHAPES = ((1024, 64, 16),)
BETA = 0.25
TORCH_THREADS = 2
WARMUP = 2

# name -> (label, kind). Speedups compare each row with vqjax's row of the same kind.
IMPLS = {
    "matmul": ("NumPy matmul (N×D)·(D×K)", "reference"),
    "vqjax": ("vqjax quantize + losses", "fwd+bwd"),
    "haiku": ("dm-haiku VectorQuantizer", "fwd+bwd"),
    "vqtorch": ("vector-quantize-pytorch VectorQuantize (EMA, rotation_trick on)", "fwd+bwd"),
    "vqjax_search": ("vqjax nearest_code", "search only"),
    "faiss": ("faiss IndexFlatL2, k=1", "search only"),
}
VQJAX_OF_KIND = {"fwd+bwd": "vqjax", "search only": "vqjax_search"}
# The peers' modules (the `bench` extra): a worker whose modules are missing is not started.
REQUIRES = {"haiku": ("haiku",), "vqtorch": ("torch", "vector_quantize_pytorch"), "faiss": ("faiss",),
            "check": ("haiku", "faiss")}


def make_inputs(n: int, k: int, d: int):
    """``z [N, D]``, ``codebook [K, D]`` and the decoder weights ``w [D]``: float32, fixed seed."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, d), dtype=np.float32)
    codebook = rng.standard_normal((k, d), dtype=np.float32)
    w = rng.standard_normal((d,), dtype=np.float32)
    return z, codebook, w


# --------------------------------------------------------------------------- the JAX losses


def _decoder_term(z_q, w):
    """A linear stand-in for the decoder, so the straight-through gradient is exercised."""
    return (z_q * w).sum() / z_q.shape[0]


def vqjax_loss(z, codebook, w):
    import jax.numpy as jnp

    from vqjax import losses, quantizers

    q = quantizers.quantize(z, codebook)
    vq = losses.codebook_loss(z, q.codes) + losses.commitment_loss(z, q.codes, beta=BETA)
    return jnp.mean(vq) / z.shape[-1] + _decoder_term(q.z_q, w)  # / D: per element, as haiku


def haiku_model(d: int, k: int):
    """``(apply, params_of)``: haiku's VectorQuantizer, and its parameters for a ``[K, D]`` codebook."""
    import haiku as hk
    import jax
    import jax.numpy as jnp

    def forward(z):
        vq = hk.nets.VectorQuantizer(embedding_dim=d, num_embeddings=k, commitment_cost=BETA)
        return vq(z, is_training=True)

    model = hk.without_apply_rng(hk.transform(forward))
    template = model.init(jax.random.key(0), jnp.zeros((1, d), jnp.float32))
    (module,) = template  # haiku keeps its codebook as [D, K]
    return model.apply, lambda codebook: {module: {"embeddings": jnp.asarray(codebook).T}}


def haiku_loss(apply):
    def loss(params, z, w):
        out = apply(params, z)
        return out["loss"] + _decoder_term(out["quantize"], w)

    return loss


def _compiled(fn, *args):
    import jax

    return jax.jit(fn).lower(*args).compile()


# --------------------------------------------------------------------------- workers: set-up -> one call


def setup_matmul(z, codebook, w):
    e_t = np.ascontiguousarray(codebook.T)
    return lambda: z @ e_t


def setup_vqjax(z, codebook, w):
    import jax

    args = tuple(jax.device_put(a) for a in (z, codebook, w))
    step = _compiled(jax.value_and_grad(vqjax_loss, argnums=(0, 1)), *args)
    return lambda: jax.block_until_ready(step(*args))


def setup_haiku(z, codebook, w):
    import jax

    apply, params_of = haiku_model(z.shape[1], codebook.shape[0])
    args = (params_of(codebook), jax.device_put(z), jax.device_put(w))
    step = _compiled(jax.value_and_grad(haiku_loss(apply), argnums=(0, 1)), *args)
    return lambda: jax.block_until_ready(step(*args))


def setup_vqtorch(z, codebook, w):
    import torch
    from vector_quantize_pytorch import VectorQuantize

    torch.set_num_threads(TORCH_THREADS)
    vq = VectorQuantize(dim=z.shape[1], codebook_size=codebook.shape[0]).train()  # its own codebook init
    zt = torch.from_numpy(z)[None].requires_grad_(True)  # [1, N, D]
    wt = torch.from_numpy(w)

    def call():
        zt.grad = None
        quantized, _, commit = vq(zt)
        loss = commit.sum() + (quantized * wt).sum() / z.shape[0]
        loss.backward()

    return call


def setup_vqjax_search(z, codebook, w):
    import jax

    from vqjax import quantizers

    args = (jax.device_put(z), jax.device_put(codebook))
    search = _compiled(quantizers.nearest_code, *args)
    return lambda: jax.block_until_ready(search(*args))


def setup_faiss(z, codebook, w):
    import faiss

    faiss.omp_set_num_threads(TORCH_THREADS)
    index = faiss.IndexFlatL2(z.shape[1])
    index.add(codebook)
    return lambda: index.search(z, 1)


def blas_name() -> str:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()


def run_timing_worker(impl: str, shape, repeats: int) -> dict:
    z, codebook, w = make_inputs(*shape)
    call = globals()[f"setup_{impl}"](z, codebook, w)
    times, peak = _common.time_calls(call, repeats=repeats, warmup=WARMUP)
    result = {"times_s": times, "median_s": _common.median(times), "peak_gib": peak}
    if impl == "matmul":
        result["blas"] = blas_name()
    return result


def run_variant_worker(impl: str, case: str, shape, repeats: int) -> dict:
    inputs = _variants.inputs(*shape)
    call = getattr(_variants, f"setup_{impl}")(case, *inputs)
    times, peak = _common.time_calls(call, repeats=repeats, warmup=WARMUP)
    result = {"times_s": times, "median_s": _common.median(times), "peak_gib": peak}
    if impl == "vqjax":  # against the peer on the same inputs, if it is installed (after the timing)
        absent = _common.missing(REQUIRES["vqtorch"])
        if absent:
            result["check"] = {"not_installed": absent}
        else:
            try:
                result["check"] = _variants.check_case(case, *inputs)
                if case == "fsq":
                    result["check"].update(_variants.check_fsq(inputs[0]))
            except Exception as e:  # noqa: BLE001 -- a failed check is reported, the timing is kept
                result["check"] = {"error": f"{type(e).__name__}: {e}"}
    return result


VARIANT_IMPLS = {"vqjax": "vqjax", "vqtorch": "vector-quantize-pytorch"}


def measure_variants(cases, repeats: int, quick: bool) -> list[dict]:
    script, rows = os.path.abspath(__file__), []
    for case in cases:
        label, shape = _variants.CASES[case]
        shape = _variants.QUICK[case] if quick else shape
        by_impl = {}
        for impl in VARIANT_IMPLS:
            print(f"  {case} {shape_str(shape)}  {impl} ...", file=sys.stderr, flush=True)
            res = _common.run_worker(script, f"variant:{impl}:{case}",
                                     ["--shape", shape_str(shape).replace("×", "x"), "--repeats", str(repeats)],
                                     requires=REQUIRES.get(impl, ()))
            row = {"case": case, "label": label, "impl": impl, "shape": list(shape), **res}
            if "median_s" in res:
                row["vectors_per_s"] = shape[0] / res["median_s"]
            by_impl[impl] = row
            rows.append(row)
        mine, peer = by_impl["vqjax"], by_impl["vqtorch"]
        if "median_s" in mine and "median_s" in peer:
            peer["vqjax_speedup"] = peer["median_s"] / mine["median_s"]
    return rows


def variants_table(rows: list[dict]) -> str:
    header = ["Quantizer", "Implementation", "What runs", "N×K×D", "Median s", "Vectors/s", "Peak mem GiB",
              "vqjax speedup"]
    body = []
    for r in rows:
        cells = [r["label"], VARIANT_IMPLS[r["impl"]], f"`{_variants.RUNS[r['case']][r['impl']]}`",
                 shape_str(r["shape"])]
        if _common.not_run(r):
            body.append(cells + [_common.not_run(r), "", "", ""])
            continue
        speedup = f"{r['vqjax_speedup']:.2f}×" if "vqjax_speedup" in r else "—"
        body.append(cells + [f"{r['median_s']:.4f}", f"{r['vectors_per_s']:.3g}", f"{r['peak_gib']:.2f}", speedup])
    return _common.markdown_table(header, body)


def variant_check_line(label: str, check: dict) -> str:
    """One line of the checks: vqjax against vector-quantize-pytorch, one step from the same inputs."""
    if "not_installed" in check or "error" in check:
        return f"- {label}: no check against vector-quantize-pytorch: {_common.not_run(check, width=200)}."
    line = (f"- {label}: indices differ for {check['indices_differing']} of {check['n']} vectors; max |Δ grad z| "
            f"{check['grad_z_max_abs_diff']:.2g} (max |grad z| {check['grad_z_max_abs']:.2g})")
    if "grad_z_max_abs_diff_less_peer_extra" in check:
        line += (f", {check['grad_z_max_abs_diff_less_peer_extra']:.2g} once the peer's extra (S − 1)·w/N is "
                 "removed (its decoder gradient goes through every stage's straight-through output)")
    if "params_max_abs_diff" in check:
        line += f"; max |Δ| of the SGD-updated codebook parameters {check['params_max_abs_diff']:.2g}"
    if "fsq_codes_max_abs_diff" in check:
        line += (f"; codes differ by at most {check['fsq_codes_max_abs_diff']:.2g}, indices for "
                 f"{check['fsq_indices_differing']} of {check['n']} vectors")
    return line + "."


def run_check_worker(shape) -> dict:
    """vqjax against haiku on the same inputs: indices, loss and gradients; faiss's indices too."""
    import faiss
    import jax

    from vqjax import quantizers

    z, codebook, w = make_inputs(*shape)
    apply, params_of = haiku_model(z.shape[1], codebook.shape[0])
    params = params_of(codebook)
    idx_vqjax = np.asarray(jax.jit(quantizers.nearest_code)(z, codebook))
    idx_haiku = np.asarray(jax.jit(apply)(params, z)["encoding_indices"])
    loss_v, (gz_v, ge_v) = jax.jit(jax.value_and_grad(vqjax_loss, argnums=(0, 1)))(z, codebook, w)
    loss_h, (gp_h, gz_h) = jax.jit(jax.value_and_grad(haiku_loss(apply), argnums=(0, 1)))(params, z, w)
    ge_h = next(iter(gp_h.values()))["embeddings"].T
    index = faiss.IndexFlatL2(z.shape[1])
    index.add(codebook)
    idx_faiss = index.search(z, 1)[1][:, 0]
    return {
        "indices_identical": bool(np.array_equal(idx_vqjax, idx_haiku)),
        "indices_differing": int(np.sum(idx_vqjax != idx_haiku)),
        "loss_vqjax": float(loss_v),
        "loss_haiku": float(loss_h),
        "grad_z_max_abs_diff": float(np.max(np.abs(gz_v - gz_h))),
        "grad_codebook_max_abs_diff": float(np.max(np.abs(ge_v - ge_h))),
        "faiss_indices_differing": int(np.sum(idx_vqjax != idx_faiss)),
    }


# --------------------------------------------------------------------------- the parent: run and report


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.replace(",", "x").lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a shape is NxKxD, e.g. 65536x1024x64; got {text!r}")
    return tuple(int(p) for p in parts)


def shape_str(shape) -> str:
    return "×".join(str(s) for s in shape)


def measure_shape(shape, impls, repeats: int) -> tuple[list[dict], dict]:
    script, args = os.path.abspath(__file__), ["--shape", shape_str(shape).replace("×", "x")]
    rows = []
    for impl in ["matmul", *impls]:
        print(f"  {shape_str(shape)}  {impl} ...", file=sys.stderr, flush=True)
        res = _common.run_worker(script, impl, [*args, "--repeats", str(repeats)], requires=REQUIRES.get(impl, ()))
        rows.append({"impl": impl, "label": IMPLS[impl][0], "kind": IMPLS[impl][1],
                     "shape": list(shape), **res})
    print(f"  {shape_str(shape)}  correctness check ...", file=sys.stderr, flush=True)
    check = _common.run_worker(script, "check", args, requires=REQUIRES["check"])
    add_derived(rows, shape)
    return rows, check


def add_derived(rows: list[dict], shape) -> None:
    """Throughput, GFLOP/s-equivalent, share of the matmul rate and vqjax's speedup, in place."""
    n, k, d = shape
    by_impl = {r["impl"]: r for r in rows if "median_s" in r}
    matmul = by_impl.get("matmul")
    for r in rows:
        if "median_s" not in r:
            continue
        r["vectors_per_s"] = n / r["median_s"]
        r["gflops_equivalent"] = 2 * n * k * d / r["median_s"] / 1e9
        if matmul:
            r["share_of_matmul"] = r["gflops_equivalent"] / matmul["gflops_equivalent"]
        ref = by_impl.get(VQJAX_OF_KIND.get(r["kind"], ""))
        if ref and ref is not r:
            r["vqjax_speedup"] = r["median_s"] / ref["median_s"]


def table(rows: list[dict]) -> str:
    header = ["Implementation", "Work", "N×K×D", "Median s", "Vectors/s", "GFLOP/s-eq", "Share of matmul",
              "Peak mem GiB", "vqjax speedup"]
    body = []
    for r in rows:
        cells = [r["label"], r["kind"], shape_str(r["shape"])]
        if _common.not_run(r):
            body.append(cells + [_common.not_run(r)] + [""] * 5)
            continue
        share = f"{r['share_of_matmul']:.0%}" if "share_of_matmul" in r else "—"
        speedup = f"{r['vqjax_speedup']:.2f}×" if "vqjax_speedup" in r else "—"
        body.append(cells + [f"{r['median_s']:.4f}", f"{r['vectors_per_s']:.3g}",
                             f"{r['gflops_equivalent']:.1f}", share, f"{r['peak_gib']:.2f}", speedup])
    return _common.markdown_table(header, body)


def check_line(shape, check: dict) -> str:
    if "not_installed" in check:
        return f"- {shape_str(shape)}: no check against haiku and faiss: {_common.not_run(check)}."
    if "error" in check:
        return f"- {shape_str(shape)}: check failed: {check['error']}"
    agree = ("identical indices" if check["indices_identical"]
             else f"indices differ for {check['indices_differing']} of {shape[0]} vectors")
    return (f"- {shape_str(shape)}: vqjax vs haiku: {agree}; loss {check['loss_vqjax']:.6g} vs "
            f"{check['loss_haiku']:.6g}; max |Δgrad| z {check['grad_z_max_abs_diff']:.2g}, codebook "
            f"{check['grad_codebook_max_abs_diff']:.2g}. faiss's indices differ from vqjax's for "
            f"{check['faiss_indices_differing']} of {shape[0]} vectors"
            + (" (float32 near-ties)." if check["faiss_indices_differing"] else "."))


def notes(blas: str) -> list[str]:
    return [
        "Times are medians of the timed calls after warm-up, each implementation × shape in its own process.",
        ("GFLOP/s-eq = 2·N·K·D / median time (the distance product only). Share of matmul = that over the rate "
        f"of NumPy's (N×D)·(D×K) float32 product ({blas}, all cores) timed at the same shape in this run."),
        ("Peak mem = the process's peak RSS during warm-up and timed calls minus its RSS just before them "
        "(inputs built, code compiled, freed heap returned to the OS)."),
        ("vqjax speedup = peer's time / vqjax's time for the same work (fwd+bwd: vqjax quantize + losses; "
        "search only: vqjax nearest_code). Above 1×: vqjax is faster."),
        ("vector-quantize-pytorch runs its defaults: EMA codebook update and rotation_trick=True (its default "
        f"for dim > 1); torch.set_num_threads({TORCH_THREADS}). faiss: omp_set_num_threads({TORCH_THREADS})."),
        "Search-only rows find the nearest code and nothing else (no loss, no gradient).",
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", type=parse_shape, help="N×K×D shapes, e.g. 65536x1024x64")
    p.add_argument("--impls", nargs="+", choices=[i for i in IMPLS if i != "matmul"],
                   default=[i for i in IMPLS if i != "matmul"], help="implementations (matmul always runs)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per implementation × shape (median)")
    p.add_argument("--quick", action="store_true", help="smoke run of the harness: tiny shapes, 1 repeat")
    p.add_argument("--parts", nargs="+", choices=("base", "variants"), default=["base", "variants"],
                   help="base: the paper's quantizer vs haiku/VQP/faiss; variants: the codebook variants vs VQP")
    p.add_argument("--cases", nargs="+", choices=list(_variants.CASES), default=list(_variants.CASES),
                   help="codebook variants to run (with --parts variants)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/quantizer[-quick].json; "
                   "quantizer_variants[-quick].json with --parts variants alone)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--shape", type=parse_shape, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker == "check":
        return _common.emit(run_check_worker(args.shape))
    if args.worker and args.worker.startswith("variant:"):
        _, impl, case = args.worker.split(":")
        return _common.emit(run_variant_worker(impl, case, args.shape, args.repeats))
    if args.worker:
        return _common.emit(run_timing_worker(args.worker, args.shape, args.repeats))

    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    repeats = 1 if args.quick and args.repeats == 7 else args.repeats
    env = _common.environment()
    print(_common.describe_environment(env), file=sys.stderr)
    _common.warn_if_busy(env)
    rows, checks, variant_rows, blas = [], {}, [], "NumPy BLAS"
    if "base" in args.parts:
        for shape in shapes:
            shape_rows, checks[shape_str(shape)] = measure_shape(shape, args.impls, repeats)
            rows += shape_rows
        blas = next((r["blas"] for r in rows if "blas" in r), blas)
        print(f"\n## Vector quantizer, float32, median of {repeats} calls\n")
        print(_common.describe_environment(env) + "\n")
        print(table(rows) + "\n")
        print("\n".join("- " + n for n in notes(blas)))
        print("\nCorrectness (once per shape, same inputs):")
        print("\n".join(check_line(tuple(map(int, s.split("×"))), c) for s, c in checks.items()))
    if "variants" in args.parts:
        variant_rows = measure_variants(args.cases, repeats, args.quick)
        print(f"\n## Codebook variants: one quantizer training step, float32, median of {repeats} calls\n")
        print(_common.describe_environment(env) + "\n")
        print(variants_table(variant_rows) + "\n")
        print("- " + "\n- ".join(VARIANT_NOTES))
        print("\nChecks (one step of each side from the same inputs and codebook; see benchmarks/_variants.py):")
        for r in variant_rows:
            if r["impl"] == "vqjax" and "check" in r:
                print(variant_check_line(r["label"], r["check"]))

    name = "quantizer_variants" if args.parts == ["variants"] else "quantizer"  # never clobber the base results
    out = args.out or os.path.join(_common.RESULTS_DIR, f"{name}-quick.json" if args.quick else f"{name}.json")
    _common.write_json(out, {"environment": env, "quick": args.quick, "repeats": repeats, "warmup": WARMUP, "beta": BETA,
                             "matmul_blas": blas, "notes": notes(blas), "rows": rows, "checks": checks,
                             "variant_notes": VARIANT_NOTES, "variant_rows": variant_rows})


VARIANT_NOTES = [
    ("One call = one training step of the quantizer alone: forward, backward (gradient w.r.t. z and, for a "
     "learned codebook, its parameters) and the codebook update (EMA, or an SGD step for the learned codebook "
     "and SimVQ); both sides start from the same codebook. \"What runs\" gives each side's call; "
     "benchmarks/_variants.py has the exact work and settings of every row."),
    ("Both sides use the same settings: EMA decay 0.99, commitment weight 0.25 (1 for the learned codebook, "
     "the peer's one mse(q, z) trains both), straight-through unless the row says rotation trick, LFQ/BSQ "
     "entropy weight 0.1 at τ = 0.01 with the codebook entropy enumerated over all 2^D codes; "
     f"torch.set_num_threads({TORCH_THREADS})."),
    ("Peak mem = the worker process's peak RSS over the warm-up and timed calls minus its RSS just before "
     "them (after set-up and compilation, freed heap returned to the OS), measured the same way for both sides."),
    "vqjax speedup = peer's median time / vqjax's. Above 1×: vqjax is faster.",
]

if __name__ == "__main__":
    main()
