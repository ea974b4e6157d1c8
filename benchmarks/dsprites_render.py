"""Images/s of the procedural dSprites renderer, against the training step that consumes it.

    python benchmarks/dsprites_render.py             # median of 30 timings per row (~1 minute)
    python benchmarks/dsprites_render.py --quick     # a smoke test of the harness: 2 timings, no train step

Rows, every one in this process (single process, NumPy on one thread) except the last:

* ``render_dsprites`` of a batch of 64 and of 256 random image indices (``dsprites_factors`` of the
  indices, then the vectorised render): what Grain's batched read (``DSpritesSource._getitems``) does;
* ``source[i]`` one index at a time: what ``grain.MapDataset.batch`` does by default, one
  ``__getitem__`` per example;
* ``vqjax.data.make_pipeline`` over the 737,280-image training split, batch 64, shuffled: the
  library's Grain pipeline as a training run reads it (its 4 reader threads, prefetching); the
  sustained rate over ``--pipeline-batches`` batches after 4 warm-up batches;
* for comparison, in its own subprocess: images/s of one training step of a VAE with the
  disentanglement_lib networks (``vqjax.nn.DisentanglementEncoder`` / ``DisentanglementDecoder``,
  10 latents, Bernoulli, Adam), batch 64 of 64×64×1 as the literature trains, split into
  ``training.auto_micro_batches`` concurrent parts as the experiments run on a CPU host.

The renderer keeps up when its rate is well above the training step's. Results: a markdown table on
stdout and ``benchmarks/results/dsprites_render.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import _common
import numpy as np

BATCHES = (64, 256)
TRAIN_BATCH = 64
SEED = 0


def _render_rate(batch: int, repeats: int) -> dict:
    from vqjax import data

    rng = np.random.default_rng(SEED)
    indices = [rng.integers(0, data.DSPRITES_SIZE, batch) for _ in range(repeats + 2)]
    box = iter(indices)

    def run():
        data.render_dsprites(data.dsprites_factors(next(box)))

    times, peak = _common.time_calls(run, repeats=repeats, warmup=2)
    seconds = _common.median(times)
    return {"batch": batch, "seconds": seconds, "all_seconds": times, "images_per_s": batch / seconds,
            "peak_gib": peak}


def _per_index_rate(count: int, repeats: int) -> dict:
    from vqjax import data

    source = data.dsprites_source("train")
    rng = np.random.default_rng(SEED + 1)
    indices = [rng.integers(0, len(source), count).tolist() for _ in range(repeats + 1)]
    box = iter(indices)

    def run():
        for i in next(box):
            source[i]

    times, peak = _common.time_calls(run, repeats=repeats, warmup=1)
    seconds = _common.median(times)
    return {"batch": count, "seconds": seconds, "all_seconds": times, "images_per_s": count / seconds,
            "peak_gib": peak}


def _pipeline_rate(batches: int) -> dict:
    from vqjax import data

    it = data.make_pipeline(data.dsprites_source("train"), batch_size=TRAIN_BATCH, seed=SEED)
    for _ in range(4):  # the reader threads start, the prefetch buffer fills
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - t
    assert batch["image"].shape == (TRAIN_BATCH, 64, 64, 1)
    return {"batch": TRAIN_BATCH, "batches": batches, "seconds": seconds,
            "images_per_s": batches * TRAIN_BATCH / seconds}


def train_step_worker(steps: int, repeats: int) -> dict:
    """One VAE training step with the disentanglement_lib networks, jitted, on batches of dSprites."""
    import jax
    import optax
    from flax import nnx

    from vqjax import data, objectives, training
    from vqjax.nn import VAE, DisentanglementDecoder, DisentanglementEncoder

    rngs = nnx.Rngs(SEED)
    model = VAE(DisentanglementEncoder((64, 64, 1), 10, rngs=rngs), DisentanglementDecoder((64, 64, 1), 10, rngs=rngs),
                latents=10, likelihood="bernoulli")

    def objective(model, batch, *, key, step, hparams, weights=None):
        del step, hparams
        return objectives.vae_objective(model, batch, key=key, dynamic_binarization=False, weights=weights)

    tx = optax.adam(1e-4)  # Locatello et al. (2019): Adam, 1e-4, batch 64
    graphdef, state = training.init_train_state(model, tx, seed=SEED)
    micro = training.auto_micro_batches(TRAIN_BATCH, platform=jax.default_backend(),
                                        threads_per_device=training.usable_cores())
    step = training.make_train_step(graphdef, tx, objective, micro_batches=micro)
    rng = np.random.default_rng(SEED)
    images = data.render_dsprites(data.dsprites_factors(rng.integers(0, data.DSPRITES_SIZE, 4 * TRAIN_BATCH)))
    batches = [{"image": jax.device_put(images[k::4].astype(np.float32) / 255)} for k in range(4)]
    params = sum(x.size for x in jax.tree.leaves(state.params))
    holder = [state]

    def run():
        s = holder[0]
        for i in range(steps):
            s, metrics = step(s, batches[i % 4])
        jax.block_until_ready(metrics["loss"])
        holder[0] = s

    times, peak = _common.time_calls(run, repeats=repeats, warmup=1)
    seconds = _common.median(times)
    return {"batch": TRAIN_BATCH, "steps": steps, "micro_batches": micro, "params": int(params),
            "seconds": seconds, "all_seconds": times, "images_per_s": steps * TRAIN_BATCH / seconds,
            "peak_gib": peak}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("train_step",))
    parser.add_argument("--repeats", type=int, default=30, help="timings per row (the median is reported)")
    parser.add_argument("--pipeline-batches", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=10, help="steps per timing of the training step")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.pipeline_batches, args.train_steps = 2, 8, 1
    if args.worker:
        return _common.emit(train_step_worker(args.train_steps, max(1, args.repeats // 10)))
    env = _common.environment()
    print(_common.describe_environment(env), file=sys.stderr)
    _common.warn_if_busy(env)
    results = {f"render_{b}": _render_rate(b, args.repeats) for b in BATCHES}
    results["per_index"] = _per_index_rate(64, args.repeats)
    results["pipeline"] = _pipeline_rate(args.pipeline_batches)
    if args.quick:
        results["train_step"] = {"error": "not run: --quick"}
    else:
        t = time.perf_counter()
        results["train_step"] = _common.run_worker(
            os.path.abspath(__file__), "train_step",
            ["--train-steps", str(args.train_steps), "--repeats", str(args.repeats)])
        print(f"train_step: {results['train_step']} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    names = {
        "render_64": "render_dsprites, random batch of 64",
        "render_256": "render_dsprites, random batch of 256",
        "per_index": "source[i], one random index at a time",
        "pipeline": f"make_pipeline (Grain, 4 threads), batch {TRAIN_BATCH}, shuffled",
        "train_step": f"for comparison: VAE training step, batch {TRAIN_BATCH} (disentanglement_lib nets)",
    }
    rows = []
    for name, what in names.items():
        r = results[name]
        if _common.not_run(r):
            rows.append([what, _common.not_run(r), "-"])
        else:
            rows.append([what, f"{r['images_per_s']:,.0f}", f"{1e3 * r['seconds'] / r.get('steps', 1):.2f}"
                         if name != "pipeline" else f"{1e3 * r['seconds'] / r['batches']:.2f}"])
    print(_common.describe_environment(env) + "\n")
    print(f"Procedural dSprites (64×64×1), median of {args.repeats} timings (the pipeline: sustained over "
          f"{args.pipeline_batches} batches):\n")
    print(_common.markdown_table(["What", "Images/s", "ms per batch / step"], rows))
    out = args.out or os.path.join(_common.RESULTS_DIR,
                                   "dsprites_render-quick.json" if args.quick else "dsprites_render.json")
    _common.write_json(out, {"environment": env, "quick": args.quick, "repeats": args.repeats,
                             "results": results})


if __name__ == "__main__":
    main()
