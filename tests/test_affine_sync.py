"""The affine codebook reparameterisation and the synchronised update (Huh et al., 2023): forward values
against NumPy, gradients with respect to z, the codebook, scale and shift against hand derivations,
ν = 0 as plain straight-through, the VectorQuantizer options, make_quantizer and the experiment's flags,
a tiny VQ-VAE trained with both, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import vqvae_mnist
from tests._tiny_vqvae import train_tiny_vqvae
from vqjax import quantizers, training
from vqjax.nn import VectorQuantizer, make_quantizer

K, D = 6, 3


def _setup(seed=0, n=10):
    ks = jax.random.split(jax.random.key(seed), 5)
    z = jax.random.normal(ks[0], (n, D))
    e = jax.random.normal(ks[1], (K, D))
    s = 1.0 + 0.5 * jax.random.normal(ks[2], (D,))
    b = 0.3 * jax.random.normal(ks[3], (D,))
    w = jax.random.normal(ks[4], (n, D))  # an upstream gradient ∂L/∂z_q
    return z, e, s, b, w


def _np(*xs):
    return [np.asarray(x, np.float64) for x in xs]


# ---------------------------------------------------------------- affine_codebook


def test_affine_codebook_forward_matches_numpy_and_is_float32():
    _, e, s, b, _ = _setup()
    en, sn, bn = _np(e, s, b)
    c = quantizers.affine_codebook(e, s, b)
    assert c.shape == (K, D) and c.dtype == jnp.float32
    np.testing.assert_allclose(c, sn[None] * en + bn[None], rtol=1e-6, atol=1e-6)
    # identity at the initialisation s = 1, b = 0
    np.testing.assert_array_equal(quantizers.affine_codebook(e, jnp.ones(D), jnp.zeros(D)), e)
    # bfloat16 parameters: computed and returned in float32
    cb = quantizers.affine_codebook(e.astype(jnp.bfloat16), s.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    assert cb.dtype == jnp.float32
    eb, sb, bb = (np.asarray(x.astype(jnp.bfloat16), np.float64) for x in (e, s, b))
    np.testing.assert_allclose(cb, sb[None] * eb + bb[None], rtol=1e-6, atol=1e-6)


def test_affine_codebook_gradients_by_hand():
    """L = Σ_k w_k · c_k: ∂L/∂e_k = s ⊙ w_k, ∂L/∂s = Σ_k w_k ⊙ e_k, ∂L/∂b = Σ_k w_k."""
    _, e, s, b, _ = _setup(1)
    w = jax.random.normal(jax.random.key(7), (K, D))
    ge, gs, gb = jax.grad(lambda *a: jnp.sum(w * quantizers.affine_codebook(*a)), argnums=(0, 1, 2))(e, s, b)
    en, sn, wn = _np(e, s, w)
    np.testing.assert_allclose(ge, wn * sn[None], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gs, np.sum(wn * en, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb, np.sum(wn, 0), rtol=1e-5, atol=1e-6)


def test_codebook_loss_through_the_affine_codes_moves_every_code():
    """Codebook loss Σ_n ||sg[z_n] - c_{k_n}||²: hand-derived gradients; unused codes move through s and b."""
    z, e, s, b, _ = _setup(2, n=4)
    z = z + 3.0  # far from the codes: a few codes used, others not

    def loss(e, s, b):
        q = quantizers.quantize(z, quantizers.affine_codebook(e, s, b))
        return jnp.sum(jnp.square(jax.lax.stop_gradient(z) - q.codes)), q.indices

    (ge, gs, gb), idx = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(e, s, b)
    idx = np.asarray(idx)
    zn, en, sn, bn = _np(z, e, s, b)
    c = sn[None] * en + bn[None]
    r = 2.0 * (c[idx] - zn)  # ∂L/∂c_{k_n}
    want_e = np.zeros((K, D))
    np.add.at(want_e, idx, r * sn[None])
    np.testing.assert_allclose(ge, want_e, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gs, np.sum(r * en[idx], 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, np.sum(r, 0), rtol=1e-4, atol=1e-4)
    unused = sorted(set(range(K)) - set(idx.tolist()))
    assert unused
    np.testing.assert_array_equal(np.asarray(ge)[unused], 0.0)  # the free rows of unused codes get nothing...
    lr = 0.1
    moved = quantizers.affine_codebook(e - lr * ge, s - lr * gs, b - lr * gb)
    before = quantizers.affine_codebook(e, s, b)
    assert np.all(np.abs(np.asarray(moved - before)[unused]) > 0)  # ...but their codes move, with s and b
    plain_ge = jax.grad(lambda e_: jnp.sum(jnp.square(z - quantizers.quantize(z, e_).codes)))(e)
    assert np.all(np.asarray(plain_ge)[sorted(set(range(K)) - set(np.asarray(
        quantizers.nearest_code(z, e)).tolist()))] == 0)  # plain VQ: unused codes never move


# ---------------------------------------------------------------- synchronized_update


def test_synchronized_update_forward_is_exactly_the_codes():
    z, e, _, _, _ = _setup(3)
    codes = e[jnp.arange(z.shape[0]) % K]
    for nu in (0.0, 0.3, 1.0, 2.0):
        np.testing.assert_array_equal(quantizers.synchronized_update(1000.0 * z, codes, nu), codes)
        np.testing.assert_array_equal(quantizers.synchronized_update(z, codes, nu, rotation_trick=True), codes)
    out = quantizers.synchronized_update(z.astype(jnp.bfloat16), codes.astype(jnp.bfloat16), 0.5)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, codes.astype(jnp.bfloat16))
    z3, c3 = z.reshape(2, 5, D), codes.reshape(2, 5, D)
    np.testing.assert_array_equal(jax.jit(quantizers.synchronized_update)(z3, c3, 0.7), c3)


@pytest.mark.parametrize("nu", [0.0, 0.25, 1.0, 2.0])
def test_synchronized_update_gradients_by_hand(nu):
    """L = Σ w ⊙ z_q: ∂L/∂z = w (straight-through), ∂L/∂codes = ν w."""
    z, e, _, _, w = _setup(4)
    codes = e[jnp.arange(z.shape[0]) % K]
    gz, gc = jax.grad(lambda a, c: jnp.sum(w * quantizers.synchronized_update(a, c, nu)), argnums=(0, 1))(z, codes)
    np.testing.assert_array_equal(gz, w)
    np.testing.assert_allclose(gc, nu * np.asarray(w), rtol=1e-6, atol=0)
    # a traced ν (a swept hyperparameter): the same gradients
    gz_t, gc_t = jax.jit(jax.grad(lambda a, c, n: jnp.sum(w * quantizers.synchronized_update(a, c, n)),
                                  argnums=(0, 1)))(z, codes, jnp.float32(nu))
    np.testing.assert_array_equal(gz_t, w)
    np.testing.assert_allclose(gc_t, nu * np.asarray(w), rtol=1e-6, atol=0)


@pytest.mark.parametrize("nu", [0.0, 0.5])
def test_sync_through_quantize_and_affine_codes_by_hand(nu):
    """A nonlinear task loss L = Σ sin(z_q) (g_n = cos c_{k_n}) plus the codebook loss, all four gradients.

    ∂/∂z_n = g_n;  ∂/∂e_k = Σ_{n: k_n = k} s ⊙ (ν g_n + 2 (c_k - z_n));
    ∂/∂s = Σ_n (ν g_n + 2 (c_{k_n} - z_n)) ⊙ e_{k_n};  ∂/∂b = Σ_n (ν g_n + 2 (c_{k_n} - z_n)).
    """
    z, e, s, b, _ = _setup(5)

    def loss(z, e, s, b):
        q = quantizers.quantize(z, quantizers.affine_codebook(e, s, b))
        z_q = quantizers.synchronized_update(z, q.codes, nu)
        return jnp.sum(jnp.sin(z_q)) + jnp.sum(jnp.square(jax.lax.stop_gradient(z) - q.codes)), q.indices

    (gz, ge, gs, gb), idx = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(z, e, s, b)
    idx = np.asarray(idx)
    zn, en, sn, bn = _np(z, e, s, b)
    c = sn[None] * en + bn[None]
    np.testing.assert_array_equal(idx, np.argmin(((zn[:, None] - c[None]) ** 2).sum(-1), -1))
    g = np.cos(c[idx])
    r = nu * g + 2.0 * (c[idx] - zn)
    want_e = np.zeros((K, D))
    np.add.at(want_e, idx, r * sn[None])
    np.testing.assert_allclose(gz, g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ge, want_e, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gs, np.sum(r * en[idx], 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gb, np.sum(r, 0), rtol=1e-4, atol=1e-5)


def test_nu_zero_is_plain_straight_through_exactly():
    z, e, _, _, w = _setup(6)
    codes = e[jnp.arange(z.shape[0]) % K]

    def grads(f):
        return jax.grad(lambda a, c: jnp.sum(w * jnp.tanh(f(a, c))), argnums=(0, 1))(z, codes)

    sync = lambda a, c: quantizers.synchronized_update(a, c, 0.0)
    np.testing.assert_array_equal(sync(z, codes), quantizers.straight_through(z, codes))
    for got, want in zip(grads(sync), grads(quantizers.straight_through)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(grads(sync)[1], 0.0)
    # with the rotation trick: ν = 0 is the rotation trick
    rot = lambda a, c: quantizers.synchronized_update(a, c, 0, rotation_trick=True)
    for got, want in zip(grads(rot), grads(quantizers.rotation_trick)):
        np.testing.assert_array_equal(got, want)


def test_sync_with_the_rotation_trick():
    z, e, _, _, w = _setup(7)
    codes = e[jnp.arange(z.shape[0]) % K]
    gz, gc = jax.grad(lambda a, c: jnp.sum(w * quantizers.synchronized_update(a, c, 0.5, rotation_trick=True)),
                      argnums=(0, 1))(z, codes)
    np.testing.assert_allclose(gz, jax.vjp(lambda a: quantizers.rotation_trick(a, codes), z)[1](w)[0], rtol=1e-6)
    np.testing.assert_allclose(gc, 0.5 * np.asarray(w), rtol=1e-6)


# ---------------------------------------------------------------- the module


def _vq(**kw):
    return VectorQuantizer(K, D, rngs=nnx.Rngs(0), **kw)


def test_module_parameters_and_effective_codes():
    q = _vq(affine=True, sync_nu=0.5)
    assert q.affine and q.sync_nu == 0.5
    assert isinstance(q.scale, nnx.Param) and isinstance(q.shift, nnx.Param)
    np.testing.assert_array_equal(q.scale[...], np.ones(D))
    np.testing.assert_array_equal(q.shift[...], np.zeros(D))
    _, _, s, b, _ = _setup(8)
    q.scale[...], q.shift[...] = s, b
    c = quantizers.affine_codebook(q.codebook[...], s, b)
    np.testing.assert_allclose(q.codebook_vectors(), c, rtol=1e-6)
    idx = jnp.arange(K)[::-1]
    np.testing.assert_allclose(q.decode(idx), np.asarray(c)[::-1], rtol=1e-6)
    z = 0.3 * jax.random.normal(jax.random.key(9), (12, D))
    np.testing.assert_array_equal(q.encode(z), quantizers.nearest_code(z, c))
    out = q(z)
    np.testing.assert_array_equal(out.indices, quantizers.nearest_code(z, c))
    np.testing.assert_allclose(out.z_q, np.asarray(c)[np.asarray(out.indices)], rtol=1e-6)
    # cosine: the l2-normalised affine codes
    qc = _vq(affine=True, cosine=True)
    qc.scale[...], qc.shift[...] = s, b
    np.testing.assert_allclose(qc.codebook_vectors(),
                               quantizers.l2_normalize(quantizers.affine_codebook(qc.codebook[...], s, b)), rtol=1e-6)
    # no affine: no scale/shift parameters
    plain = _vq()
    assert not hasattr(plain, "scale") and not plain.affine and plain.sync_nu == 0.0


def test_module_gradients_by_hand():
    """Task loss Σ w ⊙ z_q plus the codebook loss: ∂/∂Params of the module as in the pure test."""
    nu = 0.75
    q = _vq(affine=True, sync_nu=nu)
    _, _, s, b, _ = _setup(10)
    q.scale[...], q.shift[...] = s, b
    z = 0.3 * jax.random.normal(jax.random.key(11), (12, D))
    w = jax.random.normal(jax.random.key(12), (12, D))

    def loss(m, z):
        out = m(z)
        return jnp.sum(w * out.z_q) + jnp.sum(out.codebook_loss) + 0.25 * jnp.sum(out.commitment_loss)

    grads = nnx.grad(loss)(q, z)
    gz = jax.grad(lambda a: loss(q, a))(z)
    idx = np.asarray(q(z).indices)
    zn, en, sn, bn, wn = _np(z, q.codebook[...], s, b, w)
    c = sn[None] * en + bn[None]
    r = nu * wn + 2.0 * (c[idx] - zn)
    want_e = np.zeros((K, D))
    np.add.at(want_e, idx, r * sn[None])
    np.testing.assert_allclose(grads["codebook"][...], want_e, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["scale"][...], np.sum(r * en[idx], 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["shift"][...], np.sum(r, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gz, wn + 0.25 * 2.0 * (zn - c[idx]), rtol=1e-4, atol=1e-5)  # task + β commitment


def test_module_sync_zero_equals_plain_module():
    z = 0.3 * jax.random.normal(jax.random.key(13), (12, D))
    w = jax.random.normal(jax.random.key(14), (12, D))
    loss = lambda m, z: jnp.sum(w * jnp.sin(m(z).z_q)) + jnp.sum(m(z).codebook_loss)
    a, b = _vq(sync_nu=0.0), _vq()
    np.testing.assert_array_equal(a(z).z_q, b(z).z_q)
    np.testing.assert_array_equal(nnx.grad(loss)(a, z)["codebook"][...], nnx.grad(loss)(b, z)["codebook"][...])
    np.testing.assert_array_equal(jax.grad(lambda x: loss(a, x))(z), jax.grad(lambda x: loss(b, x))(z))
    # affine at its initialisation (s = 1, b = 0): the plain quantizer's outputs
    c = _vq(affine=True)
    out_c, out_b = c(z), b(z)
    np.testing.assert_array_equal(out_c.z_q, out_b.z_q)
    np.testing.assert_array_equal(out_c.indices, out_b.indices)
    np.testing.assert_array_equal(out_c.codebook_loss, out_b.codebook_loss)


def test_module_bfloat16_input_quantizes_in_float32():
    q = _vq(affine=True, sync_nu=0.5)
    z = 0.3 * jax.random.normal(jax.random.key(15), (12, D))
    zb = z.astype(jnp.bfloat16)
    out, ref = q(zb), q(zb.astype(jnp.float32))
    assert out.z_q.dtype == jnp.bfloat16 and out.codebook_loss.dtype == jnp.float32
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_array_equal(out.codebook_loss, ref.codebook_loss)
    g = jax.grad(lambda a: jnp.sum(q(a).z_q.astype(jnp.float32)))(zb)
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_module_with_dead_code_restarts_keeps_restarted_codes_exact():
    """A restart sets the effective (affine) code to the encoder output it picked."""
    q = VectorQuantizer(K, D, affine=True, sync_nu=0.5, dead_code_threshold=100.0, decay=0.0, rngs=nnx.Rngs(0))
    q.scale[...], q.shift[...] = jnp.full((D,), 2.0), jnp.full((D,), 0.5)
    z = jax.random.normal(jax.random.key(16), (K, D))
    out = q(z, key=jax.random.key(17))
    assert int(out.restarted) == K  # every code is below 100 uses
    codes = np.asarray(q.codebook_vectors())
    zn = np.asarray(z)
    assert all(np.min(np.abs(zn - c).sum(-1)) < 1e-5 for c in codes)  # each code is one of the z rows


def test_make_quantizer_and_module_errors():
    q = make_quantizer("vq", num_codes=K, code_dim=D, affine=True, sync_nu=0.3, rngs=nnx.Rngs(0))
    assert isinstance(q, VectorQuantizer) and q.affine and q.sync_nu == 0.3
    for kind in ("ema", "residual", "fsq", "simvq"):
        with pytest.raises(ValueError, match="`affine` and `sync_nu` need kind='vq'"):
            make_quantizer(kind, num_codes=K, code_dim=D, affine=True, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="`affine` and `sync_nu` need kind='vq'"):
            make_quantizer(kind, num_codes=K, code_dim=D, sync_nu=0.5, rngs=nnx.Rngs(0))
    for bad in (-0.1, float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(ValueError, match="`sync_nu` must be a finite real number >= 0"):
            _vq(sync_nu=bad)


def test_pure_function_errors_name_the_argument():
    z, e, s, b, _ = _setup(18)
    with pytest.raises(ValueError, match=r"`codebook` must be \[K, D\]"):
        quantizers.affine_codebook(e[0], s, b)
    with pytest.raises(ValueError, match=r"`scale` must be \[D\] with D = codebook.shape\[1\] = 3"):
        quantizers.affine_codebook(e, s[:2], b)
    with pytest.raises(ValueError, match=r"`shift` must be \[D\]"):
        quantizers.affine_codebook(e, s, b[None])
    codes = e[:3]
    with pytest.raises(ValueError, match="`z` and `codes` must be"):
        quantizers.synchronized_update(z, codes, 0.5)
    for bad in (-1.0, float("nan"), float("inf"), jnp.ones(2), "1", True, None):
        with pytest.raises(ValueError, match="`nu` must be a finite real number >= 0"):
            quantizers.synchronized_update(z, z, bad)


# ---------------------------------------------------------------- experiment flags and training


def test_experiment_flags_build_the_quantizer_and_old_configs_load():
    c = vqvae_mnist.get_config()
    assert c.model.quantizer.codebook.affine is False and c.model.quantizer.codebook.sync_nu == 0.0
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4, affine=True, sync_nu=0.5)
    vqvae_mnist.check_config(c)
    q = vqvae_mnist.make_model(c, nnx.Rngs(0), (28, 28, 1)).quantizer
    assert isinstance(q, VectorQuantizer) and q.affine and q.sync_nu == 0.5
    old = vqvae_mnist.get_config()  # a config saved before the flags existed
    del old.model.quantizer.codebook["affine"], old.model.quantizer.codebook["sync_nu"]
    vqvae_mnist.check_config(old)
    q_old = vqvae_mnist.make_model(old, nnx.Rngs(0), (28, 28, 1)).quantizer
    assert not q_old.affine and q_old.sync_nu == 0.0
    assert not training.unknown_rules(vqvae_mnist.get_config(), vqvae_mnist.CONFIG_RULES)


def test_experiment_flag_errors_name_the_flag():
    c = vqvae_mnist.get_config()
    c.model.quantizer.codebook.sync_nu = -0.5
    with pytest.raises(ValueError, match=r"model\.quantizer\.codebook\.sync_nu"):
        vqvae_mnist.check_config(c)
    c = vqvae_mnist.get_config()
    c.model.quantizer.kind = "ema"
    c.model.quantizer.codebook.affine = True
    with pytest.raises(ValueError, match=r"model\.quantizer\.codebook\.affine.*need.*model\.quantizer\.kind"):
        vqvae_mnist.check_config(c)


def test_tiny_vqvae_trains_with_affine_codes_and_the_synchronised_update():
    quantizer = VectorQuantizer(16, 4, affine=True, sync_nu=0.5, rngs=nnx.Rngs(1))
    model, history = train_tiny_vqvae(quantizer, 2)
    assert np.all(np.isfinite(history))
    q = model.quantizer
    assert not np.allclose(q.scale[...], 1.0) and not np.allclose(q.shift[...], 0.0)  # both learned


def test_experiment_trains_two_steps_with_affine_and_sync(idx_dir, tmp_path):
    c = vqvae_mnist.get_config()
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4, affine=True, sync_nu=0.5)
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update(steps=2, log_every=1, checkpoint_every=2, eval_every=0, micro_batches=0)
    summary = training.train_and_evaluate(c, str(tmp_path), vqvae_mnist.build(c), devices=jax.devices()[:1],
                                          log=lambda s: None)
    assert summary["steps"] == 2
    assert np.isfinite(summary["test"]["loss"]) and 1.0 <= summary["test"]["perplexity"] <= 16
