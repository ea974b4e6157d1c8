"""Train a VQ-VAE (van den Oord et al., 2017) on MNIST.

    python -m experiments.vqvae_mnist                                  # default: ~4 min on 2 CPU cores
    python -m experiments.vqvae_mnist --config.model.quantizer.codebook.dead_code_threshold=0   # the paper's codebook
    python -m experiments.vqvae_mnist --config.cpu_devices_per_core=True   # one CPU device per core (opt-in)
    python -m experiments.vqvae_mnist --config.train.steps=20000 --workdir=runs/long
    python -m experiments.vqvae_mnist --config.data.idx_dir=/path/to/mnist   # the four IDX files
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=ema --config.model.quantizer.ema.dead_code_threshold=1
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=fsq --config.model.quantizer.fsq.levels=8,8,8
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=residual --config.model.quantizer.residual.num_stages=4
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=gumbel --config.model.quantizer.stochastic.hard=True
    python -m experiments.vqvae_mnist --config.model.quantizer.codebook.orthogonality_weight=0.1
    python -m experiments.vqvae_mnist --config=experiments/vqvae_mnist.py:cifar10 --workdir=runs/vqvae_cifar10
        # the paper's CIFAR-10 model (needs CIFAR-10 prepared for TFDS: see the README)

The model follows the data (``--config.data.dataset`` and the other ``data`` flags): any H×W×C
images with H and W multiples of ``2**model.downsample``; RGB reconstructions are drawn in colour.

Running again with the same ``--workdir`` resumes from the latest checkpoint; a finished run only
evaluates and reports. Output in the workdir: ``checkpoints/``, ``metrics.jsonl``,
``tensorboard/``, ``reconstructions.png``, ``codebook_usage.png`` (test-set use of each code),
``perplexity.png`` (over training), ``codebook_projection.png`` (codes and encoder outputs in 2-D
PCA), ``summary.json``. Usage (perplexity, share of codes used, dead codes) is logged with every
training log line and at every ``eval_every`` evaluation of the test set.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import _program, _reporters
from experiments.configs import common
from vqjax import objectives, training
from vqjax.nn import QUANTIZERS, VQVAE, FiniteScalarQuantizer, make_quantizer
from vqjax.nn._stochastic import ESTIMATORS


def quantizer_config() -> ml_collections.ConfigDict:
    """``config.model.quantizer``: its ``kind`` and, grouped by the kinds that use them, its settings.

    - ``codebook`` (``vq``, ``ema``, ``residual``): ``num_codes`` K (per stage), ``code_dim`` D,
      ``cosine`` (l2-normalised codes and encoder outputs; vq, ema), ``init`` (``"uniform"``:
      U(-1/K, 1/K) as in the paper; ``"lloyd"``: generalized Lloyd with a k-means++ start on the
      encoder outputs of a first training batch), ``rotation_trick`` (the encoder's gradient through
      the rotation trick of Fifty et al., 2024, instead of straight-through; off as in the paper),
      ``affine`` (``vq``: codes ``scale ⊙ e + shift`` with learned per-channel ``scale``, ``shift``) and
      ``sync_nu`` (``vq``: the synchronised update, the codes also get ν × the decoder's gradient; 0: off),
      both of Huh et al., 2023. Codebook regularisers added to the loss (:func:`vqjax.objectives.vqvae_objective`;
      0: off): ``orthogonality_weight`` (Shin et al., 2023; codes learned by gradient: vq, simvq, stochastic,
      gumbel, residual without EMA), ``entropy_weight`` (minus the entropy of the batch's mean soft assignment
      ``softmax(-||z - e||²/entropy_temperature)``, or a stochastic kind's own distribution: vq, ema, simvq,
      stochastic, gumbel).
    - ``ema`` (``ema``; ``residual`` with ``residual.ema``): EMA decay γ, Laplace smoothing ε, and
      ``dead_code_threshold`` (re-seed codes used fewer times per batch; 0: off).
    - ``codebook.dead_code_threshold`` (``vq``): restarts of the learned codebook (codes used fewer times per
      batch, their usage averaged with ``ema.decay``, re-seeded at encoder outputs; 0: off, the paper's
      codebook). 1 by default: the best learned codebook of ``experiments/vqvae_quantizers.py``. A key of its own,
      so that a run saved before it existed (with ``ema.dead_code_threshold`` set and no effect on ``vq``)
      loads and resumes as it trained.
    - ``fsq`` (``fsq``): ``levels`` per channel, ``lloyd_max`` levels, ``range_loss`` (β·Σ max(|z| - 2, 0)²).
    - ``residual`` (``residual``, ``grouped_residual``, ``residual_fsq``, ``residual_lfq``): ``num_stages`` S
      stages, ``ema`` codebooks or not (``residual``, ``grouped_residual``), ``quantize_dropout`` (SoundStream:
      in training each image uses only its first ``n ~ U{1..S}`` stages; evaluation uses all; every residual
      kind), ``shared_codebook`` (one codebook for all the stages; ``residual``, ``grouped_residual``) and
      ``groups`` G (``grouped_residual``: ``codebook.code_dim`` split into G parts, each a residual VQ of
      ``codebook.num_codes`` codes per stage; G·S code indices per latent). ``residual_fsq``: S FSQ grids
      of ``fsq.levels``, each ``L`` times finer; ``residual_lfq``: S sign quantizers of ``lookup_free.bits``
      channels, each twice finer, with ``lookup_free``'s entropy loss applied per stage.
    - ``lookup_free`` (``lfq``, ``bsq``): ``bits`` binary channels (2^bits implicit codes), the entropy
      loss's ``entropy_weight``, ``diversity_weight`` (γ), ``temperature`` τ and ``sample_fraction``.
    - ``factorized`` (``factorized``): ``code_dim_low``, the dimension of the cosine lookup; ``simvq`` and
      ``factorized`` use ``codebook.num_codes`` and ``codebook.code_dim``.
    - ``grouped`` (``grouped``): ``heads`` H parts of ``code_dim / H`` channels, each with its own codebook of
      ``codebook.num_codes`` codes (``shared``: one for all parts): ``H·log2 K`` bits per latent.
    - ``stochastic`` (``stochastic``, ``gumbel``; with ``codebook.num_codes``, ``codebook.code_dim``): sampled codes
      in training, the greedy code at evaluation. ``estimator`` (``stochastic``: ``"straight_through"`` or
      ``"gumbel"``), the temperature τ annealed from ``temperature_start`` to ``temperature_end`` over
      ``anneal_steps`` (:func:`vqjax.quantizers.temperature_schedule`; DALL-E's 1 → 1/16), ``kl_weight`` of the
      rate ``KL(q(k|z) || U(K))`` per position in the codebook term (1: a discrete VAE's ELBO), ``hard``
      (straight-through one-hot forward pass; ``gumbel``, or ``stochastic`` with the Gumbel estimator).
    """
    return ml_collections.ConfigDict({
        # "vq": the paper's codebook loss; "ema": EMA cluster means (appendix A.1); "fsq": finite scalar
        # quantization (no codebook); "residual": residual VQ with residual.num_stages codebooks; "lfq", "bsq":
        # lookup-free and binary spherical quantization; "simvq": a frozen random codebook times a learned
        # linear map; "factorized": ViT-VQGAN's low-dimensional cosine codes; "grouped": multi-head / product VQ;
        # "stochastic": codes sampled from softmax(-||z - e||²/τ); "gumbel": DALL-E's Gumbel-softmax bottleneck;
        # "residual_fsq", "residual_lfq": residual FSQ / LFQ (parameter-free stages, each finer); "grouped_residual":
        # residual.groups residual VQs on parts of the code vector.
        "kind": "vq",
        "codebook": {"num_codes": 512, "code_dim": 64, "cosine": False, "init": "uniform", "rotation_trick": False,
                     "affine": False, "sync_nu": 0.0,
                     # restarts of codes used < 1 time per batch: the quantizer study's best learned codebook
                     # (experiments/vqvae_quantizers.py); 0 is the paper's codebook
                     "dead_code_threshold": 1.0,
                     "orthogonality_weight": 0.0, "entropy_weight": 0.0, "entropy_temperature": 1.0},
        "ema": {"decay": 0.99, "eps": 1e-5, "dead_code_threshold": 0.0},
        "fsq": {"levels": (8, 8, 8), "lloyd_max": False, "range_loss": False},
        "residual": {"num_stages": 4, "ema": False, "quantize_dropout": False, "shared_codebook": False, "groups": 2},
        "lookup_free": {"bits": 9, "entropy_weight": 0.1, "diversity_weight": 1.0, "temperature": 0.01,
                        "sample_fraction": 1.0},
        "factorized": {"code_dim_low": 8},
        "grouped": {"heads": 2, "shared": False},
        "stochastic": {"estimator": "straight_through", "temperature_start": 1.0, "temperature_end": 1 / 16,
                       "anneal_steps": 2000, "kl_weight": 0.01, "hard": False},
    })


PRESETS = ("cifar10",)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """The paper's VQ-VAE (K=512, D=64, β=0.25, Adam) scaled to 28×28 digits, with dead-code restarts of its
    learned codebook (``model.quantizer.codebook.dead_code_threshold=1``, the quantizer study's winner; 0 gives
    the paper's exact setup); ``preset="cifar10"`` (``--config=experiments/vqvae_mnist.py:cifar10``):
    :func:`cifar10_config`.

    The model follows the data (``config.data``): its input channels and image size are those of the
    training images, and ``model.downsample`` stride-2 stages (2: 28×28 to a 7×7 code grid, 32×32 to
    8×8) need H and W divisible by ``2^downsample``.
    """
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r} of experiments/vqvae_mnist.py; the presets are {PRESETS} "
                             "(--config=experiments/vqvae_mnist.py:cifar10).")
        return cifar10_config()
    c = common.base_config(
        data={"batch_size": 128, "eval_batch_size": 500},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 100},
        train={"steps": 2000, "log_every": 50, "checkpoint_every": 500, "eval_every": 500})
    c.model = ml_collections.ConfigDict({
        "hidden": 64, "residual_hidden": 32, "num_residual": 2, "beta": 0.25, "likelihood": "bernoulli",
        "downsample": 2,  # stride-2 stages each way: 28×28 -> 7×7 codes
        "quantizer": quantizer_config(),
    })
    return c


def cifar10_config() -> ml_collections.ConfigDict:
    """The VQ-VAE of van den Oord et al. (2017, §4.1) for CIFAR-10: 32×32×3 images to an 8×8 grid of
    K = 512 codes of dimension D = 64.

    As the paper: two 4×4 stride-2 convolutions, two residual blocks (ReLU, 3×3 convolution, ReLU,
    1×1 convolution), 256 hidden units, the decoder its mirror with two 4×4 stride-2 transposed
    convolutions; Adam at 2e-4, batch 128, 250,000 steps; β = 0.25. Here the first convolution has
    hidden/2 = 128 channels and a 3×3 convolution precedes the residual blocks (the Sonnet example's
    layout, as the MNIST model). The likelihood is the discretized logistic (``2C`` decoder channels:
    a location and log-scale per sub-pixel): a probability mass of the 8-bit pixels, so
    ``-log p(x|z_q)`` is honest and is reported in bits per dimension; PSNR and SSIM of the
    reconstructions are reported too.
    """
    c = get_config()
    c.data.dataset = "cifar10"
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 2e-4, 0
    c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 250_000, 500, 5000, 25_000
    m = c.model
    m.hidden, m.residual_hidden, m.num_residual, m.beta = 256, 256, 2, 0.25
    m.likelihood, m.downsample = "discretized_logistic", 2  # 32×32 -> 8×8
    m.quantizer.codebook.num_codes, m.quantizer.codebook.code_dim = 512, 64
    m.quantizer.codebook.dead_code_threshold = 0.0  # the paper's codebook: no restarts
    return c


def get_sweep():
    """β × K for the VQ-VAE (``python -m experiments.sweep``): each K is its own group of 4 β."""
    return training.product(training.values("model.quantizer.codebook.num_codes", [64, 512]),
                            training.values("model.beta", [0.1, 0.25, 0.5, 1.0]))


# Settings added with a default that changes what a run does, and the value a run saved before they
# existed had (Task.legacy_defaults: resuming or loading such a run keeps it).
LEGACY_DEFAULTS = {"model.quantizer.codebook.dead_code_threshold": 0.0}

KINDS_WITH_CODEBOOK = ("vq", "ema", "residual", "grouped_residual")
STOCHASTIC_KINDS = ("stochastic", "gumbel")
KINDS_WITH_ORTHOGONALITY = ("vq", "simvq", "stochastic", "gumbel", "residual")  # residual: without EMA
KINDS_WITH_ENTROPY = ("vq", "ema", "simvq", "stochastic", "gumbel")
CODEBOOK_INITS = ("uniform", "lloyd")

# The rules of `config.model.quantizer` (relative paths), every kind's settings: each is checked
# whatever the kind, so that a sweep over kinds fails at once on any bad value.
QUANTIZER_RULES = {
    "kind": training.one_of(*QUANTIZERS),
    "codebook.num_codes": training.integer(min=1),
    "codebook.code_dim": training.integer(min=1),
    "codebook.cosine": training.boolean(),
    "codebook.init": training.one_of(*CODEBOOK_INITS),
    "codebook.rotation_trick": training.boolean(),
    "codebook.affine": training.boolean(),
    "codebook.sync_nu": training.number(min=0),  # ν >= 0; 0: plain straight-through
    "ema.decay": training.number(min=0, max=1, max_open=True),  # γ in [0, 1)
    "ema.eps": training.number(min=0, min_open=True),  # Laplace smoothing ε > 0
    "ema.dead_code_threshold": training.number(min=0),  # 0: no restarts
    "codebook.dead_code_threshold": training.number(min=0),  # vq's restarts; 0: none
    "fsq.levels": training.int_sequence(min_len=1, min=2),  # L_d >= 2 per channel
    "fsq.lloyd_max": training.boolean(),
    "fsq.range_loss": training.boolean(),
    "residual.num_stages": training.integer(min=1),
    "residual.ema": training.boolean(),
    "residual.quantize_dropout": training.boolean(),
    "residual.shared_codebook": training.boolean(),
    "residual.groups": training.integer(min=1),  # grouped_residual: must divide codebook.code_dim
    "lookup_free.bits": training.integer(min=1, max=16),  # 2^bits codes counted per step: at most 65,536
    "lookup_free.entropy_weight": training.number(min=0),
    "lookup_free.diversity_weight": training.number(min=0),
    "lookup_free.temperature": training.number(min=0, min_open=True),
    "lookup_free.sample_fraction": training.number(min=0, max=1, min_open=True),
    "factorized.code_dim_low": training.integer(min=1),
    "grouped.heads": training.integer(min=1),
    "grouped.shared": training.boolean(),
    "codebook.orthogonality_weight": training.number(min=0),  # 0: off
    "codebook.entropy_weight": training.number(min=0),  # 0: off
    "codebook.entropy_temperature": training.number(min=0, min_open=True),
    "stochastic.estimator": training.one_of(*ESTIMATORS),
    "stochastic.temperature_start": training.number(min=0, min_open=True),
    "stochastic.temperature_end": training.number(min=0, min_open=True),
    "stochastic.anneal_steps": training.integer(min=1),
    "stochastic.kl_weight": training.number(min=0),
    "stochastic.hard": training.boolean(),
}

# Every field of get_config(): the shared blocks, the model and its quantizer.
CONFIG_RULES = {
    **training.CONFIG_RULES,
    "model.hidden": training.integer(min=2, multiple_of=2),  # the encoder's first layer has hidden/2
    "model.residual_hidden": training.integer(min=1),
    "model.num_residual": training.integer(min=0),
    "model.beta": training.number(min=0),
    "model.likelihood": training.one_of(*objectives.LIKELIHOODS),
    "model.downsample": training.integer(min=1),  # stride-2 stages: H and W must be multiples of 2**downsample
    **training.nested("model.quantizer", QUANTIZER_RULES),
}


def check_quantizer(config, where: str = "--config") -> list[str]:
    """What one field's rule cannot see: Lloyd initialisation needs a codebook; FSQ's levels must be
    equal with Lloyd-Max levels, and their product must fit int32 code indices."""
    q, out = config.model.quantizer, []
    flag = lambda path: training.flag(f"model.quantizer.{path}", where)
    if q.codebook.get("init") == "lloyd" and q.kind not in KINDS_WITH_CODEBOOK:
        out.append(f"{flag('codebook.init')}='lloyd' needs a codebook; {flag('kind')} is {q.kind!r}, which has "
                   "none (use 'uniform').")
    if (q.codebook.get("affine", False) or q.codebook.get("sync_nu", 0.0)) and q.kind != "vq":
        out.append(f"{flag('codebook.affine')} and {flag('codebook.sync_nu')} need {flag('kind')}='vq' (a codebook "
                   f"trained by gradient); got kind {q.kind!r} with affine={q.codebook.get('affine', False)!r}, "
                   f"sync_nu={q.codebook.get('sync_nu', 0.0)!r}.")
    if q.codebook.get("orthogonality_weight", 0.0) > 0 and (
            q.kind not in KINDS_WITH_ORTHOGONALITY or (q.kind == "residual" and q.residual.ema)):
        why = "EMA codes get no gradient" if q.kind in ("ema", "residual") else "it has no learned codebook"
        out.append(f"{flag('codebook.orthogonality_weight')} > 0 needs codes learned by gradient "
                   f"({', '.join(KINDS_WITH_ORTHOGONALITY)}; residual without EMA); {flag('kind')} is {q.kind!r}: "
                   f"{why}, so the loss could not act (use 0).")
    if q.codebook.get("entropy_weight", 0.0) > 0 and q.kind not in KINDS_WITH_ENTROPY:
        out.append(f"{flag('codebook.entropy_weight')} > 0 needs one codebook's soft assignments "
                   f"({', '.join(KINDS_WITH_ENTROPY)}); {flag('kind')} is {q.kind!r} (use 0).")
    if "stochastic" in q and q.kind == "stochastic" and q.stochastic.hard and q.stochastic.estimator != "gumbel":
        out.append(f"{flag('stochastic.hard')}=True needs {flag('stochastic.estimator')}='gumbel' with kind "
                   f"'stochastic'; got {q.stochastic.estimator!r}.")
    if q.kind == "grouped" and q.codebook.code_dim % q.grouped.heads:
        out.append(f"{flag('codebook.code_dim')}={q.codebook.code_dim} must be a multiple of "
                   f"{flag('grouped.heads')}={q.grouped.heads} (D/H channels per part).")
    if q.kind == "grouped_residual" and q.codebook.code_dim % q.residual.groups:
        out.append(f"{flag('codebook.code_dim')}={q.codebook.code_dim} must be a multiple of "
                   f"{flag('residual.groups')}={q.residual.groups} (D/G channels per group).")
    if q.kind in ("fsq", "residual_fsq"):
        levels = tuple(q.fsq.levels)
        if q.fsq.lloyd_max and len(set(levels)) != 1:
            out.append(f"{flag('fsq.levels')} must all be equal with {flag('fsq.lloyd_max')}=True; got {levels}.")
        if math.prod(levels) > 2**31 - 1:
            out.append(f"{flag('fsq.levels')} imply {math.prod(levels)} codes; at most 2**31 - 1 fit int32 indices.")
    return out


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`, :func:`check_quantizer`): a ValueError naming
    each bad flag. ``where``: the flag prefix of this config (``--config.vqvae`` when nested)."""
    training.validate(config, CONFIG_RULES, where=where, extra=(check_quantizer,))


def dead_code_threshold(q: ml_collections.ConfigDict) -> float:
    """The restart threshold of ``config.model.quantizer``'s kind: ``codebook.dead_code_threshold`` for the
    learned codebook (``vq``; absent from configs saved before it: 0), ``ema.dead_code_threshold`` for the others."""
    return float(q.codebook.get("dead_code_threshold", 0.0)) if q.kind == "vq" else float(q.ema.dead_code_threshold)


def make_model(config: ml_collections.ConfigDict, rngs, image_shape: tuple[int, int, int] | None = None) -> VQVAE:
    """The VQ-VAE of ``config.model`` with the quantizer of ``config.model.quantizer``, for images of
    ``image_shape`` (default: those of ``config.data``, :func:`experiments._program.image_shape`)."""
    m, q = config.model, config.model.quantizer
    image_shape = _program.image_shape(config) if image_shape is None else image_shape
    quantizer = make_quantizer(
        q.kind, num_codes=q.codebook.num_codes, code_dim=q.codebook.code_dim, cosine=q.codebook.cosine,
        rotation_trick=q.codebook.get("rotation_trick", False),
        affine=q.codebook.get("affine", False), sync_nu=q.codebook.get("sync_nu", 0.0),
        decay=q.ema.decay, eps=q.ema.eps, dead_code_threshold=dead_code_threshold(q),
        fsq_levels=tuple(q.fsq.levels), lloyd_max=q.fsq.lloyd_max, fsq_range_loss=q.fsq.range_loss,
        num_stages=q.residual.num_stages, residual_ema=q.residual.ema,
        quantize_dropout=q.residual.get("quantize_dropout", False),
        shared_codebook=q.residual.get("shared_codebook", False), groups=q.residual.get("groups", 2),
        **({**q.lookup_free, "code_dim_low": q.factorized.code_dim_low} if "lookup_free" in q else {}),
        **({"heads": q.grouped.heads, "grouped_shared": q.grouped.shared} if "grouped" in q else {}),
        **(dict(q.stochastic) if "stochastic" in q else {}), rngs=rngs)
    return VQVAE(in_channels=image_shape[-1], hidden=m.hidden, residual_hidden=m.residual_hidden,
                 num_residual=m.num_residual, quantizer=quantizer, rngs=rngs, dtype=jnp.dtype(config.dtype),
                 likelihood=m.likelihood, downsample=m.get("downsample", 2))


def build(config: ml_collections.ConfigDict) -> training.Task:
    """The loop's task: β and the learning rate are sweepable; the reporters draw reconstructions,
    code usage and the codebook projection."""
    check_config(config)
    m, q = config.model, config.model.quantizer
    shape = _program.image_shape(config)  # the model follows the data
    _program.check_image_shape(shape, m.downsample)

    annealed = q.kind in STOCHASTIC_KINDS  # τ at the loop's step, in the quantizer's state
    regularizers = {k: float(q.codebook.get(k, default)) for k, default in (
        ("orthogonality_weight", 0.0), ("entropy_weight", 0.0), ("entropy_temperature", 1.0))}
    if not regularizers["entropy_weight"]:
        del regularizers["entropy_temperature"]  # off: the objective's call is the one without regularisers

    def objective(model, batch, *, key, step, hparams, weights=None):
        if annealed:
            model.quantizer.anneal(step)
        return objectives.vqvae_objective(model, batch, beta=hparams["model.beta"], likelihood=m.likelihood,
                                          key=key, weights=weights, **regularizers)

    def reconstruct(model, x):
        model.eval()
        return objectives.reconstruction_mean(model(x).logits, m.likelihood)

    def init_codebook(model, batch, key):
        """Fit the codebook to the fresh encoder's outputs on a first batch (generalized Lloyd)."""
        model.quantizer.initialize(model.encoder(jnp.asarray(batch["image"])), key)

    return training.Task(
        model=lambda rngs: make_model(config, rngs, shape),
        objective=objective,
        hparams={"model.beta": m.beta},
        # EMA γ and the dead-code threshold live in the quantizer's state (vqjax.nn.Hyperparameter)
        state_hparams=("model.quantizer.ema.decay", "model.quantizer.ema.dead_code_threshold")
        if q.kind == "ema" or (q.kind in ("residual", "grouped_residual") and q.residual.ema)
        else ("model.quantizer.ema.decay", "model.quantizer.codebook.dead_code_threshold")
        if q.kind == "vq" and dead_code_threshold(q) > 0
        # a stochastic quantizer's temperature schedule and KL weight (vqjax.nn.Hyperparameter)
        else tuple(f"model.quantizer.stochastic.{k}" for k in ("temperature_start", "temperature_end", "kl_weight"))
        if annealed else (),
        init=init_codebook if q.codebook.init == "lloyd" else None,
        reporters=(_reporters.reconstructions(reconstruct), _reporters.code_usage, draw_codebook),
        # a mean of per-example losses (an EMA codebook's state keeps it unsplit); not LFQ's, BSQ's and
        # residual LFQ's entropy loss, whose codebook term is the entropy of the whole batch's mean code distribution, nor
        # the usage-entropy regulariser (codebook.entropy_weight)
        per_example=q.kind not in ("lfq", "bsq", "residual_lfq") and not regularizers["entropy_weight"],
        legacy_defaults=LEGACY_DEFAULTS,
    )


def codes_per_stage(config: ml_collections.ConfigDict) -> int:
    """K of the configured quantizer, per stage (FSQ: its implied codebook size ``Π L_d``; LFQ, BSQ: ``2^bits``)."""
    q = config.model.quantizer
    if q.kind in ("fsq", "residual_fsq"):
        return int(np.prod(q.fsq.levels))
    return 2 ** int(q.lookup_free.bits) if q.kind in ("lfq", "bsq", "residual_lfq") else int(q.codebook.num_codes)


def draw_codebook(model, test_src, workdir: str, summary: dict | None = None, *, num_images: int = 500) -> dict:
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
    elif hasattr(q, "part_dim"):  # grouped VQ: part 1's codebook against the first D/H channels
        z = z[:, : q.part_dim]
        idx = np.asarray(q.encode(z_e))[..., 0].reshape(-1)
        counts = np.bincount(idx, minlength=q.num_codes)
        title = f"part 1 of {q.num_stages}: {np.mean(counts > 0):.0%} of {q.num_codes} codes used by {len(x)} images"
    else:  # residual VQ: the first stage's codebook against the encoder outputs
        idx = np.asarray(q.encode(z_e))[..., 0].reshape(-1)
        counts = np.bincount(idx, minlength=q.num_codes)
        title = f"stage 1 of {q.num_stages}: {np.mean(counts > 0):.0%} of {q.num_codes} codes used by {len(x)} images"
    codebook = np.asarray(q.codebook_vectors())[: q.num_codes]
    viz.save_codebook_projection(f"{workdir}/codebook_projection.png", codebook, z, counts=counts, title=title)
    return {}


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    _program.check_flags(lambda c: _program.check_image_shape(_program.image_shape(c), c.model.downsample), config)
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    summary = training.train_and_evaluate(config, _WORKDIR.value, build(config))
    print(json.dumps({k: summary[k] for k in ("steps", "data_source", "images_per_sec", "wall_seconds_this_run")}))
    print(format_test(summary) + f"  -> {_WORKDIR.value}")


def format_test(summary: dict) -> str:
    t = summary["test"]
    quality = "".join(f"  {label} {t[k]:{fmt}}" for k, label, fmt in (
        ("bits_per_dim", "bits/dim", ".3f"), ("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".4f")) if k in t)
    return (f"test: mse {t['mse']:.5f}  reconstruction {t['reconstruction']:.2f} nats{quality}  perplexity "
            f"{t['perplexity']:.1f}  codes used {t['used_fraction']:.1%} ({t['dead_codes']} dead)  "
            f"({t['num_examples']} images)")


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import every experiment. `--config` is
    # this file (default) or this file with a preset: --config=experiments/vqvae_mnist.py:cifar10.
    _CONFIG = config_flags.DEFINE_config_file("config", os.path.abspath(__file__),
                                              "This file, optionally with a preset: experiments/vqvae_mnist.py:cifar10.")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae_mnist", "Where checkpoints, metrics and pictures go.")
    app.run(main)
