"""Images/s of the oi-VAE training step: vqjax against the same model in PyTorch.

    python benchmarks/oivae.py           # 100 steps per timing, median of 5
    python benchmarks/oivae.py --quick   # smoke run of the harness: a tiny model, 2 steps, 1 timing

The model is the MNIST model of ``experiments/oivae.py`` at p = 8 and 64 hidden units (its defaults
are 16 and 128): an MLP encoder (784-500-2·20), 16 groups (a 4×4 grid of 7×7 regions), per group
``W_g`` of 8×20 and a generator 8-64-49, Bernoulli likelihood,
the Gaussian prior on the generators (σ_θ = 10), batch 64. One step: the loss, its gradient, Adam on
every parameter, then the group-lasso proximal step on W (λ = 3, threshold λ·η). Each variant runs in
its own subprocess:

* vqjax: the experiment's jitted train step (``vqjax.training.make_train_step`` with
  ``objectives.oivae_objective`` and ``optax.chain(adam, masked(group_lasso_prox))``, built here from
  ``vqjax``), the G generators as one batched computation.
* PyTorch, per-group loop: the structure of the authors' code (samuela/oi-vae): a list of G generator
  modules called one after another, then the proximal step on the stacked W.
* PyTorch, batched: the same model with the G generators stacked and run by ``torch.bmm``, as vqjax does.

``torch.set_num_threads(2)``. Without PyTorch (the ``bench`` extra) its rows say "not installed" and the
vqjax row still runs. Results: a markdown table on stdout and ``benchmarks/results/oivae.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common

B, L, P, HIDDEN, ENC = 64, 20, 8, 64, 500
GRID, SIDE = 4, 7
G, D = GRID * GRID, SIDE * SIDE
LAM, LR, SIGMA_THETA = 3.0, 1e-3, 10.0


def use_quick_sizes() -> None:
    """``--quick`` (a smoke run of the harness, not a timing): a tiny model of the same structure (the
    16 regions), for the parent and its workers alike."""
    global B, L, P, HIDDEN, ENC
    B, L, P, HIDDEN, ENC = 32, 4, 2, 8, 16

VARIANTS = {
    "vqjax": "vqjax (jitted step, batched groups)",
    "torch_loop": "PyTorch, per-group loop (the authors' structure)",
    "torch_batched": "PyTorch, batched groups (bmm)",
}
REQUIRES = {"torch_loop": ("torch",), "torch_batched": ("torch",)}  # peers: the `bench` extra


def _images(n: int = 4096):
    import numpy as np

    return (np.random.default_rng(0).uniform(size=(n, 28, 28, 1)) > 0.8).astype(np.float32)


def setup_vqjax(steps: int):
    """The experiment's MNIST oi-VAE at p = 8, 64 hidden units, built here from ``vqjax`` (the
    benchmarks do not import the experiment programs): its model, objective and proximal Adam."""
    import jax
    import ml_collections
    import numpy as np
    import optax
    from flax import nnx

    from vqjax import groups, objectives, proximal, training
    from vqjax.nn import VAE, GroupedGenerator, MLPEncoder, latent_to_group_mask

    shape = (28, 28, 1)
    rngs = nnx.Rngs(0)
    encoder = MLPEncoder(shape, L, hidden=ENC, rngs=rngs)
    generator = GroupedGenerator(groups.grid_regions(shape, (GRID, GRID)), shape, L, group_input_dim=P,
                                 hidden=(HIDDEN,), rngs=rngs)
    model = VAE(encoder, generator, latents=L, likelihood="bernoulli", variance=1.0)

    def objective(model, batch, *, key, step, hparams, weights=None):
        del step, hparams
        return objectives.oivae_objective(model, batch, key=key, group_lasso=LAM, generator_prior_scale=SIGMA_THETA,
                                          dynamic_binarization=True, weights=weights)

    schedule = training.learning_rate_schedule(
        ml_collections.ConfigDict({"learning_rate": LR, "warmup_steps": 0, "schedule": "constant"}), steps)
    # proximal Adam: Adam on every parameter, then the group-lasso proximal step on W
    tx = optax.chain(optax.adam(schedule), optax.masked(proximal.group_lasso_prox(LAM, schedule), latent_to_group_mask))
    graphdef, state = training.init_train_state(model, tx, seed=0)
    step = training.make_train_step(graphdef, tx, objective)
    images = _images()
    batches = [{"image": jax.device_put(images[i * B:(i + 1) * B])} for i in range(len(images) // B)]
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    box = [state]

    def run():
        s = box[0]
        for i in range(steps):
            s, m = step(s, batches[i % len(batches)])
        jax.block_until_ready(m["loss"])
        box[0] = s

    return run, params


def setup_torch(steps: int, batched: bool):
    import torch
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    # Flat pixel d of a 28×28 image -> (group, position in group): the 4×4 grid of 7×7 regions.
    rows = torch.arange(28).repeat_interleave(28)
    cols = torch.arange(28).repeat(28)
    group = (rows // SIDE) * GRID + cols // SIDE
    order = torch.argsort(group * 1000 + (rows % SIDE) * SIDE + cols % SIDE)  # group-major layout
    inverse = torch.argsort(order)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.head = nn.Linear(784, ENC), nn.Linear(ENC, 2 * L)

        def forward(self, x):
            return self.head(torch.relu(self.hidden(x))).chunk(2, dim=1)

    class LoopGenerator(nn.Module):  # as the authors' BayesianGroupLassoGenerator: a list of nets
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(G, P, L) / L**0.5)
            self.nets = nn.ModuleList([nn.Sequential(nn.Linear(P, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, D))
                                       for _ in range(G)])

        def forward(self, z):
            out = [net(z @ self.W[g].T) for g, net in enumerate(self.nets)]
            return torch.cat(out, dim=1)[:, inverse]

        def theta(self):
            return [p for net in self.nets for p in net.parameters()]

    class BatchedGenerator(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(G, P, L) / L**0.5)
            self.k1 = nn.Parameter(torch.randn(G, P, HIDDEN) / P**0.5)
            self.b1 = nn.Parameter(torch.zeros(G, 1, HIDDEN))
            self.k2 = nn.Parameter(torch.randn(G, HIDDEN, D) / HIDDEN**0.5)
            self.b2 = nn.Parameter(torch.zeros(G, 1, D))

        def forward(self, z):
            u = torch.einsum("bl,gpl->gbp", z, self.W)
            h = torch.relu(torch.bmm(u, self.k1) + self.b1)
            out = torch.bmm(h, self.k2) + self.b2  # [G, B, D]
            return out.permute(1, 0, 2).reshape(z.shape[0], -1)[:, inverse]

        def theta(self):
            return [self.k1, self.b1, self.k2, self.b2]

    encoder, generator = Encoder(), (BatchedGenerator() if batched else LoopGenerator())
    opt = torch.optim.Adam([*encoder.parameters(), *generator.parameters()], lr=LR)
    images = torch.from_numpy(_images()).reshape(-1, 784)
    params = sum(p.numel() for p in [*encoder.parameters(), *generator.parameters()])

    def one_step(x):
        mean, log_var = encoder(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        logits = generator(z)
        ll = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(1)
        prior = sum((p**2).sum() for p in generator.theta()) / (2 * SIGMA_THETA**2)
        loss = (kl - ll).mean() + prior
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # block soft-thresholding of the columns w_{g,j} = W[g, :, j]
            norms = generator.W.norm(dim=1, keepdim=True)
            generator.W.mul_(torch.clamp(1 - LR * LAM / norms.clamp_min(1e-30), min=0.0))
        return loss

    def run():
        for i in range(steps):
            j = i % (len(images) // B)
            loss = one_step(images[j * B:(j + 1) * B])
        float(loss)

    return run, params


def run_worker(variant: str, steps: int, timings: int) -> dict:
    if variant == "vqjax":
        run, params = setup_vqjax(steps)
    else:
        run, params = setup_torch(steps, batched=variant == "torch_batched")
    times, peak = _common.time_calls(run, repeats=timings, warmup=1)
    seconds = _common.median(times)
    return {"seconds": seconds, "all_seconds": times, "images_per_sec": steps * B / seconds, "params": int(params),
            "peak_gib": peak}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--timings", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.timings = 2, 1
        use_quick_sizes()
    if args.worker:
        return _common.emit(run_worker(args.worker, args.steps, args.timings))
    env = _common.environment()
    print(_common.describe_environment(env), file=sys.stderr)
    _common.warn_if_busy(env)
    results = {}
    for name in VARIANTS:
        t = time.perf_counter()
        results[name] = _common.run_worker(os.path.abspath(__file__), name,
                                           ["--steps", str(args.steps), "--timings", str(args.timings)]
                                           + ["--quick"] * args.quick,
                                           requires=REQUIRES.get(name, ()))
        print(f"{name}: {results[name]} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    base = results["vqjax"].get("images_per_sec")
    rows = []
    for name, what in VARIANTS.items():
        r = results[name]
        if _common.not_run(r):
            rows.append([what, "-", _common.not_run(r), "-"])
            continue
        rows.append([what, f"{r['params']:,}", f"{r['images_per_sec']:,.0f}",
                     f"{base / r['images_per_sec']:.1f}× slower" if name != "vqjax" and base else "-"])
    print(_common.describe_environment(env) + "\n")
    print(f"oi-VAE training step, batch {B}, {G} groups, L = {L}; {args.steps} steps per timing, median of "
          f"{args.timings}:\n")
    print(_common.markdown_table(["Implementation", "Parameters", "Images/s", "vs vqjax"], rows))
    out = args.out or os.path.join(_common.RESULTS_DIR, "oivae-quick.json" if args.quick else "oivae.json")
    _common.write_json(out, {"environment": env, "steps": args.steps, "batch_size": B, "groups": G,
                             "latents": L, "group_input_dim": P, "hidden": HIDDEN, "encoder_hidden": ENC,
                             "quick": args.quick, "timings": args.timings, "results": results})


if __name__ == "__main__":
    main()
