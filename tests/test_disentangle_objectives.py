"""The disentanglement objectives of vqjax.objectives (β-TCVAE, DIP-VAE, FactorVAE, the KL decomposition
metrics of vae_objective) and vqjax.nn.FactorVAE / factor_vae_optimizer, on tiny MLP VAEs of 8×8 images.

The objectives' randomness is reproduced by hand: ``_data`` splits the key into ``(k_data, k_model)``
(``k_data`` binarizes), the objective splits ``k_model`` into ``(k_z, k_other)`` and passes ``k_z`` to
the model (``k_other``: InfoVAE's prior samples, FactorVAE's permutation).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vqjax import losses, objectives
from vqjax.nn import VAE, FactorVAE, MLPDecoder, MLPEncoder, TCDiscriminator, factor_vae_optimizer

SHAPE = (8, 8, 1)
LATENTS = 3
N = 1000  # the data set size of the KL decomposition
LOG_2PI = math.log(2.0 * math.pi)
TC_KEYS = ("mutual_information", "total_correlation", "dimension_wise_kl")


def _vae(seed=0, latents=LATENTS):
    rngs = nnx.Rngs(seed)
    return VAE(MLPEncoder(SHAPE, latents, hidden=16, rngs=rngs), MLPDecoder(SHAPE, latents, hidden=16, rngs=rngs),
               latents=latents)


def _factor_vae(seed=0):
    return FactorVAE(_vae(seed), TCDiscriminator(LATENTS, hidden=(16, 16), rngs=nnx.Rngs(seed + 100)))


def _bars(n=8):
    """Each image a horizontal bar and a vertical bar (0/1 pixels), at positions set by the index."""
    img = np.zeros((n, *SHAPE), np.float32)
    for i in range(n):
        img[i, i % 8, :, 0] = 1.0
        img[i, :, (3 * i + 1) % 8, 0] = 1.0
    return {"image": jnp.asarray(img)}


@pytest.fixture(scope="module")
def grey():
    """Grey levels in [0, 1], so that dynamic binarization depends on its key."""
    return {"image": jax.random.uniform(jax.random.key(1), (6, *SHAPE))}


def _pass(model, batch, key, *, binarize):
    """``(x, out, k_other)``: the objective's images and model pass under ``key``."""
    k_data, k_model = jax.random.split(key)
    x = objectives.binarize(batch["image"], key=k_data) if binarize else batch["image"]
    k_z, k_other = jax.random.split(k_model)
    return x, model(x, key=k_z), k_other


def _one_sample_kl(out):
    """``log q(z|x) - log p(z)`` per example, in float64 NumPy."""
    z, mu, lv = (np.asarray(a, np.float64) for a in (out.z, out.mean, out.log_variance))
    log_q = -0.5 * np.sum((z - mu) ** 2 * np.exp(-lv) + lv + LOG_2PI, axis=-1)
    log_p = -0.5 * np.sum(z**2 + LOG_2PI, axis=-1)
    return log_q - log_p


def _grad(fn, module):
    """The gradient of ``fn(module)`` with respect to the module's state."""
    graphdef, state = nnx.split(module)
    return jax.grad(lambda s: fn(nnx.merge(graphdef, s)))(state)


def _flat(tree):
    """``{path: array}`` of a pytree's leaves."""
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_trees_close(a, b, *, rtol=1e-5, atol=1e-6):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys() and fa
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=rtol, atol=atol, err_msg=k)


def _trees_differ(a, b, *, rtol=1e-3, atol=1e-4):
    fa, fb = _flat(a), _flat(b)
    return any(not np.allclose(fa[k], fb[k], rtol=rtol, atol=atol) for k in fa)


def _weighted_tc_metrics(metrics):
    """``MI + 2 TC + 3 DWKL``: zero gradient only if each of the three has none (their plain sum is the
    one-sample KL, which does have one)."""
    return sum((i + 1.0) * metrics[k] for i, k in enumerate(TC_KEYS))


def _assert_zero_tree(tree):
    flat = _flat(tree)
    assert flat
    for k, v in flat.items():
        np.testing.assert_array_equal(v, 0.0, err_msg=k)


# --------------------------------------------------------------------------------- vae_objective's TC metrics


def test_vae_objective_reports_the_kl_decomposition_only_when_asked(grey):
    model, key = _vae(), jax.random.key(2)
    loss0, m0 = objectives.vae_objective(model, grey, key=key)
    loss1, m1 = objectives.vae_objective(model, grey, key=key, tc_dataset_size=N)
    for k in TC_KEYS:
        assert k not in m0 and f"sum/{k}" not in m0
        assert k in m1 and f"sum/{k}" in m1
    assert set(m1) - set(m0) == {*TC_KEYS, *(f"sum/{k}" for k in TC_KEYS)}
    np.testing.assert_array_equal(loss0, loss1)
    for k, v in m0.items():
        np.testing.assert_array_equal(v, m1[k], err_msg=k)


def test_vae_objective_tc_metrics_move_no_gradient(grey):
    model, key = _vae(), jax.random.key(3)
    g0 = _grad(lambda m: objectives.vae_objective(m, grey, key=key)[0], model)
    g1 = _grad(lambda m: objectives.vae_objective(m, grey, key=key, tc_dataset_size=N)[0], model)
    for k, v in _flat(g0).items():
        np.testing.assert_array_equal(v, _flat(g1)[k], err_msg=k)
    assert any(np.any(v != 0) for v in _flat(g0).values())
    _assert_zero_tree(_grad(lambda m: _weighted_tc_metrics(  # the metrics themselves are stop-gradients
        objectives.vae_objective(m, grey, key=key, tc_dataset_size=N)[1]), model))


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_vae_objective_tc_metrics_add_up_to_the_one_sample_kl(grey, estimator):
    model, key = _vae(), jax.random.key(4)
    _, m = objectives.vae_objective(model, grey, key=key, tc_dataset_size=N, tc_estimator=estimator)
    _, out, _ = _pass(model, grey, key, binarize=True)  # vae_objective binarizes by default
    kl = _one_sample_kl(out)
    np.testing.assert_allclose(sum(float(m[k]) for k in TC_KEYS), kl.mean(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sum(float(m[f"sum/{k}"]) for k in TC_KEYS), kl.sum(), rtol=1e-4, atol=1e-4)
    ref = losses.tc_decomposition(out.z, out.mean, out.log_variance, dataset_size=N, estimator=estimator)
    for k in TC_KEYS:
        np.testing.assert_allclose(m[k], np.mean(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(m[f"sum/{k}"], np.sum(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)


def test_vae_objective_tc_estimator_is_passed_through(grey):
    model, key = _vae(), jax.random.key(5)
    _, mss = objectives.vae_objective(model, grey, key=key, tc_dataset_size=N)
    _, mws = objectives.vae_objective(model, grey, key=key, tc_dataset_size=N, tc_estimator="mws")
    assert abs(float(mss["total_correlation"]) - float(mws["total_correlation"])) > 1e-3
    with pytest.raises(ValueError, match="estimator"):
        objectives.vae_objective(model, grey, key=key, tc_dataset_size=N, tc_estimator="nope")


def test_vae_objective_tc_metrics_exclude_padded_rows(grey):
    model, key = _vae(), jax.random.key(6)
    w = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    _, m = objectives.vae_objective(model, grey, key=key, tc_dataset_size=N, weights=w)
    _, out, _ = _pass(model, grey, key, binarize=True)
    ref = losses.tc_decomposition(out.z[:4], out.mean[:4], out.log_variance[:4], dataset_size=N)
    for k in TC_KEYS:
        np.testing.assert_allclose(m[f"sum/{k}"], np.sum(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(m[k], np.mean(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(sum(float(m[f"sum/{k}"]) for k in TC_KEYS), _one_sample_kl(out)[:4].sum(),
                               rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------- β-TCVAE


def test_beta_tcvae_with_unit_weights_is_the_one_sample_elbo(grey):
    model, key = _vae(), jax.random.key(7)
    loss, m = objectives.beta_tcvae_objective(model, grey, key=key, dataset_size=N, alpha=1.0, beta=1.0,
                                              gamma=1.0)
    _, out, _ = _pass(model, grey, key, binarize=False)  # beta_tcvae_objective does not binarize by default
    distortion = -np.asarray(out.log_likelihood, np.float64)
    np.testing.assert_allclose(loss, np.mean(distortion + _one_sample_kl(out)), rtol=1e-5)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(m["distortion"], distortion.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["rate"], np.mean(out.kl), rtol=1e-5)  # the analytic KL
    np.testing.assert_allclose(m["elbo"], np.mean(-distortion - np.asarray(out.kl)), rtol=1e-5)
    ref = losses.tc_decomposition(out.z, out.mean, out.log_variance, dataset_size=N)
    for k in TC_KEYS:
        np.testing.assert_allclose(m[k], np.mean(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(float(m["distortion"]) + sum(float(m[k]) for k in TC_KEYS), loss, rtol=1e-5)


def test_beta_tcvae_weights_each_term(grey):
    model, key = _vae(), jax.random.key(8)
    for alpha, beta, gamma in ((1.0, 6.0, 1.0), (2.0, 3.0, 0.5)):
        loss, m = objectives.beta_tcvae_objective(model, grey, key=key, dataset_size=N, alpha=alpha, beta=beta,
                                                  gamma=gamma)
        want = (float(m["distortion"]) + alpha * float(m["mutual_information"])
                + beta * float(m["total_correlation"]) + gamma * float(m["dimension_wise_kl"]))
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5)
    _, m_mws = objectives.beta_tcvae_objective(model, grey, key=key, dataset_size=N, estimator="mws")
    _, out, _ = _pass(model, grey, key, binarize=False)
    ref = losses.tc_decomposition(out.z, out.mean, out.log_variance, dataset_size=N, estimator="mws")
    np.testing.assert_allclose(m_mws["total_correlation"], np.mean(ref.total_correlation), rtol=1e-5, atol=1e-5)


def test_beta_tcvae_gradient(grey):
    model, key = _vae(), jax.random.key(9)

    def objective(beta):
        return lambda m: objectives.beta_tcvae_objective(m, grey, key=key, dataset_size=N, beta=beta)[0]

    g1, g6 = _grad(objective(1.0), model), _grad(objective(6.0), model)
    assert _trees_differ(g1, g6)

    def by_hand(m, beta):  # -log p(x|z) + log q(z|x) - log p(z) + (β - 1) TC, all differentiated
        _, out, _ = _pass(m, grey, key, binarize=False)
        log_q = -0.5 * jnp.sum(jnp.square(out.z - out.mean) * jnp.exp(-out.log_variance) + out.log_variance
                               + LOG_2PI, axis=-1)
        log_p = -0.5 * jnp.sum(jnp.square(out.z) + LOG_2PI, axis=-1)
        tc = losses.tc_decomposition(out.z, out.mean, out.log_variance, dataset_size=N).total_correlation
        return jnp.mean(-out.log_likelihood + log_q - log_p + (beta - 1.0) * tc)

    _assert_trees_close(g1, _grad(lambda m: by_hand(m, 1.0), model), rtol=1e-4, atol=1e-5)
    _assert_trees_close(g6, _grad(lambda m: by_hand(m, 6.0), model), rtol=1e-4, atol=1e-5)
    _assert_zero_tree(_grad(lambda m: _weighted_tc_metrics(  # reported without gradient
        objectives.beta_tcvae_objective(m, grey, key=key, dataset_size=N)[1]), model))


def test_beta_tcvae_padded_rows_contribute_nothing(grey):
    model, key = _vae(), jax.random.key(10)
    w = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    other = {"image": grey["image"].at[4:].set(jax.random.uniform(jax.random.key(99), (2, *SHAPE)))}
    loss, m = objectives.beta_tcvae_objective(model, grey, key=key, dataset_size=N, beta=6.0, weights=w)
    loss2, m2 = objectives.beta_tcvae_objective(model, other, key=key, dataset_size=N, beta=6.0, weights=w)
    np.testing.assert_allclose(loss, loss2, rtol=1e-6)
    for k in ("loss", "sum/loss", *TC_KEYS, *(f"sum/{k}" for k in TC_KEYS)):
        np.testing.assert_allclose(m[k], m2[k], rtol=1e-6, atol=1e-6, err_msg=k)
    assert float(m["weight"]) == 4.0
    # the valid rows alone, as a batch of 4 (the samples of the padded pass: the same key draws them)
    _, out, _ = _pass(model, grey, key, binarize=False)
    ref = losses.tc_decomposition(out.z[:4], out.mean[:4], out.log_variance[:4], dataset_size=N)
    per_example = (-np.asarray(out.log_likelihood)[:4] + np.asarray(ref.mutual_information)
                   + 6.0 * np.asarray(ref.total_correlation) + np.asarray(ref.dimension_wise_kl))
    np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m["sum/loss"], per_example.sum(), rtol=1e-5, atol=1e-5)
    for k in TC_KEYS:
        np.testing.assert_allclose(m[f"sum/{k}"], np.sum(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)


# --------------------------------------------------------------------------------- DIP-VAE


def _dip_by_hand(mean, log_variance, kind, lambda_od, lambda_d):
    mu, lv = np.asarray(mean, np.float64), np.asarray(log_variance, np.float64)
    centred = mu - mu.mean(axis=0)
    cov = centred.T @ centred / mu.shape[0]
    if kind == "ii":
        cov = cov + np.diag(np.exp(lv).mean(axis=0))
    if lambda_d is None:
        lambda_d = 10.0 * lambda_od if kind == "i" else lambda_od
    off = sum(cov[i, j] ** 2 for i in range(cov.shape[0]) for j in range(cov.shape[0]) if i != j)
    return lambda_od * off + lambda_d * sum((cov[i, i] - 1.0) ** 2 for i in range(cov.shape[0]))


@pytest.mark.parametrize("kind", ["i", "ii"])
@pytest.mark.parametrize("lambda_d", [None, 3.0])
def test_dip_vae_objective(grey, kind, lambda_d):
    model, key = _vae(), jax.random.key(11)
    loss, m = objectives.dip_vae_objective(model, grey, key=key, kind=kind, lambda_od=2.0, lambda_d=lambda_d)
    _, out, _ = _pass(model, grey, key, binarize=False)
    reg = _dip_by_hand(out.mean, out.log_variance, kind, 2.0, lambda_d)
    np.testing.assert_allclose(m["dip_regularizer"], reg, rtol=1e-5, atol=1e-6)
    distortion, rate = -np.asarray(out.log_likelihood), np.asarray(out.kl)
    np.testing.assert_allclose(m["distortion"], distortion.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["rate"], rate.mean(), rtol=1e-5)
    np.testing.assert_allclose(loss, distortion.mean() + rate.mean() + reg, rtol=1e-5)
    np.testing.assert_allclose(m["elbo"], -(distortion + rate).mean(), rtol=1e-5)


def test_dip_vae_defaults_differ_by_kind(grey):
    """λ_d defaults to 10 λ_od for DIP-VAE-I and λ_od for DIP-VAE-II."""
    model, key = _vae(), jax.random.key(12)
    for kind, factor in (("i", 10.0), ("ii", 1.0)):
        _, default = objectives.dip_vae_objective(model, grey, key=key, kind=kind, lambda_od=2.0)
        _, explicit = objectives.dip_vae_objective(model, grey, key=key, kind=kind, lambda_od=2.0,
                                                   lambda_d=factor * 2.0)
        np.testing.assert_allclose(default["dip_regularizer"], explicit["dip_regularizer"], rtol=1e-6)
    _, m1 = objectives.dip_vae_objective(model, grey, key=key, kind="i", lambda_od=2.0)
    _, m2 = objectives.dip_vae_objective(model, grey, key=key, kind="ii", lambda_od=2.0)
    assert abs(float(m1["dip_regularizer"]) - float(m2["dip_regularizer"])) > 1e-3
    with pytest.raises(ValueError, match="kind"):
        objectives.dip_vae_objective(model, grey, key=key, kind="iii")


def test_dip_vae_padded_rows_and_tc_metrics(grey):
    model, key = _vae(), jax.random.key(13)
    w = jnp.array([1, 0, 1, 1, 0, 1], jnp.float32)
    keep = np.asarray(w) > 0
    loss, m = objectives.dip_vae_objective(model, grey, key=key, kind="ii", lambda_od=5.0, weights=w,
                                           tc_dataset_size=N)
    _, out, _ = _pass(model, grey, key, binarize=False)
    reg = _dip_by_hand(np.asarray(out.mean)[keep], np.asarray(out.log_variance)[keep], "ii", 5.0, None)
    np.testing.assert_allclose(m["dip_regularizer"], reg, rtol=1e-5, atol=1e-6)
    d, r = -np.asarray(out.log_likelihood)[keep], np.asarray(out.kl)[keep]
    np.testing.assert_allclose(loss, d.mean() + r.mean() + reg, rtol=1e-5)
    np.testing.assert_allclose(m["sum/loss"], np.sum(d + r + reg), rtol=1e-5)
    ref = losses.tc_decomposition(out.z[keep], out.mean[keep], out.log_variance[keep], dataset_size=N)
    for k in TC_KEYS:
        np.testing.assert_allclose(m[f"sum/{k}"], np.sum(getattr(ref, k)), rtol=1e-5, atol=1e-5, err_msg=k)
    _, plain = objectives.dip_vae_objective(model, grey, key=key, kind="ii", lambda_od=5.0, weights=w)
    assert not any(k in plain for k in TC_KEYS)


# --------------------------------------------------------------------------------- FactorVAE objective


def _bernoulli_ll(logits, x):
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=(1, 2, 3))


def _gaussian_kl(mean, log_variance):
    return 0.5 * jnp.sum(jnp.exp(log_variance) + jnp.square(mean) - 1.0 - log_variance, axis=-1)


def _factor_references(model, batch, key, gamma):
    """The two reference gradients, by hand: the VAE's loss with D's weights held constant (``[vae]``) and
    D's cross-entropy on the VAE's stopped samples and their permutation (``[discriminator]``)."""
    k_z, k_perm = jax.random.split(jax.random.split(key)[1])
    x = batch["image"]
    d_const = model.discriminator

    def vae_loss(vae):
        mean, log_variance = vae.encode(x)
        z = mean + jnp.exp(0.5 * log_variance) * jax.random.normal(k_z, mean.shape)
        logits = d_const(z)
        tc = logits[:, 0] - logits[:, 1]
        return jnp.mean(-_bernoulli_ll(vae.decode(z), x) + _gaussian_kl(mean, log_variance) + gamma * tc)

    z = jax.lax.stop_gradient(model.vae(x, key=k_z).z)
    z_perm = losses.permute_dims(z, key=k_perm)

    def d_loss(disc):
        return -0.5 * (jnp.mean(jax.nn.log_softmax(disc(z), -1)[:, 0])
                       + jnp.mean(jax.nn.log_softmax(disc(z_perm), -1)[:, 1]))

    return _grad(vae_loss, model.vae), _grad(d_loss, model.discriminator), float(d_loss(model.discriminator))


def test_reparameterized_sample_matches_the_model():
    """The hand-written VAE loss of the FactorVAE references draws the model's own samples."""
    model, x, key = _vae(), _bars(6)["image"], jax.random.key(14)
    out = model(x, key=key)
    mean, log_variance = model.encode(x)
    z = mean + jnp.exp(0.5 * log_variance) * jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(out.z, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.log_likelihood, _bernoulli_ll(out.logits, x), rtol=1e-5)
    np.testing.assert_allclose(out.kl, _gaussian_kl(out.mean, out.log_variance), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_factor_vae_gradients_land_on_their_own_networks(gamma):
    model, batch, key = _factor_vae(), _bars(6), jax.random.key(15)
    grads = _grad(lambda m: objectives.factor_vae_objective(m, batch, key=key, gamma=gamma)[0], model)
    g_vae, g_disc, d_value = _factor_references(model, batch, key, gamma)
    _assert_trees_close(grads["vae"], g_vae, rtol=1e-5, atol=1e-5)
    _assert_trees_close(grads["discriminator"], g_disc, rtol=1e-5, atol=1e-5)
    _, m = objectives.factor_vae_objective(model, batch, key=key, gamma=gamma)
    np.testing.assert_allclose(m["discriminator_loss"], d_value, rtol=1e-5)


def test_factor_vae_gamma_zero_is_the_plain_vae_gradient():
    model, batch, key = _factor_vae(), _bars(6), jax.random.key(16)

    def vae_part(gamma):
        return _grad(lambda m: objectives.factor_vae_objective(m, batch, key=key, gamma=gamma)[0], model)["vae"]

    plain = _grad(lambda v: objectives.vae_objective(v, batch, key=key, dynamic_binarization=False)[0], model.vae)
    _assert_trees_close(vae_part(0.0), plain, rtol=1e-5, atol=1e-6)
    assert _trees_differ(vae_part(5.0), plain)  # the TC term reaches the encoder through z


def test_factor_vae_metrics():
    model, batch, key = _factor_vae(), _bars(6), jax.random.key(17)
    gamma = 5.0
    loss, m = objectives.factor_vae_objective(model, batch, key=key, gamma=gamma, tc_dataset_size=N)
    for k in ("loss", "elbo", "rate", "distortion", "discriminator_loss", "discriminator_accuracy",
              "total_correlation_discriminator", *TC_KEYS):
        assert k in m, k
        assert np.isfinite(float(m[k])), k
    assert 0.0 <= float(m["discriminator_accuracy"]) <= 1.0
    np.testing.assert_allclose(loss, float(m["loss"]) + float(m["discriminator_loss"]), rtol=1e-6)
    _, out, k_perm = _pass(model.vae, batch, key, binarize=False)
    logits = model.discriminator(out.z)
    tc = np.asarray(logits[:, 0] - logits[:, 1])
    np.testing.assert_allclose(m["total_correlation_discriminator"], tc.mean(), rtol=1e-5, atol=1e-6)
    d, r = -np.asarray(out.log_likelihood), np.asarray(out.kl)
    np.testing.assert_allclose(m["loss"], np.mean(d + r + gamma * tc), rtol=1e-5)
    np.testing.assert_allclose(m["elbo"], -np.mean(d + r), rtol=1e-5)
    perm = model.discriminator(losses.permute_dims(out.z, key=k_perm))
    accuracy = 0.5 * (np.mean(np.argmax(logits, -1) == 0) + np.mean(np.argmax(perm, -1) == 1))
    np.testing.assert_allclose(m["discriminator_accuracy"], accuracy, rtol=1e-6)
    _, plain = objectives.factor_vae_objective(model, batch, key=key, gamma=gamma)
    assert not any(k in plain for k in TC_KEYS)
    _assert_zero_tree(_grad(lambda mm: objectives.factor_vae_objective(
        mm, batch, key=key, gamma=gamma)[1]["total_correlation_discriminator"], model))


# --------------------------------------------------------------------------------- factor_vae_optimizer


def test_factor_vae_optimizer_labels_each_network():
    model = _factor_vae()
    params = nnx.state(model, nnx.Param)
    ones = jax.tree.map(jnp.ones_like, params)
    for lr_vae, lr_disc in ((1.0, 0.0), (0.0, 1.0)):
        tx = factor_vae_optimizer(optax.sgd(lr_vae), optax.sgd(lr_disc))
        updates, _ = tx.update(ones, tx.init(params), params)
        for name, lr in (("vae", lr_vae), ("discriminator", lr_disc)):
            flat = _flat(updates[name])
            assert flat
            for k, v in flat.items():
                np.testing.assert_array_equal(v, -lr, err_msg=f"{name}{k}")
    assert len(_flat(updates)) == len(_flat(params))


def test_factor_vae_optimizer_with_nnx_optimizer_moves_only_the_vae():
    model, batch, key = _factor_vae(), _bars(6), jax.random.key(18)
    before = _flat(nnx.state(model, nnx.Param))
    opt = nnx.Optimizer(model, factor_vae_optimizer(optax.sgd(1e-2), optax.sgd(0.0)), wrt=nnx.Param)
    grads = nnx.grad(lambda m: objectives.factor_vae_objective(m, batch, key=key, gamma=5.0)[0])(model)
    assert any(np.any(v != 0) for v in _flat(grads["discriminator"]).values())
    opt.update(model, grads)
    after = _flat(nnx.state(model, nnx.Param))
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved and all(k.startswith("['vae']") for k in moved)
    assert {k for k in before if k.startswith("['vae']")} == moved  # every VAE leaf moved


# --------------------------------------------------------------------------------- FactorVAE module


def test_factor_vae_construction_errors():
    vae = _vae()
    with pytest.raises(ValueError, match="`vae`"):
        FactorVAE(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), TCDiscriminator(LATENTS, hidden=(8,), rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError, match="`discriminator`.*3 latents"):
        FactorVAE(vae, TCDiscriminator(LATENTS + 1, hidden=(8,), rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError, match="`discriminator`"):
        FactorVAE(vae, nnx.Linear(LATENTS, 2, rngs=nnx.Rngs(1)))


def test_factor_vae_delegates_to_the_inner_vae():
    model, x, key = _factor_vae(), _bars(4)["image"], jax.random.key(19)
    assert model.latents == LATENTS and model.likelihood == model.vae.likelihood
    for a, b in zip(model.encode(x), model.vae.encode(x), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.generate(key=key, num_samples=3), model.vae.generate(key=key, num_samples=3),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model(x, key=key), model.vae(x, key=key), strict=True):
        np.testing.assert_array_equal(a, b)
    z = jnp.zeros((2, LATENTS))
    np.testing.assert_array_equal(model.decode(z), model.vae.decode(z))
    with pytest.raises(AttributeError):
        _ = model.no_such_attribute
    # a split and merged copy (as every training step makes) still delegates
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(copy.encode(x)[0], model.encode(x)[0])


# --------------------------------------------------------------------------------- jit and training


def _objective_calls(kind):
    """``(model, fn(model, batch, key) -> (loss, metrics), optimizer)`` for each objective."""
    adam = optax.adam(1e-2)
    if kind == "vae":
        return _vae(), lambda m, b, k: objectives.vae_objective(m, b, key=k, tc_dataset_size=N), adam
    if kind == "beta_tcvae":
        return _vae(), lambda m, b, k: objectives.beta_tcvae_objective(m, b, key=k, dataset_size=N), adam
    if kind == "dip_vae":
        return (_vae(), lambda m, b, k: objectives.dip_vae_objective(m, b, key=k, kind="ii", lambda_od=2.0),
                adam)
    return (_factor_vae(), lambda m, b, k: objectives.factor_vae_objective(m, b, key=k, gamma=5.0),
            factor_vae_optimizer(optax.adam(1e-2), optax.adam(1e-3, b1=0.5, b2=0.9)))


KINDS = ("vae", "beta_tcvae", "dip_vae", "factor_vae")


@pytest.mark.parametrize("kind", KINDS)
def test_objective_under_jit_trains(kind):
    model, fn, tx = _objective_calls(kind)
    batch = _bars(8)
    graphdef, params = nnx.split(model)
    eval_key = jax.random.key(20)

    @jax.jit
    def step(params, opt_state, key):
        """One Adam step; the loss and metrics are those of ``params`` (before the step)."""
        (loss, metrics), grads = jax.value_and_grad(lambda p: fn(nnx.merge(graphdef, p), batch, key),
                                                    has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    opt_state = tx.init(params)
    _, _, loss0, m0 = step(params, opt_state, eval_key)
    eager, _ = fn(model, batch, eval_key)
    np.testing.assert_allclose(loss0, eager, rtol=1e-5, atol=1e-5)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in m0.values())
    for i in range(30):
        params, opt_state, loss, _ = step(params, opt_state, jax.random.fold_in(jax.random.key(21), i))
        assert np.isfinite(float(loss))
    _, _, loss1, m1 = step(params, opt_state, eval_key)
    assert float(loss1) < 0.8 * float(loss0), (float(loss0), float(loss1))
    assert float(m1["distortion"]) < float(m0["distortion"])


def test_factor_vae_accuracy_of_a_one_logit_discriminator():
    model = FactorVAE(_vae(), TCDiscriminator(LATENTS, hidden=(16,), num_outputs=1, rngs=nnx.Rngs(1)))
    batch = {"image": jax.random.uniform(jax.random.key(0), (8, *SHAPE))}
    key = jax.random.key(0)
    _, m = objectives.factor_vae_objective(model, batch, key=key)
    _, out, k_perm = _pass(model.vae, batch, key, binarize=False)
    real = np.asarray(model.discriminator(out.z))[:, 0]  # log D/(1 - D): "real" when > 0
    perm = np.asarray(model.discriminator(losses.permute_dims(out.z, key=k_perm)))[:, 0]
    accuracy = 0.5 * (np.mean(real > 0) + np.mean(perm < 0))
    assert accuracy != 0.5  # this batch and key tell the two apart
    np.testing.assert_allclose(m["discriminator_accuracy"], accuracy, rtol=1e-6)


def test_factor_vae_padded_rows_reach_neither_network():
    """In evaluation (weights), the padded rows' images change no metric: the permutation keeps them apart."""
    model = FactorVAE(_vae(), TCDiscriminator(LATENTS, hidden=(16,), rngs=nnx.Rngs(1)))
    image = np.asarray(jax.random.uniform(jax.random.key(3), (8, *SHAPE)))
    weights = jnp.asarray([1, 1, 1, 1, 0, 0, 0, 0], jnp.float32)
    other = image.copy()
    other[4:] = 0.0
    for k in range(3):
        key = jax.random.key(k)
        la, ma = objectives.factor_vae_objective(model, {"image": jnp.asarray(image)}, key=key, weights=weights)
        lb, mb = objectives.factor_vae_objective(model, {"image": jnp.asarray(other)}, key=key, weights=weights)
        np.testing.assert_allclose(la, lb, rtol=1e-6)
        for name in ("sum/discriminator_loss", "sum/discriminator_accuracy", "sum/loss"):
            np.testing.assert_allclose(ma[name], mb[name], rtol=1e-6, err_msg=name)


def test_permute_dims_with_weights_permutes_the_rows_in_use_among_themselves():
    z = jnp.arange(8 * 4, dtype=jnp.float32).reshape(8, 4)
    weights = jnp.asarray([1, 0, 1, 1, 0, 1, 1, 0], jnp.float32)
    valid = np.asarray(weights) > 0
    seen = set()
    for k in range(20):
        p = np.asarray(losses.permute_dims(z, key=jax.random.key(k), weights=weights))
        for d in range(4):  # each column: a permutation of the rows in use within them, padded rows within theirs
            np.testing.assert_array_equal(np.sort(p[valid, d]), np.sort(np.asarray(z)[valid, d]))
            np.testing.assert_array_equal(np.sort(p[~valid, d]), np.sort(np.asarray(z)[~valid, d]))
        seen.add(tuple(p[valid, 0]))
    assert len(seen) > 10  # random: 5! = 120 orders of the rows in use
