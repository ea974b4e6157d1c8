"""VQ-VAE-2 on MNIST (Razavi et al., 2019): a two-level VQ-VAE, then its hierarchical prior.

    python -m experiments.vqvae2_mnist
    python -m experiments.vqvae2_mnist --config.data.idx_dir=/path/to/mnist --config.prior.sample.score_samples=10000
    python -m experiments.vqvae2_mnist --config.model.quantizer.kind=vq --config.model.quantizer.codebook.num_codes=256
    python -m experiments.vqvae2_mnist --config.train.steps=5000 --config.prior.train.steps=8000

Stage 1 trains :class:`vqjax.nn.VQVAE2` (digits padded to 32×32: a 4×4 top grid and an 8×8 bottom
grid, EMA codebooks with dead-code restarts by default; ``config.model.quantizer`` as in
:mod:`experiments.vqvae_mnist`, kinds ``vq``, ``ema`` or ``fsq``) in ``workdir/vqvae2`` and draws
``reconstructions.png``. Stage 2 freezes it and trains :class:`vqjax.nn.HierarchicalPrior`
(``p(c_t | y)`` then ``p(c_b | c_t, y)``, class-conditional gated PixelCNNs) on its codes in
``workdir/prior``, then samples top codes, bottom codes given them, decodes, and writes
``samples.png`` (one row per class), the test NLL (bits per code of each level), the time to
sample 1,000 images and, with ``prior.sample.score_samples > 0``, FD and CAS beside real images and
uniformly random codes. Both stages checkpoint and resume. Stage 1 reads the top-level
``optimizer`` and ``train`` blocks, stage 2 ``prior.optimizer`` and ``prior.train``; both read ``data``.

The models follow the data (``--config.data.dataset=cifar10`` and the other ``data`` flags): any
H×W×C images, padded to multiples of ``2**(model.downsample + 1)``; FD and CAS use the shipped MNIST
classifier and apply to 28×28 grey images only.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from experiments import _program, _reporters, _sample_quality, vqvae_mnist, vqvae_prior_mnist
from experiments.configs import common
from vqjax import objectives, training
from vqjax.nn import VQVAE2, HierarchicalPrior, make_quantizer

KINDS = ("vq", "ema", "fsq")  # one-stage quantizers: VQVAE2 has one per level
# What vqvae_mnist's quantizer config has and a level's quantizer does not take.
UNUSED_BLOCKS = ("residual", "lookup_free", "factorized", "grouped", "stochastic")
UNUSED_CODEBOOK_FIELDS = ("init", "orthogonality_weight", "entropy_weight", "entropy_temperature")


def quantizer_config() -> ml_collections.ConfigDict:
    """``config.model.quantizer``, as :func:`experiments.vqvae_mnist.quantizer_config` for the kinds a
    level takes (``vq``, ``ema``, ``fsq``; no residual, no Lloyd initialisation, no codebook regularisers):
    EMA codebooks with dead-code restarts (< 1 vector per batch) by default. Both levels get the same
    quantizer."""
    q = vqvae_mnist.quantizer_config()
    for block in UNUSED_BLOCKS:
        del q[block]
    for field in UNUSED_CODEBOOK_FIELDS:
        del q.codebook[field]
    q.kind = "ema"
    q.ema.dead_code_threshold = 1.0
    return q


def get_config() -> ml_collections.ConfigDict:
    """Stage 1: VQ-VAE-2 (K=512, D=64 at both levels, β=0.25) for 2,000 steps; stage 2 (``prior``): the
    hierarchical prior with the optimizer, train and sample blocks of :mod:`experiments.vqvae_prior_mnist`."""
    c = common.base_config(
        data={"batch_size": 128, "eval_batch_size": 500},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 100},
        train={"steps": 2000, "log_every": 50, "checkpoint_every": 500, "eval_every": 500})
    c.model = ml_collections.ConfigDict({
        "hidden": 64, "residual_hidden": 32, "num_residual": 2, "beta": 0.25, "likelihood": "bernoulli",
        "downsample": 2,  # the bottom grid H'/2^d, the top H'/2^(d+1) (H': H padded to a multiple of 2^(d+1))
        "quantizer": quantizer_config(),
    })
    # Stage 2: the prior's own model, optimizer, train and sample blocks (seed and data: the run's).
    p = vqvae_prior_mnist.get_config()
    del p.vqvae, p.vqvae_workdir, p.data, p.cpu_devices_per_core, p.seed, p.dtype  # the run's `dtype`: both stages
    p.model = ml_collections.ConfigDict({
        "hidden": 64, "num_layers": 6, "bottom_hidden": 64, "bottom_layers": 8, "cond_hidden": 64,
        "class_conditional": True,
    })
    c.prior = p
    return c


# Every field of get_config(): stage 1 as experiments.vqvae_mnist (one-stage kinds, no Lloyd
# initialisation), stage 2's model, optimizer, train and sample blocks under `prior`.
_SHARED_PRIOR = {k: r for k, r in training.CONFIG_RULES.items() if k.startswith(("optimizer.", "train."))}
CONFIG_RULES = {
    **{k: r for k, r in vqvae_mnist.CONFIG_RULES.items() if not k.startswith("model.quantizer.")},
    **training.nested("model.quantizer", {
        **{k: r for k, r in vqvae_mnist.QUANTIZER_RULES.items()
           if k.split(".")[0] not in UNUSED_BLOCKS and k.removeprefix("codebook.") not in UNUSED_CODEBOOK_FIELDS},
        "kind": training.one_of(*KINDS)}),
    **training.nested("prior", _SHARED_PRIOR),
    "prior.model.hidden": training.integer(min=1),
    "prior.model.num_layers": training.integer(min=1),
    "prior.model.bottom_hidden": training.integer(min=1),
    "prior.model.bottom_layers": training.integer(min=1),
    "prior.model.cond_hidden": training.integer(min=1),
    "prior.model.class_conditional": training.boolean(),
    **training.nested("prior.sample", vqvae_prior_mnist.SAMPLE_RULES),
}


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of both stages (:data:`CONFIG_RULES`; FSQ's levels as in :mod:`experiments.vqvae_mnist`):
    a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where, extra=(vqvae_mnist.check_quantizer,))


def make_vqvae2(config: ml_collections.ConfigDict, rngs, image_shape: tuple[int, int, int] | None = None):
    """The VQ-VAE-2 of ``config.model``: the quantizer of ``config.model.quantizer`` at both levels, for
    images of ``image_shape`` (default: those of ``config.data``)."""
    m, q = config.model, config.model.quantizer
    image_shape = _program.image_shape(config) if image_shape is None else image_shape

    def quantizer():
        return make_quantizer(q.kind, num_codes=q.codebook.num_codes, code_dim=q.codebook.code_dim,
                              cosine=q.codebook.cosine, rotation_trick=q.codebook.get("rotation_trick", False),
                              affine=q.codebook.get("affine", False), sync_nu=q.codebook.get("sync_nu", 0.0),
                              decay=q.ema.decay, eps=q.ema.eps,
                              dead_code_threshold=vqvae_mnist.dead_code_threshold(q), fsq_levels=tuple(q.fsq.levels),
                              lloyd_max=q.fsq.lloyd_max, fsq_range_loss=q.fsq.range_loss, rngs=rngs)

    return VQVAE2(in_channels=image_shape[-1], top=quantizer(), bottom=quantizer(), hidden=m.hidden,
                  residual_hidden=m.residual_hidden, num_residual=m.num_residual, rngs=rngs,
                  dtype=jnp.dtype(config.dtype), likelihood=m.likelihood, downsample=m.get("downsample", 2))


def build_vqvae2(config: ml_collections.ConfigDict):
    """Stage 1's task: β and the learning rate are sweepable; the reporter draws reconstructions."""
    check_config(config)
    m = config.model
    shape = _program.image_shape(config)  # the model follows the data (padded to the grids it needs)

    def objective(model, batch, *, key, step, hparams, weights=None):
        del step
        return objectives.vqvae2_objective(model, batch, beta=hparams["model.beta"], likelihood=m.likelihood,
                                           key=key, weights=weights)

    def reconstruct(model, x):
        model.eval()
        return objectives.reconstruction_mean(model(x).logits, m.likelihood)

    return training.Task(
        model=lambda rngs: make_vqvae2(config, rngs, shape), objective=objective, hparams={"model.beta": m.beta},
        # EMA γ and the dead-code threshold live in the quantizers' state (as in experiments.vqvae_mnist)
        state_hparams=("model.quantizer.ema.decay", "model.quantizer.ema.dead_code_threshold")
        if m.quantizer.kind == "ema" else ("model.quantizer.ema.decay", "model.quantizer.codebook.dead_code_threshold")
        if m.quantizer.kind == "vq" and vqvae_mnist.dead_code_threshold(m.quantizer) > 0 else (),
        reporters=(_reporters.reconstructions(reconstruct),), legacy_defaults=vqvae_mnist.LEGACY_DEFAULTS)


def build(config: ml_collections.ConfigDict):
    """The first stage's task, the VQ-VAE-2 (what ``python -m experiments.sweep`` trains)."""
    return build_vqvae2(config)


def prior_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Stage 2's loop config: ``config.prior`` with the run's seed and data."""
    p = config.prior.copy_and_resolve_references()
    with p.unlocked():
        p.seed, p.data = config.seed, config.data.copy_and_resolve_references()
    return p


def make_prior(config: ml_collections.ConfigDict, num_codes: tuple[int, int], rngs):
    """The hierarchical prior of ``config.prior.model`` over ``(K_top, K_bottom)`` codes."""
    m = config.prior.model
    return HierarchicalPrior(num_codes, num_classes=10 if m.class_conditional else 0, hidden=m.hidden,
                             num_layers=m.num_layers, bottom_hidden=m.bottom_hidden, bottom_layers=m.bottom_layers,
                             cond_hidden=m.cond_hidden, rngs=rngs, dtype=jnp.dtype(config.dtype))


def build_prior(config: ml_collections.ConfigDict, vqvae2, *, log=print):
    """Stage 2's task, over the codes the frozen ``vqvae2`` gives each batch; its reporter draws
    ``samples.png``, times sampling and, if asked, scores the samples."""
    conditional = bool(config.prior.model.class_conditional)
    vq_graphdef, vq_state = nnx.split(vqvae2)

    def objective(prior, batch, *, key, step, hparams, weights=None):
        del key, step, hparams
        top, bottom = jax.lax.stop_gradient(nnx.merge(vq_graphdef, vq_state).encode(batch["image"]))
        return objectives.hierarchical_prior_objective(prior, top, bottom, weights=weights,
                                                       labels=batch["label"] if conditional else None)

    return training.Task(model=lambda rngs: make_prior(config, vqvae2.num_codes, rngs), objective=objective,
                         reporters=(draw_samples(config, vqvae2, log=log),))


def sampler(prior, vqvae2, top_grid: tuple[int, int], *, temperature: float,
            image_shape: tuple[int, ...] = (28, 28, 1)):
    """``(sample_fn, uniform_fn)``: ``(labels [N], key) -> images [N, *image_shape]``, the decoder's mean
    image (its likelihood's: :func:`vqjax.objectives.reconstruction_mean`)."""
    decode = jax.jit(lambda m, t, b: objectives.reconstruction_mean(m.decode(t, b, image_shape=tuple(image_shape[:2])),
                                                                    m.likelihood))
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


def draw_samples(config, vqvae2, *, log=print):
    """The reporter of stage 2: ``samples.png``, the sampling time and (if asked) the sample quality."""

    def report(prior, test_src, workdir, summary):
        shape = tuple(test_src.image_shape)
        top_grid = tuple(int(d) for d in np.asarray(vqvae2.encode(jnp.zeros((1, *shape)))[0]).shape[1:3])
        sample_fn, uniform_fn = sampler(prior, vqvae2, top_grid, temperature=config.prior.sample.temperature,
                                        image_shape=shape)
        out = _sample_quality.report(sample_fn, uniform_fn, config.prior.sample, config.data, workdir,
                                     key=jax.random.key(config.seed + 1),
                                     conditional=bool(prior.top.num_classes), log=log)
        return dict(out, top_grid=list(top_grid), bottom_grid=[2 * top_grid[0], 2 * top_grid[1]])

    return report


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    """Both stages; returns ``{"vqvae2": summary, "prior": summary}``."""
    vq_dir = os.path.join(workdir, "vqvae2")
    first = training.train_and_evaluate(config, vq_dir, build_vqvae2(config), log=log)
    vqvae2 = training.load_model(vq_dir, lambda rngs: make_vqvae2(config, rngs))
    vqvae2.eval()
    second = training.train_and_evaluate(prior_config(config), os.path.join(workdir, "prior"),
                                         build_prior(config, vqvae2, log=log), log=log)
    return {"vqvae2": first, "prior": second}


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # both stages' flags, before anything starts
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    out = run(config, _WORKDIR.value)
    t, p, n = out["vqvae2"]["test"], out["prior"], config.prior.sample.time_samples
    quality = "".join(f"  {label} {t[k]:{fmt}}" for k, label, fmt in (
        ("bits_per_dim", "bits/dim", ".3f"), ("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".4f")) if k in t)
    print(f"VQ-VAE-2 test: mse {t['mse']:.5f}  reconstruction {t['reconstruction']:.2f} nats{quality}  "
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
