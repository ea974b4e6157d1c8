r"""How well a learned latent-to-group map recovers a known one, up to a permutation of the latents.

A latent variable model identifies its latents only up to order, so a learned map
``B̂ ∈ {0,1}^{G×L}`` (``B̂_{gj} = 1`` when latent j drives group g, e.g. ``||w_{g,j}|| > 0`` in
oi-VAE) is compared with the truth ``M ∈ {0,1}^{G×K}`` after matching each true factor to at most
one learned latent, the matching that maximises the agreeing nonzero blocks (an exact search by
dynamic programming over subsets of the K factors, ``O(L K 2^K)``). Then

    precision = TP / #{nonzero blocks of B̂}     (every learned block, matched latent or not)
    recall    = TP / #{nonzero blocks of M},

with TP the nonzero blocks of B̂ that are nonzero in M under the matching: a latent that drives
groups but matches no factor counts entirely against precision.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["StructureRecovery", "structure_recovery"]


class StructureRecovery(NamedTuple):
    precision: float
    recall: float
    matching: tuple[int, ...]  # K entries: the learned latent matched to each true factor (-1: none)
    true_positives: int
    estimated_blocks: int  # nonzero blocks of the estimate
    true_blocks: int  # nonzero blocks of the truth


def structure_recovery(estimated: np.ndarray, truth: np.ndarray, *, threshold: float = 0.0) -> StructureRecovery:
    """Precision and recall of the nonzero blocks of ``estimated [G, L]`` against ``truth [G, K]``.

    ``estimated`` holds block strengths (e.g. ``||w_{g,j}||``); a block is nonzero when it exceeds
    ``threshold`` (default 0: exactly-zero blocks are off). ``truth`` is nonzero where factor k
    drives group g. Needs K ≤ 20.
    """
    est = np.asarray(estimated, np.float64)
    true = np.asarray(truth) != 0
    if est.ndim != 2 or true.ndim != 2 or est.shape[0] != true.shape[0]:
        raise ValueError(f"`estimated` [G, L] and `truth` [G, K] must be 2-D with the same G; got shapes "
                         f"{est.shape} and {true.shape}.")
    num_latents = est.shape[1]
    k = true.shape[1]
    if k > 20:
        raise ValueError(f"`truth` has K = {k} factors; the exact matching handles K <= 20.")
    on = est > threshold  # [G, L]
    overlap = (on[:, :, None] & true[:, None, :]).sum(0)  # [L, K]
    # best[mask] after the first j latents: the most TP with the factors in `mask` matched.
    size = 1 << k
    best = np.full(size, -1, np.int64)
    best[0] = 0
    choice = np.full((num_latents, size), -1, np.int64)  # factor matched to latent j reaching mask (-1: none)
    for j in range(num_latents):
        new = best.copy()  # latent j unmatched
        for mask in np.flatnonzero(best >= 0):
            for f in range(k):
                bit = 1 << f
                if mask & bit:
                    continue
                value = best[mask] + overlap[j, f]
                if value > new[mask | bit]:
                    new[mask | bit] = value
                    choice[j, mask | bit] = f
        changed = new != best
        choice[j, ~changed] = -1
        best = new
    mask = int(np.argmax(best))
    tp = int(best[mask])
    matching = [-1] * k
    for j in reversed(range(num_latents)):
        f = int(choice[j, mask])
        if f >= 0:
            matching[f] = j
            mask ^= 1 << f
    n_est, n_true = int(on.sum()), int(true.sum())
    precision = tp / n_est if n_est else 0.0
    recall = tp / n_true if n_true else 1.0
    return StructureRecovery(precision, recall, tuple(matching), tp, n_est, n_true)
