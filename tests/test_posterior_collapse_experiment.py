"""experiments/posterior_collapse.py: the study's members, latent use, and short runs of the two PixelCNN models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import posterior_collapse as pc
from vqjax import training


def test_the_study_is_7_valid_models():
    base = pc.get_config()
    sweep = pc.get_sweep()
    assert len(sweep) == 7
    for overrides in sweep:
        pc.check_config(training.apply_overrides(base, overrides))
    assert [pc.method_name(o) for o in sweep] == list(pc.STUDY)


def test_bad_flags_are_named():
    c = pc.get_config()
    c.model.kind, c.model.remedy = "pixel_vqvae", "free_bits"
    with pytest.raises(ValueError, match=r"model\.remedy.*pixel_vae"):
        pc.check_config(c)
    c = pc.get_config()
    c.data.dynamic_binarization = False
    with pytest.raises(ValueError, match=r"data\.dynamic_binarization"):
        pc.check_config(c)


def _tiny(kind: str, remedy: str = "none"):
    c = pc.get_config()
    c.data.image_size, c.data.eval_batch_size = 8, 500
    c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
    c.model.update(kind=kind, remedy=remedy, latents=3, hidden=16, num_codes=16, code_dim=4, vq_hidden=8,
                   pixel_hidden=4, pixel_layers=2, cond_channels=2)
    c.eval.update(num_images=20, iwae_samples=2, iwae_chunk=2, sample_digits=2, samples_per_digit=3)
    c.prior.update(steps=2, batch_size=8, hidden=8, num_layers=2)
    return c


@pytest.mark.parametrize("kind", pc.KINDS)
def test_latent_use_is_zero_when_the_decoder_ignores_the_latent(kind):
    config = _tiny(kind)
    model = pc.build_model(config, nnx.Rngs(0), (8, 8, 1))
    x = (jax.random.uniform(jax.random.key(1), (6, 8, 8, 1)) > 0.5).astype(jnp.float32)
    use = pc.latent_use(model, x, jax.random.key(2))
    assert use.shape == (6,) and float(jnp.max(jnp.abs(use))) > 1e-4  # a fresh decoder reads its latent
    # zero every weight that reads the latent: the weak decoders' first layer, the PixelCNN's conditioning terms
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        names = "/".join(str(p) for p in path)
        reads_z = names in ("decoder/hidden/kernel", "decoder/conv1/kernel") or names.endswith("cond_proj/kernel")
        if reads_z:
            var.value = jnp.zeros_like(var.value)
    blind = nnx.merge(graphdef, nnx.from_flat_state(flat))
    np.testing.assert_allclose(pc.latent_use(blind, x, jax.random.key(2)), 0.0, atol=1e-4)


@pytest.mark.parametrize(("kind", "remedy"), [("pixel_vae", "free_bits"), ("pixel_vqvae", "none")])
def test_short_run_measures_everything(kind, remedy, tmp_path):
    config = _tiny(kind, remedy)
    summary = training.train_and_evaluate(config, str(tmp_path), pc.build(config))
    c = summary["collapse"]
    assert np.isfinite(c["latent_use"]) and np.isfinite(c["nll"])
    if kind == "pixel_vae":
        assert 0 <= c["active_units"] <= 3 and c["kl"] >= 0
        assert c["nll"] <= -summary["test"]["elbo"] + 30  # an IWAE bound near the ELBO (20 images vs the split)
    else:
        assert 0 < c["code_entropy"] <= c["rate_ceiling"] == pytest.approx(4 * np.log(16))
        assert c["nll"] == pytest.approx(c["decoder_nll"] + c["prior_nll"])
        assert 1 <= c["codes_used"] <= 16
    assert (tmp_path / "conditional_samples.png").read_bytes()[:4] == b"\x89PNG"
