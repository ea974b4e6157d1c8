"""Train a VQ-VAE (van den Oord et al., 2017) on MNIST.

    python -m experiments.vqvae_mnist                                  # default: ~5 min on 2 CPU cores
    python -m experiments.vqvae_mnist --config.train.steps=20000 --workdir=runs/long
    python -m experiments.vqvae_mnist --config.data.idx_dir=/path/to/mnist   # the four IDX files

Running again with the same ``--workdir`` resumes from the latest checkpoint; a finished run only
evaluates and reports. Output in the workdir: ``checkpoints/``, ``metrics.jsonl``,
``tensorboard/``, ``reconstructions.png``, ``codebook_usage.png``, ``summary.json``.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import _program
from vqjax import objectives, quantization
from vqjax.nn import VQVAE


def get_config() -> ml_collections.ConfigDict:
    """The paper's VQ-VAE (K=512, D=64, β=0.25, Adam) scaled to 28×28 digits."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # On a CPU host, one XLA device per core and data parallelism over them (~1.8x faster on 2 cores).
    c.cpu_devices_per_core = True
    c.data = ml_collections.ConfigDict({
        "dataset": "mnist",
        "idx_dir": "",  # a folder with the four MNIST IDX files; empty: TFDS, else the embedded digits
        "tfds_data_dir": "",  # TFDS data_dir; empty: TFDS's default (~/tensorflow_datasets)
        "batch_size": 128,
        "eval_batch_size": 500,
    })
    c.model = ml_collections.ConfigDict({
        "num_codes": 512, "code_dim": 64, "hidden": 64, "residual_hidden": 32, "num_residual": 2,
        "beta": 0.25, "likelihood": "bernoulli",
        # "uniform": U(-1/K, 1/K) as in the paper; "lloyd": generalized Lloyd (k-means++ start) on the
        # encoder outputs of a first batch of training data.
        "codebook_init": "uniform",
    })
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 1e-3, "warmup_steps": 100})
    c.train = ml_collections.ConfigDict({
        "steps": 2000, "log_every": 50, "checkpoint_every": 500, "keep_checkpoints": 3,
    })
    return c


def build(config: ml_collections.ConfigDict):
    """``(model_fn, objective, reconstruct, init_fn)`` for :func:`vqjax.training.train_and_evaluate`."""
    m = config.model
    if m.codebook_init not in ("uniform", "lloyd"):
        raise ValueError(f"`config.model.codebook_init` must be 'uniform' or 'lloyd'; got {m.codebook_init!r}.")

    def model_fn(rngs):
        return VQVAE(in_channels=1, num_codes=m.num_codes, code_dim=m.code_dim, hidden=m.hidden,
                     residual_hidden=m.residual_hidden, num_residual=m.num_residual, rngs=rngs)

    def objective(model, batch, *, key, step, weights=None):
        del key, step  # the VQ-VAE objective is deterministic and has no schedule
        return objectives.vqvae_objective(model, batch, beta=m.beta, likelihood=m.likelihood,
                                          weights=weights)

    def reconstruct(model, x):
        return objectives.reconstruction_mean(model(x).logits, m.likelihood)

    def init_codebook(model, batch, key):
        """Fit the codebook to the fresh encoder's outputs on a first batch (generalized Lloyd)."""
        z_e = model.encoder(jnp.asarray(batch["image"])).reshape(-1, m.code_dim)
        fit = quantization.generalized_lloyd(z_e, m.num_codes, key=key, init="kmeans++", max_iter=50)
        model.codebook[...] = fit.codebook

    return model_fn, objective, reconstruct, (init_codebook if m.codebook_init == "lloyd" else None)




def main(argv):
    del argv
    from vqjax import training

    config = _CONFIG.value
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    model_fn, objective, reconstruct, init_fn = build(config)
    summary = training.train_and_evaluate(config, _WORKDIR.value, model_fn=model_fn, objective=objective,
                                          reconstruct=reconstruct, init_fn=init_fn)
    test = summary["test"]
    print(json.dumps({k: summary[k] for k in ("steps", "data_source", "images_per_sec",
                                               "wall_seconds_this_run")}))
    print(f"test: mse {test['mse']:.5f}  reconstruction {test['reconstruction']:.2f} nats  "
          f"perplexity {test['perplexity']:.1f}  codes used {test['used_fraction']:.1%}  "
          f"({test['num_examples']} images)  -> {_WORKDIR.value}")


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import every experiment.
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae_mnist", "Where checkpoints, metrics and pictures go.")
    app.run(main)
