"""Does β > 1 disentangle? Seven VAE objectives on the procedural dSprites, scored by six metrics.

    python -m experiments.disentanglement                         # the study: 7 objectives × 3 seeds (get_sweep)
    python -m experiments.disentanglement --list                  # its members
    python -m experiments.disentanglement --sweep_index=4         # one member (a cluster's job array)
    python -m experiments.disentanglement --collect               # the table and pictures of the finished runs
    python -m experiments.sweep --config=experiments/disentanglement.py \\
        --sweep='model.objective=beta_tcvae * model.beta=1,2,4,6,8,10 * seed=0,1,2'   # any other sweep

The data are vqjax's procedural dSprites (``data.dataset="dsprites"``: 64×64 binary images of the
original's 737,280 factor combinations; 5 factors: shape, scale, orientation, x, y). The model is the
disentanglement literature's (Locatello et al., 2019, Table 1: four stride-2 convolutions 32-32-64-64,
256 units, 10 Gaussian latents, the mirror decoder, Bernoulli likelihood) trained with Adam at batch
64 — for ``train.steps`` = 1,000 steps (64,000 images, 9 % of one epoch) where the papers train
300,000: what 21 runs cost on 2 CPU cores (~1 h). ``model.objective``:

- ``vae`` (β = 1), ``beta_vae`` (Higgins et al., 2017; ``model.beta``),
- ``capacity`` (Burgess et al., 2018: ``γ |KL - C|`` with C annealed from 0 to ``model.capacity_max``
  over ``model.capacity_fraction`` of the run; γ is ``model.beta``),
- ``beta_tcvae`` (Chen et al., 2018: ``-log p(x|z) + α MI + β TC + γ DWKL``, minibatch-stratified),
- ``factor_vae`` (Kim & Mnih, 2018: ``+ γ TC`` by a discriminator with its own Adam),
- ``dip_vae_i`` / ``dip_vae_ii`` (Kumar et al., 2018: λ_od, λ_d = 10 λ_od (I) or λ_od (II)).

Every run reports, on the test split (a fixed 10,000 of the images: dSprites has no held-out split), the
ELBO, its distortion and rate and the rate's split into index-code mutual information, total
correlation and dimension-wise KL (minibatch-stratified estimates, :func:`vqjax.objectives.tc_metrics`);
then the six disentanglement metrics of :mod:`vqjax.evaluation` on the posterior means (β-VAE,
FactorVAE, MIG, SAP, DCI, modularity/explicitness, as disentanglement_lib defines them, with the sample
counts of ``config.metrics``), ``traversals.png`` (each latent, by its KL, set from -2 to 2 in a test
image's posterior mean) and ``reconstructions.png``.

After the sweep, :func:`report_sweep` writes ``disentanglement.md`` (per objective: mean ± standard
deviation over the seeds of every metric, the reconstruction error and the KL decomposition),
``mig_vs_reconstruction.png`` and ``traversals_best.png`` (the traversals of each objective's run with
the highest MIG).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from experiments import _program, _reporters
from experiments.configs import common
from vqjax import data, evaluation, objectives, training
from vqjax.nn import (
    VAE,
    DisentanglementDecoder,
    DisentanglementEncoder,
    FactorVAE,
    TCDiscriminator,
    factor_vae_optimizer,
)

OBJECTIVES = ("vae", "beta_vae", "capacity", "beta_tcvae", "factor_vae", "dip_vae_i", "dip_vae_ii")
SEEDS = (0, 1, 2)
# The study (get_sweep): each objective with the settings of its paper for dSprites (or the middle of
# disentanglement_lib's sweep of it), 3 seeds each.
STUDY = {
    "VAE (β = 1)": {"model.objective": "vae"},
    "β-VAE β = 4": {"model.objective": "beta_vae", "model.beta": 4.0},
    "β-VAE β = 16": {"model.objective": "beta_vae", "model.beta": 16.0},
    "capacity γ = 1000, C = 25": {"model.objective": "capacity", "model.beta": 1000.0, "model.capacity_max": 25.0},
    "β-TCVAE β = 6": {"model.objective": "beta_tcvae", "model.beta": 6.0},
    "FactorVAE γ = 30": {"model.objective": "factor_vae", "model.factor_gamma": 30.0},
    "DIP-VAE-I λ_od = 10": {"model.objective": "dip_vae_i", "model.dip_lambda_od": 10.0},
}
METRICS = ("beta_vae", "factor_vae", "mig", "sap", "dci_disentanglement", "dci_completeness",
           "dci_informativeness", "modularity", "explicitness")


def get_config() -> ml_collections.ConfigDict:
    """β-TCVAE (β = 6) on the procedural dSprites for 1,000 steps at batch 64, Adam 5e-4."""
    c = common.base_config(
        data={"dataset": "dsprites", "batch_size": 64, "eval_batch_size": 500},
        optimizer={"learning_rate": 5e-4},
        train={"steps": 1000, "log_every": 100, "checkpoint_every": 500})
    c.model = ml_collections.ConfigDict({
        "objective": "beta_tcvae",
        "latents": 10,
        "beta": 6.0,  # β of β-VAE and β-TCVAE (the TC's weight); γ of the capacity objective
        "capacity_max": 25.0,  # C in nats (capacity)
        "capacity_fraction": 0.8,  # share of the run over which C grows from 0 to capacity_max
        "tcvae_alpha": 1.0,  # weight of the index-code mutual information (β-TCVAE)
        "tcvae_gamma": 1.0,  # weight of the dimension-wise KL (β-TCVAE)
        "tc_estimator": "mss",  # "mss" or "mws" (β-TCVAE and the reported decomposition)
        "factor_gamma": 30.0,  # γ of FactorVAE
        "discriminator_learning_rate": 1e-4,  # FactorVAE's discriminator: Adam(1e-4, β1 = 0.5, β2 = 0.9)
        "discriminator_hidden": 1000,  # ... 6 hidden layers of this width
        "dip_lambda_od": 10.0,
        "dip_lambda_d": 0.0,  # 0: 10 λ_od (DIP-VAE-I) or λ_od (DIP-VAE-II)
    })
    c.metrics = ml_collections.ConfigDict({  # disentanglement_lib's counts: 10,000 / 10,000 / 5,000 / 10,000
        "num_train": 10000,  # MIG's points and FactorVAE's variance estimate
        "num_train_classifier": 1000,  # training points of SAP, DCI and modularity/explicitness
        "num_test": 500,  # their test points
        "num_votes": 300,  # β-VAE and FactorVAE scores: votes (batches of 64) to train on; half as many to test
        "seed": 0,
    })
    c.eval = ml_collections.ConfigDict({"traversal_range": 2.0})
    return c


CONFIG_RULES = {
    **training.CONFIG_RULES,
    "model.objective": training.one_of(*OBJECTIVES),
    "model.latents": training.integer(min=1),
    "model.beta": training.number(min=0),
    "model.capacity_max": training.number(min=0),
    "model.capacity_fraction": training.number(min=0, max=1),
    "model.tcvae_alpha": training.number(min=0),
    "model.tcvae_gamma": training.number(min=0),
    "model.tc_estimator": training.one_of("mss", "mws"),
    "model.factor_gamma": training.number(min=0),
    "model.discriminator_learning_rate": training.number(min=0, min_open=True),
    "model.discriminator_hidden": training.integer(min=1),
    "model.dip_lambda_od": training.number(min=0),
    "model.dip_lambda_d": training.number(min=0),
    "metrics.num_train": training.integer(min=10),
    "metrics.num_train_classifier": training.integer(min=10),
    "metrics.num_test": training.integer(min=10),
    "metrics.num_votes": training.integer(min=10),
    "metrics.seed": training.integer(min=0),
    "eval.traversal_range": training.number(min=0, min_open=True),
}


def check_combinations(config, where: str = "--config") -> list[str]:
    """The metrics need the data's generative factors: the procedural dSprites."""
    if config.data.dataset != "dsprites":
        flag = training.flag("data.dataset", where)
        return [(f"{flag} must be 'dsprites' (the metrics need the data's generative factors); got "
                 f"{config.data.dataset!r}.")]
    return []


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`, :func:`check_combinations`): a ValueError naming each
    bad flag."""
    training.validate(config, CONFIG_RULES, where=where, extra=(check_combinations,))


def get_sweep() -> list[dict]:
    """The study: every objective of :data:`STUDY` × :data:`SEEDS` (21 runs)."""
    return training.product(list(STUDY.values()), training.values("seed", SEEDS))


def method_name(overrides: dict) -> str:
    """The :data:`STUDY` label of a member's overrides (the seed aside), else its overrides written out."""
    rest = {k: v for k, v in overrides.items() if k != "seed"}
    for label, settings in STUDY.items():
        if settings == rest:
            return label
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in rest.items()) or "default"


def build_model(config, rngs, image_shape) -> VAE | FactorVAE:
    """The literature's 64×64 VAE; with ``objective="factor_vae"`` wrapped with its TC discriminator."""
    m = config.model
    dtype = jnp.dtype(config.dtype)
    vae = VAE(DisentanglementEncoder(image_shape, m.latents, rngs=rngs, dtype=dtype),
              DisentanglementDecoder(image_shape, m.latents, rngs=rngs, dtype=dtype), latents=m.latents)
    if m.objective != "factor_vae":
        return vae
    return FactorVAE(vae, TCDiscriminator(m.latents, hidden=(m.discriminator_hidden,) * 6, rngs=rngs, dtype=dtype))


def _hparams(m) -> dict[str, float]:
    return {"vae": {}, "beta_vae": {"model.beta": m.beta},
            "capacity": {"model.beta": m.beta, "model.capacity_max": m.capacity_max},
            "beta_tcvae": {"model.beta": m.beta, "model.tcvae_alpha": m.tcvae_alpha,
                           "model.tcvae_gamma": m.tcvae_gamma},
            "factor_vae": {"model.factor_gamma": m.factor_gamma},
            "dip_vae_i": {"model.dip_lambda_od": m.dip_lambda_od, "model.dip_lambda_d": m.dip_lambda_d},
            "dip_vae_ii": {"model.dip_lambda_od": m.dip_lambda_od, "model.dip_lambda_d": m.dip_lambda_d},
            }[m.objective]


def build(config: ml_collections.ConfigDict) -> training.Task:
    """The loop's task: each objective's weights and the learning rate are sweepable hyperparameters."""
    check_config(config)
    m = config.model
    shape = _program.image_shape(config)
    n = _program.train_size(config)
    steps = int(config.train.steps)

    def objective(model, batch, *, key, step, hparams, weights=None):
        kw = {"key": key, "dynamic_binarization": False, "weights": weights}
        if m.objective == "beta_tcvae":
            return objectives.beta_tcvae_objective(
                model, batch, dataset_size=n, alpha=hparams["model.tcvae_alpha"], beta=hparams["model.beta"],
                gamma=hparams["model.tcvae_gamma"], estimator=m.tc_estimator, **kw)
        if m.objective == "factor_vae":
            return objectives.factor_vae_objective(model, batch, gamma=hparams["model.factor_gamma"],
                                                   tc_dataset_size=n, **kw)
        if m.objective.startswith("dip_vae"):
            lambda_od = hparams["model.dip_lambda_od"]
            lambda_d = jnp.where(hparams["model.dip_lambda_d"] > 0, hparams["model.dip_lambda_d"],
                                 (10.0 if m.objective == "dip_vae_i" else 1.0) * lambda_od)
            return objectives.dip_vae_objective(model, batch, kind=m.objective.split("_")[-1], lambda_od=lambda_od,
                                                lambda_d=lambda_d, tc_dataset_size=n, **kw)
        beta, capacity = hparams.get("model.beta", 1.0), None
        if m.objective == "capacity":  # C from 0 to capacity_max over capacity_fraction of the run
            ramp = max(1.0, m.capacity_fraction * steps)
            capacity = hparams["model.capacity_max"] * jnp.minimum(step / ramp, 1.0)
        return objectives.vae_objective(model, batch, beta=beta, capacity=capacity, tc_dataset_size=n,
                                        tc_estimator=m.tc_estimator, **kw)

    def optimizer(schedule, hparams):
        if m.objective != "factor_vae":
            return optax.adam(schedule)
        return factor_vae_optimizer(optax.adam(schedule),
                                    optax.adam(m.discriminator_learning_rate, b1=0.5, b2=0.9))

    def reconstruct(model, x):
        mean, _ = model.encode(x)
        return model.mean_image(model.decode(mean))

    def report(model, test_src, workdir, summary):
        return {"disentanglement": disentanglement_metrics(model, config),
                **draw_traversals(model, test_src, workdir, config)}

    return training.Task(model=lambda rngs: build_model(config, rngs, shape), objective=objective,
                         hparams=_hparams(m), optimizer=optimizer,
                         reporters=(_reporters.reconstructions(reconstruct), report))


def dsprites_ground_truth(config=None) -> evaluation.GroundTruthData:
    """The procedural dSprites' 5 factors (:data:`vqjax.data.DSPRITES_FACTORS`), images in [0, 1], resized
    and converted as ``config.data`` has the training images (``data.image_size``, ``crop``, ``channels``)."""
    d = config.data if config is not None else {}
    options = {k: d.get(k, default) for k, default in (("image_size", 0), ("crop", "none"), ("channels", 0))}

    def observations(factors):
        images = data.render_dsprites(factors)
        if options["image_size"] or options["channels"]:
            images = np.stack([data.transform_image(im, **options) for im in images])
        return images.astype(np.float32) / 255.0

    return evaluation.GroundTruthData(factor_sizes=tuple(size for _, size in data.DSPRITES_FACTORS),
                                      observations=observations)


def disentanglement_metrics(model, config) -> dict[str, float]:
    """The six metrics of :mod:`vqjax.evaluation` on the posterior means ``μ(x)`` (``config.metrics``'s counts)."""
    c = config.metrics
    encode = jax.jit(lambda x: model.encode(x)[0])
    gt = dsprites_ground_truth(config)
    common_kw = {"seed": c.seed, "chunk_size": 500}
    split = {"num_train": c.num_train_classifier, "num_test": c.num_test, **common_kw}
    votes = {"num_train": c.num_votes, "num_eval": c.num_votes // 2, **common_kw}
    b = evaluation.beta_vae_score(gt, encode, **votes)
    f = evaluation.factor_vae_score(gt, encode, num_variance_estimate=c.num_train, **votes)
    d = evaluation.dci(gt, encode, **split)
    me = evaluation.modularity_explicitness(gt, encode, **split)
    out = {"beta_vae": b.eval_accuracy, "factor_vae": f.eval_accuracy,
           "mig": evaluation.mutual_information_gap(gt, encode, num_train=c.num_train, **common_kw),
           "sap": evaluation.sap_score(gt, encode, **split),
           "dci_disentanglement": d.disentanglement, "dci_completeness": d.completeness,
           "dci_informativeness": d.informativeness_test, "modularity": me.modularity,
           "explicitness": me.explicitness_test}
    return {k: float(v) for k, v in out.items()}


def draw_traversals(model, test_src, workdir: str, config) -> dict:
    """``traversals.png``: one row per latent (by decreasing KL on 1,000 test images), set to 9 values from
    ``-eval.traversal_range`` to ``+eval.traversal_range`` in the first test image's posterior mean (the
    others kept); returns the per-latent KL (so sorted) and the active units (``Var_x μ_j > 0.01``)."""
    from vqjax import viz

    x = _reporters.test_images(test_src, 1000)
    mu, log_var = (np.asarray(a) for a in jax.jit(model.encode)(jnp.asarray(x)))
    kl = 0.5 * np.mean(mu**2 + np.exp(log_var) - 1.0 - log_var, axis=0)
    order = np.argsort(-kl)
    values = np.linspace(-config.eval.traversal_range, config.eval.traversal_range, 9)
    z = np.repeat(mu[:1], len(order) * len(values), axis=0).reshape(len(order), len(values), -1)
    for row, j in enumerate(order):
        z[row, :, j] = values
    images = jax.jit(lambda z: model.mean_image(model.decode(z)))(jnp.asarray(z.reshape(-1, mu.shape[1])))
    viz.save_png(os.path.join(workdir, "traversals.png"), viz.image_grid(np.asarray(images), ncols=len(values)),
                 scale=1)
    return {"kl_per_latent": np.round(kl[order], 3).tolist(), "active_units": int(np.sum(np.var(mu, 0) > 0.01))}


# ------------------------------------------------------------------------------------------ the study's report

COLUMNS = (("β-VAE", "beta_vae"), ("FactorVAE", "factor_vae"), ("MIG", "mig"), ("SAP", "sap"),
           ("DCI D", "dci_disentanglement"), ("DCI C", "dci_completeness"), ("DCI I", "dci_informativeness"),
           ("modularity", "modularity"), ("explicitness", "explicitness"))
DECOMPOSITION = (("−log p(x|z)", "distortion"), ("KL", "rate"), ("MI", "mutual_information"),
                 ("TC", "total_correlation"), ("DWKL", "dimension_wise_kl"))


def _run_values(row: dict, workdir: str) -> dict[str, float]:
    """A finished run's test metrics, disentanglement scores and active units, one flat dict."""
    with open(os.path.join(workdir, row["name"], "summary.json")) as f:
        summary = json.load(f)
    return {**row["test"], **summary.get("disentanglement", {}), "active_units": summary.get("active_units", np.nan)}


def summarize(rows: list[dict], workdir: str) -> list[dict]:
    """One entry per method (in :data:`STUDY` order, others after): its runs' values by metric, diverged runs
    counted apart."""
    methods: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["index"]):
        m = methods.setdefault(method_name(r["overrides"]), {"runs": [], "diverged": 0})
        if r["diverged"]:
            m["diverged"] += 1
        else:
            m["runs"].append({"name": r["name"], "seed": r["overrides"].get("seed"), **_run_values(r, workdir)})
    order = {label: i for i, label in enumerate(STUDY)}
    return [{"method": k, **v} for k, v in sorted(methods.items(), key=lambda kv: order.get(kv[0], len(order)))]


def _cell(runs: list[dict], key: str, digits: int = 2) -> str:
    values = np.asarray([r[key] for r in runs if key in r and np.isfinite(r[key])], np.float64)
    if values.size == 0:
        return "–"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}" if values.size > 1 else f"{values[0]:.{digits}f}"


def format_tables(methods: list[dict]) -> str:
    """The metric table and the KL-decomposition table (markdown; mean ± standard deviation over seeds)."""
    head = "| objective | runs | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|---|---|" + "---|" * len(COLUMNS)]
    for m in methods:
        runs = f"{len(m['runs'])}" + (f" (+{m['diverged']} diverged)" if m["diverged"] else "")
        lines.append(f"| {m['method']} | {runs} | " + " | ".join(_cell(m["runs"], k) for _, k in COLUMNS) + " |")
    lines += ["", "| objective | " + " | ".join(c for c, _ in DECOMPOSITION) + " | active units |",
              "|---|" + "---|" * (len(DECOMPOSITION) + 1)]
    for m in methods:
        lines.append(f"| {m['method']} | " + " | ".join(_cell(m["runs"], k, 1) for _, k in DECOMPOSITION)
                     + f" | {_cell(m['runs'], 'active_units', 1)} |")
    return "\n".join(lines)


def report_sweep(rows: list[dict], workdir: str) -> None:
    """``disentanglement.md`` (printed too), ``mig_vs_reconstruction.png`` and ``traversals_best.png``."""
    from vqjax import viz

    methods = [m for m in summarize(rows, workdir) if m["runs"]]
    if not methods:
        return
    table = format_tables(methods)
    with open(os.path.join(workdir, "disentanglement.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    series = {m["method"]: [(r["distortion"], r["mig"]) for r in m["runs"] if "mig" in r] for m in methods}
    _save_scatter(os.path.join(workdir, "mig_vs_reconstruction.png"), series)
    panels = []
    for m in methods:  # each objective's run with the highest MIG
        best = max(m["runs"], key=lambda r: r.get("mig", -np.inf))
        path = os.path.join(workdir, best["name"], "traversals.png")
        if os.path.exists(path):
            panels.append(_read_png(path))
    if panels:
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, 8), (0, 0)), constant_values=255) for p in panels]
        viz.save_png(os.path.join(workdir, "traversals_best.png"), np.concatenate(padded, axis=1), scale=1)


def _read_png(path: str) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("L"))
    return image[..., None]


def _save_scatter(path: str, series: dict[str, list[tuple[float, float]]]) -> None:
    """MIG against the reconstruction error, one colour per objective, one dot per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for i, (label, points) in enumerate(series.items()):
        if points:
            pts = np.asarray(points, np.float64)
            ax.plot(pts[:, 0], pts[:, 1], "o", ms=5, color=plt.cm.tab10(i % 10), label=label)
    ax.set_xlabel("reconstruction error −log p(x|z), nats (test)")
    ax.set_ylabel("MIG (test)")
    ax.set_title("disentanglement against reconstruction, procedural dSprites")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    del argv
    _program.check_flags(check_config, _CONFIG.value)
    _sweep.run_with_flags(sys.modules[__name__], _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    from experiments import sweep as _sweep  # defines --sweep, --sweep_index, --list, --collect, --placement

    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/disentanglement", "Where the runs and the study's report go.")
    app.run(main)
