"""vqjax.nn.VQVAE2 and HierarchicalPrior, and their objectives (vqvae2_objective, prior_objective,
hierarchical_prior_objective) against NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests._numpy_init import numpy_init as _numpy_init
from vqjax import objectives
from vqjax.nn import (
    VQVAE2,
    FiniteScalarQuantizer,
    GatedPixelCNN,
    HierarchicalPrior,
    ResidualVectorQuantizer,
    VectorQuantizer,
    sample_codes,
)

pytestmark = pytest.mark.usefixtures("strict_promotion")  # the models and objectives are strict-clean

K_T, K_B, D = 6, 7, 4  # codebook sizes and code dimension of the small models
H_T, W_T = 3, 3  # top grid of the hierarchical prior tests (bottom: 6x6)
N_CLASSES = 3


def _vqvae2(top=None, bottom=None, hidden=8):
    def make():
        rngs = nnx.Rngs(0)
        return VQVAE2(top=VectorQuantizer(K_T, D, rngs=rngs) if top is None else top(rngs),
                      bottom=VectorQuantizer(K_B, D, rngs=rngs) if bottom is None else bottom(rngs),
                      hidden=hidden, residual_hidden=4, num_residual=1, rngs=rngs)
    return _numpy_init(make, 0)


@pytest.fixture(scope="module")
def model():
    m = _vqvae2()
    m.eval()
    return m


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype(np.float32))


@pytest.fixture(scope="module")
def prior():
    return _numpy_init(lambda: HierarchicalPrior((K_T, K_B), num_classes=N_CLASSES, hidden=8, num_layers=2,
                                                 bottom_hidden=8, bottom_layers=3, cond_hidden=8,
                                                 rngs=nnx.Rngs(0)), 2)


# One compilation per model configuration and input shape.
_forward = jax.jit(lambda m, x: m(x))
_encode = jax.jit(lambda m, x: m.encode(x))
_decode = jax.jit(lambda m, t, b, image_shape: m.decode(t, b, image_shape=image_shape), static_argnums=3)
_objective = jax.jit(lambda m, x, w, beta: objectives.vqvae2_objective(m, {"image": x}, beta=beta, weights=w))


def _np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def _np_nll(logits, codes):
    """``-Σ_ij log softmax(logits_ij)[c_ij]`` per example, in float64."""
    lp = _np_log_softmax(logits)
    return -np.take_along_axis(lp, np.asarray(codes)[..., None], -1)[..., 0].sum(axis=(1, 2))


def _np_bernoulli_nll(logits, x):
    logits, x = np.asarray(logits, np.float64), np.asarray(x, np.float64)
    return np.sum(np.logaddexp(0.0, logits) - x * logits, axis=(1, 2, 3))


def _codes(shape, k, seed):
    return jnp.asarray(np.random.default_rng(seed).integers(0, k, shape).astype(np.int32))


# --------------------------------------------------------------------------- VQVAE2


def test_shapes_encode_and_decode_on_28x28(model, images):
    out = _forward(model, images)
    assert out.logits.shape == (3, 28, 28, 1)
    assert out.top_indices.shape == (3, 4, 4) and out.bottom_indices.shape == (3, 8, 8)
    assert out.top_indices.dtype == out.bottom_indices.dtype == jnp.int32
    assert out.codebook_loss.shape == out.commitment_loss.shape == (3,)
    assert out.restarted.shape == ()
    assert 0 <= int(out.top_indices.min()) and int(out.top_indices.max()) < K_T
    assert 0 <= int(out.bottom_indices.min()) and int(out.bottom_indices.max()) < K_B
    assert len(np.unique(out.top_indices)) > 1 and len(np.unique(out.bottom_indices)) > 1
    top, bottom = _encode(model, images)
    np.testing.assert_array_equal(top, out.top_indices)
    np.testing.assert_array_equal(bottom, out.bottom_indices)
    np.testing.assert_allclose(_decode(model, top, bottom, (28, 28)), out.logits, rtol=1e-5, atol=1e-5)
    # decode reads the codes: other top codes or other bottom codes give other logits.
    assert np.abs(np.asarray(_decode(model, (top + 1) % K_T, bottom, (28, 28)) - out.logits)).max() > 1e-4
    assert np.abs(np.asarray(_decode(model, top, (bottom + 1) % K_B, (28, 28)) - out.logits)).max() > 1e-4


def test_28x28_is_the_centre_of_the_zero_padded_32x32(model, images):
    x32 = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    out28, out32 = _forward(model, images), _forward(model, x32)
    assert out32.logits.shape == (3, 32, 32, 1)
    assert out32.top_indices.shape == (3, 4, 4) and out32.bottom_indices.shape == (3, 8, 8)
    np.testing.assert_array_equal(out28.top_indices, out32.top_indices)
    np.testing.assert_array_equal(out28.bottom_indices, out32.bottom_indices)
    np.testing.assert_allclose(out28.logits, out32.logits[:, 2:30, 2:30], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_decode(model, out32.top_indices, out32.bottom_indices, (32, 32)),
                               out32.logits, rtol=1e-5, atol=1e-5)


def test_vq_losses_sum_both_levels(model, images):
    """codebook_loss = Σ_grid ||z_t - e_t||² + Σ_grid ||z_b - e_b||², against the model's own features."""
    out = _forward(model, images)

    @jax.jit
    def features(m, x, top):  # the two levels' encoder outputs, from the model's parts
        h_b = m.encoder_bottom(m._pad(x))
        return m._top_features(h_b), m.bottom_project(jnp.concatenate(
            [h_b, m._decode_top(m.quantizer_top.decode(top))], -1))

    z_t, z_b = (np.asarray(z, np.float64) for z in features(model, images, out.top_indices))
    e_t = np.asarray(model.quantizer_top.codebook[...], np.float64)
    e_b = np.asarray(model.quantizer_bottom.codebook[...], np.float64)
    # The indices are the nearest codes of each level's features ...
    np.testing.assert_array_equal(out.top_indices, np.argmin(((z_t[..., None, :] - e_t) ** 2).sum(-1), -1))
    np.testing.assert_array_equal(out.bottom_indices, np.argmin(((z_b[..., None, :] - e_b) ** 2).sum(-1), -1))
    # ... and the losses their squared distances, summed over both grids.
    want = (((z_t - e_t[np.asarray(out.top_indices)]) ** 2).sum(axis=(1, 2, 3))
            + ((z_b - e_b[np.asarray(out.bottom_indices)]) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(out.codebook_loss, want, rtol=1e-4)
    np.testing.assert_allclose(out.commitment_loss, want, rtol=1e-4)


def test_bad_configuration_and_input_are_clear_errors(model):
    with pytest.raises(ValueError, match="code_dim"):
        _vqvae2(bottom=lambda rngs: VectorQuantizer(K_B, D + 1, rngs=rngs))
    with pytest.raises(ValueError, match="code_dim"):
        _vqvae2(top=lambda rngs: FiniteScalarQuantizer((3, 3, 3)))
    with pytest.raises(ValueError, match="`top` must be a one-stage"):
        _vqvae2(top=lambda rngs: ResidualVectorQuantizer(K_T, D, 2, rngs=rngs))
    with pytest.raises(ValueError, match="`bottom` must be a one-stage"):
        _vqvae2(bottom=lambda rngs: ResidualVectorQuantizer(K_B, D, 3, rngs=rngs))
    with pytest.raises(ValueError, match="hidden"):
        _vqvae2(hidden=7)
    fsq = _vqvae2(top=lambda rngs: FiniteScalarQuantizer((3, 3, 2, 2)))  # FSQ with D = 4: fine
    assert fsq.num_codes == (36, K_B)
    with pytest.raises(ValueError, match="B, H, W, C"):
        model(jnp.zeros((28, 28, 1)))


def test_reconstruction_gradient_reaches_both_encoders_through_straight_through(model, images):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {"image": images}

    def term(params, name):
        return objectives.vqvae2_objective(nnx.merge(graphdef, params, rest), batch)[1][name]

    grad_recon, grad_codebook = jax.jit(lambda p: (jax.grad(term)(p, "reconstruction"),
                                                   jax.grad(term)(p, "codebook")))(params)
    grads = grad_recon
    for part in ("encoder_bottom", "encoder_top_down", "encoder_top_project", "bottom_project", "decoder"):
        leaves = jax.tree.leaves(grads[part])
        assert leaves and all(np.isfinite(g).all() for g in leaves), part
        assert any(np.abs(g).max() > 0 for g in leaves), part
    # Only the codebook loss moves the codebooks; the reconstruction goes straight through them.
    for q in ("quantizer_top", "quantizer_bottom"):
        np.testing.assert_array_equal(grads[q]["codebook"][...], 0.0)
        assert np.abs(np.asarray(grad_codebook[q]["codebook"][...])).max() > 0


@pytest.mark.parametrize("beta", [0.25, 1.5])
def test_vqvae2_objective_is_reconstruction_plus_codebook_plus_beta_commitment(model, images, beta):
    out = _forward(model, images)
    recon = _np_bernoulli_nll(out.logits, images)
    codebook, commitment = (np.asarray(t, np.float64) for t in (out.codebook_loss, out.commitment_loss))
    per = recon + codebook + beta * commitment
    assert np.all(out.codebook_loss > 0)
    loss, m = _objective(model, images, None, beta)  # no weights: the plain mean
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["reconstruction"], recon.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["codebook"], np.mean(out.codebook_loss), rtol=1e-5)
    np.testing.assert_allclose(m["commitment"], beta * np.mean(out.commitment_loss), rtol=1e-5)
    # Per example: a one-hot weight picks one example's loss.
    for b in range(3):
        loss_b, m_b = _objective(model, images, jnp.eye(3)[b], beta)  # (compiled once for all weights)
        np.testing.assert_allclose(loss_b, per[b], rtol=1e-5)
        assert float(m_b["weight"]) == 1.0
    # A zero-weight row does not enter the mean.
    masked, _ = _objective(model, images, jnp.array([1.0, 0.0, 1.0]), beta)
    np.testing.assert_allclose(masked, per[[0, 2]].mean(), rtol=1e-5)


# --------------------------------------------------------------------------- HierarchicalPrior


def _grids(b, seed=3):
    return _codes((b, H_T, W_T), K_T, seed), _codes((b, 2 * H_T, 2 * W_T), K_B, seed + 1)


_call = jax.jit(lambda p, t, b, y: p(t, b, labels=y))
_condition = jax.jit(lambda p, t: p.condition(t))


def test_prior_shapes(prior):
    top, bottom = _grids(2)
    lt, lb = _call(prior, top, bottom, jnp.array([0, 2]))
    assert lt.shape == (2, H_T, W_T, K_T) and lb.shape == (2, 2 * H_T, 2 * W_T, K_B)
    assert _condition(prior, top).shape == (2, 2 * H_T, 2 * W_T, 8)


def test_bottom_logits_depend_on_all_top_codes_top_logits_not_on_bottom(prior):
    top, bottom = _grids(2)
    labels = jnp.array([1, 1])
    lt, lb = _call(prior, top, bottom, labels)
    # The last top code changes the bottom logits, even at bottom position (0, 0): the top is given.
    top2 = top.at[0, H_T - 1, W_T - 1].set((top[0, H_T - 1, W_T - 1] + 1) % K_T)
    lt2, lb2 = _call(prior, top2, bottom, labels)
    assert np.abs(np.asarray(lb2[0, 0, 0] - lb[0, 0, 0])).max() > 1e-6
    np.testing.assert_allclose(lb2[1], lb[1], rtol=1e-6, atol=1e-6)  # other example untouched
    # The top logits are causal in the top codes (the last code changes none of them).
    np.testing.assert_allclose(lt2, lt, rtol=1e-6, atol=1e-6)
    # Changing every bottom code changes no top logit.
    lt3, lb3 = _call(prior, top, (bottom + 1) % K_B, labels)
    np.testing.assert_array_equal(lt3, lt)
    assert np.abs(np.asarray(lb3 - lb)).max() > 1e-4


def test_bottom_logits_are_causal_in_the_bottom_codes(prior):
    h, w = 2 * H_T, 2 * W_T
    top, bottom = _grids(1)
    n = h * w
    flat = np.tile(np.asarray(bottom).reshape(1, n), (n, 1))
    flat[np.arange(n), np.arange(n)] = (flat[np.arange(n), np.arange(n)] + 1) % K_B
    labels = jnp.zeros((n,), jnp.int32)
    _, base = _call(prior, jnp.repeat(top, n, 0), jnp.repeat(bottom, n, 0), labels)
    _, out = _call(prior, jnp.repeat(top, n, 0), jnp.asarray(flat.reshape(n, h, w)), labels)
    base, out = np.asarray(base).reshape(n, n, K_B), np.asarray(out).reshape(n, n, K_B)
    for p in range(n):
        np.testing.assert_allclose(out[p, :p + 1], base[p, :p + 1], rtol=1e-6, atol=1e-6, err_msg=f"at {p}")
        if p + 1 < n:  # and some later position sees it (the receptive field is 3 rows and columns)
            assert np.abs(out[p, p + 1:] - base[p, p + 1:]).max() > 1e-6, p


def test_prior_rejects_mismatched_grids(prior):
    top, bottom = _grids(2)
    labels = jnp.array([0, 1])
    for bad in (bottom[:, :-1], bottom[:1], bottom[..., None], jnp.zeros((2, H_T, W_T), jnp.int32)):
        with pytest.raises(ValueError, match="`bottom` must be"):
            prior(top, bad, labels=labels)
    with pytest.raises(ValueError, match="`labels`"):
        prior(top, bottom)


def test_sample_shapes_range_determinism_and_conditioning(prior):
    labels = jnp.array([0, 1, 2])
    t1, b1 = prior.sample(3, (H_T, W_T), key=jax.random.key(0), labels=labels)
    t2, b2 = prior.sample(3, (H_T, W_T), key=jax.random.key(0), labels=labels)
    t3, b3 = prior.sample(3, (H_T, W_T), key=jax.random.key(1), labels=labels)
    assert t1.shape == (3, H_T, W_T) and b1.shape == (3, 2 * H_T, 2 * W_T)
    assert t1.dtype == b1.dtype == jnp.int32
    assert 0 <= int(t1.min()) and int(t1.max()) < K_T and 0 <= int(b1.min()) and int(b1.max()) < K_B
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(b1, b2)
    assert np.any(np.asarray(t1) != np.asarray(t3)) and np.any(np.asarray(b1) != np.asarray(b3))
    # Greedy: the top is the top prior's greedy decode, the bottom the bottom prior's given that top.
    tg, bg = prior.sample(3, (H_T, W_T), key=jax.random.key(0), labels=labels, temperature=0.0)
    k = jax.random.key(9)
    np.testing.assert_array_equal(tg, sample_codes(prior.top, tg.shape, key=k, labels=labels,
                                                   temperature=0.0))
    np.testing.assert_array_equal(bg, sample_codes(prior.bottom, bg.shape, key=k, labels=labels,
                                                   cond=_condition(prior, tg), temperature=0.0))


# --------------------------------------------------------------------------- prior objectives


_prior_objective = jax.jit(
    lambda p, c, y, s, w: objectives.prior_objective(p, c, labels=y, cond=s, weights=w))
_pixelcnn = jax.jit(lambda p, c, y, s: p(c, labels=y, cond=s))


def test_prior_objective_matches_numpy_and_masks_rows():
    prior = _numpy_init(lambda: GatedPixelCNN(K_B, hidden=8, num_layers=2, num_classes=N_CLASSES,
                                              cond_channels=2, out_hidden=8, rngs=nnx.Rngs(0)), 4)
    codes, labels = _codes((3, 4, 5), K_B, 7), jnp.array([0, 2, 1])
    cond = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 5, 2)).astype(np.float32))
    nll = _np_nll(_pixelcnn(prior, codes, labels, cond), codes)
    assert np.all(nll > 0) and np.ptp(nll) > 1e-3
    loss, m = _prior_objective(prior, codes, labels, cond, jnp.ones(3))
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["nll"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(m["bits_per_code"], nll.mean() / (4 * 5 * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(m["sum/nll"], nll.sum(), rtol=1e-5)
    # A zero-weight row does not change the weighted mean, whatever its codes.
    w = jnp.array([1.0, 1.0, 0.0])
    masked, mm = _prior_objective(prior, codes, labels, cond, w)
    np.testing.assert_allclose(masked, nll[:2].mean(), rtol=1e-5)
    other, _ = _prior_objective(prior, codes.at[2].set((codes[2] + 3) % K_B), labels, cond, w)
    np.testing.assert_allclose(other, masked, rtol=1e-6)
    moved, _ = _prior_objective(prior, codes.at[1].set((codes[1] + 3) % K_B), labels, cond, w)
    assert abs(float(moved) - float(masked)) > 1e-3  # while an unmasked row's codes do count
    assert float(mm["weight"]) == 2.0
    with pytest.raises(ValueError, match="`labels`"):
        objectives.prior_objective(prior, codes, cond=cond)
    with pytest.raises(ValueError, match="`cond`"):
        objectives.prior_objective(prior, codes, labels=labels)


_hierarchical_objective = jax.jit(
    lambda p, t, b, y, w: objectives.hierarchical_prior_objective(p, t, b, labels=y, weights=w))


def test_hierarchical_prior_objective_matches_numpy_and_masks_rows(prior):
    top, bottom = _grids(2, seed=11)
    labels = jnp.array([2, 0])
    lt, lb = _call(prior, top, bottom, labels)
    nll_t, nll_b = _np_nll(lt, top), _np_nll(lb, bottom)
    n_t, n_b = H_T * W_T, 4 * H_T * W_T
    loss, m = _hierarchical_objective(prior, top, bottom, labels, jnp.ones(2))
    np.testing.assert_allclose(loss, (nll_t + nll_b).mean(), rtol=1e-5)
    np.testing.assert_allclose(m["nll"], (nll_t + nll_b).mean(), rtol=1e-5)
    np.testing.assert_allclose(m["bits_top"], nll_t.mean() / (n_t * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(m["bits_bottom"], nll_b.mean() / (n_b * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(m["bits_per_code"], (nll_t + nll_b).mean() / ((n_t + n_b) * math.log(2)),
                               rtol=1e-5)
    w = jnp.array([0.0, 1.0])
    masked, _ = _hierarchical_objective(prior, top, bottom, labels, w)
    np.testing.assert_allclose(masked, nll_t[1] + nll_b[1], rtol=1e-5)
    # Changing the masked row's codes changes nothing; changing the other row's top codes does.
    row0, _ = _hierarchical_objective(prior, top.at[0].set(0), bottom.at[0].set(0), labels, w)
    np.testing.assert_allclose(row0, masked, rtol=1e-6)
    other, _ = _hierarchical_objective(prior, top.at[1].set((top[1] + 1) % K_T), bottom, labels, w)
    assert abs(float(other) - float(masked)) > 1e-3
