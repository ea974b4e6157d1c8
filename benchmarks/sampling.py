"""Seconds to draw code grids from a gated PixelCNN prior: vqjax against the same network in PyTorch.

    python benchmarks/sampling.py           # 1000 class-conditional 7×7 grids, K = 512; median of 3 (PyTorch: 1)
    python benchmarks/sampling.py --quick   # smoke run of the harness: a tiny prior, 8 grids, 1 timing

The prior is the default of ``experiments/vqvae_prior_mnist.py``: 8 gated layers of 64 channels,
kernel 3, a 128-channel output layer, K = 512 codes, 10 classes. Each variant runs in its own subprocess:

* vqjax: :func:`vqjax.nn.sample_codes`, one jitted ``fori_loop``, row by row (the vertical stack once
  per row, the horizontal stack on the current row for each code).
* vqjax, whole network per code: the same loop running the full network on the full grid for every
  position (what any causal prior can use; ``vqjax.nn._sampling._sample_full``).
* PyTorch: the same architecture (same layer shapes and parameter count) and the loop a user writes
  (the one in the public PyTorch VQ-VAE + PixelCNN implementations): under ``torch.inference_mode()``,
  for each position the full forward pass, softmax, ``torch.multinomial``. ``torch.set_num_threads(2)``.

Without PyTorch (the ``bench`` extra) its row says "not installed" and the vqjax rows still run.
Results: a markdown table on stdout and ``benchmarks/results/sampling.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common

K, CLASSES, GRID = 512, 10, (7, 7)
HIDDEN, LAYERS, KERNEL, OUT_HIDDEN = 64, 8, 3, 128


def use_quick_sizes() -> None:
    """``--quick`` (a smoke run of the harness, not a timing): a tiny prior, for the parent and its workers."""
    global K, HIDDEN, LAYERS, OUT_HIDDEN
    K, HIDDEN, LAYERS, OUT_HIDDEN = 16, 8, 2, 8

VARIANTS = {
    "vqjax_rows": "vqjax sample_codes (row-wise, jitted fori_loop)",
    "vqjax_full": "vqjax, whole network per code (jitted fori_loop)",
    "torch": "PyTorch, whole network per code (inference_mode loop)",
}
REQUIRES = {"torch": ("torch",)}  # the peer: the `bench` extra


def setup_vqjax(variant: str, n: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vqjax.nn import GatedPixelCNN, _sampling

    prior = GatedPixelCNN(K, hidden=HIDDEN, num_layers=LAYERS, kernel_size=KERNEL, out_hidden=OUT_HIDDEN,
                          num_classes=CLASSES, rngs=nnx.Rngs(0))
    labels = jnp.arange(n) % CLASSES
    graphdef, state = nnx.split(prior)
    fn = _sampling._sample_rows if variant == "vqjax_rows" else _sampling._sample_full
    params = sum(x.size for x in jax.tree.leaves(state))
    counter = iter(range(10**6))

    def run():
        fn(graphdef, state, jax.random.key(next(counter)), labels, None, jnp.float32(1.0),
           shape=(n, *GRID)).block_until_ready()

    return run, params


def setup_torch(n: int):
    import torch
    from torch import nn

    torch.set_num_threads(2)
    r = KERNEL // 2

    class Layer(nn.Module):
        def __init__(self, first: bool):
            super().__init__()
            self.first = first
            self.vertical = nn.Conv2d(HIDDEN, 2 * HIDDEN, (r + 1, KERNEL))
            self.horizontal = nn.Conv2d(HIDDEN, 2 * HIDDEN, (1, r + 1))
            self.v_to_h = nn.Conv2d(2 * HIDDEN, 2 * HIDDEN, 1)
            self.h_out = nn.Conv2d(HIDDEN, HIDDEN, 1)
            self.class_bias = nn.Embedding(CLASSES, 4 * HIDDEN)

        @staticmethod
        def gate(x):
            a, b = x.chunk(2, dim=1)
            return torch.tanh(a) * torch.sigmoid(b)

        def forward(self, v, h, y):
            ev, eh = self.class_bias(y)[:, :, None, None].chunk(2, dim=1)
            v_pre = self.vertical(nn.functional.pad(v, (r, r, r, 0)))
            shifted = nn.functional.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]
            h_in = nn.functional.pad(h, (1, 0))[:, :, :, :-1] if self.first else h
            h_pre = self.horizontal(nn.functional.pad(h_in, (r, 0))) + self.v_to_h(shifted) + eh
            h_new = self.h_out(self.gate(h_pre))
            return self.gate(v_pre + ev), (h_new if self.first else h + h_new)

    class Prior(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(K, HIDDEN)
            self.layers = nn.ModuleList([Layer(i == 0) for i in range(LAYERS)])
            self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(HIDDEN, OUT_HIDDEN, 1), nn.ReLU(),
                                     nn.Conv2d(OUT_HIDDEN, K, 1))

        def forward(self, codes, y):
            v = h = self.embed(codes).permute(0, 3, 1, 2)
            for layer in self.layers:
                v, h = layer(v, h, y)
            return self.out(h)

    model = Prior().eval()
    labels = torch.arange(n) % CLASSES
    params = sum(p.numel() for p in model.parameters())

    def run():
        with torch.inference_mode():
            codes = torch.zeros((n, *GRID), dtype=torch.long)
            for i in range(GRID[0]):
                for j in range(GRID[1]):
                    probs = torch.softmax(model(codes, labels)[:, :, i, j], dim=1)
                    codes[:, i, j] = torch.multinomial(probs, 1)[:, 0]

    return run, params


def run_worker(variant: str, n: int, timings: int) -> dict:
    run, params = setup_torch(n) if variant == "torch" else setup_vqjax(variant, n)
    # vqjax: one untimed call compiles; PyTorch has nothing to compile (its first call is timed).
    times, peak = _common.time_calls(run, repeats=timings, warmup=0 if variant == "torch" else 1)
    return {"seconds": _common.median(times), "all_seconds": times, "params": int(params), "peak_gib": peak}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--timings", type=int, default=3)
    parser.add_argument("--torch-timings", type=int, default=1, help="PyTorch's loop takes minutes per call")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.timings, args.torch_timings = 8, 1, 1
        use_quick_sizes()
    if args.worker:
        return _common.emit(run_worker(args.worker, args.samples, args.timings))
    env = _common.environment()
    print(_common.describe_environment(env), file=sys.stderr)
    _common.warn_if_busy(env)
    results = {}
    for name in VARIANTS:
        t = time.perf_counter()
        timings = args.torch_timings if name == "torch" else args.timings
        results[name] = _common.run_worker(os.path.abspath(__file__), name,
                                           ["--samples", str(args.samples), "--timings", str(timings)]
                                           + ["--quick"] * args.quick,
                                           requires=REQUIRES.get(name, ()))
        print(f"{name}: {results[name]} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    base = results["vqjax_rows"].get("seconds")
    rows = []
    for name, what in VARIANTS.items():
        r = results[name]
        if _common.not_run(r):
            rows.append([what, "-", _common.not_run(r), "-"])
            continue
        rows.append([what, f"{r['params']:,}", f"{r['seconds']:.2f}",
                     f"{r['seconds'] / base:.1f}×" if base else "-"])
    print(_common.describe_environment(env) + "\n")
    print(f"{args.samples} class-conditional {GRID[0]}×{GRID[1]} grids of K = {K} codes; median of {args.timings} "
          f"timings (PyTorch: {args.torch_timings}):\n")
    print(_common.markdown_table(["Implementation", "Parameters", "Seconds", "vs vqjax"], rows))
    out = args.out or os.path.join(_common.RESULTS_DIR, "sampling-quick.json" if args.quick else "sampling.json")
    _common.write_json(out, {"environment": env, "samples": args.samples, "grid": GRID, "num_codes": K,
                             "hidden": HIDDEN, "layers": LAYERS, "out_hidden": OUT_HIDDEN, "quick": args.quick,
                             "timings": args.timings, "results": results})


if __name__ == "__main__":
    main()
