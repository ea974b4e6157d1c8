"""The VQ-VAE with each quantizer: train steps on 8 devices equal 1 (EMA statistics included), the
objective's terms per quantizer, and the experiment's usage logs and pictures."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import data, objectives, training

TINY = {"hidden": 8, "residual_hidden": 4, "num_residual": 1}
TINY_CODEBOOK = {"num_codes": 16, "code_dim": 4}
# config.model.quantizer of each kind
KINDS = {
    "vq": {"kind": "vq"},
    "vq_cosine": {"kind": "vq", "codebook": {"cosine": True}},
    "ema": {"kind": "ema"},
    "ema_restart": {"kind": "ema", "ema": {"dead_code_threshold": 4.0}},
    "fsq": {"kind": "fsq", "fsq": {"levels": (4, 3, 3)}},
    "fsq_lloyd_max": {"kind": "fsq", "fsq": {"levels": (3, 3, 3), "lloyd_max": True}},
    "fsq_range": {"kind": "fsq", "fsq": {"levels": (4, 3, 3), "range_loss": True}},
    "residual": {"kind": "residual", "residual": {"num_stages": 3}},
    "residual_ema": {"kind": "residual", "residual": {"num_stages": 3, "ema": True},
                     "ema": {"dead_code_threshold": 4.0}},
    "vq_rotation": {"kind": "vq", "codebook": {"rotation_trick": True}},
    "lfq": {"kind": "lfq", "lookup_free": {"bits": 4}},
    "bsq": {"kind": "bsq", "lookup_free": {"bits": 4}},
    "simvq": {"kind": "simvq"},
    "factorized": {"kind": "factorized", "factorized": {"code_dim_low": 2}},
    "vq_restart": {"kind": "vq", "codebook": {"dead_code_threshold": 4.0}},
    "grouped": {"kind": "grouped", "grouped": {"heads": 2}},
    "residual_fsq": {"kind": "residual_fsq", "fsq": {"levels": (4, 3, 3)}, "residual": {"num_stages": 2}},
    "residual_lfq": {"kind": "residual_lfq", "lookup_free": {"bits": 4}, "residual": {"num_stages": 2}},
    "grouped_residual": {"kind": "grouped_residual", "residual": {"num_stages": 2, "groups": 2}},
}
# issue 17's methods as quantizer.kind
NEW_KINDS = ("vq_rotation", "lfq", "bsq", "simvq", "factorized", "vq_restart", "grouped", "residual_fsq",
             "residual_lfq", "grouped_residual")


def _config(idx_dir, kind, **train):
    c = vqvae_mnist.get_config()
    c.model.update(TINY)
    c.model.quantizer.codebook.update(TINY_CODEBOOK)
    c.model.quantizer.update(KINDS[kind])
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update({"steps": 6, "log_every": 2, "checkpoint_every": 3, "eval_every": 2}, **train)
    return c


def _run_steps(mesh, config, batches):
    task = vqvae_mnist.build(config)
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    first = jax.device_get(state)
    step = training.make_train_step(graphdef, tx, task.objective)
    hparams = {k: np.float32(v) for k, v in task.hparams.items()}
    metrics = []
    with jax.set_mesh(mesh):
        state, hparams = training.replicate((state, hparams), mesh)
        for b in batches:
            state, m = step(state, training.shard_batch(b, mesh), hparams)
            metrics.append({k: float(v) for k, v in m.items() if jnp.ndim(v) == 0})
    return first, jax.device_get(state), metrics


@pytest.mark.parametrize("kind", ["ema_restart", "residual_ema", "fsq", "vq_cosine"])
def test_eight_devices_equal_one_including_codebook_statistics(idx_dir, kind):
    config = _config(idx_dir, kind)
    it = data.make_pipeline(data.idx_source(idx_dir, "train"), batch_size=16, seed=0)
    batches = [next(it) for _ in range(4)]
    first, s8, m8 = _run_steps(training.make_mesh(), config, batches)
    _, s1, m1 = _run_steps(training.make_mesh(jax.devices()[:1]), config, batches)
    for key in ("loss", "perplexity", "dead_codes", "restarted"):
        np.testing.assert_allclose([m[key] for m in m8], [m[key] for m in m1], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves((s8.params, s8.rest)), jax.tree.leaves((s1.params, s1.rest))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if "ema" in kind:  # the train step carries the EMA statistics it updated in place
        ema = s1.rest["quantizer"]["ema"]
        assert float(np.max(ema["weight"][...])) == pytest.approx(1 - 0.99**4, rel=1e-5)
        assert not np.allclose(ema["codebook"][...], first.rest["quantizer"]["ema"]["codebook"][...])
        assert sum(m["restarted"] for m in m1) > 0  # threshold 4 of ~3 vectors per code: restarts happen


@pytest.mark.parametrize("kind", list(KINDS))
def test_objective_terms_follow_the_quantizer(idx_dir, kind):
    config = _config(idx_dir, kind)
    model = vqvae_mnist.build(config).model(nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.stack([data.idx_source(idx_dir, "train")[i]["image"] for i in range(4)]) / np.float32(255))
    loss, m = objectives.vqvae_objective(model, {"image": x}, beta=0.5)
    np.testing.assert_allclose(loss, m["reconstruction"] + m["codebook"] + m["commitment"], rtol=1e-5)
    if kind == "fsq_range":  # the range penalty takes the commitment slot, weighted by β
        z = np.asarray(model.encoder(x))
        want = np.mean(np.sum(np.maximum(np.abs(z) - 2.0, 0.0) ** 2, axis=(1, 2, 3)))
        assert float(m["codebook"]) == 0.0
        np.testing.assert_allclose(m["commitment"], 0.5 * want, rtol=1e-5, atol=1e-7)
    elif kind.startswith("fsq"):
        assert float(m["codebook"]) == 0.0 and float(m["commitment"]) == 0.0
    elif "ema" in kind:
        assert float(m["codebook"]) == 0.0 and float(m["commitment"]) > 0.0
    elif kind in ("lfq", "bsq", "residual_lfq"):  # the entropy loss, per-sample minus codebook entropy: <= 0 with γ = 1
        assert float(m["codebook"]) <= 0.0 and float(m["commitment"]) > 0.0
    else:  # ||sg[z] - e||² and β||z - sg[e]||² are the same number in the forward pass
        np.testing.assert_allclose(m["commitment"], 0.5 * m["codebook"], rtol=1e-5)
    stages = model.quantizer.num_stages  # residual stages, grouped parts, or both
    assert m["counts"].shape == ((stages, model.num_codes) if stages > 1 else (model.num_codes,))
    np.testing.assert_allclose(np.sum(m["counts"]), 4 * 7 * 7 * stages)
    out = model(x)
    np.testing.assert_allclose(model.decode(model.encode(x)), out.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ema_restart", "residual"])
def test_experiment_logs_usage_every_eval_and_draws_the_pictures(idx_dir, tmp_path, kind):
    config = _config(idx_dir, kind)
    summary = training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config), log=lambda s: None)
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals + [rows[-1]]:
        assert {"perplexity", "used_fraction", "dead_codes", "mse"} <= set(r)
    assert all("restarted" in r and "dead_codes" in r for r in rows if r["split"] == "train")
    test = summary["test"]
    stages = config.model.quantizer.residual.num_stages if kind == "residual" else 1
    num_codes = config.model.quantizer.codebook.num_codes
    assert 0 <= test["dead_codes"] <= stages * num_codes
    np.testing.assert_allclose(test["used_fraction"], 1 - test["dead_codes"] / (stages * num_codes))
    for name in ("perplexity.png", "codebook_usage.png", "codebook_projection.png", "reconstructions.png"):
        assert os.path.getsize(tmp_path / name) > 1000, name


def test_bad_quantizer_choices_are_clear_errors(idx_dir):
    config = _config(idx_dir, "vq")
    config.model.quantizer.kind = "no_such_kind"  # ("gumbel" is a kind since issue 17)
    with pytest.raises(ValueError, match=r"quantizer\.kind"):
        vqvae_mnist.build(config)
    config = _config(idx_dir, "fsq")
    config.model.quantizer.codebook.init = "lloyd"
    with pytest.raises(ValueError, match=r"quantizer\.codebook\.init"):
        vqvae_mnist.build(config)
    config = _config(idx_dir, "fsq")
    config.model.quantizer.fsq.update(levels=(4, 3), lloyd_max=True)
    with pytest.raises(ValueError, match="levels"):  # checked with the flags, before any model is built
        vqvae_mnist.build(config)


@pytest.mark.parametrize("kind", ["ema", "residual"])
def test_lloyd_init_fits_every_codebook(idx_dir, kind):
    config = _config(idx_dir, kind)
    config.model.quantizer.codebook.init = "lloyd"
    task = vqvae_mnist.build(config)
    model, init_fn = task.model(nnx.Rngs(0)), task.init
    x = jnp.asarray(np.stack([data.idx_source(idx_dir, "train")[i]["image"] for i in range(32)]) / np.float32(255))
    model.eval()
    before = float(jnp.mean(jnp.sum(jnp.square(model(x).z_e - model(x).z_q), -1)))
    init_fn(model, {"image": x}, jax.random.key(0))
    out = model(x)
    after = float(jnp.mean(jnp.sum(jnp.square(out.z_e - out.z_q), -1)))
    assert after < 0.5 * before
    if kind == "ema":  # fresh statistics with the fitted codes
        assert float(model.quantizer.ema.weight[...]) == 0.0


def test_codebooks_experiment_compares_the_variants(idx_dir, tmp_path):
    from experiments import vqvae_codebooks

    config = vqvae_codebooks.get_config()
    config.variants = ("vq", "fsq5555")
    config.base.model.update(TINY)
    config.base.model.quantizer.codebook.update(TINY_CODEBOOK)
    config.base.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    config.base.train.update(steps=4, log_every=2, checkpoint_every=4, eval_every=2)
    result = vqvae_codebooks.run(config, str(tmp_path), log=lambda s: None)
    assert [r["variant"] for r in result["runs"]] == ["vq", "fsq5555"]
    assert [r["codes_per_stage"] for r in result["runs"]] == [16, 625]
    table = (tmp_path / "comparison.md").read_text()
    assert "FSQ (5, 5, 5, 5)" in table and "of 625" in table
    assert os.path.getsize(tmp_path / "perplexity_comparison.png") > 1000
    config.variants = ("vq", "nope")
    with pytest.raises(ValueError, match="variants"):
        vqvae_codebooks.run(config, str(tmp_path), log=lambda s: None)


def test_every_codebooks_variant_sets_the_grouped_quantizer_config():
    from experiments import vqvae_codebooks

    base = vqvae_codebooks.get_config().base
    base.model.update(TINY)
    base.model.quantizer.codebook.update(TINY_CODEBOOK)
    for name, (_, overrides) in vqvae_codebooks.VARIANTS.items():
        c = base.copy_and_resolve_references()
        c.model.quantizer.update(overrides)  # no unknown paths
        q = c.model.quantizer
        assert q.kind == name.split("_")[0].rstrip("0123456789"), name
        assert (q.ema.dead_code_threshold == 1.0) == ("restart" in name), name
        assert (q.codebook.init == "lloyd") == name.endswith("kmeans"), name
        assert q.residual.ema == (name == "residual_ema_restart"), name
        model = vqvae_mnist.build(c).model(nnx.Rngs(0))
        assert model.quantizer.num_codes == vqvae_mnist.codes_per_stage(c), name


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_every_new_quantizer_kind_trains_in_the_experiment(idx_dir, tmp_path, kind):
    """Rotation trick, LFQ, BSQ, SimVQ, factorized codes, restarts of the learned codebook, grouped VQ, residual
    FSQ / LFQ and grouped residual VQ: the main job trains, evaluates and reports with each; LFQ, BSQ and residual
    LFQ (a batch-level entropy term) are never split into micro-batches."""
    config = _config(idx_dir, kind, eval_every=0)
    config.train.micro_batches = 0
    summary = training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config), devices=jax.devices()[:1],
                                          log=lambda s: None)
    test = summary["test"]
    assert np.isfinite(test["loss"]) and 1.0 <= test["perplexity"] <= vqvae_mnist.codes_per_stage(config)
    assert vqvae_mnist.build(config).per_example == (kind not in ("lfq", "bsq", "residual_lfq"))
