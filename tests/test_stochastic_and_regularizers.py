"""Stochastic code sampling (straight-through categorical, Gumbel-softmax), the temperature schedule,
and the codebook regularisers (orthogonality, usage entropy / diversity)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vqjax import losses as L
from vqjax import quantizers as F


def _setup(k=4, d=3, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(d,)).astype(np.float32), r.normal(size=(k, d)).astype(np.float32)


def _np_probs(z, e, tau):
    z, e = np.asarray(z, np.float64), np.asarray(e, np.float64)
    logits = -np.sum((z[..., None, :] - e) ** 2, axis=-1) / tau
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# sample_code


@pytest.mark.parametrize("estimator", ["straight_through", "gumbel"])
def test_empirical_frequencies_match_softmax(estimator):
    """Chi-square goodness of fit, K - 1 = 3 degrees of freedom; fixed keys, so deterministic."""
    z, e = _setup()
    tau = 6.0
    p = _np_probs(z, e, tau)
    assert p.min() > 0.05  # every cell has a decent expected count
    n_keys, per_key = 64, 256
    keys = jax.random.split(jax.random.key(7), n_keys)
    zs = jnp.broadcast_to(jnp.asarray(z), (per_key, z.shape[0]))
    draw = jax.jit(jax.vmap(lambda key: F.sample_code(zs, e, key=key, temperature=tau,
                                                      estimator=estimator, hard=estimator == "gumbel")))
    out = draw(keys)
    np.testing.assert_allclose(np.asarray(out.probs[0, 0]), p, rtol=1e-5, atol=1e-6)
    counts = np.bincount(np.asarray(out.indices).ravel(), minlength=len(p))
    n = n_keys * per_key
    chi2 = np.sum((counts - n * p) ** 2 / (n * p))
    assert chi2 < 16.27, (chi2, counts / n, p)  # the 99.9% quantile of chi²(3)
    # forward value is exactly the sampled code
    np.testing.assert_array_equal(np.asarray(out.z_q), np.asarray(e)[np.asarray(out.indices)])


def test_gumbel_soft_is_convex_combination_and_tau_g_sharpens():
    z, e = _setup(k=5)
    zs = jnp.broadcast_to(jnp.asarray(z), (512, z.shape[0]))
    key = jax.random.key(3)
    soft = F.sample_code(zs, e, key=key, temperature=1.0, estimator="gumbel", gumbel_temperature=1.0)
    sharp = F.sample_code(zs, e, key=key, temperature=1.0, estimator="gumbel", gumbel_temperature=1e-3)
    hard = F.sample_code(zs, e, key=key, temperature=1.0, estimator="gumbel", hard=True)
    # same key: same argmax sample whatever τ_g and hard
    np.testing.assert_array_equal(np.asarray(soft.indices), np.asarray(hard.indices))
    np.testing.assert_array_equal(np.asarray(sharp.indices), np.asarray(hard.indices))
    # τ_g → 0: the relaxation tends to the one-hot sample (a near tie in the Gumbel race may lag)
    np.testing.assert_allclose(np.asarray(sharp.z_q), np.asarray(hard.z_q), atol=1e-2)
    assert float(jnp.median(jnp.abs(sharp.z_q - hard.z_q))) < 1e-6
    # the soft value lies in the convex hull: it is not the code, but within the codebook's range
    assert float(jnp.max(jnp.abs(soft.z_q - soft.codes))) > 1e-3
    assert np.all(np.asarray(soft.z_q) <= e.max(0) + 1e-5) and np.all(np.asarray(soft.z_q) >= e.min(0) - 1e-5)


def test_small_temperature_gives_nearest_code_and_zero_is_quantize():
    r = np.random.default_rng(1)
    z = r.normal(size=(2, 6, 3)).astype(np.float32)
    e = r.normal(size=(8, 3)).astype(np.float32)
    nearest = np.asarray(F.nearest_code(z, e))
    for estimator in ("straight_through", "gumbel"):
        out = F.sample_code(z, e, key=jax.random.key(0), temperature=1e-4, estimator=estimator)
        np.testing.assert_array_equal(np.asarray(out.indices), nearest)
    q = F.quantize(z, e)
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0, "deterministic": True}):
        out = F.sample_code(z, e, **kwargs)  # no key needed
        np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(q.indices))
        np.testing.assert_array_equal(np.asarray(out.z_q), np.asarray(q.z_q))
        np.testing.assert_array_equal(np.asarray(out.codes), np.asarray(q.codes))
    np.testing.assert_array_equal(np.asarray(F.sample_code(z, e, temperature=0).probs),
                                  np.eye(8)[nearest])
    det = F.sample_code(z, e, temperature=2.0, deterministic=True)
    np.testing.assert_allclose(np.asarray(det.probs), _np_probs(z, e, 2.0), rtol=1e-5, atol=1e-6)
    # greedy: the gradient to z is the straight-through copy
    g = jax.grad(lambda z: jnp.sum(F.sample_code(z, e, temperature=0.0).z_q * 3.0))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(g), 3.0)


def test_straight_through_gradient_is_that_of_soft_assignment():
    """∂/∂z of w·z_q = ∂/∂z of w·(p(z)·E); ∂/∂E = the row lookup plus p's dependence on E."""
    z, e = _setup(k=4, d=3, seed=2)
    tau, w = 1.5, np.array([0.3, -1.0, 2.0], np.float32)
    key = jax.random.key(11)

    def f(z, e):
        return jnp.sum(F.sample_code(z, e, key=key, temperature=tau).z_q * w)

    gz, ge = jax.grad(f, argnums=(0, 1))(jnp.asarray(z), jnp.asarray(e))
    k = int(F.sample_code(z, e, key=key, temperature=tau).indices)
    z64, e64, w64 = (np.asarray(a, np.float64) for a in (z, e, w))
    p = _np_probs(z64, e64, tau)
    s = e64 @ w64  # s_j = e_j · w
    dlogit = p * (s - p @ s)  # ∂(p·s)/∂logit_j
    gz_np = np.sum(dlogit[:, None] * (-2.0 * (z64 - e64) / tau), axis=0)
    ge_np = dlogit[:, None] * (2.0 * (z64 - e64) / tau)
    ge_np[k] += w64
    np.testing.assert_allclose(np.asarray(gz), gz_np, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ge), ge_np, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_gradients_match_finite_differences(hard):
    z, e = _setup(k=4, d=3, seed=4)
    key = jax.random.key(5)
    w = jnp.array([1.0, -0.5, 0.25])

    def f(z, e):
        return jnp.sum(F.sample_code(z, e, key=key, temperature=1.0, estimator="gumbel",
                                     gumbel_temperature=0.7, hard=hard).z_q * w)

    gz = jax.grad(f)(jnp.asarray(z), jnp.asarray(e))

    # the soft surrogate y(z)·E (hard: same z-gradient), by central differences in float64 NumPy;
    # g is the Gumbel noise sample_code draws from `key` for [K] logits
    g = np.asarray(jax.random.gumbel(key, (4,), jnp.float32), np.float64)

    def surrogate(zz):
        logits = -np.sum((zz - np.asarray(e, np.float64)) ** 2, axis=-1) + g
        y = np.exp((logits - logits.max()) / 0.7)
        y /= y.sum()
        return (y @ np.asarray(e, np.float64)) @ np.asarray(w, np.float64)

    h = 1e-6
    fd = np.array([(surrogate(z + h * np.eye(3)[i]) - surrogate(z - h * np.eye(3)[i])) / (2 * h)
                   for i in range(3)])
    np.testing.assert_allclose(np.asarray(gz), fd, rtol=1e-3, atol=1e-4)


def test_jit_vmap_grad_traced_temperature_and_dtypes():
    r = np.random.default_rng(3)
    z = jnp.asarray(r.normal(size=(5, 2, 4)), jnp.float32)
    e = jnp.asarray(r.normal(size=(6, 4)), jnp.float32)

    @jax.jit
    def step(z, e, key, t):
        tau = F.temperature_schedule(t, start=1.0, end=1 / 16, steps=100)
        out = F.sample_code(z, e, key=key, temperature=1.0, estimator="gumbel", gumbel_temperature=tau)
        return jnp.mean(jnp.square(out.z_q)) + L.codebook_entropy_loss(out.probs)

    key = jax.random.key(0)
    val, grads = jax.value_and_grad(step, argnums=(0, 1))(z, e, key, 10)
    assert np.isfinite(float(val)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)

    # vmap over examples = one batched call with the per-example keys
    keys = jax.random.split(jax.random.key(1), 5)
    per = jax.vmap(lambda zz, kk: F.sample_code(zz, e, key=kk, temperature=0.5))(z, keys)
    for i in (0, 4):
        one = F.sample_code(z[i], e, key=keys[i], temperature=0.5)
        np.testing.assert_array_equal(np.asarray(per.indices[i]), np.asarray(one.indices))
    assert per.z_q.shape == z.shape and per.probs.shape == (5, 2, 6) and per.indices.dtype == jnp.int32

    # traced τ in jit
    out = jax.jit(lambda t: F.sample_code(z, e, key=key, temperature=t))(jnp.float32(0.3))
    assert out.z_q.shape == z.shape

    out = F.sample_code(z.astype(jnp.bfloat16), e, key=key, temperature=1.0)
    assert out.z_q.dtype == jnp.bfloat16 and out.probs.dtype == jnp.float32


def test_sample_code_rejects_bad_arguments():
    z, e = _setup()
    with pytest.raises(ValueError, match="estimator"):
        F.sample_code(z, e, key=jax.random.key(0), estimator="reinforce")
    with pytest.raises(ValueError, match="key"):
        F.sample_code(z, e, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        F.sample_code(z, e, key=jax.random.key(0), temperature=-1.0)
    with pytest.raises(ValueError, match="hard"):
        F.sample_code(z, e, key=jax.random.key(0), hard=True)
    with pytest.raises(ValueError, match="gumbel_temperature"):
        F.sample_code(z, e, key=jax.random.key(0), estimator="gumbel", gumbel_temperature=0.0)
    with pytest.raises(ValueError, match="z"):
        F.sample_code(z[:2], e, key=jax.random.key(0))


def test_temperature_schedule_matches_optax_exponential_decay():
    steps = jnp.arange(0, 300, 7)
    ours = jax.jit(jax.vmap(lambda t: F.temperature_schedule(t, start=1.0, end=1 / 16, steps=150)))(steps)
    ref = optax.exponential_decay(1.0, transition_steps=150, decay_rate=1 / 16, end_value=1 / 16)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(jax.vmap(ref)(steps)), rtol=1e-5)
    assert float(F.temperature_schedule(0, start=1.0, end=0.5, steps=10)) == 1.0
    assert float(F.temperature_schedule(10**6, start=1.0, end=0.5, steps=10)) == 0.5
    with pytest.raises(ValueError, match="steps"):
        F.temperature_schedule(0, start=1.0, end=0.5, steps=0)
    with pytest.raises(ValueError, match="start"):
        F.temperature_schedule(0, start=0.0, end=0.5, steps=3)


# ---------------------------------------------------------------------------------------------
# regularisers


def test_orthogonality_loss_zero_for_orthogonal_codes_and_known_case():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    codebook = q[:4] * np.array([[0.5], [2.0], [3.0], [1.0]])  # K=4 ≤ D=6, orthogonal, any norms
    assert float(L.codebook_orthogonality_loss(jnp.asarray(codebook, jnp.float32))) == pytest.approx(0, abs=1e-6)

    e = np.random.default_rng(1).normal(size=(5, 3))
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    expected = np.sum((en @ en.T - np.eye(5)) ** 2) / 25
    assert float(L.codebook_orthogonality_loss(jnp.asarray(e, jnp.float32))) == pytest.approx(expected, rel=1e-5)
    # two identical codes: off-diagonal cosines 1, i.e. 2/K²
    assert float(L.codebook_orthogonality_loss(jnp.ones((2, 3)))) == pytest.approx(0.5)

    g = jax.jit(jax.grad(L.codebook_orthogonality_loss))(jnp.asarray(e, jnp.float32).at[0].set(0.0))
    assert np.all(np.isfinite(np.asarray(g)))
    # vmap over a stack of codebooks (e.g. groups)
    stack = jnp.stack([jnp.asarray(codebook, jnp.float32), jnp.asarray(e[:4, :3].repeat(2, 1), jnp.float32)])
    assert jax.vmap(L.codebook_orthogonality_loss)(stack).shape == (2,)
    with pytest.raises(ValueError, match="codebook"):
        L.codebook_orthogonality_loss(jnp.ones((3,)))


def test_entropy_and_diversity_losses():
    k = 5
    uniform = jnp.full((4, 3, k), 1.0 / k)
    assert float(L.codebook_entropy_loss(uniform)) == pytest.approx(-np.log(k), rel=1e-6)
    assert float(L.codebook_diversity_loss(uniform)) == pytest.approx(0.0, abs=1e-6)
    collapsed = jax.nn.one_hot(jnp.zeros((8,), jnp.int32), k)
    assert float(L.codebook_entropy_loss(collapsed)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.codebook_diversity_loss(collapsed)) == pytest.approx(1 - 1 / k, rel=1e-6)

    # a known small case; and uniform is the maximum entropy over random assignments
    p = np.random.default_rng(2).dirichlet(np.ones(k), size=7)
    mean = p.mean(0)
    h = -np.sum(mean * np.log(mean))
    assert float(L.codebook_entropy_loss(jnp.asarray(p, jnp.float32))) == pytest.approx(-h, rel=1e-5)
    assert float(L.codebook_diversity_loss(jnp.asarray(p, jnp.float32))) == pytest.approx((k - np.exp(h)) / k, rel=1e-4)
    assert -h > -np.log(k)

    # groups: [..., G, V], summed over groups (wav2vec 2.0: (GV - Σ_g exp H_g) / GV)
    pg = jnp.stack([uniform[:, 0], collapsed[:4]], axis=1)  # [4, 2, K]
    assert float(L.codebook_entropy_loss(pg, groups=True)) == pytest.approx(-np.log(k), rel=1e-6)
    assert float(L.codebook_diversity_loss(pg, groups=True)) == pytest.approx((2 * k - k - 1) / (2 * k), rel=1e-6)

    # axis_name: the pmean over a vmapped batch axis equals the unsplit batch
    split = jnp.asarray(p[:6], jnp.float32).reshape(3, 2, k)
    per = jax.vmap(lambda x: L.codebook_entropy_loss(x, axis_name="i"), axis_name="i")(split)
    np.testing.assert_allclose(np.asarray(per), float(L.codebook_entropy_loss(jnp.asarray(p[:6], jnp.float32))), rtol=1e-6)

    # gradients finite, also for unused codes; jit
    for fn in (L.codebook_entropy_loss, L.codebook_diversity_loss):
        for x in (collapsed, jnp.asarray(p, jnp.float32)):
            g = jax.jit(jax.grad(fn))(x)
            assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError, match="probs"):
        L.codebook_entropy_loss(jnp.ones((5,)), groups=True)
