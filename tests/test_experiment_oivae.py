"""experiments/oivae.py end to end, and the recovery of the bars' latent-to-row structure."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import oivae
from vqjax import data, evaluation, training


def _config(**model):
    c = oivae.get_config()
    c.data.update(batch_size=32, eval_batch_size=256)
    c.model.update({"encoder_hidden": 16, "generator_hidden": "(8,)"}, **model)
    c.train.update(steps=6, log_every=3, checkpoint_every=3)
    c.optimizer.schedule = "constant"  # the same first steps whatever train.steps (for the resume test)
    return c


def test_bars_run_writes_the_map_and_scores_it(tmp_path):
    summary = oivae.run(_config(), str(tmp_path))
    t = summary["test"]
    assert t["num_examples"] == 1024
    np.testing.assert_allclose(-t["elbo"], t["distortion"] + t["rate"], rtol=1e-5)
    np.testing.assert_allclose(t["objective"], t["loss"] + t["group_lasso"], rtol=1e-5)
    norms = np.array(summary["latent_to_group"])
    assert norms.shape == (8, 8) and summary["group_names"][0] == "row 0"
    assert summary["active_blocks"] == int((norms > 0).sum())
    rec = summary["recovery"]
    assert 0 <= rec["precision"] <= 1 and 0 <= rec["recall"] <= 1 and len(rec["matching"]) == 5
    for name in ("heatmap.png", "traversals.png", "reconstructions.png", "summary.json", "config.json"):
        assert (tmp_path / name).exists(), name
    assert "structure recovery precision" in oivae.format_test(summary)
    # The checkpoint loads back (its parameters only: the masked Adam + prox state is not needed).
    config = _config()
    model = training.load_model(str(tmp_path), lambda rngs: oivae.build_model(config, rngs))
    np.testing.assert_allclose(np.asarray(model.decoder.latent_to_group_norms()), norms, atol=1e-4)
    # A run stopped at step 3 and resumed to 6 (the masked Adam and prox states restored) ends where the
    # uninterrupted run ends.
    cut = _config()
    cut.train.steps = 3
    oivae.run(cut, str(tmp_path / "cut"))
    resumed = oivae.run(_config(), str(tmp_path / "cut"))
    assert resumed["resumed_from"] == 3 and resumed["trained_steps_this_run"] == 3
    assert resumed["test"]["elbo"] == t["elbo"]
    np.testing.assert_array_equal(np.array(resumed["latent_to_group"]), norms)


def test_mnist_regions_sgd_w_and_the_plain_vae(idx_dir, tmp_path):
    c = _config(w_optimizer="sgd", latents=4, group_input_dim=2)
    c.data.update(dataset="mnist", idx_dir=idx_dir, eval_batch_size=32)
    s = oivae.run(c, str(tmp_path / "oi"))
    assert np.array(s["latent_to_group"]).shape == (16, 4) and s["group_names"][5] == "r1c1"
    assert "recovery" not in s
    # The plain VAE at the same latent size: vqjax.nn's MLP decoder, Adam on everything, the VAE objective.
    plain = _config(decoder="mlp", latents=4)
    plain.data.update(dataset="mnist")
    task = oivae.build(plain)
    model = task.model(nnx.Rngs(0))
    assert oivae.latent_to_group(model) is None and task.hparams == {}
    # Adam on everything: the optimizer state is plain Adam's (no mask, no proximal step).
    params = nnx.state(model, nnx.Param)
    schedule = optax.constant_schedule(1e-3)
    tx = task.optimizer(schedule, {})
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(optax.adam(schedule).init(params))
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    loss, m = task.objective(model, {"image": x}, key=jax.random.key(0), step=0, hparams={})
    assert np.isfinite(float(loss)) and "group_lasso" not in m


def test_lambda_sweep_writes_one_run_per_lambda(tmp_path):
    c = _config()
    c.lambdas = (0.0, 2.0)
    out = oivae.run(c, str(tmp_path), log=lambda s: None)
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["lambda"] for r in rows] == [0.0, 2.0] == [r["lambda"] for r in out["sweep"]]
    assert (tmp_path / "model.group_lasso=0" / "summary.json").exists() and (tmp_path / "sweep.png").exists()
    assert rows[0]["active_blocks"] == 64  # λ = 0: no column is ever thresholded
    # Through the sweep engine: one group of two stacked runs, each with its own λ (traced, not baked in).
    sweeps = [s["sweep"] for s in out["summaries"]]
    assert [s["group_size"] for s in sweeps] == [2, 2] and sweeps[0]["group"] == sweeps[1]["group"]
    assert [s["name"] for s in sweeps] == ["model.group_lasso=0", "model.group_lasso=2"]
    assert [s["config"]["model"]["group_lasso"] for s in out["summaries"]] == [0.0, 2.0]
    assert out["summaries"][0]["test"]["group_lasso"] == 0.0 < out["summaries"][1]["test"]["group_lasso"]
    # The same initialisation and batches: the run at λ = 2 has shrunk its map, the one at λ = 0 not.
    norms = [np.sum(s["latent_to_group"]) for s in out["summaries"]]
    assert norms[1] < norms[0] - 0.1, norms
    for s in out["summaries"]:  # the reported penalty is λ Σ ||w_g,j|| of the run's own map
        np.testing.assert_allclose(s["test"]["group_lasso"],
                                   s["config"]["model"]["group_lasso"] * np.sum(s["latent_to_group"]), rtol=1e-3)
    assert oivae.get_sweep() == [{"model.group_lasso": v} for v in oivae.LAMBDAS]
    # A diverged run has no map: its line says so (the last finite state's ELBO).
    line = oivae.format_row({**rows[1], "diverged": True, "diverged_at_step": 5, "active_blocks": None})
    assert line.endswith("diverged at step 5") and "blocks" not in line
    plain = _config(decoder="mlp")
    plain.lambdas = (0.0, 1.0)
    with pytest.raises(ValueError, match="sweeps the group lasso of the grouped decoder"):
        oivae.run(plain, str(tmp_path / "plain"), log=lambda s: None)


def test_bars_with_other_groups_train_without_a_structure_score(tmp_path):
    s = oivae.run(_config(groups="grid2x2"), str(tmp_path))
    assert np.array(s["latent_to_group"]).shape == (4, 8) and "recovery" not in s
    assert (tmp_path / "heatmap.png").exists()


def test_named_regions_from_the_config():
    g = oivae.make_groups('{"top": [[0, 14], [0, 28]], "bottom": [[14, 28], [0, 28]]}', (28, 28, 1))
    assert g.names == ("top", "bottom") and g.sizes == (392, 392)
    with pytest.raises(ValueError, match="overlap"):
        oivae.make_groups('{"a": [[0, 15], [0, 28]], "b": [[14, 28], [0, 28]]}', (28, 28, 1))
    with pytest.raises(ValueError, match="not valid JSON"):
        oivae.make_groups('{"a": [[0, 14]', (28, 28, 1))


@pytest.mark.parametrize("change, match", [
    ({"data": {"dataset": "cifar"}}, "`--config.data.dataset` must be one of"),
    ({"model": {"decoder": "conv"}}, "`--config.model.decoder` must be one of"),
    ({"model": {"groups": "columns"}}, "`--config.model.groups` must be"),
    ({"model": {"w_optimizer": "lion"}}, "`--config.model.w_optimizer` must be"),
    ({"model": {"likelihood": "poisson"}}, "`--config.model.likelihood` must be"),
    ({"model": {"generator_hidden": "(32, -4)"}}, "`--config.model.generator_hidden` must be widths >= 1"),
    ({"model": {"variance": -1.0}}, "`--config.model.variance` must be a finite number >= 0"),
])
def test_config_errors(change, match):
    c = _config()
    for part, values in change.items():
        c[part].update(values)
    with pytest.raises(ValueError, match=match):
        task = oivae.build(c)
        task.model(nnx.Rngs(0))
        task.optimizer(lambda step: 1e-3, {k: jnp.float32(v) for k, v in task.hparams.items()})


def test_oivae_recovers_the_bars_structure():
    """Trained as the experiment trains it (its model, objective and proximal Adam), the nonzero
    blocks of ||w_g,j|| match the generating factor-to-row map up to a permutation of the latents."""
    config = oivae.get_config()
    config.optimizer.update(learning_rate=2e-3)
    steps, batch_size = 6000, 64
    task = oivae.build(config)
    hparams = {k: jnp.float32(v) for k, v in task.hparams.items()}
    tx = task.optimizer(training.learning_rate_schedule(config.optimizer, steps), hparams)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    images = jnp.asarray(data.bars_images(8192, seed=0)[0], jnp.float32) / 255.0
    train_step = training.make_train_step(graphdef, tx, task.objective)

    def body(state, key):
        idx = jax.random.randint(key, (batch_size,), 0, images.shape[0])
        state, metrics = train_step(state, {"image": images[idx]}, hparams)
        return state, metrics["loss"]

    run = jax.jit(lambda s, keys: jax.lax.scan(body, s, keys))
    state, losses = run(state, jax.random.split(jax.random.key(1), steps))
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)) and losses[-500:].mean() < losses[:500].mean()
    model = nnx.merge(graphdef, state.params, state.rest)
    norms = np.asarray(model.decoder.latent_to_group_norms())
    rec = evaluation.structure_recovery(norms, data.BARS_STRUCTURE)
    assert rec.precision >= 0.9 and rec.recall >= 0.9, (rec, np.round(norms, 4))
