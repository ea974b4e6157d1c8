"""vqjax.losses.free_bits_kl (Kingma et al., 2016, IAF app. C.8) against NumPy: values, the batch mean
Σ_j max(λ, mean KL_j), gradients (none under λ, the plain KL's above), weights, traced λ, errors; and the
``free_bits`` argument of vqjax.objectives.vae_objective (off: bit-identical; on: only the loss changes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vqjax import losses, objectives
from vqjax.nn import VAE, MLPDecoder, MLPEncoder

pytestmark = pytest.mark.usefixtures("strict_promotion")

B, L = 6, 5
SHAPE = (4, 4, 1)


def _params(seed=0):
    r = np.random.default_rng(seed)
    # latents 0, 1 near the prior (small KL), the others far from it
    mean = r.normal(size=(B, L)) * np.array([0.05, 0.1, 1.0, 2.0, 1.5])
    log_var = r.normal(size=(B, L)) * np.array([0.05, 0.1, 1.0, 1.0, 0.5])
    return jnp.asarray(mean, jnp.float32), jnp.asarray(log_var, jnp.float32)


def _kl(mean, log_var):
    return losses.gaussian_kl(mean, log_var, event_ndim=0)  # [B, L]


def _numpy_free_bits(kl, lam, w=None):
    kl = np.asarray(kl, np.float64)
    w = np.ones(kl.shape[0]) if w is None else np.asarray(w, np.float64)
    m = (kl * w[:, None]).sum(0) / w.sum()
    out = np.where(m > lam, kl, lam).sum(-1)
    return np.where(w > 0, out, 0.0), m


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.5, 2.0, 100.0])
def test_values_and_batch_mean_against_numpy(lam):
    kl = _kl(*_params())
    got = np.asarray(losses.free_bits_kl(kl, lam))
    want, m = _numpy_free_bits(kl, lam)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.mean(), np.maximum(lam, m).sum(), rtol=1e-5, atol=1e-6)


def test_zero_is_the_plain_kl_exactly():
    mean, log_var = _params()
    np.testing.assert_array_equal(losses.free_bits_kl(_kl(mean, log_var), 0.0),
                                  losses.gaussian_kl(mean, log_var))


def test_gradient_vanishes_under_lambda_and_is_the_kl_gradient_above():
    mean, log_var = _params()
    lam = 0.5
    _, m = _numpy_free_bits(_kl(mean, log_var), lam)
    below = m <= lam
    assert below.any() and (~below).any()  # both kinds of latent in the test

    def fb(mu, lv):
        return jnp.sum(losses.free_bits_kl(_kl(mu, lv), lam))

    def plain(mu, lv):
        return jnp.sum(losses.gaussian_kl(mu, lv))

    g_fb, g_plain = jax.grad(fb, argnums=(0, 1))(mean, log_var), jax.grad(plain, argnums=(0, 1))(mean, log_var)
    for a, b in zip(g_fb, g_plain, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(a[:, below], 0.0)
        np.testing.assert_allclose(a[:, ~below], b[:, ~below], rtol=1e-6)
        assert np.abs(b[:, below]).max() > 0  # the plain KL would have moved them


def test_weights_exclude_padded_rows():
    kl = np.array(_kl(*_params()))
    w = np.array([1, 1, 1, 1, 0, 0], np.float32)
    kl[4:] = 1e3  # padded rows: would lift every latent's batch mean above λ if they counted
    lam = 0.5
    got = np.asarray(losses.free_bits_kl(jnp.asarray(kl), lam, weights=jnp.asarray(w)))
    want, m = _numpy_free_bits(kl, lam, w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(got[4:], 0.0)
    assert (m <= lam).any()
    np.testing.assert_allclose((got * w).sum() / w.sum(), np.maximum(lam, m).sum(), rtol=1e-5)
    # padded rows get no gradient either
    g = jax.grad(lambda k: jnp.sum(losses.free_bits_kl(k, lam, weights=jnp.asarray(w))))(jnp.asarray(kl))
    np.testing.assert_array_equal(np.asarray(g)[4:], 0.0)


def test_traced_lambda_under_jit_and_vmap():
    kl = _kl(*_params())
    lams = jnp.array([0.0, 0.05, 0.5, 2.0])
    got = jax.jit(jax.vmap(lambda lam: losses.free_bits_kl(kl, lam)))(lams)
    for lam, row in zip(np.asarray(lams), np.asarray(got), strict=True):
        np.testing.assert_allclose(row, _numpy_free_bits(kl, float(lam))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((jnp.ones((B,)), 0.1), {}, "kl_per_latent"),
    ((jnp.ones((B, L)), -0.1), {}, "free_bits"),
    ((jnp.ones((B, L)), jnp.ones(2)), {}, "free_bits"),
    ((jnp.ones((B, L)), 0.1), {"weights": jnp.ones(B + 1)}, "weights"),
])
def test_errors_name_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.free_bits_kl(*args, **kwargs)


# --------------------------------------------------------------------------- vae_objective(free_bits=...)


@pytest.fixture(scope="module")
def vae():
    rngs = nnx.Rngs(0)
    return VAE(MLPEncoder(SHAPE, L, hidden=8, rngs=rngs), MLPDecoder(SHAPE, L, hidden=8, rngs=rngs), latents=L)


@pytest.fixture(scope="module")
def batch():
    return {"image": jax.random.uniform(jax.random.key(1), (B, *SHAPE))}


def _loss_and_grads(vae, batch, **kw):
    """Loss, metrics and gradients of a jitted vae_objective (``kw`` closed over as Python values)."""
    graphdef, params, rest = nnx.split(vae, nnx.Param, ...)

    def loss_fn(p):
        return objectives.vae_objective(nnx.merge(graphdef, p, rest), batch, key=jax.random.key(3), **kw)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return loss, metrics, grads


def test_vae_objective_free_bits_zero_is_bit_identical(vae, batch):
    base = _loss_and_grads(vae, batch)
    zero = _loss_and_grads(vae, batch, free_bits=0.0)
    np.testing.assert_array_equal(base[0], zero[0])
    jax.tree.map(np.testing.assert_array_equal, base[2], zero[2])
    for k in base[1]:
        np.testing.assert_array_equal(base[1][k], zero[1][k])


def test_vae_objective_free_bits_changes_only_the_loss(vae, batch):
    key, lam, beta = jax.random.key(3), 0.3, 0.7
    loss, m = objectives.vae_objective(vae, batch, key=key, beta=beta, free_bits=lam)
    _, m0 = objectives.vae_objective(vae, batch, key=key, beta=beta)
    for k in ("elbo", "rate", "distortion"):  # the true KL and bound are reported
        np.testing.assert_allclose(m[k], m0[k], rtol=1e-6)
    # the loss: distortion + β Σ_j max(λ, mean KL_j), from the same posterior pass
    k_data, k_model = jax.random.split(key)
    x = objectives.binarize(batch["image"], key=k_data)
    out = vae(x, key=jax.random.split(k_model)[0])
    per_latent = np.asarray(_kl(out.mean, out.log_variance))
    want = m0["distortion"] + beta * np.maximum(lam, per_latent.mean(0)).sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(loss) > float(m0["loss"])  # some latent sits under the floor at initialisation


def test_vae_objective_traced_free_bits_and_beta(vae, batch):
    graphdef, params, rest = nnx.split(vae, nnx.Param, ...)

    @jax.jit
    def step(params, beta, lam):
        def loss_fn(p):
            return objectives.vae_objective(nnx.merge(graphdef, p, rest), batch, key=jax.random.key(3), beta=beta,
                                            free_bits=lam)
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, _), grads = step(params, jnp.float32(0.7), jnp.float32(0.3))
    want, _ = objectives.vae_objective(vae, batch, key=jax.random.key(3), beta=0.7, free_bits=0.3)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # a traced λ = 0 is "on" but floors nothing: the plain loss
    (loss0, _), _ = step(params, jnp.float32(0.7), jnp.float32(0.0))
    plain, _ = objectives.vae_objective(vae, batch, key=jax.random.key(3), beta=0.7)
    np.testing.assert_allclose(loss0, plain, rtol=1e-6)


@pytest.mark.parametrize(("kwargs", "other"), [({"capacity": 5.0}, "capacity"), ({"info_alpha": 0.5}, "info_alpha")])
def test_vae_objective_free_bits_refuses_capacity_and_info_vae(vae, batch, kwargs, other):
    with pytest.raises(ValueError, match=rf"`free_bits`.*`{other}`"):
        objectives.vae_objective(vae, batch, key=jax.random.key(0), free_bits=0.5, **kwargs)
    with pytest.raises(ValueError, match="free_bits"):
        objectives.vae_objective(vae, batch, key=jax.random.key(0), free_bits=-1.0)
