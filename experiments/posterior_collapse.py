"""Do discrete latents prevent posterior collapse? VAEs and a VQ-VAE on one strong PixelCNN decoder, side by side.

    python -m experiments.posterior_collapse --config.data.idx_dir=DIR      # the 7 models (get_sweep), the table
    python -m experiments.posterior_collapse --list                         # its members
    python -m experiments.posterior_collapse --sweep_index=4                # one member
    python -m experiments.posterior_collapse --collect                      # the table of the finished runs

Dynamically binarized MNIST (each test image binarized once, from its index). ``model.kind``:

- ``pixel_vae``: the main VAE's encoder (an MLP, 500 units, 20 Gaussian latents) with a gated PixelCNN
  decoder ``p(x|z) = Π_ij p(x_ij | x_<ij, z)`` (:class:`vqjax.nn.PixelCNNDecoder`: ``z`` enters every layer's
  gates through a conditioning map), trained on the ELBO, or with a remedy (``model.remedy``):
  ``kl_annealing`` (β from 0 to 1 over ``model.kl_warmup_fraction`` of the run; Bowman et al., 2016),
  ``free_bits`` (``Σ_j max(λ, E_batch KL_j)`` with λ = ``model.free_bits`` nats per latent; Kingma et al.,
  2016), ``capacity`` (``γ |KL − C|``, C annealed from 0 to ``model.capacity_max``; Burgess et al., 2018);
- ``pixel_vqvae``: the main VQ-VAE's encoder and code grid (7×7 codes of dimension 64, K = 512, an EMA
  codebook with dead-code restarts) with the same PixelCNN decoder conditioned on the quantized grid;
- the weak-decoder baselines: ``mlp_vae`` (the main VAE: MLP decoder, pixels independent given ``z``) and
  ``vqvae`` (the main VQ-VAE's deconvolutional decoder, with the same EMA codebook as ``pixel_vqvae``).

All train for ``train.steps`` = 800 steps at batch 64 (Adam 1e-3; 51,200 images, under one epoch), one seed: what 7 models cost on 2 CPU
cores. After training each run measures, on the first ``eval.num_images`` test images (:func:`collapse_measures`):

- the **rate**: the KL in nats (VAEs); the entropy of the codes' usage and its ceiling ``49 · log K`` (VQ-VAEs);
- **latent use**: ``log p(x_i | z_i) − log p(x_i | z_j)``, the test log-likelihood of each image under its own
  latent minus under the latent of another image of the batch (the next one), in nats; ~0 is collapse;
- active units (``Var_x E_q[z_j] > 0.01``) for the VAEs; perplexity and codes used for the VQ-VAEs;
- the NLL of the test images: the IWAE bound with ``eval.iwae_samples`` samples (VAEs); for the VQ-VAEs the
  decoder's ``−log p(x|z_q)`` plus the NLL of the codes under a gated PixelCNN prior trained on them for
  ``prior.steps`` steps (the generation experiment's prior, :func:`train_code_prior`);
- ``conditional_samples.png``: for 4 test digits, the digit and 6 decoder samples given its latent (a
  collapsed model draws unrelated digits, a model that uses its latent redraws the same one).

:func:`report_sweep` writes ``collapse.md`` (the table) and ``conditional_samples.png`` (every model's).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from experiments import _program, _reporters
from experiments.configs import common
from vqjax import losses, objectives, quantizers, training
from vqjax.nn import (
    VAE,
    VQVAE,
    EMAVectorQuantizer,
    Encoder,
    GatedPixelCNN,
    MLPDecoder,
    MLPEncoder,
    PixelCNNDecoder,
    PixelCNNVAE,
    PixelCNNVQVAE,
)

KINDS = ("pixel_vae", "pixel_vqvae", "mlp_vae", "vqvae")
REMEDIES = ("none", "kl_annealing", "free_bits", "capacity")
STUDY = {
    "PixelCNN VAE": {"model.kind": "pixel_vae"},
    "PixelCNN VAE + KL annealing": {"model.kind": "pixel_vae", "model.remedy": "kl_annealing"},
    "PixelCNN VAE + free bits": {"model.kind": "pixel_vae", "model.remedy": "free_bits"},
    "PixelCNN VAE + capacity": {"model.kind": "pixel_vae", "model.remedy": "capacity"},
    "PixelCNN VQ-VAE": {"model.kind": "pixel_vqvae"},
    "MLP VAE (weak decoder)": {"model.kind": "mlp_vae"},
    "VQ-VAE (weak decoder)": {"model.kind": "vqvae"},
}


def get_config() -> ml_collections.ConfigDict:
    """800 steps at batch 64, Adam 1e-3, on dynamically binarized MNIST; the PixelCNN VAE."""
    c = common.base_config(
        data={"batch_size": 64, "eval_batch_size": 500, "dynamic_binarization": True},
        optimizer={"learning_rate": 1e-3},
        train={"steps": 800, "log_every": 100, "checkpoint_every": 400})
    c.model = ml_collections.ConfigDict({
        "kind": "pixel_vae",
        "remedy": "none",
        "latents": 20,  # the VAEs' (the main VAE's)
        "hidden": 500,  # the VAEs' MLP width
        "num_codes": 512,  # the VQ-VAEs' (the main VQ-VAE's)
        "code_dim": 64,
        "vq_hidden": 64,  # the VQ-VAE encoder's (and weak decoder's) channels
        "beta": 0.25,  # the VQ-VAEs' commitment weight
        "pixel_hidden": 16,  # the PixelCNN decoder's channels, layers and conditioning channels
        "pixel_layers": 6,
        "cond_channels": 8,
        "kl_warmup_fraction": 0.5,  # kl_annealing: β = min(1, step / (fraction · steps))
        "free_bits": 0.5,  # free_bits: λ, nats per latent
        "capacity_max": 25.0,  # capacity: C from 0 to this over the run, weight capacity_gamma
        "capacity_gamma": 10.0,
    })
    c.eval = ml_collections.ConfigDict({"num_images": 1000, "iwae_samples": 50, "iwae_chunk": 25,
                                        "sample_digits": 4, "samples_per_digit": 6})
    c.prior = ml_collections.ConfigDict({"steps": 1000, "batch_size": 64, "learning_rate": 1e-3, "hidden": 64,
                                         "num_layers": 8})
    return c


CONFIG_RULES = {
    **training.CONFIG_RULES,
    "data.dynamic_binarization": training.boolean(),
    "model.kind": training.one_of(*KINDS),
    "model.remedy": training.one_of(*REMEDIES),
    "model.latents": training.integer(min=1),
    "model.hidden": training.integer(min=1),
    "model.num_codes": training.integer(min=2),
    "model.code_dim": training.integer(min=1),
    "model.vq_hidden": training.integer(min=1),
    "model.beta": training.number(min=0),
    "model.pixel_hidden": training.integer(min=1),
    "model.pixel_layers": training.integer(min=1),
    "model.cond_channels": training.integer(min=1),
    "model.kl_warmup_fraction": training.number(min=0, max=1, min_open=True),
    "model.free_bits": training.number(min=0),
    "model.capacity_max": training.number(min=0),
    "model.capacity_gamma": training.number(min=0),
    "eval.num_images": training.integer(min=2),
    "eval.iwae_samples": training.integer(min=1),
    "eval.iwae_chunk": training.integer(min=1),
    "eval.sample_digits": training.integer(min=1),
    "eval.samples_per_digit": training.integer(min=1),
    "prior.steps": training.integer(min=0),
    "prior.batch_size": training.integer(min=1),
    "prior.learning_rate": training.number(min=0, min_open=True),
    "prior.hidden": training.integer(min=1),
    "prior.num_layers": training.integer(min=1),
}


def check_combinations(config, where: str = "--config") -> list[str]:
    """The decoders model binary pixels; a remedy is for the PixelCNN VAE."""
    out = []
    if not config.data.dynamic_binarization:
        out.append(f"{training.flag('data.dynamic_binarization', where)} must be True: the decoders model binary "
                   "pixels.")
    if config.model.remedy != "none" and config.model.kind != "pixel_vae":
        out.append(f"{training.flag('model.remedy', where)}={config.model.remedy!r} applies to "
                   f"{training.flag('model.kind', where)}='pixel_vae'; got {config.model.kind!r}.")
    return out


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config``: a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where, extra=(check_combinations,))


def get_sweep() -> list[dict]:
    """The study: the 7 models of :data:`STUDY`, seed 0."""
    return list(STUDY.values())


def method_name(overrides: dict) -> str:
    rest = {k: v for k, v in overrides.items() if k != "seed"}
    return next((label for label, s in STUDY.items() if s == rest), ", ".join(f"{k}={v}" for k, v in rest.items()))


def build_model(config, rngs, shape):
    """The model of ``config.model.kind`` for binary images of ``shape`` (H, W multiples of 4)."""
    m = config.model
    if m.kind in ("pixel_vae", "mlp_vae"):
        encoder = MLPEncoder(shape, m.latents, hidden=m.hidden, rngs=rngs)
        if m.kind == "mlp_vae":
            return VAE(encoder, MLPDecoder(shape, m.latents, hidden=m.hidden, rngs=rngs), latents=m.latents)
        decoder = PixelCNNDecoder(shape, (m.latents,), hidden=m.pixel_hidden, num_layers=m.pixel_layers,
                                  cond_channels=m.cond_channels, rngs=rngs)
        return PixelCNNVAE(encoder, decoder, latents=m.latents)
    quantizer = EMAVectorQuantizer(m.num_codes, m.code_dim, dead_code_threshold=1.0, rngs=rngs)
    if m.kind == "vqvae":
        return VQVAE(in_channels=shape[-1], hidden=m.vq_hidden, quantizer=quantizer, rngs=rngs)
    encoder = Encoder(shape[-1], m.code_dim, hidden=m.vq_hidden, rngs=rngs)
    decoder = PixelCNNDecoder(shape, (shape[0] // 4, shape[1] // 4, m.code_dim), hidden=m.pixel_hidden,
                              num_layers=m.pixel_layers, cond_channels=m.cond_channels, rngs=rngs)
    return PixelCNNVQVAE(encoder, quantizer, decoder)


def build(config: ml_collections.ConfigDict) -> training.Task:
    """The loop's task; the VAEs' remedies follow the step (annealed β, annealed C)."""
    check_config(config)
    m = config.model
    shape = _program.image_shape(config)
    steps = int(config.train.steps)
    vq = m.kind in ("pixel_vqvae", "vqvae")

    def objective(model, batch, *, key, step, hparams, weights=None):
        del hparams
        if vq:
            return objectives.vqvae_objective(model, _binary(batch, key), beta=m.beta, key=key, weights=weights)
        kw = {"key": key, "dynamic_binarization": True, "weights": weights}
        if m.remedy == "kl_annealing":
            kw["beta"] = jnp.minimum(step / max(1.0, m.kl_warmup_fraction * steps), 1.0)
        elif m.remedy == "free_bits":
            kw["free_bits"] = m.free_bits
        elif m.remedy == "capacity":
            kw["beta"] = m.capacity_gamma
            kw["capacity"] = m.capacity_max * jnp.minimum(step / steps, 1.0)
        return objectives.vae_objective(model, batch, **kw)

    def report(model, test_src, workdir, summary):
        return collapse_measures(model, test_src, workdir, config)

    return training.Task(model=lambda rngs: build_model(config, rngs, shape), objective=objective,
                         reporters=(report,))


def _binary(batch: dict, key: jax.Array) -> dict:
    """The batch with its images binarized as :func:`vqjax.objectives.vae_objective` binarizes them (in
    evaluation: each test image from its index), for the VQ-VAE objective, which takes images as given."""
    x, _ = objectives._data(batch, key, True)
    return {**batch, "image": x}


# ------------------------------------------------------------------------------------------- the measures

def _test_binary(test_src, n: int, seed: int) -> np.ndarray:
    """The first ``n`` test images, each binarized from its index (the same for every model)."""
    x = _reporters.test_images(test_src, n)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(x)))
    return np.asarray(jax.vmap(lambda k, im: jax.random.bernoulli(k, im))(keys, jnp.asarray(x)), np.float32)


def _latent(model, x, key):
    """The latent a model decodes: a posterior sample (VAEs) or the quantized grid (VQ-VAEs)."""
    if isinstance(model, (VQVAE, PixelCNNVQVAE)):
        return model.quantizer.decode(model.encode(x))
    mean, log_variance = model.encode(x)
    return losses.reparameterize(mean, log_variance, key=key)


def _log_likelihood(model, x, z):
    """``log p(x|z)`` per image, nats."""
    if isinstance(model, (PixelCNNVAE, PixelCNNVQVAE)):
        return model.log_likelihood_given(x, z)
    return losses.bernoulli_log_likelihood(model.decoder(z), x, event_ndim=3)


def _sample(model, z, key):
    """Binary images ``x ~ p(x|z)``."""
    if isinstance(model, (PixelCNNVAE, PixelCNNVQVAE)):
        return model.sample(z, key=key)
    return jax.random.bernoulli(key, jax.nn.sigmoid(model.decoder(z))).astype(jnp.float32)


def latent_use(model, x: jax.Array, key: jax.Array) -> jax.Array:
    """``[B]`` ``log p(x_i | z_i) − log p(x_i | z_{i+1})`` (the next image's latent, cyclically), nats."""
    z = _latent(model, x, key)
    return _log_likelihood(model, x, z) - _log_likelihood(model, x, jnp.roll(z, -1, axis=0))


def collapse_measures(model, test_src, workdir: str, config) -> dict:
    """The measures of the module docstring on the first ``eval.num_images`` test images, and the pictures."""
    from vqjax import viz

    e = config.eval
    x = _test_binary(test_src, e.num_images, config.seed + 7)
    batches = np.array_split(x, max(1, len(x) // 250))
    use = jax.jit(latent_use)
    keys = jax.random.split(jax.random.key(config.seed + 11), len(batches))
    out = {"latent_use": float(np.mean(np.concatenate([np.asarray(use(model, jnp.asarray(b), k))
                                                      for b, k in zip(batches, keys, strict=True)])))}
    if isinstance(model, (VQVAE, PixelCNNVQVAE)):
        codes = np.concatenate([np.asarray(jax.jit(model.encode)(jnp.asarray(b))) for b in batches])
        counts = np.bincount(codes.ravel(), minlength=model.quantizer.num_codes)
        p = counts / counts.sum()
        out.update(code_entropy=float(np.sum(codes[0].size * -p[p > 0] * np.log(p[p > 0]))),
                   rate_ceiling=float(codes[0].size * np.log(model.quantizer.num_codes)),
                   perplexity=float(quantizers.perplexity(jnp.asarray(counts))),
                   codes_used=int(np.sum(counts > 0)))
        nll_codes = train_code_prior(model, test_src, codes, config)
        decoder_nll = -float(np.mean(np.concatenate([np.asarray(jax.jit(lambda b: _log_likelihood(
            model, b, model.quantizer.decode(model.encode(b))))(jnp.asarray(b))) for b in batches])))
        out.update(decoder_nll=decoder_nll, prior_nll=nll_codes, nll=decoder_nll + nll_codes)
    else:
        mean, log_variance = (np.asarray(a) for a in jax.jit(model.encode)(jnp.asarray(x)))
        out["active_units"] = int(np.sum(np.var(mean, axis=0) > 0.01))
        out["kl"] = float(np.mean(np.asarray(losses.gaussian_kl(mean, log_variance))))
        iwae = jax.jit(lambda b, k: model.iwae_log_likelihood(b, key=k, num_samples=e.iwae_samples,
                                                              chunk_size=e.iwae_chunk))
        out["nll"] = -float(np.mean(np.concatenate([np.asarray(iwae(jnp.asarray(b), k))
                                                    for b, k in zip(batches, keys, strict=True)])))
    # Pictures: each digit, then samples x ~ p(x|z) given its latent.
    digits = jnp.asarray(x[: e.sample_digits])
    z = jax.jit(_latent)(model, digits, jax.random.key(config.seed + 13))
    z = jnp.repeat(z, e.samples_per_digit, axis=0)
    samples = np.asarray(jax.jit(_sample)(model, z, jax.random.key(config.seed + 17)))
    grid = np.concatenate([np.asarray(digits)[:, None],
                           samples.reshape(e.sample_digits, e.samples_per_digit, *samples.shape[1:])], axis=1)
    viz.save_png(os.path.join(workdir, "conditional_samples.png"),
                 viz.image_grid(grid.reshape(-1, *grid.shape[2:]), ncols=e.samples_per_digit + 1))
    return {"collapse": out}


def train_code_prior(model, test_src, test_codes: np.ndarray, config) -> float:
    """NLL (nats per image) of ``test_codes`` under a gated PixelCNN prior (the generation experiment's
    :class:`vqjax.nn.GatedPixelCNN`) trained for ``prior.steps`` Adam steps on the codes of random
    binarized training images (:func:`vqjax.objectives.prior_objective`)."""
    from vqjax import data

    p = config.prior
    train_src = data.get_source(split="train", **data.source_options(config.data.to_dict()))
    prior = GatedPixelCNN(model.quantizer.num_codes, hidden=p.hidden, num_layers=p.num_layers, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(prior)
    tx = optax.adam(p.learning_rate)
    opt_state = tx.init(params)
    encode = jax.jit(model.encode)

    @jax.jit
    def step(params, opt_state, codes):
        def loss(params):
            return objectives.prior_objective(nnx.merge(graphdef, params), codes)[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(config.seed)
    for _ in range(p.steps):
        idx = rng.integers(0, len(train_src), p.batch_size)
        images = np.stack([train_src[int(i)]["image"] for i in idx]).astype(np.float32) / 255.0
        binary = (rng.random(images.shape) < images).astype(np.float32)
        params, opt_state, _ = step(params, opt_state, encode(jnp.asarray(binary)))
    nll = jax.jit(lambda params, c: objectives.prior_objective(nnx.merge(graphdef, params), c)[1])
    metrics = [nll(params, jnp.asarray(c)) for c in np.array_split(test_codes, max(1, len(test_codes) // 250))]
    return float(np.sum([float(mm["sum/nll"]) for mm in metrics]) / len(test_codes))


# ------------------------------------------------------------------------------------------------ report

COLUMNS = (("rate (nats)", "rate"), ("latent use (nats)", "latent_use"), ("active units", "active_units"),
           ("perplexity", "perplexity"), ("codes used", "codes_used"), ("test NLL (nats)", "nll"),
           ("−ELBO / −log p(x|z_q)", "neg_elbo"))


def _run_values(row: dict, workdir: str) -> dict:
    import json

    with open(os.path.join(workdir, row["name"], "summary.json")) as f:
        s = json.load(f)
    c, t = s.get("collapse", {}), s["test"]
    rate = c.get("kl", c.get("code_entropy"))
    if "rate_ceiling" in c:
        rate_text = f"{c['code_entropy']:.1f} (≤ {c['rate_ceiling']:.0f})"
    else:
        rate_text = f"{rate:.2f}" if rate is not None else "–"
    neg_elbo = -t["elbo"] if "elbo" in t else t.get("reconstruction")
    return {**c, "rate_text": rate_text, "neg_elbo": neg_elbo}


def format_table(rows: list[dict], workdir: str) -> str:
    lines = ["| model | " + " | ".join(h for h, _ in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for r in sorted(rows, key=lambda r: r["index"]):
        if r["diverged"]:
            lines.append(f"| {method_name(r['overrides'])} | diverged |")
            continue
        v = _run_values(r, workdir)
        cells = [v["rate_text"]]
        for _, key in COLUMNS[1:]:
            value = v.get(key)
            cells.append("–" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value)))
        lines.append(f"| {method_name(r['overrides'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_sweep(rows: list[dict], workdir: str) -> None:
    """``collapse.md`` (printed) and ``conditional_samples.png``: every model's pictures, in study order."""
    from PIL import Image

    from vqjax import viz

    if not rows:
        return
    table = format_table(rows, workdir)
    with open(os.path.join(workdir, "collapse.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    panels = []
    for r in sorted(rows, key=lambda r: r["index"]):
        path = os.path.join(workdir, r["name"], "conditional_samples.png")
        if os.path.exists(path):
            panels.append(np.asarray(Image.open(path).convert("L"))[..., None])
    if panels:
        width = max(p.shape[1] for p in panels)
        padded = [np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
        viz.save_png(os.path.join(workdir, "conditional_samples.png"), np.concatenate(padded, axis=0), scale=1)


def main(argv):
    del argv
    _program.check_flags(check_config, _CONFIG.value)
    _sweep.run_with_flags(sys.modules[__name__], _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    from experiments import sweep as _sweep  # defines --sweep, --sweep_index, --list, --collect, --placement

    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/posterior_collapse", "Where the runs and the table go.")
    app.run(main)
