"""Train a VQ-VAE (van den Oord et al., 2017) on MNIST.

    python -m experiments.vqvae_mnist                                  # default: ~5 min on 2 CPU cores
    python -m experiments.vqvae_mnist --config.cpu_devices_per_core=True   # ~1.8x faster on CPU, see README
    python -m experiments.vqvae_mnist --config.train.steps=20000 --workdir=runs/long
    python -m experiments.vqvae_mnist --config.data.idx_dir=/path/to/mnist   # the four IDX files
    python -m experiments.vqvae_mnist --config.model.quantizer=ema --config.model.dead_code_threshold=1
    python -m experiments.vqvae_mnist --config.model.quantizer=fsq --config.model.fsq_levels=8,8,8
    python -m experiments.vqvae_mnist --config.model.quantizer=residual --config.model.num_stages=4

Running again with the same ``--workdir`` resumes from the latest checkpoint; a finished run only
evaluates and reports. Output in the workdir: ``checkpoints/``, ``metrics.jsonl``,
``tensorboard/``, ``reconstructions.png``, ``codebook_usage.png`` (test-set use of each code),
``perplexity.png`` (over training), ``codebook_projection.png`` (codes and encoder outputs in 2-D
PCA), ``summary.json``. Usage (perplexity, share of codes used, dead codes) is logged with every
training log line and at every ``eval_every`` evaluation of the test set.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import _program
from vqjax import objectives
from vqjax.nn import QUANTIZERS, VQVAE, FiniteScalarQuantizer, make_quantizer


def get_config() -> ml_collections.ConfigDict:
    """The paper's VQ-VAE (K=512, D=64, β=0.25, Adam) scaled to 28×28 digits."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # On a CPU host, True exposes one XLA device per core and trains data-parallel over them (~1.8x
    # faster on 2 cores), but XLA:CPU can deadlock in the gradient all-reduce (seen with FSQ and residual
    # VQ under load; see vqjax.training.use_cpu_cores_as_devices), so it is opt-in.
    c.cpu_devices_per_core = False
    c.data = ml_collections.ConfigDict({
        "dataset": "mnist",
        "idx_dir": "",  # a folder with the four MNIST IDX files; empty: TFDS, else the embedded digits
        "tfds_data_dir": "",  # TFDS data_dir; empty: TFDS's default (~/tensorflow_datasets)
        "batch_size": 128,
        "eval_batch_size": 500,
    })
    c.model = ml_collections.ConfigDict({
        "hidden": 64, "residual_hidden": 32, "num_residual": 2, "beta": 0.25, "likelihood": "bernoulli",
        # "vq": the paper's codebook loss; "ema": EMA cluster means (appendix A.1); "fsq": finite scalar
        # quantization (no codebook); "residual": residual VQ with num_stages codebooks.
        "quantizer": "vq",
        "num_codes": 512, "code_dim": 64,  # vq, ema, residual (codes per stage)
        "cosine": False,  # vq, ema: l2-normalised codes and encoder outputs
        "decay": 0.99, "eps": 1e-5,  # ema (and residual_ema): EMA decay γ and Laplace smoothing ε
        "dead_code_threshold": 0.0,  # ema: re-seed codes used < this many times per batch; 0: off
        "fsq_levels": (8, 8, 8), "lloyd_max": False,  # fsq: levels per channel; Lloyd-Max levels
        "fsq_range_loss": False,  # fsq: β·Σ max(|z| - 2, 0)², keeps channels out of tanh saturation
        "num_stages": 4, "residual_ema": False,  # residual
        # "uniform": U(-1/K, 1/K) as in the paper; "lloyd": generalized Lloyd (k-means++ start) on the
        # encoder outputs of a first batch of training data (vq, ema, residual).
        "codebook_init": "uniform",
    })
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 1e-3, "warmup_steps": 100})
    c.train = ml_collections.ConfigDict({
        "steps": 2000, "log_every": 50, "checkpoint_every": 500, "keep_checkpoints": 3, "eval_every": 500,
    })
    return c


def build(config: ml_collections.ConfigDict):
    """``(model_fn, objective, reconstruct, init_fn)`` for :func:`vqjax.training.train_and_evaluate`."""
    m = config.model
    if m.quantizer not in QUANTIZERS:
        raise ValueError(f"`config.model.quantizer` must be one of {QUANTIZERS}; got {m.quantizer!r}.")
    if m.codebook_init not in ("uniform", "lloyd"):
        raise ValueError(f"`config.model.codebook_init` must be 'uniform' or 'lloyd'; got {m.codebook_init!r}.")
    if m.codebook_init == "lloyd" and m.quantizer == "fsq":
        raise ValueError("`config.model.codebook_init='lloyd'` needs a codebook; FSQ has none (use 'uniform').")

    def model_fn(rngs):
        quantizer = make_quantizer(
            m.quantizer, num_codes=m.num_codes, code_dim=m.code_dim, cosine=m.cosine, decay=m.decay, eps=m.eps,
            dead_code_threshold=m.dead_code_threshold, fsq_levels=tuple(m.fsq_levels), lloyd_max=m.lloyd_max,
            fsq_range_loss=m.fsq_range_loss,
            num_stages=m.num_stages, residual_ema=m.residual_ema, rngs=rngs)
        return VQVAE(in_channels=1, hidden=m.hidden, residual_hidden=m.residual_hidden,
                     num_residual=m.num_residual, quantizer=quantizer, rngs=rngs)

    def objective(model, batch, *, key, step, weights=None):
        del step  # no schedule
        return objectives.vqvae_objective(model, batch, beta=m.beta, likelihood=m.likelihood, key=key,
                                          weights=weights)

    def reconstruct(model, x):
        model.eval()
        return objectives.reconstruction_mean(model(x).logits, m.likelihood)

    def init_codebook(model, batch, key):
        """Fit the codebook to the fresh encoder's outputs on a first batch (generalized Lloyd)."""
        model.quantizer.initialize(model.encoder(jnp.asarray(batch["image"])), key)

    return model_fn, objective, reconstruct, (init_codebook if m.codebook_init == "lloyd" else None)


def codes_per_stage(config: ml_collections.ConfigDict) -> int:
    """K of the configured quantizer (FSQ: its implied codebook size ``Π L_d``)."""
    m = config.model
    return int(np.prod(m.fsq_levels)) if m.quantizer == "fsq" else int(m.num_codes)


def draw_codebook(model, test_src, workdir: str, *, num_images: int = 500) -> dict:
    """``codebook_projection.png``: the codes and the encoder outputs of test images in 2-D PCA."""
    from vqjax import viz

    model.eval()  # no EMA update while drawing
    x = np.stack([test_src[i]["image"] for i in range(min(num_images, len(test_src)))]).astype(np.float32) / 255.0
    z_e = jax.jit(lambda mdl, v: mdl.encoder(v))(model, jnp.asarray(x))
    q = model.quantizer
    z = np.asarray(z_e).reshape(-1, q.code_dim)
    if q.num_stages == 1:  # codes coloured by their use on these images; FSQ: its grid
        if isinstance(q, FiniteScalarQuantizer):
            z = np.asarray(q(z_e).z_q).reshape(-1, q.code_dim)  # FSQ's outputs live on its grid
        idx = np.asarray(q.encode(z_e)).reshape(-1)
        counts = np.bincount(idx, minlength=q.num_codes)
        title = f"{q.num_codes} codes, {np.mean(counts > 0):.0%} used by {len(x)} test images"
        if getattr(q, "cosine", False):
            from vqjax import quantizers

            z = np.asarray(quantizers.l2_normalize(z))
    else:  # residual VQ: the first stage's codebook against the encoder outputs
        idx = np.asarray(q.encode(z_e))[..., 0].reshape(-1)
        counts = np.bincount(idx, minlength=q.num_codes)
        title = f"stage 1 of {q.num_stages}: {np.mean(counts > 0):.0%} of {q.num_codes} codes used by {len(x)} images"
    codebook = np.asarray(q.codebook_vectors())[: q.num_codes]
    viz.save_codebook_projection(f"{workdir}/codebook_projection.png", codebook, z, counts=counts, title=title)
    return {}


def main(argv):
    del argv
    from vqjax import training

    config = _CONFIG.value
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    model_fn, objective, reconstruct, init_fn = build(config)
    summary = training.train_and_evaluate(config, _WORKDIR.value, model_fn=model_fn, objective=objective,
                                          reconstruct=reconstruct, init_fn=init_fn, after_training=draw_codebook)
    test = summary["test"]
    print(json.dumps({k: summary[k] for k in ("steps", "data_source", "images_per_sec",
                                               "wall_seconds_this_run")}))
    print(f"test: mse {test['mse']:.5f}  reconstruction {test['reconstruction']:.2f} nats  "
          f"perplexity {test['perplexity']:.1f}  codes used {test['used_fraction']:.1%} "
          f"({test['dead_codes']} dead)  "
          f"({test['num_examples']} images)  -> {_WORKDIR.value}")


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import every experiment.
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae_mnist", "Where checkpoints, metrics and pictures go.")
    app.run(main)
