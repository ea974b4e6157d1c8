"""vqjax.evaluation.structure_recovery: the dynamic-programming matching against a brute force over
all injective matchings, and the precision/recall semantics (permutations, extra latents, missing
blocks, the threshold, shape errors)."""

import itertools

import numpy as np
import pytest

from vqjax.evaluation import StructureRecovery, structure_recovery


def _brute_force_tp(on, truth):
    """The most agreeing nonzero blocks over every matching of factors to distinct latents (or none)."""
    on, truth = np.asarray(on, bool), np.asarray(truth) != 0
    num_latents, k = on.shape[1], truth.shape[1]
    overlap = (on[:, :, None] & truth[:, None, :]).sum(0)  # [L, K]
    best = 0
    # Every injective partial map factor -> latent: choose K distinct slots among the L latents and
    # K "unmatched" placeholders.
    slots = list(range(num_latents)) + [-1 - f for f in range(k)]
    for assign in itertools.permutations(slots, k):
        tp = sum(int(overlap[j, f]) for f, j in enumerate(assign) if j >= 0)
        best = max(best, tp)
    return best


def _tp_of_matching(on, truth, matching):
    on, truth = np.asarray(on, bool), np.asarray(truth) != 0
    return sum(int(np.sum(on[:, j] & truth[:, f])) for f, j in enumerate(matching) if j >= 0)


def _check_result(res, est, truth, threshold=0.0):
    on = np.asarray(est, np.float64) > threshold
    k = np.asarray(truth).shape[1]
    assert isinstance(res, StructureRecovery)
    assert len(res.matching) == k
    used = [j for j in res.matching if j >= 0]
    assert len(used) == len(set(used)), "a latent matched twice"
    assert all(-1 <= j < on.shape[1] for j in res.matching)
    assert res.true_positives == _tp_of_matching(on, truth, res.matching)
    assert res.estimated_blocks == int(on.sum())
    assert res.true_blocks == int((np.asarray(truth) != 0).sum())
    if res.estimated_blocks:
        assert res.precision == pytest.approx(res.true_positives / res.estimated_blocks)
    if res.true_blocks:
        assert res.recall == pytest.approx(res.true_positives / res.true_blocks)
    assert 0.0 <= res.precision <= 1.0 and 0.0 <= res.recall <= 1.0


@pytest.mark.parametrize("seed", range(8))
def test_matching_finds_the_maximum_over_all_injective_matchings(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        g = int(rng.integers(1, 7))
        num_latents = int(rng.integers(1, 7))
        k = int(rng.integers(1, 5))
        est = (rng.uniform(size=(g, num_latents)) < rng.uniform(0.2, 0.8)) * rng.uniform(0.1, 2.0, size=(g, num_latents))
        truth = (rng.uniform(size=(g, k)) < rng.uniform(0.2, 0.8)).astype(int)
        res = structure_recovery(est, truth)
        _check_result(res, est, truth)
        assert res.true_positives == _brute_force_tp(est > 0, truth), (est, truth, res)


def test_matching_is_not_greedy():
    """Latent 0 overlaps factor 0 most (3 blocks), but the optimum gives factor 0 to latent 1 and
    factor 1 to latent 0: 2 + 2 = 4 true positives, against 3 + 0 for the greedy choice."""
    truth = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]])
    est = np.array([[1, 1], [1, 1], [1, 0], [1, 0], [1, 0]], float)
    assert _brute_force_tp(est > 0, truth) == 4
    res = structure_recovery(est, truth)
    _check_result(res, est, truth)
    assert res.true_positives == 4 and res.matching == (1, 0)
    assert res.precision == pytest.approx(4 / 7) and res.recall == pytest.approx(4 / 5)
    # The same with the latents in the other order (the DP's scan order must not matter).
    res = structure_recovery(est[:, ::-1], truth)
    assert res.true_positives == 4 and res.matching == (0, 1)


@pytest.mark.parametrize("seed", range(4))
def test_exact_recovery_under_a_permutation(seed):
    rng = np.random.default_rng(10 + seed)
    g, k = 6, 3
    # Distinct, disjoint supports so the right matching is unique.
    truth = np.zeros((g, k), int)
    rows = rng.permutation(g)
    for f in range(k):
        truth[rows[2 * f:2 * f + 2], f] = 1
    num_latents = 5
    cols = rng.permutation(num_latents)[:k]  # factor f lives in latent cols[f]
    est = np.zeros((g, num_latents))
    for f in range(k):
        est[:, cols[f]] = truth[:, f] * rng.uniform(0.5, 3.0, size=g)
    res = structure_recovery(est, truth)
    _check_result(res, est, truth)
    assert res.precision == 1.0 and res.recall == 1.0
    assert res.matching == tuple(int(c) for c in cols)
    assert res.true_positives == res.estimated_blocks == res.true_blocks == 2 * k


def test_extra_active_latent_lowers_precision_only():
    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    est = np.array([[0, 2.0, 0], [0, 1.0, 0], [0.5, 0, 0], [0.7, 0, 0]])
    base = structure_recovery(est, truth)
    assert base.precision == 1.0 and base.recall == 1.0 and base.matching == (1, 0)
    extra = np.concatenate([est, np.array([[0.3], [0.0], [0.2], [0.0]])], axis=1)  # a 4th latent, 2 blocks
    res = structure_recovery(extra, truth)
    _check_result(res, extra, truth)
    assert res.recall == 1.0 and res.matching == (1, 0)
    assert res.precision == pytest.approx(4 / 6)
    # Extra blocks inside a matched latent, off the truth, also cost precision only.
    est2 = est.copy()
    est2[2, 1] = 0.4
    res2 = structure_recovery(est2, truth)
    assert res2.recall == 1.0 and res2.precision == pytest.approx(4 / 5)


def test_missing_blocks_lower_recall_only():
    truth = np.array([[1, 0], [1, 0], [1, 1], [0, 1]])
    est = np.array([[3.0, 0, 0], [0, 0, 0], [1.0, 0, 0.2], [0, 0, 0.9]])  # factor 0 misses row 1
    res = structure_recovery(est, truth)
    _check_result(res, est, truth)
    assert res.precision == 1.0
    assert res.recall == pytest.approx(4 / 5)
    assert res.matching == (0, 2)
    # A factor with no latent at all: unmatched (-1), recall drops by its blocks.
    est = np.array([[3.0, 0], [1.0, 0], [1.0, 0], [0, 0]])
    res = structure_recovery(est, truth)
    _check_result(res, est, truth)
    assert res.precision == 1.0 and res.recall == pytest.approx(3 / 5)
    assert res.matching[0] == 0 and res.matching[1] == -1


def test_threshold_turns_weak_blocks_off():
    truth = np.array([[1], [1], [0]])
    est = np.array([[0.5, 0.0], [0.1, 0.0], [0.0, 0.1]])
    # Default threshold 0: every nonzero block is on.
    res = structure_recovery(est, truth)
    assert res.estimated_blocks == 3 and res.true_positives == 2 and res.precision == pytest.approx(2 / 3)
    # Blocks <= threshold are off (the boundary itself is off).
    res = structure_recovery(est, truth, threshold=0.1)
    _check_result(res, est, truth, threshold=0.1)
    assert res.estimated_blocks == 1 and res.true_positives == 1
    assert res.precision == 1.0 and res.recall == pytest.approx(1 / 2)
    res = structure_recovery(est, truth, threshold=0.0999)
    assert res.estimated_blocks == 3
    res = structure_recovery(est, truth, threshold=1.0)
    assert res.estimated_blocks == 0 and res.true_positives == 0 and res.recall == 0.0
    assert res.matching == (-1,)
    # Negative strengths are not "on" at threshold 0 (blocks are norms; only > threshold counts).
    res = structure_recovery(-est, truth)
    assert res.estimated_blocks == 0


def test_truth_is_nonzero_where_any_nonzero_value():
    truth = np.array([[2.0, 0.0], [-1.0, 0.0], [0.0, 0.5]])
    est = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    res = structure_recovery(est, truth)
    assert res.true_blocks == 3 and res.precision == 1.0 and res.recall == 1.0 and res.matching == (0, 1)


def test_degenerate_inputs():
    truth = np.array([[1, 0], [0, 1]])
    empty = structure_recovery(np.zeros((2, 3)), truth)
    assert empty.estimated_blocks == 0 and empty.true_positives == 0
    assert empty.precision == 0.0 and empty.recall == 0.0 and empty.matching == (-1, -1)
    no_truth = structure_recovery(np.ones((2, 3)), np.zeros((2, 2)))
    assert no_truth.true_blocks == 0 and no_truth.recall == 1.0 and no_truth.precision == 0.0
    # More factors than latents: at most L factors are matched.
    res = structure_recovery(np.array([[1.0], [1.0]]), truth)
    _check_result(res, np.array([[1.0], [1.0]]), truth)
    assert res.true_positives == 1 and sorted(res.matching) == [-1, 0]


@pytest.mark.parametrize("est_shape,truth_shape", [
    ((4,), (4, 2)), ((4, 3), (4,)), ((4, 3, 1), (4, 2)), ((4, 3), (4, 2, 1)), ((4, 3), (5, 2)), ((), (4, 2)),
])
def test_shape_errors(est_shape, truth_shape):
    with pytest.raises(ValueError, match=r"\[G, L\].*\[G, K\]"):
        structure_recovery(np.ones(est_shape), np.ones(truth_shape))


def test_too_many_factors_is_rejected():
    with pytest.raises(ValueError, match="K = 21"):
        structure_recovery(np.ones((3, 2)), np.ones((3, 21)))
