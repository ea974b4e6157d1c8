"""VQ-VAE-2 on MNIST (Razavi et al., 2019): a two-level VQ-VAE, then its hierarchical prior.

    python -m experiments.vqvae2_mnist
    python -m experiments.vqvae2_mnist --config.data.idx_dir=/path/to/mnist --config.prior.sample.score_samples=10000

Stage 1 trains :class:`vqjax.nn.VQVAE2` (digits padded to 32×32: a 4×4 top grid and an 8×8 bottom
grid, EMA codebooks with dead-code restarts by default) in ``workdir/vqvae2`` and draws
``reconstructions.png``. Stage 2 freezes it and trains :class:`vqjax.nn.HierarchicalPrior`
(``p(c_t | y)`` then ``p(c_b | c_t, y)``, class-conditional gated PixelCNNs) on its codes in
``workdir/prior``, then samples top codes, bottom codes given them, decodes, and writes
``samples.png`` (one row per class), the test NLL (bits per code of each level), the time to
sample 1,000 images and, with ``prior.sample.score_samples > 0``, FD and CAS beside real images and
uniformly random codes. Both stages checkpoint and resume.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import _program, _sample_quality, vqvae_prior_mnist


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.cpu_devices_per_core = False  # see experiments.vqvae_mnist
    c.data = ml_collections.ConfigDict({"dataset": "mnist", "idx_dir": "", "tfds_data_dir": "",
                                        "batch_size": 128, "eval_batch_size": 500})
    c.model = ml_collections.ConfigDict({
        "hidden": 64, "residual_hidden": 32, "num_residual": 2, "beta": 0.25, "likelihood": "bernoulli",
        "quantizer": "ema", "num_codes": 512, "code_dim": 64, "decay": 0.99, "eps": 1e-5,
        "dead_code_threshold": 1.0,
    })
    c.optimizer = ml_collections.ConfigDict({"learning_rate": 1e-3, "warmup_steps": 100})
    c.train = ml_collections.ConfigDict({
        "steps": 2000, "log_every": 50, "checkpoint_every": 500, "keep_checkpoints": 3, "eval_every": 500,
    })
    p = vqvae_prior_mnist.get_config()
    del p.vqvae, p.vqvae_workdir, p.data, p.cpu_devices_per_core, p.seed
    p.model = ml_collections.ConfigDict({
        "hidden": 64, "num_layers": 6, "bottom_hidden": 64, "bottom_layers": 8, "cond_hidden": 64,
        "class_conditional": True,
    })
    c.prior = p
    return c


def build_vqvae2(config: ml_collections.ConfigDict):
    """``(model_fn, objective, reconstruct)`` of stage 1."""
    from vqjax import objectives
    from vqjax.nn import VQVAE2, make_quantizer

    m = config.model
    if m.quantizer not in ("vq", "ema", "fsq"):
        raise ValueError(f"`config.model.quantizer` must be 'vq', 'ema' or 'fsq'; got {m.quantizer!r}.")

    def model_fn(rngs):
        def quantizer():
            return make_quantizer(m.quantizer, num_codes=m.num_codes, code_dim=m.code_dim, decay=m.decay, eps=m.eps,
                                  dead_code_threshold=m.dead_code_threshold, rngs=rngs)

        return VQVAE2(in_channels=1, top=quantizer(), bottom=quantizer(), hidden=m.hidden,
                      residual_hidden=m.residual_hidden, num_residual=m.num_residual, rngs=rngs)

    def objective(model, batch, *, key, step, weights=None):
        del step
        return objectives.vqvae2_objective(model, batch, beta=m.beta, likelihood=m.likelihood, key=key,
                                           weights=weights)

    def reconstruct(model, x):
        model.eval()
        return objectives.reconstruction_mean(model(x).logits, m.likelihood)

    return model_fn, objective, reconstruct


def prior_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2's loop config: ``config.prior`` with the run's seed and data."""
    p = config.prior.copy_and_resolve_references()
    with p.unlocked():
        p.seed, p.data = config.seed, config.data.copy_and_resolve_references()
    return p


def build_prior(config: ml_collections.ConfigDict, vqvae2):
    """``(model_fn, objective)`` of stage 2, over the codes the frozen ``vqvae2`` gives each batch."""
    from flax import nnx

    from vqjax import objectives
    from vqjax.nn import HierarchicalPrior

    m = config.prior.model
    num_classes = 10 if m.class_conditional else 0
    vq_graphdef, vq_state = nnx.split(vqvae2)

    def model_fn(rngs):
        return HierarchicalPrior(vqvae2.num_codes, num_classes=num_classes, hidden=m.hidden, num_layers=m.num_layers,
                                 bottom_hidden=m.bottom_hidden, bottom_layers=m.bottom_layers,
                                 cond_hidden=m.cond_hidden, rngs=rngs)

    def objective(prior, batch, *, key, step, weights=None):
        del key, step
        top, bottom = jax.lax.stop_gradient(nnx.merge(vq_graphdef, vq_state).encode(batch["image"]))
        return objectives.hierarchical_prior_objective(prior, top, bottom, weights=weights,
                                                       labels=batch["label"] if num_classes else None)

    return model_fn, objective


def sampler(prior, vqvae2, top_grid: tuple[int, int], *, temperature: float):
    """``(sample_fn, uniform_fn)``: ``(labels [N], key) -> images [N, 28, 28, 1]``."""
    decode = jax.jit(lambda m, t, b: jax.nn.sigmoid(m.decode(t, b)))
    bottom_grid = (2 * top_grid[0], 2 * top_grid[1])

    def sample_fn(labels, key):
        lab = jnp.asarray(labels) if prior.top.num_classes else None
        top, bottom = prior.sample(len(labels), top_grid, key=key, labels=lab, temperature=temperature)
        return decode(vqvae2, top, bottom)

    def uniform_fn(labels, key):
        k1, k2 = jax.random.split(key)
        k_top, k_bottom = vqvae2.num_codes
        return decode(vqvae2, jax.random.randint(k1, (len(labels), *top_grid), 0, k_top),
                      jax.random.randint(k2, (len(labels), *bottom_grid), 0, k_bottom))

    return sample_fn, uniform_fn


def after_training(config, vqvae2, *, log=print):
    """Draw ``samples.png``, time sampling, and (if asked) score the samples."""

    def run(prior, test_src, workdir):
        top_grid = tuple(int(d) for d in np.asarray(vqvae2.encode(jnp.zeros((1, 28, 28, 1)))[0]).shape[1:3])
        sample_fn, uniform_fn = sampler(prior, vqvae2, top_grid, temperature=config.prior.sample.temperature)
        out = _sample_quality.report(sample_fn, uniform_fn, config.prior.sample, config.data, workdir,
                                     key=jax.random.key(config.seed + 1),
                                     conditional=bool(prior.top.num_classes), log=log)
        return dict(out, top_grid=list(top_grid), bottom_grid=[2 * top_grid[0], 2 * top_grid[1]])

    return run


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    """Both stages; returns ``{"vqvae2": summary, "prior": summary}``."""
    from vqjax import training

    vq_dir = os.path.join(workdir, "vqvae2")
    model_fn, objective, reconstruct = build_vqvae2(config)
    first = training.train_and_evaluate(config, vq_dir, model_fn=model_fn, objective=objective,
                                        reconstruct=reconstruct, log=log)
    vqvae2 = training.load_model(vq_dir, model_fn)
    vqvae2.eval()
    p = prior_config(config)
    prior_fn, prior_objective = build_prior(config, vqvae2)
    second = training.train_and_evaluate(p, os.path.join(workdir, "prior"), model_fn=prior_fn,
                                         objective=prior_objective, after_training=after_training(config, vqvae2,
                                                                                                  log=log), log=log)
    return {"vqvae2": first, "prior": second}


def main(argv):
    del argv
    config = _CONFIG.value
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    out = run(config, _WORKDIR.value)
    t, p, n = out["vqvae2"]["test"], out["prior"], config.prior.sample.time_samples
    print(f"VQ-VAE-2 test: mse {t['mse']:.5f}  reconstruction {t['reconstruction']:.2f} nats  "
          f"perplexity top {t['perplexity_top']:.1f} bottom {t['perplexity_bottom']:.1f}")
    print(f"prior test NLL: top {p['test']['bits_top']:.3f}, bottom {p['test']['bits_bottom']:.3f}, all "
          f"{p['test']['bits_per_code']:.3f} bits per code; {n} samples in {p[f'seconds_to_sample_{n}']} s")
    if "sample_quality" in p:
        print(json.dumps(p["sample_quality"]))
    print(f"-> {_WORKDIR.value}/vqvae2/reconstructions.png, {_WORKDIR.value}/prior/samples.png")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae2_mnist", "Where both stages' outputs go.")
    app.run(main)
