"""Memory of one training step of each main model, from XLA's buffer assignment, extrapolated to accelerators.

    python benchmarks/memory.py           # the experiments' default models, batch 1 and 128
    python benchmarks/memory.py --quick   # smoke run of the harness: tiny vqvae and prior, batch 1 and 8
    python benchmarks/memory.py --models vqvae,vae   # a subset

Four models, each the task of its experiment's default config (``get_config()`` then ``build``):

* ``vqvae``: ``experiments/vqvae_mnist.py`` (K=512, D=64, hidden 64; batch 128);
* ``vae``: ``experiments/vae_mnist.py``, the MLP VAE (500 hidden units, 20 latents; batch 64);
* ``vqvae2``: ``experiments/vqvae2_mnist.py`` stage 1, the VQ-VAE-2 (``build(config)``; batch 128);
* ``prior``: ``experiments/vqvae_prior_mnist.py``, the gated PixelCNN over the codes of a fresh
  (untrained) VQ-VAE of ``vqvae_config(config)`` (``build(config, vqvae)``; batch 128). The frozen
  VQ-VAE's weights are constants of the step (closed over by the objective), as in the experiment;
  XLA:CPU counts such constants in the temporaries, so they are part of the prior's ``fixed`` bytes.

Unlike the other benchmarks this script imports ``experiments``: the point is the memory of the models
and objectives the experiments train, and importing their ``build`` measures exactly those (a copy
built from ``vqjax.nn`` would drift from them). ``experiments`` is imported from the repository root.

For each model the step is the loop's own (``vqjax.training._loop``): ``jax.jit(train_step_fn(graphdef,
optimizer, task.objective), donate_argnums=0)`` with ``optimizer(hparams) = task.optimizer(
learning_rate_schedule(config.optimizer, steps, hparams["optimizer.learning_rate"]), hparams)`` (Adam)
on the ``TrainState`` of :func:`vqjax.training.init_train_state`, the hyperparameters as float32 ``[]``
arrays, and a batch ``{"image": float32 [B, 28, 28, 1], "label": int32 [B]}``. It is lowered and
compiled for abstract inputs (``jax.ShapeDtypeStruct``: nothing runs) on one CPU device at two batch
sizes B1 < B2 (and at the experiment's batch size when that is neither), and
``compiled.memory_analysis()`` gives XLA's buffer sizes: arguments, outputs, aliased (the donated
state reused for the new state) and temporaries (activations kept for the backward pass, gradients,
scratch).

Derived, per model:

* state = bytes of the ``TrainState`` (parameters, other variables such as EMA codebooks, Adam's two
  moments, step and key): what a run keeps on the device between steps;
* footprint(B) = argument + output - alias + temp: the bytes live during one step at batch B (state,
  batch, new state in place of the donated one, metrics, temporaries);
* per example = (footprint(B2) - footprint(B1)) / (B2 - B1) (the activations per example,
  temp(B2) - temp(B1) over B2 - B1, plus the example's own input bytes); fixed = footprint(B1) -
  state - per example · B1 (what does not grow with B: gradients, optimizer scratch, metrics);
* largest batch on a device of capacity C (16 GiB and 80 GiB), keeping a 10% reserve:
  ``floor((0.9 · C - state - fixed) / per example)``;
* runs of a sweep per device at the experiment's batch size b (each run with its own state and
  temporaries, as the sweep engine's vmapped runs roughly are): ``floor(0.9 · C / footprint(b))``.

THESE ARE XLA:CPU'S BUFFER ASSIGNMENTS FOR THE CPU COMPILE. A GPU or TPU compile of the same step
assigns buffers differently (other fusions, so other temporaries; padded layouts, e.g. TPU tiles of
8×128; bfloat16 if one trains in it; the runtime's own reservations), so the 16 GiB / 80 GiB columns
are an estimate of the order of magnitude, not a guarantee: compile on the accelerator
(``memory_analysis()`` there) before relying on a batch close to the limit.

Results: a markdown table on stdout and ``benchmarks/results/memory.json`` (``memory-quick.json`` with
``--quick``; ``--out`` for another path).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import _common  # puts the repository root on sys.path (for `experiments`)
import numpy as np

MODELS = ("vqvae", "vae", "vqvae2", "prior")
QUICK_MODELS = ("vqvae", "prior")  # --quick's default: the VQ-VAE and the prior's two-model build, under ~20 s
LABELS = {"vqvae": "VQ-VAE (vqvae_mnist)", "vae": "MLP VAE (vae_mnist)", "vqvae2": "VQ-VAE-2 stage 1 (vqvae2_mnist)",
          "prior": "PixelCNN prior (vqvae_prior_mnist)"}
BATCHES, QUICK_BATCHES = (1, 128), (1, 8)
CAPACITIES_GIB = (16, 80)
RESERVE = 0.1  # share of the device kept free (runtime, fragmentation, the compile's own misestimates)
MIB, GIB = 2**20, 2**30

# --quick: tiny networks (config overrides), so that the four compiles take seconds.
_TINY_VQ = {"model.hidden": 8, "model.residual_hidden": 4, "model.num_residual": 1,
            "model.quantizer.codebook.num_codes": 16, "model.quantizer.codebook.code_dim": 4}
QUICK_OVERRIDES = {
    "vqvae": _TINY_VQ,
    "vae": {"model.hidden": 16, "model.latents": 4},
    "vqvae2": _TINY_VQ,
    "prior": {"model.hidden": 8, "model.num_layers": 2, "model.out_hidden": 16,
              **{f"vqvae.{k}": v for k, v in _TINY_VQ.items()}},
}


def _override(config, overrides: dict) -> None:
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value


def make_task(model: str, quick: bool):
    """``(config, task)``: the experiment's default config (tiny with ``quick``) and its task."""
    from flax import nnx

    from experiments import vae_mnist, vqvae2_mnist, vqvae_mnist, vqvae_prior_mnist

    module = {"vqvae": vqvae_mnist, "vae": vae_mnist, "vqvae2": vqvae2_mnist, "prior": vqvae_prior_mnist}[model]
    config = module.get_config()
    if quick:
        _override(config, QUICK_OVERRIDES[model])
    if model == "prior":
        # one jitted initialisation (eager initialisers would compile one small program per weight shape)
        vqvae = nnx.jit(lambda: vqvae_mnist.make_model(vqvae_prior_mnist.vqvae_config(config), nnx.Rngs(0)))()
        vqvae.eval()  # frozen, as load_vqvae leaves it
        return config, module.build(config, vqvae, log=lambda s: None)
    return config, module.build(config)


def nbytes(tree) -> int:
    import jax

    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def measure(model: str, quick: bool) -> dict:
    """XLA's memory analysis of the model's train step at each batch size, and the extrapolation."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vqjax import training
    from vqjax.training._steps import train_step_fn

    # the loop's unjitted step: make_train_step returns a plain function around its jit, which cannot be lowered

    config, task = make_task(model, quick)
    default_batch = int(config.data.batch_size)
    b1, b2 = QUICK_BATCHES if quick else BATCHES
    if quick:
        default_batch = min(default_batch, b2)
    steps = int(config.train.steps)
    lr = "optimizer.learning_rate"

    def optimizer(hparams):
        return task.optimizer(training.learning_rate_schedule(config.optimizer, steps, hparams.get(lr)), hparams)

    hparams = {lr: np.float32(config.optimizer.learning_rate), **{k: np.float32(v) for k, v in task.hparams.items()}}
    seed = int(config.seed)

    def init():  # the loop's fresh TrainState, traced for its shapes only (nothing is initialised)
        hp = {k: jnp.asarray(v) for k, v in hparams.items()}
        return training.init_train_state(task.model(nnx.Rngs(seed)), optimizer(hp), seed=seed)[1]

    graphdef = nnx.split(nnx.eval_shape(lambda: task.model(nnx.Rngs(seed))), nnx.Param, ...)[0]
    state = jax.eval_shape(init)
    step = jax.jit(train_step_fn(graphdef, optimizer, task.objective), donate_argnums=0)
    state_spec = state
    hp_spec = {k: jax.ShapeDtypeStruct((), np.float32) for k in hparams}

    per_batch = {}
    for b in sorted({b1, b2, default_batch}):
        batch = {"image": jax.ShapeDtypeStruct((b, 28, 28, 1), np.float32), "label": jax.ShapeDtypeStruct((b,), np.int32)}
        t0 = time.perf_counter()
        m = step.lower(state_spec, batch, hp_spec).compile().memory_analysis()
        row = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
               "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
               "compile_seconds": round(time.perf_counter() - t0, 2)}
        row["footprint_bytes"] = row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]
        per_batch[b] = row

    params = state.params
    state_bytes = nbytes(state)
    f1, f2 = per_batch[b1]["footprint_bytes"], per_batch[b2]["footprint_bytes"]
    per_example = (f2 - f1) / (b2 - b1)
    activation_per_example = (per_batch[b2]["temp_bytes"] - per_batch[b1]["temp_bytes"]) / (b2 - b1)
    fixed = f1 - state_bytes - per_example * b1
    at_default = per_batch[default_batch]["footprint_bytes"]
    devices = {}
    for cap_gib in CAPACITIES_GIB:
        usable = (1 - RESERVE) * cap_gib * GIB
        devices[f"{cap_gib}GiB"] = {
            "max_batch": int((usable - state_bytes - fixed) // per_example) if per_example > 0 else None,
            "runs_at_default_batch": int(usable // at_default),
        }
    return {
        "label": LABELS[model],
        "batch_sizes": [b1, b2],
        "default_batch": default_batch,
        "params": int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))),
        "params_bytes": nbytes(params),
        "rest_bytes": nbytes(state.rest),
        "opt_state_bytes": nbytes(state.opt_state),
        "state_bytes": state_bytes,
        "per_batch": {str(b): r for b, r in per_batch.items()},
        "activation_bytes_per_example": activation_per_example,
        "footprint_bytes_per_example": per_example,
        "fixed_bytes": fixed,
        "footprint_bytes_at_default_batch": at_default,
        "devices": devices,
    }


def table(results: dict) -> str:
    header = ["model", "params", "params MiB", "state MiB", "temp MiB @ B1", "temp MiB @ B2",
              "act. KiB / example", "fixed MiB", "step MiB @ default b"]
    header += [f"max batch {c} GiB" for c in CAPACITIES_GIB] + [f"runs @ b / {c} GiB" for c in CAPACITIES_GIB]
    rows = []
    for name, r in results.items():
        cell = _common.not_run(r)
        if cell:
            rows.append([name, cell] + [""] * (len(header) - 2))
            continue
        b1, b2 = r["batch_sizes"]
        rows.append([
            name, f"{r['params']:,}", f"{r['params_bytes'] / MIB:.2f}", f"{r['state_bytes'] / MIB:.2f}",
            f"{r['per_batch'][str(b1)]['temp_bytes'] / MIB:.2f} (B={b1})",
            f"{r['per_batch'][str(b2)]['temp_bytes'] / MIB:.2f} (B={b2})",
            f"{r['activation_bytes_per_example'] / 1024:.1f}", f"{r['fixed_bytes'] / MIB:.2f}",
            f"{r['footprint_bytes_at_default_batch'] / MIB:.2f} (b={r['default_batch']})",
            *(f"{r['devices'][f'{c}GiB']['max_batch']:,}" for c in CAPACITIES_GIB),
            *(f"{r['devices'][f'{c}GiB']['runs_at_default_batch']:,}" for c in CAPACITIES_GIB),
        ])
    return _common.markdown_table(header, rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run of the harness: tiny models, batch 1 and 8")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)} (default: all; "
                                    f"{','.join(QUICK_MODELS)} with --quick)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/memory[-quick].json)")
    args = p.parse_args(argv)
    models = [m for m in (args.models or ",".join(QUICK_MODELS if args.quick else MODELS)).split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {MODELS}")

    env = _common.environment()
    print(_common.describe_environment(env))
    import jax

    results = {}
    for model in models:
        try:
            results[model] = measure(model, args.quick)
        except Exception as e:  # noqa: BLE001  (a failing model becomes its row; the others still run)
            results[model] = {"error": f"{type(e).__name__}: {e}"}
    b1, b2 = QUICK_BATCHES if args.quick else BATCHES
    print(f"\nOne training step (Adam), XLA:CPU buffer assignment on {jax.devices()[0].device_kind}; "
          f"B1={b1}, B2={b2}; b = the experiment's batch size; {int(RESERVE * 100)}% of each device kept free. "
          "Accelerator columns are an estimate (GPU/TPU compiles fuse and lay out buffers differently).\n")
    print(table(results))
    for name, r in results.items():
        if "label" in r:
            print(f"  {name}: {r['label']}")

    out = args.out or os.path.join(_common.RESULTS_DIR, "memory-quick.json" if args.quick else "memory.json")
    _common.write_json(out, {
        "benchmark": "memory", "quick": args.quick, "environment": env,
        "backend": "XLA:CPU buffer assignment (compiled.memory_analysis()); accelerator numbers are estimates",
        "batch_sizes": [b1, b2], "capacities_gib": list(CAPACITIES_GIB), "reserve": RESERVE,
        "formulas": {
            "footprint(B)": "argument + output - alias + temp",
            "per_example": "(footprint(B2) - footprint(B1)) / (B2 - B1)",
            "fixed": "footprint(B1) - state - per_example * B1",
            "max_batch": "floor(((1 - reserve) * capacity - state - fixed) / per_example)",
            "runs_at_default_batch": "floor((1 - reserve) * capacity / footprint(default batch))",
        },
        "results": results,
    })


if __name__ == "__main__":
    sys.exit(main())
