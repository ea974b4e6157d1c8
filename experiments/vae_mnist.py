"""Train a VAE, β-VAE or InfoVAE on dynamically binarized MNIST and report honest likelihoods.

    python -m experiments.vae_mnist                                    # the Flax example's MLP VAE, 10 epochs
    python -m experiments.vae_mnist --config.model.objective=beta_vae --config.model.beta=4
    python -m experiments.vae_mnist --config.model.objective=beta_vae --config.model.beta=10 \\
        --config.model.capacity_max=25 --config.model.capacity_steps=4000     # Burgess et al.'s |KL - C|
    python -m experiments.vae_mnist --config.model.objective=info_vae --config.model.info_lambda=1000
    python -m experiments.vae_mnist --config.model.latents=2 --workdir=runs/vae_2d   # draws the 2-D manifold
    python -m experiments.vae_mnist --config.data.idx_dir=/path/to/mnist             # the four IDX files

The images are binarized afresh at every step (``x ~ Bernoulli(pixel)``); each test image is
binarized once per run, from its index (the same for every evaluation and every test metric). The test report gives the ELBO, its
rate (KL) and distortion (``-log p(x|z)``), all in nats per image, and the IWAE estimate of
``-log p(x)`` with ``config.eval.iwae_samples`` samples (5000, as in Burda et al., 2016).

Output in the workdir: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``reconstructions.png``,
``samples.png`` (① z ~ p(z), ② x ~ p(x|z); beside them the means of p(x|z)), ``traversals.png``,
``manifold.png`` (2-D latent only) and ``summary.json``. The same ``--workdir`` resumes.

The model follows the data (``--config.data.dataset`` and the other ``data`` flags): any H×W×C images
(the conv model: H and W multiples of ``2**model.downsample``). RGB images want the discretized
logistic (``--config.model.likelihood=discretized_logistic --config.data.dynamic_binarization=False``),
reported in bits per dimension; PSNR and SSIM of the reconstructions are reported for every likelihood.
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

from experiments import _program, _reporters
from experiments.configs import common
from vqjax import objectives, training
from vqjax.nn import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

OBJECTIVES = ("vae", "beta_vae", "info_vae")
ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "discretized_logistic")
KERNELS = ("imq", "rbf")  # of the MMD (vqjax.losses.mmd)


def get_config() -> ml_collections.ConfigDict:
    """The Flax VAE example's MLP (500 hidden units, 20 latents) for 10 epochs.

    Trained with Adam at batch 64 and a cosine-decayed learning rate from 3e-3 (the example: batch
    128, constant 1e-3), which gains ~3 nats of test ELBO in the same 10 epochs.
    """
    c = common.base_config(
        data={"batch_size": 64, "eval_batch_size": 500, "dynamic_binarization": True},
        optimizer={"learning_rate": 3e-3, "schedule": "cosine"},
        # 10 epochs of the 60,000 training digits at batch 64
        train={"steps": 9375, "log_every": 100, "checkpoint_every": 1000})
    c.model = ml_collections.ConfigDict({
        "arch": "mlp",  # "mlp" (Flax example) or "conv"
        "latents": 20,
        # "bernoulli" on binarized digits, or "discretized_logistic" on the 8-bit grey levels (set
        # data.dynamic_binarization=False): then the report is also in bits per dimension.
        "likelihood": "bernoulli",
        "hidden": 500,  # MLP width; the conv model uses conv_hidden channels
        "conv_hidden": 32,
        "downsample": 2,  # the conv model's stride-2 stages (H, W multiples of 2**downsample); the MLP ignores it
        "objective": "vae",  # "vae" (β = 1), "beta_vae" (β, capacity) or "info_vae" (α, λ, kernel)
        "beta": 1.0,
        "capacity_max": 0.0,  # C in nats; > 0 turns on β·|KL - C| with C annealed linearly 0 -> max
        "capacity_steps": 0,  # steps over which C grows; 0: C = capacity_max from the start
        "info_alpha": 0.0,
        "info_lambda": 1000.0,
        "kernel": "imq",  # MMD kernel: "imq" or "rbf"
    })
    c.eval = ml_collections.ConfigDict({
        "iwae_samples": 5000,  # 0 skips the IWAE bound
        "iwae_chunk": 100,  # samples decoded at a time
        "iwae_batch_size": 40,  # test images per IWAE step (a multiple of the device count)
        "traversal_range": 3.0,
    })
    return c


# Every field of get_config(), the settings of each objective and likelihood included.
CONFIG_RULES = {
    **training.CONFIG_RULES,
    "data.dynamic_binarization": training.boolean(),
    "model.arch": training.one_of(*ARCHITECTURES),
    "model.latents": training.integer(min=1),
    "model.likelihood": training.one_of(*LIKELIHOODS),
    "model.hidden": training.integer(min=1),
    "model.conv_hidden": training.integer(min=1),
    "model.downsample": training.integer(min=1),
    "model.objective": training.one_of(*OBJECTIVES),
    "model.beta": training.number(min=0),
    "model.capacity_max": training.number(min=0),
    "model.capacity_steps": training.integer(min=0),
    "model.info_alpha": training.number(max=1),  # α <= 1 keeps the KL's weight 1 - α >= 0
    "model.info_lambda": training.number(min=0, min_open=True),
    "model.kernel": training.one_of(*KERNELS),
    "eval.iwae_samples": training.integer(min=0),  # 0: no IWAE bound
    "eval.iwae_chunk": training.integer(min=1),
    "eval.iwae_batch_size": training.integer(min=1),
    "eval.traversal_range": training.number(min=0, min_open=True),
}


def check_combinations(config, where: str = "--config") -> list[str]:
    """The discretized logistic models grey levels (no binarization); InfoVAE's MMD weight
    α + λ - 1 must not be negative."""
    m, out = config.model, []
    if m.likelihood == "discretized_logistic" and config.data.dynamic_binarization:
        out.append(f"{training.flag('model.likelihood', where)}='discretized_logistic' models the 8-bit grey levels: "
                   f"set {training.flag('data.dynamic_binarization', where)}=False.")
    if m.objective == "info_vae" and m.info_alpha + m.info_lambda - 1 < 0:
        out.append(f"{training.flag('model.info_alpha', where)} + {training.flag('model.info_lambda', where)} - 1 "
                   f"must be >= 0 (the MMD's weight); got {m.info_alpha} + {m.info_lambda} - 1.")
    return out


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`, :func:`check_combinations`): a ValueError
    naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where, extra=(check_combinations,))


def get_sweep():
    """The β-VAE's rate-distortion curve: 6 values of β, 3 seeds (``python -m experiments.sweep``)."""
    return training.product(training.values("model.beta", [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
                            training.values("seed", [0, 1, 2]))


def report_sweep(rows: list[dict], workdir: str) -> None:
    """``rate_distortion.png`` of a sweep over ``model.beta``: the mean (rate, distortion) over seeds per β
    (``python -m experiments.sweep`` calls it after its table)."""
    from vqjax import viz

    by_beta: dict[float, list[dict]] = {}
    for r in rows:
        if "model.beta" in r["overrides"] and not r["diverged"] and "rate" in r["test"]:
            by_beta.setdefault(float(r["overrides"]["model.beta"]), []).append(r["test"])
    if len(by_beta) < 2:
        return
    betas = sorted(by_beta)
    rate = [float(np.mean([t["rate"] for t in by_beta[b]])) for b in betas]
    distortion = [float(np.mean([t["distortion"] for t in by_beta[b]])) for b in betas]
    seeds = max(len(by_beta[b]) for b in betas)
    viz.save_curve(os.path.join(workdir, "rate_distortion.png"), rate, distortion,
                   labels=[f"β={b:g}" for b in betas], xlabel="rate: KL(q(z|x) || p(z)), nats",
                   ylabel="distortion: −log p(x|z), nats",
                   title=f"β-VAE on binarized MNIST (mean of {seeds} seeds per β)")


def build_model(config: ml_collections.ConfigDict, rngs, image_shape: tuple[int, int, int] | None = None) -> VAE:
    """The VAE of ``config.model`` for images of ``image_shape`` (default: those of ``config.data``)."""
    check_config(config)
    m = config.model
    shape = tuple(_program.image_shape(config) if image_shape is None else image_shape)
    out = (*shape[:2], 2 * shape[2]) if m.likelihood == "discretized_logistic" else shape  # location, log-scale
    dtype = jnp.dtype(config.dtype)
    if m.arch == "mlp":
        enc = MLPEncoder(shape, m.latents, hidden=m.hidden, rngs=rngs, dtype=dtype)
        dec = MLPDecoder(out, m.latents, hidden=m.hidden, rngs=rngs, dtype=dtype)
    else:
        _program.check_image_shape(shape, m.get("downsample", 2))
        kw = {"hidden": m.conv_hidden, "rngs": rngs, "dtype": dtype, "downsample": m.get("downsample", 2)}
        enc = ConvEncoder(shape, m.latents, **kw)
        dec = ConvDecoder(out, m.latents, **kw)
    return VAE(enc, dec, latents=m.latents, likelihood=m.likelihood)


def build(config: ml_collections.ConfigDict) -> training.Task:
    """The loop's task: β (capacity C, InfoVAE's α and λ) and the learning rate are sweepable."""
    check_config(config)
    m, e = config.model, config.eval
    shape = _program.image_shape(config)  # the model follows the data
    binarize = bool(config.data.dynamic_binarization)
    capacity = m.objective == "beta_vae" and m.capacity_max > 0
    hparams = {"info_vae": {"model.info_alpha": m.info_alpha, "model.info_lambda": m.info_lambda},
               "beta_vae": {"model.beta": m.beta}, "vae": {}}[m.objective]
    if capacity:
        hparams["model.capacity_max"] = m.capacity_max

    n = _program.train_size(config)  # the KL's decomposition is reported (vqjax.objectives.tc_metrics)

    def objective(model, batch, *, key, step, hparams, weights=None):
        kw = {"key": key, "dynamic_binarization": binarize, "weights": weights, "tc_dataset_size": n}
        if m.objective == "info_vae":
            return objectives.vae_objective(model, batch, info_alpha=hparams["model.info_alpha"],
                                            info_lambda=hparams["model.info_lambda"], kernel=m.kernel, **kw)
        if m.objective == "vae":
            return objectives.vae_objective(model, batch, **kw)
        c = None
        if capacity:  # C annealed linearly from 0 to capacity_max over capacity_steps
            c = hparams["model.capacity_max"] * (jnp.minimum(step / m.capacity_steps, 1.0) if m.capacity_steps else 1.0)
        return objectives.vae_objective(model, batch, beta=hparams["model.beta"], capacity=c, **kw)

    def iwae(model, batch, *, key, step, hparams, weights=None):
        del step, hparams
        return objectives.vae_iwae_objective(model, batch, key=key, num_samples=e.iwae_samples,
                                             chunk_size=e.iwae_chunk, dynamic_binarization=binarize,
                                             weights=weights)

    def reconstruct(model, x):  # decode the posterior mean
        mean, _ = model.encode(x)
        return model.mean_image(model.decode(mean))

    def draw_pictures(model, test_src, workdir, summary):
        return draw(model, test_src, workdir, config)

    return training.Task(
        model=lambda rngs: build_model(config, rngs, shape),
        objective=objective,
        hparams=hparams,
        evaluations={f"IWAE S={e.iwae_samples}": training.Evaluation(iwae, e.iwae_batch_size)}
        if e.iwae_samples > 0 else {},
        reporters=(_reporters.reconstructions(reconstruct), draw_pictures),
    )


def draw(model: VAE, test_src, workdir: str, config) -> dict:
    """Samples, latent traversals, the 2-D manifold; returns the number of active latent units."""
    from vqjax import viz

    key = jax.random.key(config.seed + 1)
    x, mean = jax.jit(lambda k: model.generate(key=k, num_samples=64))(key)
    both = np.concatenate([viz.image_grid(np.asarray(x), ncols=8), viz.image_grid(np.asarray(mean), ncols=8)], 1)
    viz.save_png(os.path.join(workdir, "samples.png"), both)

    n = min(1000, len(test_src))
    images = np.stack([test_src[i]["image"] for i in range(n)]).astype(np.float32) / 255.0
    mu, log_var = jax.jit(model.encode)(jnp.asarray(images))
    mu, log_var = np.asarray(mu), np.asarray(log_var)
    # Active units (Burda et al., 2016): Cov_x(E_q[z_j]) > 0.01.
    activity = np.var(mu, axis=0)
    kl_per_dim = 0.5 * np.mean(mu**2 + np.exp(log_var) - 1.0 - log_var, axis=0)
    order = np.argsort(-kl_per_dim)[: min(10, model.latents)]
    values = np.linspace(-config.eval.traversal_range, config.eval.traversal_range, 11)
    z = np.repeat(mu[:1], len(order) * len(values), axis=0).reshape(len(order), len(values), -1)
    for row, j in enumerate(order):
        z[row, :, j] = values
    decode = jax.jit(lambda z: model.mean_image(model.decode(z)))
    trav = np.asarray(decode(jnp.asarray(z.reshape(-1, model.latents))))
    viz.save_png(os.path.join(workdir, "traversals.png"), viz.image_grid(trav, ncols=len(values)))
    if model.latents == 2:  # Kingma & Welling (2014), fig. 4: decode a grid of prior quantiles
        grid = np.asarray(jax.scipy.special.ndtri(jnp.linspace(0.05, 0.95, 20)))
        zz = np.stack(np.meshgrid(grid, grid[::-1]), -1).reshape(-1, 2)
        viz.save_png(os.path.join(workdir, "manifold.png"),
                     viz.image_grid(np.asarray(decode(jnp.asarray(zz, jnp.float32))), ncols=20, pad=0))
    return {"active_units": int(np.sum(activity > 0.01)), "kl_per_latent": np.round(kl_per_dim, 3).tolist()}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return training.train_and_evaluate(config, workdir, build(config))


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size, config.eval.iwae_batch_size))
    summary = run(config, _WORKDIR.value)
    print(json.dumps({k: summary[k] for k in ("steps", "data_source", "images_per_sec", "wall_seconds_this_run")}))
    print(format_test(summary) + f"  -> {_WORKDIR.value}")


def format_test(summary: dict) -> str:
    """One line: the test ELBO split into distortion and rate, and the IWAE NLL."""
    t = summary["test"]
    line = (f"test ({t['num_examples']} images, nats per image): -ELBO {-t['elbo']:.2f} = distortion "
            f"{t['distortion']:.2f} + rate {t['rate']:.2f}")
    if "total_correlation" in t:  # the rate's split (Chen et al., 2018; vqjax.objectives.tc_metrics)
        line += (f" (= MI {t['mutual_information']:.2f} + TC {t['total_correlation']:.2f} + dimension-wise KL "
                 f"{t['dimension_wise_kl']:.2f})")
    if "iwae_nll" in t:
        line += f"; IWAE NLL (S={summary['config']['eval']['iwae_samples']}) {t['iwae_nll']:.2f}"
    if "bits_per_dim" in t:  # the discretized logistic (vqjax.objectives.vae_objective)
        line += f"; {t['bits_per_dim']:.3f} bits/dim (ELBO)"
        if "iwae_bits_per_dim" in t:
            line += f", {t['iwae_bits_per_dim']:.3f} bits/dim (IWAE)"
    if "psnr" in t:
        line += f"; PSNR {t['psnr']:.2f} dB" + (f", SSIM {t['ssim']:.4f}" if "ssim" in t else "")
    return line + f"; active units {summary.get('active_units', '?')}"


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/vae_mnist", "Where checkpoints, metrics and pictures go.")
    app.run(main)
