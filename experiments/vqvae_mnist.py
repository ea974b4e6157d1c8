"""Train a VQ-VAE (van den Oord et al., 2017) on MNIST.

    python -m experiments.vqvae_mnist                                  # default: ~5 min on 2 CPU cores
    python -m experiments.vqvae_mnist --config.cpu_devices_per_core=True   # ~1.8x faster on CPU, see README
    python -m experiments.vqvae_mnist --config.train.steps=20000 --workdir=runs/long
    python -m experiments.vqvae_mnist --config.data.idx_dir=/path/to/mnist   # the four IDX files
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=ema --config.model.quantizer.ema.dead_code_threshold=1
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=fsq --config.model.quantizer.fsq.levels=8,8,8
    python -m experiments.vqvae_mnist --config.model.quantizer.kind=residual --config.model.quantizer.residual.num_stages=4

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


def quantizer_config() -> ml_collections.ConfigDict:
    """``config.model.quantizer``: its ``kind`` and, grouped by the kinds that use them, its settings.

    - ``codebook`` (``vq``, ``ema``, ``residual``): ``num_codes`` K (per stage), ``code_dim`` D,
      ``cosine`` (l2-normalised codes and encoder outputs; vq, ema), ``init`` (``"uniform"``:
      U(-1/K, 1/K) as in the paper; ``"lloyd"``: generalized Lloyd with a k-means++ start on the
      encoder outputs of a first training batch).
    - ``ema`` (``ema``; ``residual`` with ``residual.ema``): EMA decay γ, Laplace smoothing ε, and
      ``dead_code_threshold`` (re-seed codes used fewer times per batch; 0: off).
    - ``fsq`` (``fsq``): ``levels`` per channel, ``lloyd_max`` levels, ``range_loss`` (β·Σ max(|z| - 2, 0)²).
    - ``residual`` (``residual``): ``num_stages`` codebooks, ``ema`` codebooks or not.
    """
    return ml_collections.ConfigDict({
        # "vq": the paper's codebook loss; "ema": EMA cluster means (appendix A.1); "fsq": finite scalar
        # quantization (no codebook); "residual": residual VQ with residual.num_stages codebooks.
        "kind": "vq",
        "codebook": {"num_codes": 512, "code_dim": 64, "cosine": False, "init": "uniform"},
        "ema": {"decay": 0.99, "eps": 1e-5, "dead_code_threshold": 0.0},
        "fsq": {"levels": (8, 8, 8), "lloyd_max": False, "range_loss": False},
        "residual": {"num_stages": 4, "ema": False},
    })


def get_config() -> ml_collections.ConfigDict:
    """The paper's VQ-VAE (K=512, D=64, β=0.25, Adam) scaled to 28×28 digits."""
    c = common.base_config(
        data={"batch_size": 128, "eval_batch_size": 500},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 100},
        train={"steps": 2000, "log_every": 50, "checkpoint_every": 500, "eval_every": 500})
    c.model = ml_collections.ConfigDict({
        "hidden": 64, "residual_hidden": 32, "num_residual": 2, "beta": 0.25, "likelihood": "bernoulli",
        "quantizer": quantizer_config(),
    })
    return c


def get_sweep():
    """β × K for the VQ-VAE (``python -m experiments.sweep``): each K is its own group of 4 β."""
    return training.product(training.values("model.quantizer.codebook.num_codes", [64, 512]),
                            training.values("model.beta", [0.1, 0.25, 0.5, 1.0]))


KINDS_WITH_CODEBOOK = ("vq", "ema", "residual")
CODEBOOK_INITS = ("uniform", "lloyd")

# The rules of `config.model.quantizer` (relative paths), every kind's settings: each is checked
# whatever the kind, so that a sweep over kinds fails at once on any bad value.
QUANTIZER_RULES = {
    "kind": training.one_of(*QUANTIZERS),
    "codebook.num_codes": training.integer(min=1),
    "codebook.code_dim": training.integer(min=1),
    "codebook.cosine": training.boolean(),
    "codebook.init": training.one_of(*CODEBOOK_INITS),
    "ema.decay": training.number(min=0, max=1, max_open=True),  # γ in [0, 1)
    "ema.eps": training.number(min=0, min_open=True),  # Laplace smoothing ε > 0
    "ema.dead_code_threshold": training.number(min=0),  # 0: no restarts
    "fsq.levels": training.int_sequence(min_len=1, min=2),  # L_d >= 2 per channel
    "fsq.lloyd_max": training.boolean(),
    "fsq.range_loss": training.boolean(),
    "residual.num_stages": training.integer(min=1),
    "residual.ema": training.boolean(),
}

# Every field of get_config(): the shared blocks, the model and its quantizer.
CONFIG_RULES = {
    **training.CONFIG_RULES,
    "model.hidden": training.integer(min=2, multiple_of=2),  # the encoder's first layer has hidden/2
    "model.residual_hidden": training.integer(min=1),
    "model.num_residual": training.integer(min=0),
    "model.beta": training.number(min=0),
    "model.likelihood": training.one_of(*objectives.LIKELIHOODS),
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
    if q.kind == "fsq":
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


def make_model(config: ml_collections.ConfigDict, rngs) -> VQVAE:
    """The VQ-VAE of ``config.model`` with the quantizer of ``config.model.quantizer``."""
    m, q = config.model, config.model.quantizer
    quantizer = make_quantizer(
        q.kind, num_codes=q.codebook.num_codes, code_dim=q.codebook.code_dim, cosine=q.codebook.cosine,
        decay=q.ema.decay, eps=q.ema.eps, dead_code_threshold=q.ema.dead_code_threshold,
        fsq_levels=tuple(q.fsq.levels), lloyd_max=q.fsq.lloyd_max, fsq_range_loss=q.fsq.range_loss,
        num_stages=q.residual.num_stages, residual_ema=q.residual.ema, rngs=rngs)
    return VQVAE(in_channels=1, hidden=m.hidden, residual_hidden=m.residual_hidden,
                 num_residual=m.num_residual, quantizer=quantizer, rngs=rngs)


def build(config: ml_collections.ConfigDict) -> training.Task:
    """The loop's task: β and the learning rate are sweepable; the reporters draw reconstructions,
    code usage and the codebook projection."""
    check_config(config)
    m, q = config.model, config.model.quantizer

    def objective(model, batch, *, key, step, hparams, weights=None):
        del step  # no schedule
        return objectives.vqvae_objective(model, batch, beta=hparams["model.beta"], likelihood=m.likelihood,
                                          key=key, weights=weights)

    def reconstruct(model, x):
        model.eval()
        return objectives.reconstruction_mean(model(x).logits, m.likelihood)

    def init_codebook(model, batch, key):
        """Fit the codebook to the fresh encoder's outputs on a first batch (generalized Lloyd)."""
        model.quantizer.initialize(model.encoder(jnp.asarray(batch["image"])), key)

    return training.Task(
        model=lambda rngs: make_model(config, rngs),
        objective=objective,
        hparams={"model.beta": m.beta},
        # EMA γ and the dead-code threshold live in the quantizer's state (vqjax.nn.Hyperparameter)
        state_hparams=("model.quantizer.ema.decay", "model.quantizer.ema.dead_code_threshold")
        if q.kind == "ema" or (q.kind == "residual" and q.residual.ema) else (),
        init=init_codebook if q.codebook.init == "lloyd" else None,
        reporters=(_reporters.reconstructions(reconstruct), _reporters.code_usage, draw_codebook),
    )


def codes_per_stage(config: ml_collections.ConfigDict) -> int:
    """K of the configured quantizer (FSQ: its implied codebook size ``Π L_d``)."""
    q = config.model.quantizer
    return int(np.prod(q.fsq.levels)) if q.kind == "fsq" else int(q.codebook.num_codes)


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
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    summary = training.train_and_evaluate(config, _WORKDIR.value, build(config))
    print(json.dumps({k: summary[k] for k in ("steps", "data_source", "images_per_sec", "wall_seconds_this_run")}))
    print(format_test(summary) + f"  -> {_WORKDIR.value}")


def format_test(summary: dict) -> str:
    t = summary["test"]
    return (f"test: mse {t['mse']:.5f}  reconstruction {t['reconstruction']:.2f} nats  perplexity "
            f"{t['perplexity']:.1f}  codes used {t['used_fraction']:.1%} ({t['dead_codes']} dead)  "
            f"({t['num_examples']} images)")


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import every experiment.
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vqvae_mnist", "Where checkpoints, metrics and pictures go.")
    app.run(main)
