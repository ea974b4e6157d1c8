"""Generate digits with a VQ-VAE: a gated PixelCNN prior over its codes (van den Oord et al., 2017, §4.2).

    python -m experiments.vqvae_prior_mnist                                   # trains a VQ-VAE first
    python -m experiments.vqvae_prior_mnist --config.vqvae_workdir=runs/vqvae_mnist   # reuse one
    python -m experiments.vqvae_prior_mnist --config.vqvae.model.quantizer.kind=ema   # the VQ-VAE it trains
    python -m experiments.vqvae_prior_mnist --config.data.idx_dir=/path/to/mnist --config.sample.score_samples=10000

The prior works on any code grid: with ``--config.data.dataset=cifar10`` (the data the VQ-VAE was
trained on) and ``--config.vqvae_workdir`` a CIFAR-10 VQ-VAE it models its 8×8 codes and draws RGB
samples (FD and CAS use the shipped MNIST classifier: 28×28 grey images only).

The prior ``p(c | y) = Π_ij p(c_ij | c_<ij, y)`` (:class:`vqjax.nn.GatedPixelCNN`, class-conditional by
default) is trained on the code grids the frozen VQ-VAE gives the training digits, with its own
Orbax checkpoints in ``workdir`` (running again resumes). Without ``--config.vqvae_workdir`` a VQ-VAE
is trained first (:mod:`experiments.vqvae_mnist`, ``config.vqvae``) in ``workdir/vqvae``; a given
workdir must hold checkpoints, and the model is rebuilt from the config it saved (also a config of
the flat quantizer keys of older runs). Residual VQ is refused: the prior models one code per position.

Output in ``workdir``: ``samples.png`` (one row per class when conditional; ``sample.temperature``),
``metrics.jsonl`` (``bits_per_code`` on the test codes), ``summary.json`` with the test NLL, the time
to sample 1,000 images, and (``sample.score_samples > 0``) the sample quality: Fréchet distance of
the shipped classifier's features and the Classification Accuracy Score, beside real images (the
ceiling) and uniformly random codes (the floor).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from experiments import _program, _sample_quality, vqvae_mnist
from experiments.configs import common
from vqjax import objectives, training
from vqjax.nn import GatedPixelCNN, sample_codes


def get_config() -> ml_collections.ConfigDict:
    """A class-conditional gated PixelCNN of 8 layers over the 7×7 codes of the paper's VQ-VAE (vqvae_mnist
    with its learned codebook without restarts, `--config.vqvae.model.quantizer.codebook.dead_code_threshold=1` for
    the restarted one)."""
    c = common.base_config(
        data={"batch_size": 128, "eval_batch_size": 500},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 100, "schedule": "cosine"},
        train={"steps": 4000, "log_every": 100, "checkpoint_every": 500, "eval_every": 1000})
    c.vqvae_workdir = ""  # a vqvae_mnist workdir with checkpoints; empty: train one in <workdir>/vqvae
    c.vqvae = vqvae_mnist.get_config()  # used to train that VQ-VAE (its data: this config's `data`)
    # the paper's codebook (no restarts), the VQ-VAE this experiment's results in the README were measured on
    c.vqvae.model.quantizer.kind, c.vqvae.model.quantizer.codebook.dead_code_threshold = "vq", 0.0
    c.model = ml_collections.ConfigDict({
        "hidden": 64, "num_layers": 8, "kernel_size": 3, "out_hidden": 128, "class_conditional": True,
    })
    c.sample = ml_collections.ConfigDict({
        "temperature": 1.0,
        "per_class": 10,  # samples.png: per_class columns, one row per class (10 rows if unconditional)
        "score_samples": 0,  # > 0: FD and CAS from this many samples (and as many real / uniform ones)
        "cas_steps": 1000,  # training steps of each CAS classifier
        "time_samples": 1000,  # the summary's sampling time is for this many images
    })
    return c


# `config.sample` (relative paths; experiments.vqvae2_mnist's `prior.sample` too).
SAMPLE_RULES = {
    "temperature": training.number(min=0),  # 0: the most likely code
    "per_class": training.integer(min=1),
    # FD needs at least 2 images (0: no scores)
    "score_samples": training.any_of(training.one_of(0), training.integer(min=2)),
    "cas_steps": training.integer(min=1),
    "time_samples": training.integer(min=1),
}

# Every field of get_config(): the prior's shared blocks and model, `sample`, and the VQ-VAE it
# trains first (`vqvae`: experiments.vqvae_mnist's rules).
CONFIG_RULES = {
    **training.CONFIG_RULES,
    "vqvae_workdir": training.path(),
    **training.nested("vqvae", vqvae_mnist.CONFIG_RULES),
    "model.hidden": training.integer(min=1),
    "model.num_layers": training.integer(min=1),
    "model.kernel_size": training.integer(min=3, odd=True),
    "model.out_hidden": training.integer(min=1),
    "model.class_conditional": training.boolean(),
    **training.nested("sample", SAMPLE_RULES),
}


# Quantizers that give several codes per latent position (stages, parts, groups): no single-code prior.
MULTI_CODE_KINDS = ("residual", "grouped", "grouped_residual", "residual_fsq", "residual_lfq")


def check_vqvae(config, where: str = "--config") -> list[str]:
    """The VQ-VAE to train first must give one code per position (no residual or grouped VQ)."""
    got = config.vqvae.model.quantizer.kind
    if config.vqvae_workdir or got not in MULTI_CODE_KINDS:
        return []
    kind = training.flag("vqvae.model.quantizer.kind", where)
    return [(f"{kind} must give one code per latent position, e.g. 'vq', 'ema' or 'fsq' (the prior models one "
             f"code per position; {got!r} gives several); got {got!r}.")]


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`, the ``vqvae`` block's quantizer as in
    :mod:`experiments.vqvae_mnist`): a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where,
                      extra=(training.within("vqvae", vqvae_mnist.check_quantizer), check_vqvae))


# The flat `config.model` quantizer keys of VQ-VAE runs saved before `model.quantizer` was grouped:
# old key -> (group, key) in `model.quantizer`.
_FLAT_QUANTIZER_KEYS = {
    "num_codes": ("codebook", "num_codes"), "code_dim": ("codebook", "code_dim"), "cosine": ("codebook", "cosine"),
    "codebook_init": ("codebook", "init"), "decay": ("ema", "decay"), "eps": ("ema", "eps"),
    "dead_code_threshold": ("ema", "dead_code_threshold"), "fsq_levels": ("fsq", "levels"),
    "lloyd_max": ("fsq", "lloyd_max"), "fsq_range_loss": ("fsq", "range_loss"),
    "num_stages": ("residual", "num_stages"), "residual_ema": ("residual", "ema"),
}


def upgrade_saved(saved: dict) -> dict:
    """A saved vqvae_mnist config with the flat quantizer keys of older runs (``model.quantizer="ema"``,
    ``model.num_codes``, ...) rewritten in the grouped ``model.quantizer`` form; others unchanged."""
    model = saved.get("model")
    if not isinstance(model, dict) or isinstance(model.get("quantizer", {}), dict):
        return saved
    model = dict(model)
    quantizer = {"kind": model.pop("quantizer")}
    for old, (group, key) in _FLAT_QUANTIZER_KEYS.items():
        if old in model:
            quantizer.setdefault(group, {})[key] = model.pop(old)
    return dict(saved, model=dict(model, quantizer=quantizer))


def merge_saved(base: ml_collections.ConfigDict, saved: dict) -> ml_collections.ConfigDict:
    """``base`` (the current defaults) updated with a saved config dict: keys added since the save
    keep their defaults, which reproduce the behaviour of the time. A VQ-VAE config of the flat
    quantizer keys of older runs is read too (:func:`upgrade_saved`). A setting whose default changed what
    a run does (:data:`experiments.vqvae_mnist.LEGACY_DEFAULTS`) takes, when the saved config lacks it, the
    value that reproduces the run."""
    saved = upgrade_saved(saved)
    missing = {path: value for path, value in vqvae_mnist.LEGACY_DEFAULTS.items() if not _has(saved, path)}
    return training.apply_overrides(_merge(base, saved), missing)


def _has(tree: dict, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _merge(base: ml_collections.ConfigDict, saved: dict) -> ml_collections.ConfigDict:
    base = base.copy_and_resolve_references()
    for k, v in saved.items():
        if isinstance(v, dict) and isinstance(base.get(k), ml_collections.ConfigDict):
            base[k] = _merge(base[k], v)
        elif k in base or not isinstance(v, dict):
            base[k] = tuple(v) if isinstance(v, list) else v
    return base


def vqvae_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the VQ-VAE to train first: ``config.vqvae`` with this config's ``data``."""
    vq_config = config.vqvae.copy_and_resolve_references()
    vq_config.data = config.data.copy_and_resolve_references()
    return vq_config


def load_vqvae(config: ml_collections.ConfigDict, workdir: str, *, log=print):
    """``(vqvae, vqvae_config)``: the frozen VQ-VAE whose codes the prior models (trained first if asked)."""
    if config.vqvae_workdir:
        vq_dir = config.vqvae_workdir
        if not os.path.isdir(os.path.join(vq_dir, "checkpoints")):
            raise FileNotFoundError(f"`config.vqvae_workdir`={vq_dir!r} holds no checkpoints/: give the workdir of a "
                                    "`python -m experiments.vqvae_mnist` run, or leave it empty to train one first.")
    else:
        vq_dir = os.path.join(workdir, "vqvae")
        if not os.path.exists(os.path.join(vq_dir, "summary.json")):
            log(f"Training the VQ-VAE first in {vq_dir} (experiments.vqvae_mnist, config.vqvae).")
            vq_config = vqvae_config(config)
            training.train_and_evaluate(vq_config, vq_dir, vqvae_mnist.build(vq_config), log=log)
    saved = training.saved_config(vq_dir)
    vq_config = merge_saved(vqvae_mnist.get_config(), saved) if saved else vqvae_config(config)
    if vq_config.model.quantizer.kind in MULTI_CODE_KINDS:
        raise ValueError(f"The prior models one code per latent position; {vq_config.model.quantizer.kind!r} gives "
                         "several per position. Train the VQ-VAE with `config.model.quantizer.kind` vq, ema or fsq.")
    # For the images the prior trains on (this config's `data`): those the VQ-VAE must encode. A VQ-VAE
    # trained on images of another shape or channel count fails to load, naming the array that differs.
    shape = _program.image_shape(config)
    vqvae = training.load_model(vq_dir, lambda rngs: vqvae_mnist.make_model(vq_config, rngs, shape))
    vqvae.eval()
    return vqvae, vq_config


def make_prior(config: ml_collections.ConfigDict, num_codes: int, rngs):
    """The gated PixelCNN of ``config.model`` over ``num_codes`` code values."""
    m = config.model
    return GatedPixelCNN(num_codes, hidden=m.hidden, num_layers=m.num_layers, kernel_size=m.kernel_size,
                         out_hidden=m.out_hidden, num_classes=10 if m.class_conditional else 0, rngs=rngs,
                         dtype=jnp.dtype(config.dtype))


def build(config: ml_collections.ConfigDict, vqvae, *, log=print):
    """The loop's task of the prior, over the codes the frozen ``vqvae`` gives each batch; its reporter
    draws ``samples.png``, times sampling and, if asked, scores the samples (progress to ``log``)."""
    check_config(config)
    conditional = bool(config.model.class_conditional)
    vq_graphdef, vq_state = nnx.split(vqvae)

    def objective(prior, batch, *, key, step, hparams, weights=None):
        del key, step, hparams
        codes = jax.lax.stop_gradient(nnx.merge(vq_graphdef, vq_state).encode(batch["image"]))
        labels = batch["label"] if conditional else None
        return objectives.prior_objective(prior, codes, labels=labels, weights=weights)

    return training.Task(model=lambda rngs: make_prior(config, vqvae.num_codes, rngs), objective=objective,
                         reporters=(draw_samples(config, vqvae, log=log),))


def sweep_build(config: ml_collections.ConfigDict):
    """The prior's task over the VQ-VAE in ``config.vqvae_workdir`` (required), for ``python -m experiments.sweep``."""
    if not config.vqvae_workdir:
        raise ValueError("A sweep of the prior needs a trained VQ-VAE: give --config.vqvae_workdir=DIR.")
    return build(config, _frozen_vqvae(config.vqvae_workdir, json.dumps(config.to_dict(), sort_keys=True)))


@functools.lru_cache(maxsize=4)
def _frozen_vqvae(vqvae_workdir: str, config_json: str):
    del vqvae_workdir  # part of the cache key; the config holds it
    return load_vqvae(ml_collections.ConfigDict(json.loads(config_json)), "", log=lambda s: None)[0]


def sampler(prior, vqvae, grid: tuple[int, int], *, temperature: float):
    """``sample_fn(labels [N], key) -> images [N, H, W, C]``: codes from the prior, decoded to the mean
    image of the VQ-VAE's likelihood (:func:`vqjax.objectives.reconstruction_mean`)."""
    decode = jax.jit(lambda m, c: objectives.reconstruction_mean(m.decode(c), m.likelihood))

    def sample_fn(labels, key):
        lab = jnp.asarray(labels) if prior.num_classes else None
        codes = sample_codes(prior, (len(labels), *grid), key=key, labels=lab, temperature=temperature)
        return decode(vqvae, codes)

    def uniform_fn(labels, key):
        return decode(vqvae, jax.random.randint(key, (len(labels), *grid), 0, vqvae.num_codes))

    return sample_fn, uniform_fn


def draw_samples(config, vqvae, *, log=print):
    """The reporter: ``samples.png``, the sampling time and (if asked) the sample quality."""

    def report(prior, test_src, workdir, summary):
        grid = tuple(int(d) for d in np.asarray(vqvae.encode(jnp.zeros((1, *test_src.image_shape)))).shape[1:3])
        sample_fn, uniform_fn = sampler(prior, vqvae, grid, temperature=config.sample.temperature)
        out = _sample_quality.report(sample_fn, uniform_fn, config.sample, config.data, workdir,
                                     key=jax.random.key(config.seed + 1), conditional=bool(prior.num_classes),
                                     log=log)
        return dict(out, code_grid=list(grid))

    return report


def run(config: ml_collections.ConfigDict, workdir: str, *, log=print) -> dict:
    """The VQ-VAE (loaded, or trained first), then the prior; the prior's summary."""
    check_config(config)  # before the VQ-VAE trains
    vqvae, _ = load_vqvae(config, workdir, log=log)
    return training.train_and_evaluate(config, workdir, build(config, vqvae, log=log), log=log)


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    summary = run(config, _WORKDIR.value)
    test, n = summary["test"], config.sample.time_samples
    print(f"prior test NLL {test['bits_per_code']:.3f} bits per code ({test['nll']:.2f} nats per image, "
          f"{test['num_examples']} images); {n} samples in {summary[f'seconds_to_sample_{n}']} s")
    if "sample_quality" in summary:
        print(json.dumps(summary["sample_quality"]))
    print(f"-> {_WORKDIR.value}/samples.png")


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae_prior_mnist", "Where checkpoints, metrics and samples go.")
    app.run(main)
