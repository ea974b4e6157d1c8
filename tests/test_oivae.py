"""oi-VAE's grouped generator, its objective, and the synthetic bars data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vqjax import data, groups, objectives, proximal
from vqjax.nn import VAE, GroupedGenerator, MLPDecoder, MLPEncoder, latent_to_group_mask


def _generator(hidden=(5,), p=2, latents=3, shape=(4, 3, 1), seed=0):
    g = groups.make_groups([[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]], 12, names=["a", "b", "c"])
    return GroupedGenerator(g, shape, latents, group_input_dim=p, hidden=hidden, rngs=nnx.Rngs(seed)), g


def _numpy_forward(dec, g, z):
    """Each group on its own: x_g = f_g(W_g z), written out with NumPy, scattered to the flat image."""
    w = np.asarray(dec.W)
    kernels = [np.asarray(k[...]) for k in dec.kernels]
    biases = [np.asarray(b[...]) for b in dec.biases]
    out = np.zeros((z.shape[0], g.num_dims), np.float64)
    for gi, idx in enumerate(g.indices):
        h = z @ w[gi].T  # [B, p]
        for i, (k, b) in enumerate(zip(kernels, biases, strict=True)):
            h = h @ k[gi] + b[gi]
            if i < len(kernels) - 1:
                h = np.maximum(h, 0.0)
        out[:, idx] = h[:, : len(idx)]
    return out


@pytest.mark.parametrize("hidden", [(), (5,), (4, 6)])
def test_grouped_generator_is_one_generator_per_group(hidden):
    dec, g = _generator(hidden=hidden)
    z = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    got = np.asarray(dec(jnp.asarray(z)))
    assert got.shape == (7, 4, 3, 1)
    np.testing.assert_allclose(got.reshape(7, -1), _numpy_forward(dec, g, z), rtol=1e-5, atol=1e-5)
    # Leading axes: [S, B, L] -> [S, B, *image].
    assert dec(jnp.asarray(np.stack([z, z]))).shape == (2, 7, 4, 3, 1)


def test_group_outputs_depend_only_on_their_own_w_and_generator():
    dec, g = _generator()
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)
    graphdef, params = nnx.split(dec, nnx.Param)

    def group_sum(params, gi):
        return jnp.sum(nnx.merge(graphdef, params)(z).reshape(5, -1)[:, g.indices[gi]])

    for gi in range(3):
        grads = jax.grad(group_sum)(params, gi)
        gw = np.asarray(grads["latent_to_group"][...])
        assert np.all(gw[np.arange(3) != gi] == 0.0) and np.any(gw[gi] != 0.0)
        for k in grads["kernels"].values():
            gk = np.asarray(k[...])
            assert np.all(gk[np.arange(3) != gi] == 0.0)


def test_a_zero_column_cuts_the_latent_from_the_group():
    dec, g = _generator()
    w = np.asarray(dec.W).copy()
    w[1, :, 2] = 0.0  # latent 2 -> group "b"
    dec.latent_to_group[...] = jnp.asarray(w)
    z = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
    jac = jax.jacobian(lambda z: dec(z).reshape(4, -1))(z)  # [4, D, 4, L]
    per_dim = np.abs(np.asarray(jac)).sum(axis=(0, 2))  # [D, L]
    assert np.all(per_dim[g.indices[1], 2] == 0.0)
    assert np.all(per_dim[g.indices[0], 2] > 0) and np.all(per_dim[g.indices[1], 0] > 0)
    norms = np.asarray(dec.latent_to_group_norms())
    assert norms.shape == (3, 3) and norms[1, 2] == 0.0
    np.testing.assert_allclose(norms, np.linalg.norm(w, axis=1), rtol=1e-6)


def test_padding_of_smaller_groups_is_zero_and_stays_out_of_the_prior():
    dec, _ = _generator(hidden=(5,))  # group sizes 4, 5, 3: groups a and c have unused output slots
    last = np.asarray(dec.kernels[-1][...])
    assert np.all(last[0, :, 4:] == 0) and np.all(last[2, :, 3:] == 0) and np.all(last[1] != 0)
    used = sum(float(np.sum(np.asarray(k[...], np.float64) ** 2)) for k in dec.kernels)
    np.testing.assert_allclose(float(dec.generator_sum_of_squares()), used, rtol=1e-5)
    # A training step (likelihood + prior, Adam) leaves them at exactly 0.
    model = VAE(MLPEncoder((4, 3, 1), 3, hidden=8, rngs=nnx.Rngs(1)), dec, latents=3, likelihood="gaussian")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {"image": jnp.asarray(np.random.default_rng(6).uniform(size=(4, 4, 3, 1)), jnp.float32)}

    def loss(params):
        return objectives.oivae_objective(nnx.merge(graphdef, params, rest), batch, key=jax.random.key(0),
                                          group_lasso=0.1, generator_prior_scale=1.0)[0]

    tx = optax.adam(1e-2)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    new_last = np.asarray(params["decoder"]["kernels"][1][...])
    assert np.all(new_last[0, :, 4:] == 0) and np.all(new_last[2, :, 3:] == 0)


def test_latent_to_group_mask_selects_w_only():
    dec, _ = _generator()
    vae = VAE(MLPEncoder((4, 3, 1), 3, hidden=8, rngs=nnx.Rngs(0)), dec, latents=3, likelihood="gaussian")
    _, params, _ = nnx.split(vae, nnx.Param, ...)
    flags = jax.tree_util.tree_leaves_with_path(latent_to_group_mask(params))
    chosen = [jax.tree_util.keystr(p) for p, v in flags if v]
    assert len(chosen) == 1 and "latent_to_group" in chosen[0]


def test_grouped_generator_errors():
    g = groups.row_groups((4, 4, 1))
    with pytest.raises(ValueError, match="`groups` partition 16 dimensions"):
        GroupedGenerator(g, (4, 3, 1), 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`groups` must be a vqjax.groups.Groups"):
        GroupedGenerator([[0]], (1, 1, 1), 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`group_input_dim` must be an int >= 1"):
        GroupedGenerator(g, (4, 4, 1), 2, group_input_dim=0, rngs=nnx.Rngs(0))
    dec = GroupedGenerator(g, (4, 4, 1), 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`z` must be \[..., L\] with L = 2"):
        dec(jnp.zeros((3, 5)))


def _oivae(likelihood="gaussian"):
    dec, _ = _generator(hidden=(5,))
    enc = MLPEncoder((4, 3, 1), 3, hidden=8, rngs=nnx.Rngs(1))
    return VAE(enc, dec, latents=3, likelihood=likelihood, variance=0.1)


def test_oivae_objective_adds_the_generator_prior_and_reports_the_lasso():
    model = _oivae()
    x = np.random.default_rng(4).uniform(size=(6, 4, 3, 1)).astype(np.float32)
    batch = {"image": jnp.asarray(x)}
    key = jax.random.key(0)
    vae_loss, vae_m = objectives.vae_objective(model, batch, key=key, dynamic_binarization=False)
    loss, m = objectives.oivae_objective(model, batch, key=key, group_lasso=0.7, generator_prior_scale=2.0)
    theta = [np.asarray(k[...]) for k in model.decoder.kernels] + [np.asarray(b[...]) for b in model.decoder.biases]
    prior = sum(float(np.sum(t.astype(np.float64) ** 2)) for t in theta) / (2 * 2.0**2)
    lasso = 0.7 * np.linalg.norm(np.asarray(model.decoder.W, np.float64), axis=1).sum()
    np.testing.assert_allclose(float(loss), float(vae_loss) + prior, rtol=1e-5)
    np.testing.assert_allclose(float(m["generator_prior"]), prior, rtol=1e-5)
    np.testing.assert_allclose(float(m["group_lasso"]), lasso, rtol=1e-5)
    np.testing.assert_allclose(float(m["objective"]), float(vae_loss) + prior + lasso, rtol=1e-5)
    assert float(m["elbo"]) == float(vae_m["elbo"]) and float(m["active_blocks"]) == 1.0
    # Sums for evaluation: the constants times the batch weight.
    np.testing.assert_allclose(float(m["sum/group_lasso"]), 6 * lasso, rtol=1e-5)
    np.testing.assert_allclose(float(m["sum/loss"]), 6 * float(loss), rtol=1e-5)
    # No prior: the VAE loss exactly.
    loss0, _ = objectives.oivae_objective(model, batch, key=key, group_lasso=0.0, generator_prior_scale=None)
    assert float(loss0) == float(vae_loss)


def test_oivae_objective_gradient_leaves_the_lasso_to_the_prox():
    model = _oivae()
    batch = {"image": jnp.asarray(np.random.default_rng(5).uniform(size=(4, 4, 3, 1)), jnp.float32)}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, lam):
        return objectives.oivae_objective(nnx.merge(graphdef, params, rest), batch, key=jax.random.key(1),
                                          group_lasso=lam, generator_prior_scale=1.0)[0]

    g0, g1 = jax.grad(loss)(params, 0.0), jax.grad(loss)(params, 100.0)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The prior's gradient reaches the generators (θ/σ²) but not W or the encoder.
    def prior_only(params):
        m = nnx.merge(graphdef, params, rest)
        return m.decoder.generator_sum_of_squares() / 2.0

    gp = jax.grad(prior_only)(params)
    assert np.all(np.asarray(gp["decoder"]["latent_to_group"][...]) == 0)
    np.testing.assert_allclose(np.asarray(gp["decoder"]["kernels"][0][...]),
                               np.asarray(params["decoder"]["kernels"][0][...]), rtol=1e-6)


def test_oivae_objective_errors():
    plain = VAE(MLPEncoder((4, 3, 1), 3, hidden=8, rngs=nnx.Rngs(0)), MLPDecoder((4, 3, 1), 3, hidden=8,
                                                                               rngs=nnx.Rngs(1)), latents=3)
    batch = {"image": jnp.zeros((2, 4, 3, 1))}
    with pytest.raises(ValueError, match="GroupedGenerator"):
        objectives.oivae_objective(plain, batch, key=jax.random.key(0), group_lasso=1.0)
    with pytest.raises(ValueError, match="`generator_prior_scale` must be > 0"):
        objectives.oivae_objective(_oivae(), batch, key=jax.random.key(0), group_lasso=1.0, generator_prior_scale=0.0)
    with pytest.raises(ValueError, match="`group_lasso` must be >= 0"):
        objectives.oivae_objective(_oivae(), batch, key=jax.random.key(0), group_lasso=-1.0)


def test_proximal_adam_step_on_the_oivae_zeroes_weak_columns_exactly():
    model = _oivae()
    _, params, _ = nnx.split(model, nnx.Param, ...)
    tx = optax.chain(optax.adam(1e-2), optax.masked(proximal.group_lasso_prox(1.0, 1e-2), latent_to_group_mask))
    state = tx.init(params)
    w = params["decoder"]["latent_to_group"][...]
    params["decoder"]["latent_to_group"][...] = w.at[0, :, 1].set(1e-3)  # one weak column
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    nw = np.asarray(new["decoder"]["latent_to_group"][...])
    assert np.all(nw[0, :, 1] == 0.0)
    np.testing.assert_allclose(np.linalg.norm(nw, axis=1)[1:], np.linalg.norm(np.asarray(w), axis=1)[1:] - 1e-2,
                               rtol=1e-4)
    # The encoder and the generators only see Adam (zero gradient: no change).
    np.testing.assert_array_equal(np.asarray(new["decoder"]["kernels"][0][...]),
                                  np.asarray(params["decoder"]["kernels"][0][...]))


def test_bars_follow_their_known_structure():
    images, factors = data.bars_images(4000, seed=0)
    assert images.shape == (4000, 8, 8, 1) and images.dtype == np.uint8 and factors.shape == (4000, 5)
    again, _ = data.bars_images(4000, seed=0)
    np.testing.assert_array_equal(images, again)
    x = images[..., 0].astype(np.float64) / 255
    m = data.BARS_STRUCTURE
    for g in range(8):
        for k in range(5):
            cols = slice(None)
            if g == 5:  # the shared row: factor 2 lights the left half, factor 3 the right
                cols = slice(0, 4) if k == 2 else slice(4, 8) if k == 3 else cols
            corr = np.corrcoef(x[:, g, cols].mean(1), factors[:, k])[0, 1]
            assert (abs(corr) > 0.8) if m[g, k] else (abs(corr) < 0.1), (g, k, corr)
    # The noise is the documented σ = 0.05 (residual around the known mean, away from clipping).
    mean = 0.1 + 0.8 / (1 + np.exp(-2 * factors[:, 0]))
    resid = x[:, 0, :] - mean[:, None]
    assert abs(resid.std() - data.BARS_NOISE) < 0.005
    src = data.get_source(split="test", dataset="bars")
    assert len(src) == 1024 and src.image_shape == (8, 8, 1) and len(data.bars_source("train")) == 8192
