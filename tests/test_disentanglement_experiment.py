"""experiments/disentanglement.py: the study's members, one short run of every objective, and its report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import disentanglement
from vqjax import data, objectives, training
from vqjax.training._task import task_hparams


def test_the_study_is_7_objectives_times_3_seeds_and_every_member_is_valid():
    sweep = disentanglement.get_sweep()
    assert len(sweep) == 21
    base = disentanglement.get_config()
    labels = []
    for overrides in sweep:
        disentanglement.check_config(training.apply_overrides(base, overrides))
        labels.append(disentanglement.method_name(overrides))
    assert labels[::3] == list(disentanglement.STUDY) and all(labels.count(m) == 3 for m in set(labels))


def test_bad_flags_are_named():
    c = disentanglement.get_config()
    c.data.dataset = "mnist"
    with pytest.raises(ValueError, match=r"data\.dataset.*dsprites"):
        disentanglement.check_config(c)
    c = disentanglement.get_config()
    c.model.objective = "beta_tc"
    with pytest.raises(ValueError, match=r"model\.objective"):
        disentanglement.check_config(c)


def _tiny(objective: str):
    c = disentanglement.get_config()
    c.data.image_size, c.data.batch_size, c.data.eval_batch_size = 16, 8, 1000  # 16×16: the nets take it
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
    c.model.objective, c.model.discriminator_hidden = objective, 8
    c.metrics.update(num_train=60, num_train_classifier=60, num_test=30, num_votes=20)
    return c


def _batch(config, n=8):
    source = data.get_source(split="train", **data.source_options(config.data.to_dict()))
    return {"image": jnp.asarray(np.stack([source[i * 9973]["image"] for i in range(n)]), jnp.float32) / 255}


@pytest.mark.parametrize("objective", disentanglement.OBJECTIVES)
def test_every_objective_gives_a_finite_loss_and_gradient(objective):
    config = _tiny(objective)
    task = disentanglement.build(config)
    model = task.model(nnx.Rngs(0))
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in task_hparams(task, config).items()}
    batch, key = _batch(config), jax.random.key(0)

    def loss_fn(params):
        m = nnx.merge(graphdef, params, rest)
        return task.objective(m, batch, key=key, step=jnp.asarray(1), hparams=hparams)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    for key_ in ("distortion", "rate", "mutual_information", "total_correlation", "dimension_wise_kl"):
        assert key_ in metrics, key_
    if objective.startswith("dip_vae"):  # λ_d = 0 in the config: the paper's default (10 λ_od for I, λ_od for II)
        kind = objective.split("_")[-1]
        _, want = objectives.dip_vae_objective(model, batch, key=key, kind=kind, lambda_od=10.0,
                                               dynamic_binarization=False)
        np.testing.assert_allclose(metrics["dip_regularizer"], want["dip_regularizer"], rtol=1e-5)
    if objective == "capacity":  # γ|KL − C| with C = C_max · step / (0.8 · steps), here step 1 of 2: C = 15.6
        c = config.model.capacity_max * 1 / (config.model.capacity_fraction * config.train.steps)
        np.testing.assert_allclose(loss, np.mean(np.asarray(metrics["distortion"]))
                                   + config.model.beta * abs(float(metrics["rate"]) - c), rtol=1e-4)


def test_one_run_end_to_end_factor_vae_with_its_two_optimizers(tmp_path):
    config = _tiny("factor_vae")
    summary = training.train_and_evaluate(config, str(tmp_path), disentanglement.build(config))
    test, scores = summary["test"], summary["disentanglement"]
    assert summary["steps"] == 2 and test["num_examples"] == 10_000
    for key in ("distortion", "rate", "mutual_information", "total_correlation", "dimension_wise_kl",
                "discriminator_loss"):
        assert np.isfinite(test[key]), key
    assert 0.0 <= test["discriminator_accuracy"] <= 1.0
    assert set(scores) == set(disentanglement.METRICS)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in scores.values()), scores
    assert len(summary["kl_per_latent"]) == config.model.latents
    assert (tmp_path / "traversals.png").read_bytes()[:4] == b"\x89PNG"


def _write_run(workdir, name, test, scores, active=3):
    (workdir / name).mkdir()
    (workdir / name / "summary.json").write_text(json.dumps(
        {"test": test, "disentanglement": scores, "active_units": active}))
    rng = np.random.default_rng(len(name))
    from vqjax import viz
    viz.save_png(str(workdir / name / "traversals.png"), rng.integers(0, 255, (20, 30, 1), dtype=np.uint8), scale=1)


def test_report_gives_mean_and_spread_over_seeds_and_the_pictures(tmp_path):
    rows = []
    for seed, mig in enumerate((0.1, 0.2, 0.3)):
        name = f"vae{seed}"
        test = {"distortion": 30.0 + seed, "rate": 20.0, "mutual_information": 9.0, "total_correlation": 1.0,
                "dimension_wise_kl": 10.0}
        _write_run(tmp_path, name, test, {k: mig for k in disentanglement.METRICS})
        rows.append({"index": seed, "name": name, "overrides": {"model.objective": "vae", "seed": seed},
                     "diverged": False, "test": test})
    rows.append({"index": 3, "name": "tc0", "overrides": {"model.objective": "beta_tcvae", "model.beta": 6.0,
                                                          "seed": 0}, "diverged": True, "test": {}})
    methods = disentanglement.summarize(rows, str(tmp_path))
    assert [m["method"] for m in methods] == ["VAE (β = 1)", "β-TCVAE β = 6"]
    assert methods[1]["diverged"] == 1 and not methods[1]["runs"]
    table = disentanglement.format_tables(methods[:1])
    std = np.std([0.1, 0.2, 0.3])
    assert f"| VAE (β = 1) | 3 | 0.20 ± {std:.2f} |" in table
    assert "| VAE (β = 1) | 31.0 ± 0.8 | 20.0 ± 0.0 | 9.0 ± 0.0 | 1.0 ± 0.0 | 10.0 ± 0.0 | 3.0 ± 0.0 |" in table
    disentanglement.report_sweep(rows, str(tmp_path))
    assert (tmp_path / "disentanglement.md").read_text().strip() == table
    for picture in ("mig_vs_reconstruction.png", "traversals_best.png"):
        assert (tmp_path / picture).read_bytes()[:4] == b"\x89PNG", picture
