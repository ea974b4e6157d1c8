"""vqjax.quantization scalar design: Max's tables, Lloyd, the DP optimum, theory, jit/vmap/grad."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from vqjax import quantization as sq
from vqjax.quantization import _dp
from vqjax.quantization import _theory as th

pytestmark = pytest.mark.usefixtures("strict_promotion")

# Max (1960), Table I (Gaussian, unit variance): positive levels, positive thresholds, MSE.
MAX_GAUSSIAN = {
    2: ([0.7979], [], 0.3634),
    4: ([0.4528, 1.510], [0.9816], 0.1175),
    8: ([0.2451, 0.7560, 1.344, 2.152], [0.5006, 1.050, 1.748], 0.03454),
    16: (
        [0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733],
        [0.2582, 0.5224, 0.7996, 1.099, 1.437, 1.844, 2.401],
        0.009497,
    ),
}
# The same optima recomputed in float64 (and checked against scipy quadrature): Max's MSEs for
# N = 8 and 16 are 2e-4 and 4e-4 too low in relative terms.
PRECISE_GAUSSIAN_MSE = {2: 1 - 2 / math.pi, 4: 0.11748184783, 8: 0.03454776079, 16: 0.00950100801}
# Max (1960), Table II: optimum uniform quantizer of the Gaussian (step, MSE).
MAX_UNIFORM = {2: (1.596, 0.3634), 4: (0.9957, 0.1188), 8: (0.5860, 0.03744), 16: (0.3352, 0.01154)}


@functools.cache
def _gaussian_lloyd_max_x64(n):
    """Lloyd-Max of the unit Gaussian in float64 (cached: each N compiles once per file)."""
    with jax.enable_x64(True):
        r = sq.lloyd_max(sq.gaussian(), n)
        return jax.tree_util.tree_map(np.asarray, r)


def _symmetric(pos, include_zero):
    pos = list(pos)
    return np.array([-p for p in pos[::-1]] + ([0.0] if include_zero else []) + pos)


def _brute_force_mse(x, w, k):
    """Least weighted MSE over every cut of the sorted samples into k non-empty runs."""
    order = np.argsort(x, kind="stable")
    x, w = np.asarray(x, np.float64)[order], np.asarray(w, np.float64)[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        b = (0, *cuts, len(x))
        sse = 0.0
        for lo, hi in itertools.pairwise(b):
            ww, xx = w[lo:hi], x[lo:hi]
            if ww.sum() <= 0:
                sse = np.inf
                break
            m = (ww * xx).sum() / ww.sum()
            sse += (ww * (xx - m) ** 2).sum()
        best = min(best, sse)
    return best / w.sum()


# ------------------------------------------------------------------------------------------
# Densities and partial moments
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "density, ref",
    [
        (sq.gaussian(1.5, mean=0.3), stats.norm(0.3, 1.5)),
        (sq.laplace(0.8, mean=-0.2), stats.laplace(-0.2, 0.8)),
        (sq.uniform(-1.0, 2.0), stats.uniform(-1.0, 3.0)),
    ],
)
def test_partial_moments_match_quadrature(density, ref):
    intervals = [(-np.inf, np.inf), (-np.inf, -0.7), (0.4, np.inf), (-0.5, 1.2), (2.0, 3.5),
                 (-4.0, -3.0)]
    for lo, hi in intervals:
        for c in (0.0, 0.9):
            got = sq.partial_moments(density, lo, hi, center=c)
            for k, g in enumerate(got):
                want = integrate.quad(lambda u, c=c, k=k: (u - c) ** k * ref.pdf(u), lo, hi,
                                      epsabs=1e-12, epsrel=1e-10, limit=200)[0]
                np.testing.assert_allclose(float(g), want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(density.mean), ref.mean(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(density.variance), ref.var(), rtol=1e-6)


def test_far_tail_mass_keeps_relative_precision():
    m = sq.partial_moments(sq.gaussian(), 8.0, 9.0)
    np.testing.assert_allclose(float(m.mass), stats.norm.sf(8) - stats.norm.sf(9), rtol=1e-4)
    m = sq.partial_moments(sq.laplace(), -30.0, -29.0)
    np.testing.assert_allclose(float(m.mass), stats.laplace(0, 2**-0.5).cdf(-29) -
                               stats.laplace(0, 2**-0.5).cdf(-30), rtol=1e-4)


def test_on_interval_is_a_normalised_tabulated_density():
    d = sq.on_interval(lambda u: 3.0 * jnp.exp(-0.5 * u * u), -8.0, 8.0)  # not normalised
    assert d.kind == "tabulated"
    np.testing.assert_allclose(float(d.mean), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(d.variance), 1.0, rtol=1e-4)
    m = sq.partial_moments(d, -np.inf, 1.0, center=0.5)
    g = sq.partial_moments(sq.gaussian(), -np.inf, 1.0, center=0.5)
    np.testing.assert_allclose(np.array(m), np.array(g), rtol=1e-4, atol=1e-6)
    # Triangle density on [0, 1]: exact for the piecewise-linear interpolant.
    tri = sq.on_interval(lambda u: u, 0.0, 1.0, num_points=2)
    np.testing.assert_allclose(float(tri.mean), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(tri.variance), 1 / 18, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Lloyd-Max
# ------------------------------------------------------------------------------------------


def test_lloyd_max_reproduces_max_gaussian_table_in_float64():
    with jax.enable_x64(True):
        for n, (levels, thresholds, mse) in MAX_GAUSSIAN.items():
            r = _gaussian_lloyd_max_x64(n)
            assert r.levels.dtype == np.float64 and bool(r.converged)
            np.testing.assert_allclose(r.levels, _symmetric(levels, False), atol=6e-4)
            np.testing.assert_allclose(r.thresholds, _symmetric(thresholds, True), atol=6e-4)
            np.testing.assert_allclose(float(r.mse), mse, rtol=5e-4)
            np.testing.assert_allclose(float(r.mse), PRECISE_GAUSSIAN_MSE[n], rtol=1e-9)
        r2 = _gaussian_lloyd_max_x64(2)
        np.testing.assert_allclose(r2.levels, [-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)],
                                   rtol=1e-12)


def test_lloyd_max_float32_and_scaled_gaussian():
    r = sq.lloyd_max(sq.gaussian(2.0, mean=1.0), 4)
    assert r.levels.dtype == jnp.float32
    np.testing.assert_allclose(r.levels, 1.0 + 2.0 * _symmetric([0.4528, 1.510], False),
                               atol=2e-3)
    np.testing.assert_allclose(float(r.mse), 4.0 * PRECISE_GAUSSIAN_MSE[4], rtol=1e-4)


def test_lloyd_max_laplace():
    r = sq.lloyd_max(sq.laplace(), 2)  # unit variance
    np.testing.assert_allclose(r.levels, [-(0.5**0.5), 0.5**0.5], rtol=1e-5)
    np.testing.assert_allclose(float(r.mse), 0.5, rtol=1e-5)
    with jax.enable_x64(True):  # float64: see test_log_concave_density_has_one_fixed_point
        r = sq.lloyd_max(sq.laplace(), 4)  # checked against scipy quadrature
        np.testing.assert_allclose(r.levels, _symmetric([0.4197557, 1.8339693], False), atol=1e-5)
        np.testing.assert_allclose(float(r.mse), 0.17619488105, rtol=1e-9)


def test_lloyd_max_on_uniform_density_is_the_uniform_quantizer():
    d = sq.uniform(-1.0, 2.0)
    for n in (8,):
        step = 3.0 / n
        r = sq.lloyd_max(d, n)
        np.testing.assert_allclose(r.levels, -1.0 + step * (np.arange(n) + 0.5), atol=1e-5)
        np.testing.assert_allclose(float(r.mse), step**2 / 12, rtol=1e-5)
        u = th.uniform_quantizer(d, n)
        np.testing.assert_allclose(float(u.step), step, rtol=1e-3)
        np.testing.assert_allclose(float(u.mse), step**2 / 12, rtol=1e-5)
        np.testing.assert_allclose(float(th.panter_dite_mse(d, n)), step**2 / 12, rtol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_log_concave_density_has_one_fixed_point(kind):
    # The Laplace optimum is flat to third order along a common shift of the levels (the kink
    # of the pdf sits on a threshold), so it is pinned down only to about eps^(1/3): float64.
    with jax.enable_x64(True):
        density = sq.gaussian() if kind == "gaussian" else sq.laplace()
        results = []
        for k in jax.random.split(jax.random.key(0), 4):
            init = jax.random.uniform(k, (4,), jnp.float64, minval=-3.0, maxval=3.0)
            r = sq.lloyd_max(density, 4, init=init)
            assert bool(r.converged)
            results.append(np.asarray(r.levels))
        for levels in results[1:]:
            np.testing.assert_allclose(levels, results[0], atol=1e-5)


def test_newton_acceleration_reaches_the_plain_lloyd_fixed_point():
    with jax.enable_x64(True):
        fast = sq.lloyd_max(sq.gaussian(), 16)
        slow = sq.lloyd_max(sq.gaussian(), 16, accelerate=False)
    assert bool(fast.converged) and bool(slow.converged)
    assert int(fast.iterations) < 20
    assert int(slow.iterations) > 300
    np.testing.assert_allclose(fast.levels, slow.levels, atol=1e-9)
    np.testing.assert_allclose(float(fast.mse), float(slow.mse), rtol=1e-12)


def test_lloyd_steps_never_increase_distortion():
    with jax.enable_x64(True):  # float64, so that rounding cannot hide a real increase
        for accelerate in (False, True):
            levels = jnp.array([-3.0, -2.9, 0.1, 2.5], jnp.float64)
            mses = [float(sq.lloyd_max(sq.gaussian(), 4, init=levels, max_iter=0).mse)]
            for _ in range(25):
                r = sq.lloyd_max(sq.gaussian(), 4, init=levels, max_iter=1, accelerate=accelerate)
                mses.append(float(r.mse))
                levels = r.levels
            assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(mses))
            assert mses[-1] < 0.7 * mses[0]

        x = np.random.default_rng(1).standard_t(3, size=3000)
        levels = jnp.array([-5.0, -4.0, 0.0, 0.1, 7.0], jnp.float64)
        mses = []
        for _ in range(15):
            r = sq.lloyd_1d(x, 5, init=levels, max_iter=1)
            mses.append(float(r.mse))
            levels = r.levels
        assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(mses))
        assert mses[-1] < mses[0]


def test_on_interval_density_matches_closed_form():
    d = sq.on_interval(lambda u: jnp.exp(-0.5 * u * u), -8.0, 8.0)
    r = sq.lloyd_max(d, 4)
    np.testing.assert_allclose(r.levels, _symmetric([0.4528, 1.510], False), atol=1e-3)
    np.testing.assert_allclose(float(r.mse), PRECISE_GAUSSIAN_MSE[4], rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Lloyd on samples
# ------------------------------------------------------------------------------------------


def test_lloyd_1d_on_many_samples_approaches_lloyd_max():
    x = np.random.default_rng(0).normal(size=200_000).astype(np.float32)
    r = sq.lloyd_1d(x, 4)
    assert bool(r.converged)
    np.testing.assert_allclose(r.levels, _symmetric([0.4528, 1.510], False), atol=0.02)
    np.testing.assert_allclose(float(r.mse), PRECISE_GAUSSIAN_MSE[4], rtol=0.02)
    # mse is the mean squared error of the returned quantizer.
    q = np.asarray(r.levels)[np.searchsorted(np.asarray(r.thresholds), x, side="left")]
    np.testing.assert_allclose(float(r.mse), np.mean((x - q) ** 2, dtype=np.float64), rtol=1e-4)


def test_lloyd_1d_empty_cells_keep_their_level():
    x = np.linspace(0.0, 1.0, 50, dtype=np.float32)
    r = sq.lloyd_1d(x, 3, init=jnp.array([0.5, 10.0, 20.0]))
    assert np.all(np.isfinite(r.levels))
    np.testing.assert_allclose(r.levels, [0.5, 10.0, 20.0], atol=1e-6)  # all samples in cell 0
    np.testing.assert_allclose(float(r.mse), np.var(x), rtol=1e-4)


def test_lloyd_1d_weights_equal_repetitions():
    x = np.array([0.0, 1.0, 2.0, 5.0, 6.0, 9.0], np.float32)
    w = np.array([1, 3, 2, 1, 4, 2], np.float32)
    a = sq.lloyd_1d(x, 3, weights=w)
    b = sq.lloyd_1d(np.repeat(x, w.astype(int)), 3)
    np.testing.assert_allclose(a.levels, b.levels, rtol=1e-5)
    np.testing.assert_allclose(float(a.mse), float(b.mse), rtol=1e-5)


# ------------------------------------------------------------------------------------------
# The optimal (DP) quantizer
# ------------------------------------------------------------------------------------------


def test_dp_equals_brute_force_on_small_inputs():
    rng = np.random.default_rng(0)
    for trial in range(12):
        n = 12 if trial % 3 else 7
        k = trial % 4 + 1
        x = np.round(rng.normal(size=n), 1).astype(np.float32)  # rounding makes duplicates
        weighted = trial % 2 == 1
        w = rng.uniform(0.1, 2.0, size=n).astype(np.float32) if weighted else np.ones(n, np.float32)
        r = sq.optimal_scalar_quantizer(x, k, weights=w if weighted else None)
        want = _brute_force_mse(x, w, k)
        np.testing.assert_allclose(float(r.mse), want, rtol=1e-5, atol=1e-7)
        assert r.levels.shape == (k,) and r.thresholds.shape == (k - 1,)
        assert np.all(np.diff(np.asarray(r.levels)) > 0)
        np.testing.assert_allclose(float(jnp.sum(r.cell_weights)), w.sum(), rtol=1e-6)
        # The levels are the cells' weighted means, the cells cut the sorted samples.
        xs, ws = x[np.argsort(x, kind="stable")], w[np.argsort(x, kind="stable")]
        cuts = np.r_[0, np.asarray(r.split_indices), n]
        means = [np.average(xs[a:b], weights=ws[a:b]) for a, b in itertools.pairwise(cuts)]
        np.testing.assert_allclose(r.levels, means, rtol=1e-5, atol=1e-6)


def _reference_dp_sse(x, w, k):
    """O(k n²) dynamic programme in NumPy float64: least SSE of sorted (x, w) in k runs."""
    W, S1, S2 = (np.r_[0.0, np.cumsum(a)] for a in (w, w * x, w * x * x))
    j, i = np.meshgrid(np.arange(len(x) + 1), np.arange(len(x) + 1))  # [i, j]
    dw = W[i] - W[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where((j < i) & (dw > 0), S2[i] - S2[j] - (S1[i] - S1[j]) ** 2 / dw, np.inf)
    d = cost[:, 0]
    for _ in range(k - 1):
        d = np.min(d[None, :] + cost, axis=1)
    return d[-1]


@pytest.mark.parametrize("unroll_from", [64, 1 << 30], ids=["unrolled", "looped"])
def test_dp_divide_and_conquer_equals_full_dp(unroll_from):
    # Both level schedules of the divide-and-conquer (the unrolled one with interleaved
    # segment-min lanes is the default from 2^15 samples on), against the O(K S²) programme.
    rng = np.random.default_rng(11)
    x = np.sort(np.round(np.concatenate([rng.normal(size=400), 3 + rng.exponential(size=200)]), 2))
    w = rng.uniform(0.0, 2.0, size=x.size)
    w[::7] = 0.0
    with jax.enable_x64(True):
        xc = x - np.average(x, weights=w)
        splits = np.asarray(_dp._dp_solve(jnp.asarray(xc), jnp.asarray(w), num_levels=6,
                                          unroll_from=unroll_from))
    cuts = np.r_[0, splits, x.size]
    sse = sum(
        np.sum(w[a:b] * (xc[a:b] - np.average(xc[a:b], weights=w[a:b])) ** 2)
        for a, b in itertools.pairwise(cuts)
    )
    np.testing.assert_allclose(sse, _reference_dp_sse(xc, w, 6), rtol=1e-12)


def test_dp_handles_duplicates_and_zero_weights():
    x = np.array([5.0, 0.0, 1.0, 0.0, 5.0, 1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
    r = sq.optimal_scalar_quantizer(x, 3)
    np.testing.assert_allclose(r.levels, [0.0, 1.0, 5.0])
    np.testing.assert_allclose(float(r.mse), 0.0, atol=1e-7)
    np.testing.assert_allclose(r.cell_weights, [5, 3, 2])
    np.testing.assert_array_equal(r.split_indices, [5, 8])
    # A zero-weight sample changes nothing.
    w = np.ones(10, np.float32)
    x2, w2 = np.append(x, 100.0).astype(np.float32), np.append(w, 0.0).astype(np.float32)
    r2 = sq.optimal_scalar_quantizer(x2, 3, weights=w2)
    np.testing.assert_allclose(r2.levels, r.levels)
    np.testing.assert_allclose(float(r2.mse), 0.0, atol=1e-7)


def test_dp_never_worse_than_lloyd_and_float64():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 0.3, 700), rng.normal(0, 1, 900), rng.normal(4, 0.2, 400)])
    with jax.enable_x64(True):
        r = sq.optimal_scalar_quantizer(x, 5)
        assert r.levels.dtype == jnp.float64
        for init in ([-2.0, -1.0, 0.0, 1.0, 2.0], np.quantile(x, [0.1, 0.3, 0.5, 0.7, 0.9])):
            lloyd = sq.lloyd_1d(x, 5, init=jnp.asarray(init))
            assert float(r.mse) <= float(lloyd.mse) + 1e-12
        # The DP cells are Voronoi cells of their centroids: a Lloyd fixed point.
        again = sq.lloyd_1d(x, 5, init=r.levels)
        np.testing.assert_allclose(again.levels, r.levels, rtol=1e-12)
        assert int(again.iterations) <= 2  # the first step only rounds


def test_dp_on_gaussian_grid_reproduces_max_table():
    grid = np.linspace(-7.0, 7.0, 8001)
    w = stats.norm.pdf(grid) * (grid[1] - grid[0])
    r = sq.optimal_scalar_quantizer(grid.astype(np.float32), 8, weights=w.astype(np.float32))
    levels, thresholds, mse = MAX_GAUSSIAN[8]
    np.testing.assert_allclose(r.levels, _symmetric(levels, False), atol=1.5e-3)
    np.testing.assert_allclose(r.thresholds, _symmetric(thresholds, True), atol=1.5e-3)
    np.testing.assert_allclose(float(r.mse), mse, rtol=1e-3)


def test_dp_jit_matches_eager_and_vmap_lloyd_1d():
    x = np.random.default_rng(5).normal(size=(3, 300)).astype(np.float32)
    eager = sq.optimal_scalar_quantizer(x[0], 4)
    jitted = jax.jit(sq.optimal_scalar_quantizer, static_argnums=1)(x[0], 4)
    np.testing.assert_allclose(jitted.levels, eager.levels, rtol=1e-6)
    np.testing.assert_allclose(float(jitted.mse), float(eager.mse), rtol=1e-6)
    np.testing.assert_array_equal(jitted.split_indices, eager.split_indices)

    batched = jax.vmap(lambda s: sq.lloyd_1d(s, 4))(jnp.asarray(x))
    for i in range(3):
        one = sq.lloyd_1d(x[i], 4)
        np.testing.assert_allclose(batched.levels[i], one.levels, rtol=1e-5)
        np.testing.assert_allclose(batched.mse[i], one.mse, rtol=1e-5)


def test_lloyd_max_under_vmap_and_jit():
    sigmas = jnp.array([0.5, 1.0, 3.0])
    levels = jax.vmap(lambda s: sq.lloyd_max(sq.gaussian(s), 4).levels)(sigmas)
    base = sq.lloyd_max(sq.gaussian(), 4).levels
    np.testing.assert_allclose(levels, sigmas[:, None] * base[None], rtol=1e-4)
    f = jax.jit(lambda d: sq.lloyd_max(d, 4).mse)
    np.testing.assert_allclose(float(f(sq.laplace())), 0.1761949, rtol=1e-4)


def test_partial_moments_gradients():
    d = sq.gaussian()
    g = jax.grad(lambda hi: sq.partial_moments(d, -jnp.inf, hi).mass)(0.7)
    np.testing.assert_allclose(float(g), stats.norm.pdf(0.7), rtol=1e-5)
    lap = sq.laplace()
    g = jax.grad(lambda lo: sq.partial_moments(lap, lo, jnp.inf).first)(-0.3)
    np.testing.assert_allclose(float(g), 0.3 * stats.laplace(0, 2**-0.5).pdf(-0.3), rtol=1e-5)
    g = jax.grad(lambda s: th.panter_dite_mse(sq.gaussian(s), 8))(2.0)
    np.testing.assert_allclose(float(g), 2 * 2.0 * math.sqrt(3) * math.pi / 2 / 64, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Theory
# ------------------------------------------------------------------------------------------


def test_uniform_quantizer_reproduces_max_table():
    for n in (2, 4, 8):
        step, mse = MAX_UNIFORM[n]
        r = th.uniform_quantizer(sq.gaussian(), n)
        np.testing.assert_allclose(float(r.step), step, rtol=1e-3)
        np.testing.assert_allclose(float(r.mse), mse, rtol=1e-3)
        np.testing.assert_allclose(np.diff(np.asarray(r.levels)), float(r.step), rtol=1e-5)
        np.testing.assert_allclose(r.thresholds, 0.5 * (r.levels[1:] + r.levels[:-1]), atol=1e-6)
    one = th.uniform_quantizer(sq.gaussian(2.0), 1)
    np.testing.assert_allclose(float(one.mse), 4.0)


def test_panter_dite_approaches_lloyd_max():
    ratios = []
    for n in (4, 8, 16, 32):
        lm = float(_gaussian_lloyd_max_x64(n).mse)
        ratios.append(float(th.panter_dite_mse(sq.gaussian(), n)) / lm)
    assert all(r > 1 for r in ratios)
    assert all(b < a for a, b in itertools.pairwise(ratios))  # decreasing towards 1
    assert ratios[-1] < 1.07  # N = 32: 1.061
    np.testing.assert_allclose(float(th.panter_dite_mse(sq.laplace(), 4)), 4.5 / 16, rtol=1e-6)
    tab = sq.on_interval(lambda u: jnp.exp(-0.5 * u * u), -9.0, 9.0)
    np.testing.assert_allclose(float(th.panter_dite_mse(tab, 8)),
                               float(th.panter_dite_mse(sq.gaussian(), 8)), rtol=1e-4)


def test_entropy_probabilities_snr_and_rate_distortion():
    r = sq.lloyd_max(sq.gaussian(), 4)
    p = th.cell_probabilities(sq.gaussian(), r.thresholds)
    np.testing.assert_allclose(float(jnp.sum(p)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, np.diff(stats.norm.cdf(np.r_[-np.inf, r.thresholds, np.inf])),
                               rtol=1e-5)
    h = float(th.output_entropy(p))
    assert 1.9 < h < 2.0  # 1.911 bits < log2 4
    np.testing.assert_allclose(float(th.output_entropy(jnp.full((8,), 0.125))), 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(th.output_entropy(jnp.array([1.0, 0.0]))), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(th.snr_db(0.1)), 10.0, rtol=1e-6)
    np.testing.assert_allclose(float(th.snr_db(0.5, variance=2.0)), 10 * math.log10(4), rtol=1e-6)
    d = th.gaussian_distortion_rate(jnp.array([0.0, 1.0, 2.0]), variance=2.0)
    np.testing.assert_allclose(d, [2.0, 0.5, 0.125], rtol=1e-6)
    # Each bit buys 6.02 dB; Lloyd-Max at N = 16 is within 4.35 dB of D(R).
    gap = th.snr_db(th.gaussian_distortion_rate(4.0)) - th.snr_db(PRECISE_GAUSSIAN_MSE[16])
    assert 0 < float(gap) < 10 * math.log10(math.sqrt(3) * math.pi / 2)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    x = np.array([0.0, 1.0, 2.0, 2.0], np.float32)
    with pytest.raises(ValueError, match="num_levels"):
        sq.optimal_scalar_quantizer(x, 0)
    with pytest.raises(ValueError, match="num_levels"):
        sq.lloyd_max(sq.gaussian(), 2.5)
    with pytest.raises(ValueError, match="num_levels.*distinct"):
        sq.optimal_scalar_quantizer(x, 4)
    with pytest.raises(ValueError, match="num_levels.*distinct"):
        sq.optimal_scalar_quantizer(x, 3, weights=np.array([1.0, 0.0, 1.0, 1.0], np.float32))
    with pytest.raises(ValueError, match="`x` must be finite"):
        sq.optimal_scalar_quantizer(np.array([0.0, np.nan, 1.0]), 2)
    with pytest.raises(ValueError, match="`x` must be finite"):
        sq.lloyd_1d(np.array([0.0, np.inf, 1.0]), 2)
    with pytest.raises(ValueError, match="weights.*>= 0"):
        sq.optimal_scalar_quantizer(x, 2, weights=np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights.*positive sum"):
        sq.lloyd_1d(x, 2, weights=np.zeros(4))
    with pytest.raises(ValueError, match="weights.*shape"):
        sq.optimal_scalar_quantizer(x, 2, weights=np.ones(3))
    with pytest.raises(ValueError, match="`x` must be \\[S\\]"):
        sq.optimal_scalar_quantizer(x.reshape(2, 2), 2)
    with pytest.raises(ValueError, match="pdf.*positive finite mass"):
        sq.on_interval(lambda u: jnp.zeros_like(u), 0.0, 1.0)
    with pytest.raises(ValueError, match="pdf.*finite values"):
        sq.on_interval(lambda u: 1.0 / u, 0.0, 1.0)
    with pytest.raises(ValueError, match="`a` must be < `b`"):
        sq.on_interval(lambda u: u, 1.0, 0.0)
    with pytest.raises(ValueError, match="`a` and `b` must be finite"):
        sq.on_interval(lambda u: u, 0.0, np.inf)
    with pytest.raises(ValueError, match="sigma"):
        sq.gaussian(-1.0)
    with pytest.raises(ValueError, match="init"):
        sq.lloyd_max(sq.gaussian(), 3, init=jnp.zeros(2))
    with pytest.raises(ValueError, match="density"):
        sq.lloyd_max(stats.norm(), 3)
