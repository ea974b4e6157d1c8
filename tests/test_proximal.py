"""vqjax.proximal: the group norms, the group-lasso penalty and its proximal operator (block
soft-thresholding) against NumPy closed forms and the prox's defining minimisation; the optax
transformation (ISTA with SGD, proximal Adam, schedules, jit, masking, errors); and a small
least-squares problem where the prox reaches exact zeros that the subgradient never does."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vqjax.proximal import group_lasso_penalty, group_lasso_prox, group_norms, group_soft_threshold

RNG = np.random.default_rng(0)
# The pure functions run under strict promotion; optax itself is not strict-clean.
strict = pytest.mark.usefixtures("strict_promotion")
# Jitted once per shape (much cheaper than op-by-op dispatch on many shapes); the eager path is
# exercised by the exact-zero, identity, dtype and error tests.
_gst = jax.jit(group_soft_threshold, static_argnames="axis")
_norms = jax.jit(group_norms, static_argnames="axis")


def _norm_axes(axis, ndim):
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _np_norms(w, axis=-2, keepdims=False):
    w = np.asarray(w, np.float64)
    return np.sqrt(np.sum(w**2, axis=_norm_axes(axis, w.ndim), keepdims=keepdims))


def _np_prox(w, t, axis=-2):
    """(1 - t / ||w_g||)_+ w_g for every group, in float64."""
    w = np.asarray(w, np.float64)
    n = _np_norms(w, axis, keepdims=True)
    scale = np.where(n > t, 1.0 - t / np.where(n > 0, n, 1.0), 0.0)
    return w * scale


def _random_w(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _mid_threshold(w, axis=-2):
    """A threshold with groups on both sides of it (the median group norm, nudged off any group norm)."""
    n = np.sort(_np_norms(w, axis).ravel())
    assert n.size >= 2
    mid = n.size // 2
    return float(0.5 * (n[mid - 1] + n[mid]))


# --------------------------------------------------------------------------- group_soft_threshold


@strict
@pytest.mark.parametrize("shape,axis", [
    ((3, 5, 7), -2),          # W [G, p, L]: columns are the groups (the default)
    ((3, 5, 7), (0,)),        # a one-element tuple
    ((4, 5, 6), 2),
    ((4, 5, 6), (0, 2)),      # a group spans two axes
    ((2, 3, 4, 5), (-1, 1)),  # unsorted, mixed-sign tuple
    ((6, 4), -2),             # a plain [p, L] matrix
])
def test_soft_threshold_matches_numpy_closed_form(shape, axis):
    w = _random_w(shape, seed=len(shape))
    t = _mid_threshold(w, axis)
    kwargs = {} if axis == -2 else {"axis": axis}
    got = _gst(jnp.asarray(w), t, **kwargs)
    ref = _np_prox(w, t, axis)
    assert got.shape == w.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # Both regimes are exercised: some groups are zeroed, some survive.
    ref_norms = _np_norms(ref, axis)
    assert np.any(ref_norms == 0) and np.any(ref_norms > 0)


@strict
def test_soft_threshold_default_axis_is_the_column_of_each_group_matrix():
    w = _random_w((3, 5, 7), seed=1)
    t = _mid_threshold(w)
    got = np.asarray(_gst(jnp.asarray(w), t))
    for g in range(3):
        for j in range(7):
            col = w[g, :, j].astype(np.float64)
            n = np.linalg.norm(col)
            expected = max(1.0 - t / n, 0.0) * col
            np.testing.assert_allclose(got[g, :, j], expected, rtol=1e-5, atol=1e-6)


@strict
def test_weak_groups_become_exactly_zero_and_strong_ones_shrink_by_t_along_their_direction():
    t = 0.625
    # Column norms (exact in binary floating point): 0.25, 0.625 (= t), 0.5 (< t), 1.25, 2.5.
    base = np.array([0.375, 0.5], np.float32) / 0.625  # unit vector (0.6, 0.8)
    norms = np.array([0.25, 0.625, 0.5, 1.25, 2.5], np.float32)
    w = (base[:, None] * norms[None, :]).astype(np.float32)  # [p=2, L=5]
    w[:, 2] = [0.5, 0.0]  # another direction, norm 0.5 exactly
    got = np.asarray(group_soft_threshold(jnp.asarray(w), t))
    # Exactly zero (not approximately) for ||w|| <= t, including the boundary ||w|| == t.
    assert np.all(got[:, :3] == 0.0)
    # Above t: the norm drops by exactly t and the direction is unchanged.
    for j in (3, 4):
        n_in, n_out = np.linalg.norm(w[:, j].astype(np.float64)), np.linalg.norm(got[:, j].astype(np.float64))
        np.testing.assert_allclose(n_out, n_in - t, rtol=1e-6)
        np.testing.assert_allclose(got[:, j] / n_out, w[:, j] / n_in, rtol=1e-6)
    assert np.all(np.abs(got[:, 3:]) > 0)


@strict
def test_zero_threshold_is_the_identity_and_zero_groups_stay_zero_without_nan():
    w = _random_w((3, 4, 6), seed=2)
    w[0, :, 1] = 0.0
    w[2, :, 5] = 0.0
    for t in (0.0, 0):
        got = np.asarray(group_soft_threshold(jnp.asarray(w), t))
        np.testing.assert_array_equal(got, w)
    for t in (0.3, 10.0):
        got = np.asarray(group_soft_threshold(jnp.asarray(w), t))
        assert np.all(np.isfinite(got))
        assert np.all(got[0, :, 1] == 0.0) and np.all(got[2, :, 5] == 0.0)
    # All zero: still zero, no NaN (0/0 guarded), for any threshold.
    z = np.asarray(group_soft_threshold(jnp.zeros((2, 3, 4)), 0.5))
    assert np.all(z == 0.0) and np.all(np.isfinite(z))
    z = np.asarray(group_soft_threshold(jnp.zeros((2, 3, 4)), 0.0))
    assert np.all(z == 0.0) and np.all(np.isfinite(z))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2), (jnp.float16, 2e-3)])
def test_soft_threshold_preserves_dtype(dtype, tol):
    w = jnp.asarray(_random_w((3, 5, 7), seed=3)).astype(dtype)
    w_np = np.asarray(w.astype(jnp.float32))
    t = _mid_threshold(w_np)
    got = group_soft_threshold(w, t)
    assert got.dtype == dtype and got.shape == w.shape
    ref = _np_prox(w_np, t)
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), ref, rtol=tol, atol=tol)
    # The zero pattern is exact in low precision too.
    np.testing.assert_array_equal(_np_norms(np.asarray(got.astype(jnp.float32))) == 0, _np_norms(ref) == 0)


@strict
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_functions_work_under_strict_promotion(dtype):
    """The pure functions should work for low-precision weights under strict dtype promotion,
    like the rest of the pure core (norms are accumulated in float32 and cast back)."""
    w = jnp.asarray(_random_w((3, 5, 7), seed=4)).astype(dtype)
    w_np = np.asarray(w.astype(jnp.float32))
    norms = group_norms(w)
    assert norms.dtype == jnp.float32
    np.testing.assert_allclose(norms, _np_norms(w_np), rtol=1e-5)
    np.testing.assert_allclose(group_lasso_penalty(w, strength=0.5), 0.5 * _np_norms(w_np).sum(), rtol=1e-5)
    out = group_soft_threshold(w, _mid_threshold(w_np))
    assert out.dtype == dtype


@strict
def test_soft_threshold_accepts_a_traced_threshold_under_jit_and_vmap():
    w = _random_w((3, 5, 7), seed=5)
    t = _mid_threshold(w)
    eager = group_soft_threshold(jnp.asarray(w), t)
    jitted = jax.jit(group_soft_threshold, static_argnames="axis")(jnp.asarray(w), jnp.float32(t))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jitted, _np_prox(w, t), rtol=1e-5, atol=1e-6)
    # vmap over a batch of matrices, each with its own threshold.
    wb = _random_w((4, 3, 5, 7), seed=6)
    ts = np.array([0.0, 0.5, 1.5, 3.0], np.float32)
    got = jax.jit(jax.vmap(group_soft_threshold))(jnp.asarray(wb), jnp.asarray(ts))
    for b in range(4):
        np.testing.assert_allclose(got[b], _np_prox(wb[b], float(ts[b])), rtol=1e-5, atol=1e-6)
    # vmap with a shared threshold equals one call on the stacked [B, G, p, L] (axis -2 is still p).
    shared = jax.jit(jax.vmap(lambda x: group_soft_threshold(x, 1.0)))(jnp.asarray(wb))
    np.testing.assert_allclose(shared, _gst(jnp.asarray(wb), 1.0), rtol=1e-6, atol=1e-7)


@strict
def test_soft_threshold_rejects_bad_arguments():
    w = jnp.asarray(_random_w((3, 5, 7)))
    with pytest.raises(ValueError, match="threshold"):
        group_soft_threshold(w, -0.1)
    with pytest.raises(ValueError, match="`w`.*floating"):
        group_soft_threshold(jnp.ones((3, 5, 7), jnp.int32), 0.1)
    with pytest.raises(ValueError, match="`w`.*floating"):
        group_soft_threshold(np.ones((3, 5), bool), 0.1)


@strict
@pytest.mark.parametrize("axis", [3, -4, (0, 3), (), True, (0, 0), (1, -2), "1", (0, None), (1.0,), 1.0, None])
def test_functions_reject_a_bad_axis(axis):
    w = jnp.asarray(_random_w((3, 5, 7)))
    with pytest.raises(ValueError, match="axis"):
        group_soft_threshold(w, 0.1, axis=axis)
    with pytest.raises(ValueError, match="axis"):
        group_norms(w, axis=axis)


# --------------------------------------------------------------------------- it is the prox


def _objective(u, w, t, axis):
    u, w = np.asarray(u, np.float64), np.asarray(w, np.float64)
    return 0.5 * np.sum((u - w) ** 2) + t * np.sum(_np_norms(u, axis))


def _is_minimiser(u, w, t, axis, rng, n_trials=1500):
    """True when no perturbation of ``u`` lowers the prox objective (beyond rounding): random
    moves of all entries, of a few entries, and of one group at a time along ±(w - u) or ±u."""
    f0 = _objective(u, w, t, axis)
    u, w = np.asarray(u, np.float64), np.asarray(w, np.float64)
    # One-hot masks of the groups: every other axis indexes a group.
    group_id = np.arange(_np_norms(w, axis).size).reshape(_np_norms(w, axis, keepdims=True).shape)
    group_id = np.broadcast_to(group_id, w.shape)
    for i in range(n_trials):
        scale = 10.0 ** rng.uniform(-2.5, 0)
        kind = i % 4
        if kind == 0:
            d = rng.normal(size=u.shape) * scale
        elif kind == 1:  # a few entries, where the kinks are
            d = rng.normal(size=u.shape) * scale * (rng.uniform(size=u.shape) < 0.1)
        else:  # one group, along the residual or the group itself (shrinking/growing it)
            g = group_id == rng.integers(group_id.max() + 1)
            direction = (w - u) if kind == 2 else u
            d = rng.choice([-1.0, 1.0]) * scale * direction * g
        if _objective(u + d, w, t, axis) < f0 - 1e-6:
            return False
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("axis", [-2, (0, 2)])
def test_soft_threshold_minimises_the_prox_objective(seed, axis):
    rng = np.random.default_rng(100 + seed)
    w = rng.normal(size=(3, 4, 5)).astype(np.float32)
    t = _mid_threshold(w, axis)
    u = np.asarray(_gst(jnp.asarray(w), t, axis=axis))
    assert _is_minimiser(u, w, t, axis, rng)
    # The check has power: a wrong operator (elementwise soft-thresholding, or the shrink
    # without the zeroing) is caught by the same search.
    elementwise = np.sign(w) * np.maximum(np.abs(w) - t / 2, 0.0)
    assert not _is_minimiser(elementwise, w, t, axis, rng)
    assert not _is_minimiser(np.zeros_like(w), w, t, axis, rng)
    n = _np_norms(w, axis, keepdims=True)
    no_zeroing = w * (1.0 - t / n)
    assert not _is_minimiser(no_zeroing, w, t, axis, rng)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_soft_threshold_satisfies_the_subgradient_optimality_condition(seed):
    """0 ∈ u - w + t ∂Σ||u_g||: u_g - w_g + t u_g/||u_g|| = 0 for u_g ≠ 0, ||w_g|| ≤ t for u_g = 0."""
    rng = np.random.default_rng(200 + seed)
    w = rng.normal(size=(4, 6, 5)).astype(np.float32) * rng.uniform(0.1, 2.0, size=(4, 1, 5)).astype(np.float32)
    t = _mid_threshold(w)
    u = np.asarray(_gst(jnp.asarray(w), t), np.float64)
    w64 = w.astype(np.float64)
    un = _np_norms(u)
    zero = un == 0
    assert zero.any() and (~zero).any()
    # zero groups: the residual w_g lies in the t-ball
    assert np.all(_np_norms(w64)[zero] <= t * (1 + 1e-6))
    # nonzero groups: the gradient of the objective vanishes
    resid = u - w64 + t * u / np.where(un > 0, un, 1.0)[:, None, :]
    np.testing.assert_allclose(np.where(zero[:, None, :], 0.0, resid), 0.0, atol=1e-5)


# --------------------------------------------------------------------------- group_norms, penalty


@strict
@pytest.mark.parametrize("shape,axis,out_shape", [
    ((3, 5, 7), -2, (3, 7)), ((3, 5, 7), (0,), (5, 7)), ((3, 5, 7), (0, 2), (5,)),
    ((3, 5, 7), (0, 1, 2), ()), ((6, 4), 0, (4,)),
])
def test_group_norms_and_penalty_match_numpy(shape, axis, out_shape):
    w = _random_w(shape, seed=7)
    norms = _norms(jnp.asarray(w), axis=axis)
    assert norms.shape == out_shape and norms.dtype == jnp.float32
    np.testing.assert_allclose(norms, _np_norms(w, axis), rtol=1e-6)
    pen = jax.jit(group_lasso_penalty, static_argnames="axis")(jnp.asarray(w), strength=0.3, axis=axis)
    assert pen.shape == ()
    np.testing.assert_allclose(pen, 0.3 * _np_norms(w, axis).sum(), rtol=1e-5)


@strict
def test_group_norms_default_axis_and_errors():
    w = _random_w((2, 3, 4), seed=8)
    np.testing.assert_allclose(group_norms(jnp.asarray(w)), np.linalg.norm(w.astype(np.float64), axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="`w`.*floating"):
        group_norms(jnp.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="axis"):
        group_norms(jnp.asarray(w), axis=3)
    with pytest.raises(ValueError, match="`w`.*floating"):
        group_lasso_penalty(jnp.arange(12).reshape(3, 4), strength=1.0)


@strict
def test_gradients_are_finite_at_zero_groups_and_equal_lambda_w_over_norm_elsewhere():
    w = _random_w((3, 4, 5), seed=9)
    w[1, :, 2] = 0.0
    w[0, :, 0] = 0.0
    lam = 0.7
    g_norms = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(group_norms(x))))(jnp.asarray(w)))
    assert np.all(np.isfinite(g_norms))
    assert np.all(g_norms[1, :, 2] == 0.0) and np.all(g_norms[0, :, 0] == 0.0)
    g_pen = np.asarray(jax.jit(jax.grad(lambda x: group_lasso_penalty(x, strength=lam)))(jnp.asarray(w)))
    assert np.all(np.isfinite(g_pen))
    n = _np_norms(w, keepdims=True)
    expected = np.where(n > 0, lam * w / np.where(n > 0, n, 1.0), 0.0)
    np.testing.assert_allclose(g_pen, expected, rtol=1e-5, atol=1e-7)
    # jit(grad) and vmap(grad) over a leading batch of matrices agree.
    wb = np.stack([w, 2 * w, -w])
    vg = jax.jit(jax.vmap(jax.grad(lambda x: group_lasso_penalty(x, strength=lam))))(jnp.asarray(wb))
    for b in range(3):
        nb = _np_norms(wb[b], keepdims=True)
        exp_b = np.where(nb > 0, lam * wb[b] / np.where(nb > 0, nb, 1.0), 0.0)
        np.testing.assert_allclose(vg[b], exp_b, rtol=1e-5, atol=1e-7)
    # Even with the all-zero input.
    assert np.all(np.asarray(jax.jit(jax.grad(lambda x: group_lasso_penalty(x, strength=lam)))(jnp.zeros((2, 3)))) == 0)


@strict
def test_group_norms_and_penalty_under_jit_and_vmap():
    wb = _random_w((5, 3, 4, 6), seed=10)
    got = jax.jit(jax.vmap(group_norms))(jnp.asarray(wb))
    assert got.shape == (5, 3, 6)
    np.testing.assert_allclose(got, _np_norms(wb, -2), rtol=1e-6)
    pen = jax.jit(jax.vmap(lambda x: group_lasso_penalty(x, strength=0.2)))(jnp.asarray(wb))
    assert pen.shape == (5,)
    np.testing.assert_allclose(pen, 0.2 * _np_norms(wb, -2).sum(axis=(1, 2)), rtol=1e-5)
    # A traced strength works too.
    pen_t = jax.jit(lambda x, s: group_lasso_penalty(x, strength=s))(jnp.asarray(wb[0]), jnp.float32(0.2))
    np.testing.assert_allclose(pen_t, 0.2 * _np_norms(wb[0]).sum(), rtol=1e-5)


# --------------------------------------------------------------------------- group_lasso_prox (optax)


def _params(seed=11):
    """Columns of very different norms (about 0.1 to 4), so a threshold near 1 splits them."""
    r = np.random.default_rng(seed)
    return {"W": jnp.asarray((r.normal(size=(3, 4, 5)) * r.uniform(0.05, 2.0, size=(3, 1, 5))).astype(np.float32)),
            "V": jnp.asarray((r.normal(size=(6, 2)) * np.array([0.1, 1.5])).astype(np.float32))}


def _grads(seed):
    r = np.random.default_rng(seed)
    return {"W": jnp.asarray(0.5 * r.normal(size=(3, 4, 5)).astype(np.float32)),
            "V": jnp.asarray(0.5 * r.normal(size=(6, 2)).astype(np.float32))}


def _assert_prox_of(new, moved, t):
    """``new`` is prox_t(moved) leaf by leaf: exact zeros where expected, the rest to rounding."""
    for k in moved:
        ref = _np_prox(np.asarray(moved[k]), t)
        got = np.asarray(new[k])
        zero = _np_norms(ref) == 0
        np.testing.assert_array_equal(_np_norms(got) == 0, zero, err_msg=k)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=k)


def test_sgd_then_prox_is_one_ista_step():
    eta, lam = 0.3, 2.0
    params, grads = _params(), _grads(12)
    tx = optax.chain(optax.sgd(eta), group_lasso_prox(lam, eta))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    moved = {k: params[k] - eta * grads[k] for k in params}
    _assert_prox_of(new, moved, eta * lam)
    # Some columns were zeroed and some survived, so both branches were used.
    norms = np.concatenate([_np_norms(np.asarray(new[k])).ravel() for k in new])
    assert np.any(norms == 0.0) and np.any(norms > 0)
    # Also the same as the library's own pure prox, to float rounding.
    for k in params:
        np.testing.assert_allclose(new[k], group_soft_threshold(moved[k], eta * lam), rtol=1e-6, atol=1e-6)
    # Dtypes and structure are preserved.
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(updates[k].dtype == jnp.float32 for k in updates)


def test_prox_after_adam_is_the_prox_of_the_adam_step_over_two_steps():
    eta, lam = 0.1, 3.0
    params = _params(13)
    g1, g2 = _grads(14), _grads(15)
    tx = optax.chain(optax.adam(eta), group_lasso_prox(lam, eta))
    state = tx.init(params)
    adam = optax.adam(eta)
    a_state = adam.init(params)
    p = params
    for g in (g1, g2):
        u_adam, a_state = adam.update(g, a_state, p)
        moved = {k: p[k] + u_adam[k] for k in p}
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        _assert_prox_of(p, moved, eta * lam)
    norms = np.concatenate([_np_norms(np.asarray(p[k])).ravel() for k in p])
    assert np.any(norms == 0.0) and np.any(norms > 0)


def test_schedule_threshold_uses_the_schedule_at_the_step_count():
    lam = 1.0
    sched = optax.linear_schedule(init_value=0.8, end_value=0.2, transition_steps=3)
    assert float(sched(0)) != float(sched(1))
    params = {"W": jnp.asarray(_random_w((4, 6, 8), seed=16))}
    # The prox alone, with a zero incoming step: new = prox_{λ η_k}(w).
    tx = group_lasso_prox(lam, sched)
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(tx.update)
    p = params
    for k in range(2):
        w_before = np.asarray(p["W"])
        updates, state = update(zero, state, p)
        assert int(state.count) == k + 1
        p = optax.apply_updates(p, updates)
        got = np.asarray(p["W"])
        np.testing.assert_allclose(got, _np_prox(w_before, lam * float(sched(k))), rtol=1e-5, atol=1e-6)
        # ... and not with a neighbouring step's threshold (an off-by-one would be caught).
        for other in (k - 1, k + 1):
            if other >= 0:
                assert not np.allclose(got, _np_prox(w_before, lam * float(sched(other))), rtol=1e-4, atol=1e-5)
    # With SGD on the same schedule: one ISTA step with η_k at step k, under jit.
    params, g = _params(17), [_grads(18), _grads(19)]
    tx = optax.chain(optax.sgd(sched), group_lasso_prox(lam, sched))
    state = tx.init(params)
    update = jax.jit(tx.update)
    p = params
    for k in range(2):
        eta = float(sched(k))
        moved = {n: p[n] - eta * g[k][n] for n in p}
        updates, state = update(g[k], state, p)
        p = optax.apply_updates(p, updates)
        _assert_prox_of(p, moved, eta * lam)


def test_update_is_jit_safe_and_matches_eager():
    eta, lam = 0.25, 2.5
    params, grads = _params(20), _grads(21)
    tx = optax.chain(optax.sgd(eta), group_lasso_prox(lam, eta))
    state = tx.init(params)
    eager, s_eager = tx.update(grads, state, params)
    jitted, s_jit = jax.jit(tx.update)(grads, state, params)
    for k in params:
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-6, atol=1e-7)
    assert int(s_jit[1].count) == int(s_eager[1].count) == 1
    # jit the prox alone, twice, with state threading.
    prox = group_lasso_prox(lam, eta)
    ps = prox.init(params)
    upd = jax.jit(prox.update)
    u1, ps = upd(grads, ps, params)
    u2, ps = upd(grads, ps, params)
    assert int(ps.count) == 2
    for k in params:
        np.testing.assert_allclose(u1[k], u2[k])  # constant lr: same step


def test_masked_prox_leaves_unmasked_parameters_untouched():
    eta, lam = 0.3, 4.0
    r = np.random.default_rng(22)
    params = {"W": _params(22)["W"],
              "b": jnp.asarray(r.normal(size=(5,)).astype(np.float32)),  # 1-D: the default axis -2 is invalid
              "V": jnp.asarray(r.normal(size=(4, 5)).astype(np.float32) * 0.01)}  # tiny: would be zeroed
    grads = {k: jnp.asarray(0.5 * r.normal(size=v.shape).astype(np.float32)) for k, v in params.items()}
    mask = {"W": True, "b": False, "V": False}
    tx = optax.chain(optax.sgd(eta), optax.masked(group_lasso_prox(lam, eta), mask))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    # Unmasked leaves get the plain SGD step, bit for bit.
    sgd_u, _ = optax.sgd(eta).update(grads, optax.sgd(eta).init(params), params)
    sgd_new = optax.apply_updates(params, sgd_u)
    for k in ("b", "V"):
        np.testing.assert_array_equal(new[k], sgd_new[k])
    assert np.all(_np_norms(np.asarray(new["V"])) > 0)
    _assert_prox_of({"W": new["W"]}, {"W": params["W"] - eta * grads["W"]}, eta * lam)
    assert np.any(_np_norms(np.asarray(new["W"])) == 0)
    # Under jit too, and without the mask the 1-D leaf is rejected (so the mask did skip it).
    j_updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    np.testing.assert_array_equal(j_updates["b"], sgd_u["b"])
    bare = optax.chain(optax.sgd(eta), group_lasso_prox(lam, eta))
    with pytest.raises(ValueError, match="axis"):
        bare.update(grads, bare.init(params), params)


def test_prox_requires_params():
    tx = group_lasso_prox(1.0, 0.1)
    params = _params()
    with pytest.raises(ValueError, match="params"):
        tx.update(_grads(23), tx.init(params))
    chained = optax.chain(optax.sgd(0.1), group_lasso_prox(1.0, 0.1))
    with pytest.raises(ValueError, match="params"):
        chained.update(_grads(23), chained.init(params))


@pytest.mark.parametrize("strength", [-1.0, -1e-9, True, "1.0", None, jnp.float32(-1.0), jnp.ones(2)])
def test_prox_rejects_bad_strength(strength):
    with pytest.raises(ValueError, match="strength"):
        group_lasso_prox(strength, 0.1)


@pytest.mark.parametrize("lr", [0.0, -0.1, True, "0.1", None])
def test_prox_rejects_bad_learning_rate(lr):
    with pytest.raises(ValueError, match="learning_rate"):
        group_lasso_prox(1.0, lr)


def test_prox_takes_numpy_and_jax_scalars_and_works_under_inject_hyperparams():
    params, grads = _params(26), _grads(27)
    want, _ = optax.chain(optax.sgd(0.1), group_lasso_prox(0.5, 0.1)).update(
        grads, optax.chain(optax.sgd(0.1), group_lasso_prox(0.5, 0.1)).init(params), params)
    for strength, lr in ((np.float32(0.5), np.float64(0.1)), (jnp.float32(0.5), jnp.asarray(0.1))):
        tx = optax.chain(optax.sgd(0.1), group_lasso_prox(strength, lr))
        got, _ = tx.update(grads, tx.init(params), params)
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    # Hyperparameters injected as state (traced inside jit): the same step.
    inject = optax.inject_hyperparams(group_lasso_prox, static_args=("axis",))
    tx = optax.chain(optax.sgd(0.1), inject(strength=0.5, learning_rate=0.1))
    got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_tiny_groups_have_their_true_norm_and_are_thresholded_to_zero():
    w = jnp.full((3, 2), 1e-20, jnp.float32)  # squares underflow in float32
    np.testing.assert_allclose(np.asarray(group_norms(w)), np.sqrt(3) * 1e-20, rtol=1e-5)
    assert np.all(np.asarray(group_soft_threshold(w, 1e-3)) == 0.0)
    assert np.all(np.asarray(group_soft_threshold(w, 0.0)) == np.asarray(w))


def test_prox_accepts_zero_strength_as_a_no_op_and_int_arguments():
    params, grads = _params(24), _grads(25)
    tx = optax.chain(optax.sgd(1), group_lasso_prox(0, 1))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(new[k], params[k] - grads[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [(0, 0), (), 1.5, None])
def test_prox_rejects_a_malformed_axis_when_built(axis):
    with pytest.raises(ValueError, match="axis"):
        group_lasso_prox(1.0, 0.1, axis=axis)


def test_prox_rejects_an_axis_out_of_range_at_update():
    params = {"W": jnp.ones((2, 3, 4))}
    tx = group_lasso_prox(1.0, 0.1, axis=3)
    with pytest.raises(ValueError, match="axis"):
        tx.update(params, tx.init(params), params)


def test_prox_rejects_integer_arrays():
    params = {"W": jnp.ones((3, 4), jnp.int32)}
    tx = group_lasso_prox(1.0, 0.1)
    with pytest.raises(ValueError, match="floating"):
        tx.update({"W": jnp.ones((3, 4), jnp.int32)}, tx.init(params), params)


# --------------------------------------------------------------------------- exact zeros: prox vs subgradient


def _least_squares_problem(seed=0, n=200, m=5, num_cols=6, zero_cols=(1, 4), noise=0.1):
    r = np.random.default_rng(seed)
    a = r.normal(size=(n, m))
    w_true = r.normal(size=(m, num_cols)) + np.sign(r.normal(size=(m, num_cols)))
    w_true[:, list(zero_cols)] = 0.0
    b = a @ w_true + noise * r.normal(size=(n, num_cols))
    return a.astype(np.float32), b.astype(np.float32), w_true


def _f(w, a, b):
    return 0.5 * jnp.sum((a @ w - b) ** 2) / a.shape[0]


def _run(step, w0, steps):
    def body(w, _):
        return step(w), None
    return jax.jit(lambda w: jax.lax.scan(body, w, None, length=steps)[0])(w0)


def test_ista_reaches_exact_zeros_where_subgradient_descent_does_not():
    a, b, w_true = _least_squares_problem()
    a_j, b_j = jnp.asarray(a), jnp.asarray(b)
    lam = 0.1
    eta = float(0.9 * a.shape[0] / np.linalg.eigvalsh(a.astype(np.float64).T @ a).max())  # < 1/Lipschitz
    w0 = jnp.zeros_like(jnp.asarray(w_true, jnp.float32)) + 0.5
    steps = 300

    # (a) ISTA through the optax chain.
    tx = optax.chain(optax.sgd(eta), group_lasso_prox(lam, eta))

    def ista(carry):
        w, s = carry
        g = jax.grad(_f)(w, a_j, b_j)
        u, s = tx.update(g, s, w)
        return optax.apply_updates(w, u), s

    w_ista, _ = _run(ista, (w0, tx.init(w0)), steps)
    n_ista = np.asarray(group_norms(w_ista))
    truly_zero = np.linalg.norm(w_true, axis=0) == 0
    assert np.all(np.asarray(w_ista)[:, truly_zero] == 0.0)  # exactly zero, every entry
    assert np.all(n_ista[~truly_zero] > 0.5)

    # (b) plain gradient descent on f + penalty: the penalty's gradient never lands on zero.
    def gd(w):
        return w - eta * jax.grad(lambda x: _f(x, a_j, b_j) + group_lasso_penalty(x, strength=lam))(w)

    w_gd = _run(gd, w0, steps)
    n_gd = np.asarray(group_norms(w_gd))
    assert np.all(np.asarray(w_gd) != 0.0)  # no entry, let alone a column, is exactly zero
    assert np.all(n_gd > 0)
    # ... although it gets to the same neighbourhood: the truly-zero columns are merely small.
    assert np.all(n_gd[truly_zero] < 2 * eta * lam)
    np.testing.assert_allclose(np.asarray(w_gd)[:, ~truly_zero], np.asarray(w_ista)[:, ~truly_zero], atol=0.05)


def test_ista_recovers_the_support_and_the_optimum_of_a_well_conditioned_problem():
    a, b, w_true = _least_squares_problem(seed=1, n=400, m=4, num_cols=7, zero_cols=(0, 3, 5))
    lam = 0.15
    n = a.shape[0]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    h = a64.T @ a64 / n
    eig = np.linalg.eigvalsh(h)
    assert eig.max() / eig.min() < 2.0  # well conditioned
    eta = float(1.0 / eig.max())

    tx = optax.chain(optax.sgd(eta), group_lasso_prox(lam, eta))
    a_j, b_j = jnp.asarray(a), jnp.asarray(b)
    w0 = jnp.ones(w_true.shape, jnp.float32)

    def ista(carry):
        w, s = carry
        u, s = tx.update(jax.grad(_f)(w, a_j, b_j), s, w)
        return optax.apply_updates(w, u), s

    w_ista = np.asarray(_run(ista, (w0, tx.init(w0)), 300)[0], np.float64)

    # The optimum, column by column (the columns decouple): w_j = 0 iff ||Aᵀb_j / n|| <= λ;
    # otherwise the KKT condition H w_j - Aᵀb_j/n + λ w_j/||w_j|| = 0. An independent float64
    # reference by many numpy ISTA steps.
    c = a64.T @ b64 / n
    w_ref = np.ones_like(w_true)
    for _ in range(5000):
        w_ref = _np_prox(w_ref - eta * (h @ w_ref - c), eta * lam)
    zero_ref = np.linalg.norm(w_ref, axis=0) == 0
    np.testing.assert_array_equal(zero_ref, np.linalg.norm(c, axis=0) <= lam)
    # The true support is the optimum's support (the zero columns are well inside the λ-ball).
    truly_zero = np.linalg.norm(w_true, axis=0) == 0
    np.testing.assert_array_equal(zero_ref, truly_zero)
    assert np.all(np.linalg.norm(c[:, truly_zero], axis=0) < 0.5 * lam)
    # ISTA gets the support exactly and the values to float32 precision.
    np.testing.assert_array_equal(np.linalg.norm(w_ista, axis=0) == 0, truly_zero)
    assert np.all(w_ista[:, truly_zero] == 0.0)
    assert np.all(np.linalg.norm(w_ista[:, ~truly_zero], axis=0) > 0.5)
    np.testing.assert_allclose(w_ista, w_ref, atol=2e-5)
    # KKT on the nonzero columns.
    nz = ~truly_zero
    kkt = h @ w_ista[:, nz] - c[:, nz] + lam * w_ista[:, nz] / np.linalg.norm(w_ista[:, nz], axis=0)
    np.testing.assert_allclose(kkt, 0.0, atol=1e-4)
