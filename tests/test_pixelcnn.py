"""vqjax.nn.GatedPixelCNN and sample_codes: causality (by gradients and by codes), conditioning,
sampling (determinism, greedy decoding, row-wise = full sampler, empirical distribution), errors, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tests._numpy_init import numpy_init as _numpy_init
from vqjax.nn import GatedPixelCNN, sample_codes
from vqjax.nn._sampling import _sample_full, _sample_rows

pytestmark = pytest.mark.usefixtures("strict_promotion")  # the prior and sampler are strict-clean

K, HID, C_S = 5, 8, 3
SHAPE = (3, 4, 5)  # (B, H, W) of the sampling tests


def _new_prior(*, num_layers=2, kernel_size=3, num_classes=0, cond_channels=0, num_codes=K, seed=0):
    return _numpy_init(lambda: GatedPixelCNN(
        num_codes, hidden=HID, num_layers=num_layers, kernel_size=kernel_size, num_classes=num_classes,
        cond_channels=cond_channels, out_hidden=16, rngs=nnx.Rngs(0)), seed)


@functools.cache
def _cached_prior(**kw):
    return _new_prior(**kw)


def _prior(**kw):
    """A shared prior of this configuration; tests that modify one use :func:`_new_prior`."""
    return _cached_prior(**kw)


# One compilation per prior configuration and input shape.
_logits = jax.jit(lambda m, c, y=None, s=None: m(c, labels=y, cond=s))


def _conditioning(prior, b, h, w, seed=1):
    r = np.random.default_rng(seed)
    labels = cond = None
    if prior.num_classes:
        labels = jnp.asarray(r.integers(0, prior.num_classes, b).astype(np.int32))
    if prior.cond_channels:
        cond = jnp.asarray(r.normal(size=(b, h, w, prior.cond_channels)).astype(np.float32))
    return labels, cond


def _codes(b, h, w, seed=2, k=K):
    return jnp.asarray(np.random.default_rng(seed).integers(0, k, (b, h, w)).astype(np.int32))


def _receptive_field(h, w, num_layers, kernel_size):
    """``[H, W, H, W]`` bool: does output (i, j) see input (i', j')? Written out from the design:
    the current row ``L·r + 1`` columns to the left (mask A, then ``r`` per layer), and the
    ``L·r + 1`` rows above within ``L·r`` columns either side (vertical stack shifted one row down)."""
    reach = num_layers * (kernel_size // 2)
    mask = np.zeros((h, w, h, w), bool)
    for i in range(h):
        for j in range(w):
            for ii in range(h):
                for jj in range(w):
                    d, c = i - ii, jj - j
                    mask[i, j, ii, jj] = ((d == 0 and 1 <= -c <= reach + 1)
                                          or (1 <= d <= reach + 1 and abs(c) <= reach))
    return mask


def _before(h, w):
    """``[H, W, H, W]`` bool: (i', j') strictly before (i, j) in raster order."""
    r = np.arange(h * w).reshape(h, w)
    return r[:, :, None, None] > r[None, None, :, :]


# --------------------------------------------------------------------------- causality


def _gradient_support(prior, shape, labels=None, cond=None, points=3):
    """``[B, H, W, B, H, W]`` bool: is d logits[b, i, j].sum() / d e[b', i', j'] nonzero at one of
    ``points`` random embeddings e? (At a single point a ReLU of the output layer may be dead at a
    position, which would hide its whole receptive field; the union over points shows the structure.)"""
    f = jax.jacrev(lambda e: prior.logits_from_embedding(e, labels=labels, cond=cond).sum(-1))
    es = jnp.asarray(np.random.default_rng(0).normal(size=(points, *shape, HID)).astype(np.float32))
    jac = jax.jit(jax.vmap(f))(es)  # [P, B, H, W, B, H, W, HID]
    return np.asarray(jnp.any(jac != 0, axis=(0, -1)))


@pytest.mark.parametrize("kind, num_layers, kernel_size", [("labels", 4, 3), ("cond", 4, 3)])
def test_gradient_causality_without_blind_spot(kind, num_layers, kernel_size):
    """d logits[b, i, j] / d e[b', i', j'] is exactly 0 unless b' = b and (i', j') is before (i, j),
    and nonzero at every earlier position: no blind spot (with L·r >= W - 1 columns either side
    and L·r + 1 >= H - 1 rows up, the receptive field covers the whole past)."""
    b, h, w = 2, 5, 5
    prior = _prior(num_layers=num_layers, kernel_size=kernel_size,
                   num_classes=3 if kind == "labels" else 0, cond_channels=C_S if kind == "cond" else 0)
    labels, cond = _conditioning(prior, b, h, w)
    seen = _gradient_support(prior, (b, h, w), labels, cond)
    before = _before(h, w)
    assert before.sum() == (h * w) * (h * w - 1) // 2
    np.testing.assert_array_equal(_receptive_field(h, w, num_layers, kernel_size), before)
    for bo in range(b):
        for bi in range(b):
            np.testing.assert_array_equal(seen[bo, :, :, bi], before if bo == bi else False)


@pytest.mark.parametrize("num_layers, kernel_size", [(2, 3), (1, 5)])
def test_gradient_support_is_exactly_the_receptive_field(num_layers, kernel_size):
    """A shallow prior on a 6x6 grid: the gradient is nonzero exactly on the designed receptive field."""
    h = w = 6
    prior = _prior(num_layers=num_layers, kernel_size=kernel_size, num_classes=3)
    labels, _ = _conditioning(prior, 1, h, w)
    seen = _gradient_support(prior, (1, h, w), labels)[0, :, :, 0]
    field = _receptive_field(h, w, num_layers, kernel_size)
    before = _before(h, w)
    assert np.all(field <= before) and field.sum() < before.sum()  # a strict subset of the past: a real test
    np.testing.assert_array_equal(seen, field)


def test_changing_a_code_changes_no_logit_at_or_before_it():
    h, w = 4, 5
    prior = _prior(num_classes=3, cond_channels=C_S)  # both kinds of conditioning
    codes = _codes(1, h, w)
    labels, cond = _conditioning(prior, 1, h, w)
    n = h * w
    # Row p < n of the batch: `codes` with the code at raster position p changed; row n: `codes`.
    flat = np.tile(np.asarray(codes).reshape(1, n), (n + 1, 1))
    flat[np.arange(n), np.arange(n)] = (flat[np.arange(n), np.arange(n)] + 1 + np.arange(n) % (K - 1)) % K
    rep = lambda a: None if a is None else jnp.repeat(a, n + 1, axis=0)
    out = np.asarray(_logits(prior, jnp.asarray(flat.reshape(n + 1, h, w)), rep(labels), rep(cond)))
    out, base = out[:n].reshape(n, n, K), out[n].reshape(n, K)
    for p in range(n):
        np.testing.assert_allclose(out[p, :p + 1], base[:p + 1], rtol=1e-6, atol=1e-6, err_msg=f"at {p}")
        if p + 1 < n:  # and some later position does see it
            assert np.abs(out[p, p + 1:] - base[p + 1:]).max() > 1e-5, p


# --------------------------------------------------------------------------- conditioning


def test_labels_change_the_logits_everywhere():
    prior = _prior(num_classes=3)
    codes = _codes(*SHAPE)
    a = _logits(prior, codes, jnp.array([0, 1, 2]))
    b = _logits(prior, codes, jnp.array([2, 1, 2]))
    assert np.all(np.abs(np.asarray(a[0] - b[0])).max(-1) > 1e-6)  # every position of example 0
    np.testing.assert_array_equal(a[1:], b[1:])  # examples 1, 2: same labels, same logits


def test_cond_changes_the_logits_and_each_position_sees_its_own_cond():
    _, h, w = SHAPE
    prior = _prior(cond_channels=C_S)
    codes = _codes(*SHAPE)
    _, cond = _conditioning(prior, *SHAPE)
    a = _logits(prior, codes, None, cond)
    b = _logits(prior, codes, None, cond.at[0].multiply(-1.0))
    assert np.all(np.abs(np.asarray(a[0] - b[0])).max(-1) > 1e-6)
    np.testing.assert_array_equal(a[1:], b[1:])
    # d logits[0, i, j] / d cond[0, i, j] != 0 at every (i, j), the first position included.
    e = prior.embed(codes)
    jac = jax.jit(jax.jacrev(lambda s: prior.logits_from_embedding(e, cond=s)[0].sum(-1)))(cond)
    # jac: [H, W, B, H, W, C_s]; own[i, j] = any(jac[i, j, 0, i, j] != 0).
    own = np.asarray(jnp.any(jac[np.arange(h)[:, None], np.arange(w)[None], 0,
                                 np.arange(h)[:, None], np.arange(w)[None]] != 0, axis=-1))
    assert own.shape == (h, w) and own.all()


# --------------------------------------------------------------------------- sampling


def test_sample_shape_dtype_range_and_determinism():
    prior = _prior(num_classes=3)
    labels = jnp.array([0, 1, 2])
    shape = SHAPE
    s1 = sample_codes(prior, shape, key=jax.random.key(0), labels=labels)
    s2 = sample_codes(prior, shape, key=jax.random.key(0), labels=labels)
    s3 = sample_codes(prior, shape, key=jax.random.key(1), labels=labels)
    assert s1.shape == shape and s1.dtype == jnp.int32
    assert int(s1.min()) >= 0 and int(s1.max()) < K
    np.testing.assert_array_equal(s1, s2)
    assert np.any(np.asarray(s1) != np.asarray(s3))


def _greedy(prior, shape, labels=None, cond=None):
    """Greedy decoding written out: the whole model at every position, argmax, in Python."""
    codes = np.zeros(shape, np.int32)
    for i in range(shape[1]):
        for j in range(shape[2]):
            logits = np.asarray(_logits(prior, jnp.asarray(codes), labels, cond))
            codes[:, i, j] = np.argmax(logits[:, i, j], axis=-1)
    return codes


@pytest.mark.parametrize("kind", ["labels", "cond"])
def test_temperature_zero_is_greedy_decoding(kind):
    shape = SHAPE
    prior = _prior(num_classes=3 if kind == "labels" else 0, cond_channels=C_S if kind == "cond" else 0)
    labels, cond = _conditioning(prior, *shape)
    want = _greedy(prior, shape, labels, cond)
    assert len(np.unique(want)) > 1  # not a constant grid
    for key in (0, 1):
        got = sample_codes(prior, shape, key=jax.random.key(key), labels=labels, cond=cond, temperature=0.0)
        np.testing.assert_array_equal(got, want)
    tiny = sample_codes(prior, shape, key=jax.random.key(5), labels=labels, cond=cond, temperature=1e-6)
    np.testing.assert_array_equal(tiny, want)
    # ... and temperature 1 is not greedy.
    warm = sample_codes(prior, shape, key=jax.random.key(0), labels=labels, cond=cond)
    assert np.any(np.asarray(warm) != want)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
@pytest.mark.parametrize("kind", ["labels", "cond"])
def test_row_sampler_equals_full_sampler(kind, temperature):
    shape = SHAPE
    prior = _prior(num_classes=3 if kind == "labels" else 0, cond_channels=C_S if kind == "cond" else 0)
    labels, cond = _conditioning(prior, *shape)
    graphdef, state = nnx.split(prior)
    args = (jax.random.key(7), labels, cond, jnp.float32(temperature))
    rows = _sample_rows(graphdef, state, *args, shape=shape)
    full = _sample_full(graphdef, state, *args, shape=shape)
    np.testing.assert_array_equal(rows, full)
    np.testing.assert_array_equal(sample_codes(prior, shape, key=jax.random.key(7), labels=labels, cond=cond,
                                               temperature=temperature), rows)
    if temperature:
        assert len(np.unique(np.asarray(rows))) > 2


def test_a_dominant_code_is_always_drawn():
    prior = _new_prior(num_classes=3)
    prior.out.bias[...] = jnp.where(jnp.arange(K) == 3, 60.0, -60.0)
    for t in (1.0, 2.0, 0.0):
        s = sample_codes(prior, SHAPE, key=jax.random.key(0), labels=jnp.arange(SHAPE[0]) % 3, temperature=t)
        np.testing.assert_array_equal(s, 3)


def _chi2(samples, probs):
    counts = np.bincount(samples, minlength=len(probs))
    expected = probs * len(samples)
    return float(np.sum((counts - expected) ** 2 / expected))


def test_first_position_follows_softmax_of_logits_over_temperature():
    prior = _new_prior(num_classes=3)
    prior.out.bias[...] = jnp.array([1.5, 0.0, -1.0, 0.8, -0.3])  # a distribution far from uniform
    n = 4000
    # The first position's logits: a function of the label only.
    logits = np.asarray(_logits(prior, _codes(*SHAPE), jnp.full((SHAPE[0],), 2))[0, 0, 0], np.float64)
    threshold = stats.chi2.ppf(0.999, K - 1)
    draws = {t: np.asarray(sample_codes(prior, (n, 1, 1), key=jax.random.key(11), labels=jnp.full((n,), 2),
                                        temperature=t))[:, 0, 0] for t in (1.0, 2.0)}
    softmax = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    assert softmax(logits).min() > 0.02 and softmax(logits).max() < 0.8
    assert _chi2(draws[1.0], softmax(logits)) < threshold
    assert _chi2(draws[2.0], softmax(logits / 2)) < threshold
    # The test has power: each temperature's draws reject the other's distribution.
    assert _chi2(draws[2.0], softmax(logits)) > 10 * threshold
    assert _chi2(draws[1.0], softmax(logits / 2)) > 10 * threshold


# --------------------------------------------------------------------------- errors


def test_conditioning_errors_name_the_argument():
    conditional, spatial, plain = _prior(num_classes=3), _prior(cond_channels=C_S), _prior()
    codes = _codes(2, 3, 3)
    with pytest.raises(ValueError, match="`labels`"):
        conditional(codes)
    with pytest.raises(ValueError, match="`labels`"):
        conditional(codes, labels=jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="`labels`"):
        plain(codes, labels=jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="`cond`"):
        spatial(codes)
    with pytest.raises(ValueError, match="`cond`"):
        spatial(codes, cond=jnp.zeros((2, 3, 3, C_S + 1)))
    with pytest.raises(ValueError, match="`cond`"):
        spatial(codes, cond=jnp.zeros((2, 3, 4, C_S)))
    with pytest.raises(ValueError, match="`cond`"):
        plain(codes, cond=jnp.zeros((2, 3, 3, C_S)))
    with pytest.raises(ValueError, match="`codes`"):
        plain(codes.reshape(2, 9))
    with pytest.raises(ValueError, match="`codes`"):
        plain(codes[..., None])
    with pytest.raises(ValueError, match="`labels`"):  # sample_codes checks too, before tracing
        sample_codes(conditional, (2, 3, 3), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`cond`"):
        sample_codes(spatial, (2, 3, 3), key=jax.random.key(0), cond=jnp.zeros((2, 3, 3, 1)))


@pytest.mark.parametrize("kw, match", [
    ({"kernel_size": 4}, "kernel_size"), ({"kernel_size": 1}, "kernel_size"), ({"num_codes": 0}, "num_codes"),
    ({"hidden": 0}, "hidden"), ({"num_layers": 0}, "num_layers"), ({"num_classes": -1}, "num_classes"),
    ({"cond_channels": -2}, "cond_channels"),
])
def test_bad_config_is_a_clear_error(kw, match):
    kw = {"num_codes": K, "hidden": HID, "num_layers": 2, **kw}
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(kw.pop("num_codes"), rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("shape, kw, match", [((2, 3), {}, "shape"), ((2, 3, 3, 1), {}, "shape"),
                                              ((0, 3, 3), {}, r"shape\[0\]"), ((2, 3, 0), {}, r"shape\[2\]"),
                                              ((2, 3, 3), {"temperature": -0.5}, "temperature")])
def test_bad_sampling_arguments_are_clear_errors(shape, kw, match):
    with pytest.raises(ValueError, match=match):
        sample_codes(_prior(num_layers=1), shape, key=jax.random.key(0), **kw)


# --------------------------------------------------------------------------- jit


def test_jit_and_nnx_jit_match_eager():
    prior = _prior(num_classes=3, cond_channels=C_S)  # both kinds of conditioning
    codes = _codes(2, 4, 4)
    labels, cond = _conditioning(prior, 2, 4, 4)
    eager = prior(codes, labels=labels, cond=cond)
    assert eager.shape == (2, 4, 4, K)
    jitted = _logits(prior, codes, labels, cond)  # jax.jit, the module a pytree argument
    nnx_jitted = nnx.jit(lambda m, c, y, s: m(c, labels=y, cond=s))(prior, codes, labels, cond)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx_jitted, eager, rtol=1e-5, atol=1e-6)
    # Errors are raised at trace time under jit too.
    with pytest.raises(ValueError, match="`labels`"):
        jax.jit(lambda m, c: m(c))(prior, codes)
