"""Images per second of the VQ-VAE training step: vqjax against the same architecture in PyTorch.

    python benchmarks/train_step.py           # warm-up, then the median of 7 timings of 20 steps
    python benchmarks/train_step.py --quick   # smoke run of the harness: a tiny model, 1 timing of 1 step

Batch 128 of 28×28×1 images, uniform in [0, 1]; the model of ``experiments/vqvae_mnist.py`` with the
paper's codebook, no dead-code restarts (``codebook.dead_code_threshold=0``; the PyTorch peers have none)
(K=512, D=64, hidden 64, residual hidden 32, 2 residual blocks, Adam lr 1e-3, β=0.25, Bernoulli
likelihood), built here from ``vqjax`` (``MODEL``, ``OPTIMIZER``). Variants, each in its own subprocess:

* vqjax: ``vqjax.training.make_train_step`` on that model and the experiment's objective (jitted, donated),
  three ways: as the experiments run a stateless codebook on a CPU host — one XLA:CPU device, each step's batch
  split into ``training.auto_micro_batches`` concurrent micro-batches (8 of 16 on 2 cores), no collective;
  one single-threaded device per core, the batch sharded over them with a gradient all-reduce, each
  device's share in concurrent micro-batches (4 of 16; the opt-in ``--config.cpu_devices_per_core=True``);
  and one device, the batch unsplit (``--config.train.micro_batches=1``, the default before).
* PyTorch + vector-quantize-pytorch ``VectorQuantize(dim=64, codebook_size=512, commitment_weight=0.25)``
  with its defaults (EMA codebook, rotation trick).
* PyTorch + a plain VQ (the paper's): codebook ``nn.Embedding`` uniform in ±1/K, nearest code from
  ``||z||² - 2 z·e + ||e||²``, straight-through, codebook loss + β · commitment loss.

PyTorch runs with ``torch.set_num_threads(2)``; XLA uses every core (2 here). Without PyTorch and
vector-quantize-pytorch (the ``bench`` extra) their rows say "not installed" and the vqjax rows still run.
Results: a markdown table on stdout and ``benchmarks/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common
import numpy as np

BATCH, IMAGE = 128, (28, 28, 1)
TORCH_THREADS = 2
WARMUP_STEPS = 5

VARIANTS = {
    "vqjax": "vqjax as the experiments run it: one CPU device, concurrent micro-batches",
    "vqjax_per_core": "vqjax, a CPU device per core, data-parallel, micro-batches (opt-in cpu_devices_per_core)",
    "vqjax_unsplit": "vqjax, one CPU device, the batch unsplit (micro_batches=1; the default before)",
    "torch_vqp": "PyTorch + vector-quantize-pytorch VectorQuantize (EMA, rotation_trick on)",
    "torch_plain": "PyTorch + plain VQ (paper's)",
}
REQUIRES = {"torch_vqp": ("torch", "vector_quantize_pytorch"), "torch_plain": ("torch",)}  # the `bench` extra


def make_images() -> np.ndarray:
    """``[B, 28, 28, 1]`` float32, uniform in [0, 1] (NHWC)."""
    return np.random.default_rng(0).uniform(size=(BATCH, *IMAGE)).astype(np.float32)


def time_steps(run_steps, *, timings: int, steps: int, warmup: int = WARMUP_STEPS) -> list[float]:
    """Seconds of each of ``timings`` runs of ``steps`` training steps, after ``warmup`` steps."""
    run_steps(warmup)
    out = []
    for _ in range(timings):
        t0 = time.perf_counter()
        run_steps(steps)
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- vqjax


# The default VQ-VAE of experiments/vqvae_mnist.py (its config.model and config.optimizer), built here
# from vqjax directly: the benchmarks do not import the experiment programs.
MODEL = {"hidden": 64, "residual_hidden": 32, "num_residual": 2, "beta": 0.25, "likelihood": "bernoulli",
         "quantizer": {"kind": "vq", "codebook": {"num_codes": 512, "code_dim": 64, "cosine": False}}}
OPTIMIZER = {"learning_rate": 1e-3, "warmup_steps": 100, "schedule": "constant"}
SEED = 0
# --quick (a smoke run of the harness, not a timing): a tiny model of the same structure at batch 16.
QUICK_BATCH = 16
QUICK_MODEL = {**MODEL, "hidden": 8, "residual_hidden": 4, "num_residual": 1,
               "quantizer": {"kind": "vq", "codebook": {"num_codes": 16, "code_dim": 4, "cosine": False}}}


def use_quick_sizes() -> None:
    """``--quick``: the tiny model and batch, for the parent and its workers alike."""
    global BATCH, MODEL
    BATCH, MODEL = QUICK_BATCH, QUICK_MODEL


def setup_vqjax(per_core: bool, split: bool = True):
    """``(run_steps, num_params, config)`` for the experiment's default VQ-VAE.

    ``per_core``: one XLA:CPU device per core with the batch sharded over them
    (``training.use_cpu_cores_as_devices``, what the experiments do with ``--config.cpu_devices_per_core=True``);
    else one device. ``split``: each device's batch in ``training.auto_micro_batches`` concurrent
    micro-batches (the loop's default for this task on CPU); else unsplit.
    """
    import jax
    import ml_collections
    import optax
    from flax import nnx

    from vqjax import objectives, training
    from vqjax.nn import VQVAE, VectorQuantizer

    num_devices = training.use_cpu_cores_as_devices((BATCH,)) if per_core else 1

    m, cb = MODEL, MODEL["quantizer"]["codebook"]

    def objective(model, batch, *, key, step, hparams, weights=None):  # the experiment's objective
        del step
        return objectives.vqvae_objective(model, batch, beta=hparams["model.beta"], likelihood=m["likelihood"],
                                          key=key, weights=weights)

    rngs = nnx.Rngs(SEED)
    model = VQVAE(in_channels=1, hidden=m["hidden"], residual_hidden=m["residual_hidden"],
                  num_residual=m["num_residual"],
                  quantizer=VectorQuantizer(cb["num_codes"], cb["code_dim"], cosine=cb["cosine"], rngs=rngs), rngs=rngs)
    # the optimizer of vqjax.training.train_and_evaluate: Adam, linear warm-up to the learning rate
    tx = optax.adam(training.learning_rate_schedule(ml_collections.ConfigDict(OPTIMIZER), steps=10**6))
    graphdef, state = training.init_train_state(model, tx, seed=SEED)
    mesh = training.make_mesh()
    threads = max(1, training.usable_cores() // mesh.size)
    micro = training.auto_micro_batches(BATCH // mesh.size, platform="cpu", threads_per_device=threads) if split else 1
    step = training.make_train_step(graphdef, tx, objective, micro_batches=micro)
    batch = training.shard_batch({"image": make_images()}, mesh)
    hparams = training.replicate({"model.beta": np.float32(m["beta"])}, mesh)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    holder = [training.replicate(state, mesh)]

    def run_steps(n):
        s = holder[0]
        for _ in range(n):
            s, _ = step(s, batch, hparams)
        holder[0] = jax.block_until_ready(s)

    return run_steps, num_params, {"buffers": 0, "devices": mesh.size, "requested_devices": num_devices,
                                   "micro_batches": micro, "model": MODEL, "optimizer": OPTIMIZER}


# --------------------------------------------------------------------------- PyTorch


def torch_vqvae(quantizer: str, num_codes=512, code_dim=64, hidden=64, residual_hidden=32, num_residual=2,
                beta=0.25):
    """The same VQ-VAE in PyTorch (NCHW); ``forward(x)`` returns the batch-mean loss."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv3 = nn.Conv2d(hidden, residual_hidden, 3, padding=1)
            self.conv1 = nn.Conv2d(residual_hidden, hidden, 1)

        def forward(self, x):
            return x + self.conv1(F.relu(self.conv3(F.relu(x))))

    class PlainVQ(nn.Module):
        """Nearest code, straight-through, codebook + β·commitment losses (summed per image)."""

        def __init__(self):
            super().__init__()
            self.codebook = nn.Embedding(num_codes, code_dim)
            nn.init.uniform_(self.codebook.weight, -1.0 / num_codes, 1.0 / num_codes)

        def forward(self, z):  # [B, D, H, W]
            b, d, h, w = z.shape
            e = self.codebook.weight
            with torch.no_grad():
                flat = z.permute(0, 2, 3, 1).reshape(-1, d)
                dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)
                idx = dist.argmin(1)
            codes = self.codebook(idx).view(b, h, w, d).permute(0, 3, 1, 2)
            codebook_loss = (z.detach() - codes).pow(2).sum((1, 2, 3)).mean()
            commitment = (z - codes.detach()).pow(2).sum((1, 2, 3)).mean()
            return z + (codes - z).detach(), codebook_loss + beta * commitment

    class LucidrainsVQ(nn.Module):
        def __init__(self):
            super().__init__()
            from vector_quantize_pytorch import VectorQuantize

            self.vq = VectorQuantize(dim=code_dim, codebook_size=num_codes, commitment_weight=beta)

        def forward(self, z):  # [B, D, H, W] -> [B, H·W, D] and back
            b, d, h, w = z.shape
            q, _, loss = self.vq(z.flatten(2).transpose(1, 2))
            return q.transpose(1, 2).reshape(b, d, h, w), loss.sum()

    class VQVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Conv2d(IMAGE[2], hidden // 2, 4, 2, 1), nn.ReLU(),
                nn.Conv2d(hidden // 2, hidden, 4, 2, 1), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                *[Residual() for _ in range(num_residual)], nn.ReLU(),
                nn.Conv2d(hidden, code_dim, 1),
            )
            self.quantizer = PlainVQ() if quantizer == "plain" else LucidrainsVQ()
            self.decoder = nn.Sequential(
                nn.Conv2d(code_dim, hidden, 3, padding=1),
                *[Residual() for _ in range(num_residual)], nn.ReLU(),
                nn.ConvTranspose2d(hidden, hidden // 2, 4, 2, 1), nn.ReLU(),
                nn.ConvTranspose2d(hidden // 2, IMAGE[2], 4, 2, 1),
            )

        def forward(self, x):
            z_q, vq_loss = self.quantizer(self.encoder(x))
            logits = self.decoder(z_q)
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3)).mean()
            return rec + vq_loss

    return VQVAE()


def setup_torch(quantizer: str):
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    cb = MODEL["quantizer"]["codebook"]
    model = torch_vqvae(quantizer, num_codes=cb["num_codes"], code_dim=cb["code_dim"], hidden=MODEL["hidden"],
                        residual_hidden=MODEL["residual_hidden"], num_residual=MODEL["num_residual"],
                        beta=MODEL["beta"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(make_images()).permute(0, 3, 1, 2).contiguous()  # NCHW

    def run_steps(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            model(x).backward()
            opt.step()

    num_params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    return run_steps, num_params, {"buffers": buffers, "torch_threads": torch.get_num_threads()}


def run_worker(variant: str, timings: int, steps: int, warmup: int = WARMUP_STEPS) -> dict:
    if variant.startswith("vqjax"):
        run_steps, num_params, extra = setup_vqjax(per_core=variant == "vqjax_per_core",
                                                   split=variant != "vqjax_unsplit")
    else:
        run_steps, num_params, extra = setup_torch(variant.removeprefix("torch_"))
    times = time_steps(run_steps, timings=timings, steps=steps, warmup=warmup)
    rates = [steps * BATCH / t for t in times]
    return {"num_params": int(num_params), "timings_s": times, "images_per_s_each": rates,
            "images_per_s": _common.median(rates), **extra}


# --------------------------------------------------------------------------- the parent


def param_note(results: dict) -> str:
    ref, plain = results["vqjax"].get("num_params"), results["torch_plain"].get("num_params")
    vqp = results["torch_vqp"]
    parts = [f"vqjax {ref:,} vs PyTorch plain VQ {plain:,}: " + ("match" if ref == plain else "DIFFER")]
    if "num_params" in vqp:
        parts.append(f"vector-quantize-pytorch variant {vqp['num_params']:,} trainable + {vqp['buffers']:,} in "
                     "buffers (its EMA codebook is a buffer, not a parameter)")
    return "Parameters: " + "; ".join(parts) + "."


def table(results: dict) -> str:
    ref = results["vqjax"].get("images_per_s")
    rows = []
    for name, label in VARIANTS.items():
        r = results[name]
        if _common.not_run(r):
            rows.append([label, "", _common.not_run(r), "", ""])
            continue
        speedup = "—" if name == "vqjax" or not ref else f"{ref / r['images_per_s']:.2f}×"
        rows.append([label, f"{r['num_params']:,}", f"{r['images_per_s']:,.0f}",
                     f"{BATCH / r['images_per_s'] * 1e3:.1f}", speedup])
    return _common.markdown_table(["Implementation", "Parameters", "Images/s (median)", "ms/step",
                                   "vqjax speedup"], rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timings", type=int, default=7, help="timed runs per variant (median)")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    p.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS, help="untimed steps before the timings")
    p.add_argument("--quick", action="store_true",
                   help="smoke run of the harness: a tiny model at batch 16, 1 timing of 1 step after 1 warm-up step")
    p.add_argument("--out", help="JSON path (default benchmarks/results/train_step[-quick].json)")
    p.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.timings, args.steps, args.warmup_steps = 1, 1, 1
        use_quick_sizes()

    if args.worker:
        return _common.emit(run_worker(args.worker, args.timings, args.steps, args.warmup_steps))

    env = _common.environment()
    print(_common.describe_environment(env), file=sys.stderr)
    _common.warn_if_busy(env)
    results = {}
    for name in VARIANTS:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        results[name] = _common.run_worker(os.path.abspath(__file__), name,
                                           ["--timings", str(args.timings), "--steps", str(args.steps),
                                            "--warmup-steps", str(args.warmup_steps)] + ["--quick"] * args.quick,
                                           requires=REQUIRES.get(name, ()))

    print(f"\n## VQ-VAE training step, batch {BATCH} of 28×28×1, median of {args.timings} timings of "
          f"{args.steps} steps after {args.warmup_steps} warm-up steps\n")
    print(_common.describe_environment(env) + "\n")
    print(table(results) + "\n")
    notes = [
        param_note(results) if all("num_params" in results[v] for v in ("vqjax", "torch_plain")) else
        "Parameters: no comparison (" + "; ".join(f"{v}: {_common.not_run(results[v])}" for v in ("vqjax", "torch_plain")
                                                  if _common.not_run(results[v])) + ").",
        "vqjax speedup = vqjax images/s ÷ the row's images/s (above 1×: vqjax is faster).",
        (f"PyTorch: torch.set_num_threads({TORCH_THREADS}); vqjax: one XLA:CPU device with XLA's intra-op "
        f"thread pool, its batch as {results['vqjax'].get('micro_batches')} concurrent micro-batches (the "
        f"experiments' default) or unsplit; {results['vqjax_per_core'].get('devices')} single-threaded XLA:CPU "
        "devices, one per core, the batch sharded over them, each device's share as "
        f"{results['vqjax_per_core'].get('micro_batches')} concurrent micro-batches (--config.cpu_devices_per_core"
        "=True). The vqjax speedup column compares the default (first row) with each row. The vqjax step also "
        "computes its logged metrics (code usage, perplexity, MSE, gradient norm)."),
        ("Losses: BCE-with-logits summed per image, mean over the batch, + codebook + 0.25 · commitment "
        "(summed per image) for vqjax and the plain VQ; vector-quantize-pytorch adds its own commitment "
        "loss (per-element mean × 0.25) and learns the codebook by EMA."),
    ]
    print("\n".join("- " + n for n in notes))
    out = args.out or os.path.join(_common.RESULTS_DIR, "train_step-quick.json" if args.quick else "train_step.json")
    _common.write_json(out, {"environment": env, "batch": BATCH, "model": MODEL, "quick": args.quick,
                             "timings": args.timings, "steps": args.steps,
                             "warmup_steps": args.warmup_steps, "notes": notes, "results": results})


if __name__ == "__main__":
    main()
