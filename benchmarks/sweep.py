"""Runs·images per second of an 8-run sweep: the sweep engine against the same 8 runs one after another.

    python benchmarks/sweep.py            # VQ-VAE (main job) and MLP VAE, 8 values of β each
    python benchmarks/sweep.py --quick    # smoke run of the harness: tiny models, batch 16, 1 timing of 1 step

Two models, the ones users sweep most: the VQ-VAE of ``experiments/vqvae_mnist.py`` (K=512, D=64,
hidden 64, batch 128) at 8 values of β, and the MLP VAE of ``experiments/vae_mnist.py`` (500 hidden
units, 20 latents, batch 64) at 8 values of β. Each way of training them runs in its own subprocess:

* ``sequential``: one run at a time, as ``python -m experiments.<name>`` trains it by default (one
  XLA:CPU device using every core); 8 runs one after another take 8 times as long as one.
* ``engine, <placement>, <n> devices``: the 8 runs stacked in one program
  (:func:`vqjax.training.make_runs_train_step`) on a ``("runs", "data")`` mesh of ``n`` devices:
  ``n`` = one single-threaded XLA:CPU device per core, or 1 device; ``placement`` = ``waves`` (one
  run per device at a time: the group's runs in chunks of ``n``, each chunk one call of the step, the
  chunks by turns at every step; the CPU default), ``loop`` (a device's runs one after another inside
  one program), ``vmap`` (a device's runs batched in one program; the GPU/TPU default).

What is timed is the train step on a fixed batch (the data pipeline, evaluation and checkpoints are
left out, the same for every variant), after a warm-up: the median of the timings, and the peak
memory above the process's baseline. A table on stdout and ``benchmarks/results/sweep.json``
(``--out`` for another path; ``sweep-quick.json`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import sys

import _common
import numpy as np

RUNS = 8
BETAS = {"vqvae": [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0], "vae": [0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0]}
BATCH = {"vqvae": 128, "vae": 64}
QUICK_BATCH = 16  # --quick: tiny models at this batch, a smoke run of the harness


def batch_size(model: str, quick: bool) -> int:
    return QUICK_BATCH if quick else BATCH[model]


def make_task(model: str, quick: bool = False):
    """The experiment's model and objective as a :class:`vqjax.training.Task` (β sweepable); tiny with ``quick``."""
    from vqjax import objectives, training
    from vqjax.nn import VAE, VQVAE, MLPDecoder, MLPEncoder, VectorQuantizer

    if model == "vqvae":
        hidden, residual, blocks, codes, dim = (8, 4, 1, 16, 4) if quick else (64, 32, 2, 512, 64)

        def make(rngs):
            return VQVAE(in_channels=1, hidden=hidden, residual_hidden=residual, num_residual=blocks,
                         quantizer=VectorQuantizer(codes, dim, rngs=rngs), rngs=rngs)

        def objective(m, batch, *, key, step, hparams, weights=None):
            return objectives.vqvae_objective(m, batch, beta=hparams["model.beta"], key=key, weights=weights)
    else:
        hidden, latents = (16, 4) if quick else (500, 20)

        def make(rngs):
            return VAE(MLPEncoder((28, 28, 1), latents, hidden=hidden, rngs=rngs),
                       MLPDecoder((28, 28, 1), latents, hidden=hidden, rngs=rngs), latents=latents,
                       likelihood="bernoulli")

        def objective(m, batch, *, key, step, hparams, weights=None):
            return objectives.vae_objective(m, batch, beta=hparams["model.beta"], key=key, weights=weights)

    return training.Task(model=make, objective=objective, hparams={"model.beta": 1.0})


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(batch, 28, 28, 1)).astype(np.float32)


def worker(model: str, way: str, devices: int, timings: int, steps: int, quick: bool = False) -> dict:
    from vqjax import training

    batch_rows = batch_size(model, quick)
    if way.endswith("+eigen"):  # per-core devices that keep XLA's threaded Eigen kernels
        way = way[: -len("+eigen")]
        import jax

        jax.config.update("jax_num_cpu_devices", devices)
    elif way != "sequential":
        training.use_cpu_cores_as_devices((batch_rows,), max_devices=devices)
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    task = make_task(model, quick)
    batch = {"image": images(batch_rows)}

    def optimizer(hparams):
        return optax.adam(hparams["optimizer.learning_rate"])

    if way == "sequential":
        tx = optax.adam(1e-3)
        graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
        step = training.make_train_step(graphdef, tx, task.objective)
        mesh = training.make_mesh()
        hp = {"model.beta": jnp.float32(BETAS[model][0])}
        holder = [training.replicate(state, mesh)]
        batch = training.shard_batch(batch, mesh)

        def run():
            s = holder[0]
            for _ in range(steps):
                s, _ = step(s, batch, hp)
            holder[0] = jax.block_until_ready(s)

        runs_per_call = 1
    else:
        placement = way
        states = []
        for r in range(RUNS):
            graphdef, state = training.init_train_state(task.model(nnx.Rngs(r)), optax.adam(1e-3), seed=r)
            states.append(state)
        stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
        hp = {"model.beta": np.asarray(BETAS[model], np.float32), "optimizer.learning_rate": np.full(RUNS, 1e-3,
                                                                                                      np.float32)}
        mesh = training.make_sweep_mesh(RUNS)
        from vqjax.training import _mesh

        step = training.make_runs_train_step(graphdef, optimizer, task.objective, mesh, placement=placement)
        width = mesh.shape["runs"] if placement == "waves" else RUNS  # as vqjax.training.train_group chunks
        chunks = [slice(i, i + width) for i in range(0, RUNS, width)]
        with jax.set_mesh(mesh):
            holder = [_mesh.put_global([(jax.tree.map(lambda x, c=c: x[c], stacked), np.zeros(c.stop - c.start, bool),
                                         {k: v[c] for k, v in hp.items()}) for c in chunks], mesh, jax.P("runs"))]
            batch = _mesh.put_global(batch, mesh, jax.P("data"))

        def run():
            parts = holder[0]
            with jax.set_mesh(mesh):
                for _ in range(steps):
                    parts = [(*step(s, d, batch, h)[:2], h) for s, d, h in parts]
            holder[0] = jax.block_until_ready(parts)

        runs_per_call = RUNS
    times, peak = _common.time_calls(run, repeats=timings, warmup=1)
    seconds = _common.median(times)
    return {"model": model, "way": way, "devices": jax.device_count(), "runs": runs_per_call,
            "seconds_per_step": seconds / steps,
            "run_images_per_sec": runs_per_call * steps * batch_rows / seconds,
            "peak_gib": round(peak, 3), "times": times}


CHIPS = {"TPU v5e": (16, 197e12), "TPU v4": (32, 275e12)}  # HBM GiB, peak bf16 FLOP/s per chip (Google's specs)


def costs(model: str, quick: bool = False) -> dict:
    """One run's train step as XLA compiles it: FLOPs, state bytes and working memory (for the arithmetic)."""
    import jax
    import optax
    from flax import nnx

    from vqjax import training

    task = make_task(model, quick)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    step = jax.jit(training._steps.train_step_fn(graphdef, lambda hp: tx, task.objective), donate_argnums=0)
    batch_rows = batch_size(model, quick)
    compiled = step.lower(state, {"image": images(batch_rows)}, {"model.beta": np.float32(1.0)}).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return {"model": model, "flops_per_step": float(cost["flops"]), "state_bytes": int(state_bytes),
            "temp_bytes": int(mem.temp_size_in_bytes), "batch": batch_rows,
            "params": int(sum(x.size for x in jax.tree.leaves(state.params)))}


def arithmetic(c: dict) -> list[str]:
    per_run = c["state_bytes"] + c["temp_bytes"]
    out = [(f"{c['model']}: {c['params']:,} parameters; per run {c['state_bytes'] / 2**20:.1f} MiB of state "
            f"(parameters + Adam moments) + {c['temp_bytes'] / 2**20:.1f} MiB of XLA working memory at batch "
            f"{c['batch']} = {per_run / 2**20:.1f} MiB; {c['flops_per_step'] / 1e9:.2f} GFLOP per step")]
    for chip, (hbm, peak) in CHIPS.items():
        runs = int(0.9 * hbm * 2**30 // per_run)
        out.append(f"  {chip}: {hbm} GiB HBM / {per_run / 2**20:.1f} MiB ≈ {runs:,} runs in memory (90 % of HBM); "
                   f"at 30 % of {peak / 1e12:.0f} TFLOP/s a step of one run takes "
                   f"{c['flops_per_step'] / (0.3 * peak) * 1e6:.1f} µs of compute")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "WAY", "DEVICES"))
    p.add_argument("--quick", action="store_true", help="smoke run of the harness: tiny models, 1 timing of 1 step")
    p.add_argument("--timings", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--models", default="vqvae,vae")
    p.add_argument("--ways", default="sequential,waves,loop,vmap,vmap:1",
                   help="how the runs train, each WAY[:DEVICES] (default devices: one per core; sequential: 1)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/sweep[-quick].json)")
    args = p.parse_args(argv)
    timings = args.timings or (1 if args.quick else 5)
    steps = args.steps or (1 if args.quick else 10)
    if args.worker and args.worker[1] == "costs":
        _common.emit(costs(args.worker[0], args.quick))
        return
    if args.worker:
        model, way, devices = args.worker
        _common.emit(worker(model, way, int(devices), timings, steps, args.quick))
        return
    env = _common.environment()
    _common.warn_if_busy(env)
    cores = len(os.sched_getaffinity(0))
    ways = []
    for item in args.ways.split(","):
        way, _, devices = item.partition(":")
        if way not in ("sequential", "waves", "loop", "vmap"):
            p.error(f"--ways: unknown way {way!r}")
        ways.append((way, 1 if way == "sequential" else int(devices or cores)))
    rows, results = [], []
    for model in args.models.split(","):
        base = None
        for way, devices in ways:
            r = _common.run_worker(__file__, model, [way, str(devices), "--timings", str(timings), "--steps",
                                                     str(steps)] + (["--quick"] if args.quick else []))
            r.setdefault("model", model)
            r.setdefault("way", way)
            results.append(r)
            if "error" in r:
                rows.append([model, way, str(devices), "error: " + r["error"][:80], "", "", ""])
                continue
            base = base or r["run_images_per_sec"]
            label = "8 runs one after another" if way == "sequential" else f"engine, {way}"
            rows.append([model, label, str(r["devices"]), f"{r['run_images_per_sec']:,.0f}",
                         f"{r['run_images_per_sec'] / base:.2f}x",
                         f"{RUNS * batch_size(model, args.quick) / r['run_images_per_sec']:.3f}"
                         if way != "sequential" else f"{RUNS * r['seconds_per_step']:.3f}", f"{r['peak_gib']:.2f}"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    lines = []
    for model in args.models.split(","):
        c = _common.run_worker(__file__, model, ["costs", "1"] + (["--quick"] if args.quick else []))
        results.append({"costs": c})
        lines += arithmetic(c) if "error" not in c else [f"{model}: {c['error']}"]
    print(_common.describe_environment(env))
    print(_common.markdown_table(["model", "how the 8 runs train", "devices", "runs·images/s", "vs sequential",
                                  "s per step of all 8 runs", "peak GiB"], rows))
    print("\n".join(lines))
    out = args.out or os.path.join(_common.RESULTS_DIR, "sweep-quick.json" if args.quick else "sweep.json")
    _common.write_json(out, {"environment": env, "runs": RUNS, "betas": BETAS,
                             "batch": {m: batch_size(m, args.quick) for m in BATCH}, "quick": args.quick,
                             "timings": timings, "steps": steps, "results": results})


if __name__ == "__main__":
    main()
