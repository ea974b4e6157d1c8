"""Dead-code restarts of the learned codebook (VectorQuantizer) and the grouped quantizer module, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax.nn import GroupedVectorQuantizer, VectorQuantizer, make_quantizer


def _batch(n=64, d=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, d))


def test_restarts_reseed_exactly_the_unused_codes_at_batch_rows():
    q = VectorQuantizer(64, 4, dead_code_threshold=1.0, rngs=nnx.Rngs(0))
    z = _batch()
    before = np.asarray(q.codebook_vectors())
    d2 = ((np.asarray(z)[:, None, :] - before[None]) ** 2).sum(-1)
    counts = np.bincount(d2.argmin(1), minlength=64)
    out = q(z, key=jax.random.key(2))
    after = np.asarray(q.codebook_vectors())
    dead = counts == 0  # first step: bias-corrected usage = this batch's counts, threshold 1
    assert int(out.restarted) == dead.sum() > 0
    np.testing.assert_array_equal(after[~dead], before[~dead])  # live codes untouched
    rows = [np.flatnonzero(np.all(np.isclose(np.asarray(z), code, atol=1e-6), axis=1)) for code in after[dead]]
    assert all(len(r) == 1 for r in rows) and len({int(r[0]) for r in rows}) == dead.sum()  # distinct rows
    np.testing.assert_array_equal(np.asarray(q.codebook[...]), before)  # the parameter itself is not changed
    # bias-corrected usage: the batch's counts for live codes, the threshold for re-seeded ones
    usage = np.asarray(q.usage[...]) / float(q.usage_weight[...])
    np.testing.assert_allclose(usage[~dead], counts[~dead], rtol=1e-5)
    np.testing.assert_allclose(usage[dead], 1.0, rtol=1e-5)


def test_restarts_change_nothing_in_eval_mode_and_need_a_key_in_training():
    q = VectorQuantizer(64, 4, dead_code_threshold=1.0, rngs=nnx.Rngs(0))
    q.eval()
    before = np.asarray(q.codebook_vectors())
    assert int(q(_batch()).restarted) == 0
    np.testing.assert_array_equal(np.asarray(q.codebook_vectors()), before)
    q.train()
    with pytest.raises(ValueError, match="needs `key`"):
        q(_batch())


def test_a_restarted_code_is_trained_from_its_new_place():
    """The codebook loss's gradient reaches the parameter row of a re-seeded code, evaluated at its new value."""
    q = VectorQuantizer(64, 4, dead_code_threshold=1.0, rngs=nnx.Rngs(0))
    z = _batch()
    q(z, key=jax.random.key(2))
    q.eval()
    codes = np.asarray(q.codebook_vectors())

    grad = np.asarray(nnx.grad(lambda m: jnp.sum(m(z).codebook_loss))(q)["codebook"][...])
    k = np.asarray(q.encode(z))
    expected = np.zeros_like(codes)
    np.add.at(expected, k, 2 * (codes[k] - np.asarray(z)))  # d/de_k Σ ||sg[z] - e_k||²
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_no_restarts_means_the_plain_module_and_old_configs_build_without_them():
    q = VectorQuantizer(16, 4, rngs=nnx.Rngs(0))
    assert not hasattr(q, "restart_offset")
    assert {path for path, _ in nnx.to_flat_state(nnx.state(q))} == {("codebook",)}
    # a config saved before codebook.dead_code_threshold existed, with the EMA threshold set (no effect on vq then)
    c = vqvae_mnist.get_config()
    del c.model.quantizer.codebook["dead_code_threshold"]
    c.model.quantizer.ema.dead_code_threshold = 1.0
    assert vqvae_mnist.dead_code_threshold(c.model.quantizer) == 0.0
    c.model.quantizer.kind = "ema"
    assert vqvae_mnist.dead_code_threshold(c.model.quantizer) == 1.0


def test_restart_arguments_are_checked():
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VectorQuantizer(16, 4, dead_code_threshold=-1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(16, 4, dead_code_threshold=1.0, decay=1.0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("shared", [False, True])
def test_grouped_quantizer_is_per_part_nearest_codes(shared):
    heads, k, d = 3, 8, 12
    q = GroupedVectorQuantizer(k, d, heads=heads, shared=shared, rngs=nnx.Rngs(0))
    z = np.asarray(jax.random.uniform(jax.random.key(3), (5, 7, d), minval=-0.2, maxval=0.2))
    books = np.asarray(q.codebooks[...])
    books = np.broadcast_to(books, (heads, k, d // heads)) if shared else books
    parts = z.reshape(5, 7, heads, d // heads)
    idx = np.stack([((parts[..., h, None, :] - books[h]) ** 2).sum(-1).argmin(-1) for h in range(heads)], -1)
    codes = np.concatenate([books[h][idx[..., h]] for h in range(heads)], -1)
    out = q(jnp.asarray(z))
    np.testing.assert_array_equal(np.asarray(out.indices), idx)
    np.testing.assert_allclose(np.asarray(out.z_q), codes, atol=1e-6)
    sq = ((z - codes) ** 2).sum(-1)  # losses sum over all D channels, i.e. over the parts
    np.testing.assert_allclose(np.asarray(out.codebook_loss), sq, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.commitment_loss), sq, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(q.decode(q.encode(jnp.asarray(z)))), codes, atol=1e-6)
    assert q.num_stages == heads and q.codebook_vectors().shape == ((k if shared else heads * k), d // heads)


def test_grouped_quantizer_gradients_are_straight_through():
    q = GroupedVectorQuantizer(8, 6, heads=2, rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.key(4), (10, 6))
    w = jax.random.normal(jax.random.key(5), (10, 6))
    g = jax.grad(lambda v: jnp.sum(q(v).z_q * w))(z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_grouped_arguments_are_checked():
    with pytest.raises(ValueError, match="`code_dim` must be a multiple of `heads`"):
        GroupedVectorQuantizer(8, 10, heads=3, rngs=nnx.Rngs(0))
    assert isinstance(make_quantizer("grouped", num_codes=8, code_dim=6, heads=3, rngs=nnx.Rngs(0)),
                      GroupedVectorQuantizer)
    c = vqvae_mnist.get_config()
    c.model.quantizer.kind, c.model.quantizer.grouped.heads = "grouped", 3
    with pytest.raises(ValueError, match=r"code_dim`=64 must be a multiple of `--config.model.quantizer.grouped.heads`=3"):
        vqvae_mnist.check_config(c)


def test_a_run_saved_before_the_restart_setting_resumes_and_loads_as_it_trained(tmp_path):
    """codebook.dead_code_threshold is newer than some runs: resuming one with restarts on is refused, naming
    the flag; with the legacy value it resumes; the prior's loader reads the old run with restarts off."""
    import json

    from experiments import vqvae_prior_mnist
    from vqjax.training import _rundir

    c = vqvae_mnist.get_config()
    saved = c.to_dict()
    del saved["model"]["quantizer"]["codebook"]["dead_code_threshold"]  # a run of the version before
    (tmp_path / "config.json").write_text(json.dumps(saved))
    c.model.quantizer.codebook.dead_code_threshold = 1.0
    with pytest.raises(ValueError, match=r"dead_code_threshold: 0\.0 when it started \(before the setting existed\)"):
        _rundir.check_resume_config(str(tmp_path), c, step=4, legacy=vqvae_mnist.LEGACY_DEFAULTS, log=lambda s: None)
    c.model.quantizer.codebook.dead_code_threshold = 0.0
    _rundir.check_resume_config(str(tmp_path), c, step=4, legacy=vqvae_mnist.LEGACY_DEFAULTS, log=lambda s: None)
    merged = vqvae_prior_mnist.merge_saved(vqvae_mnist.get_config(), saved)
    assert merged.model.quantizer.codebook.dead_code_threshold == 0.0
    saved["model"]["quantizer"]["codebook"]["dead_code_threshold"] = 1.0  # a newer run keeps its own value
    assert vqvae_prior_mnist.merge_saved(vqvae_mnist.get_config(), saved).model.quantizer.codebook.dead_code_threshold == 1.0
    assert vqvae_mnist.build(vqvae_mnist.get_config()).legacy_defaults == vqvae_mnist.LEGACY_DEFAULTS
