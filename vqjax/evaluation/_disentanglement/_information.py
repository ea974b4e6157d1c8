"""Disentanglement scores from mutual information and feature importance: MIG, DCI and
modularity / explicitness (definitions in :mod:`vqjax.evaluation._disentanglement`)."""

from __future__ import annotations

import numpy as np

from vqjax.evaluation._disentanglement._common import (
    DCI,
    ModularityExplicitness,
    Representation,
    _check_codes,
    _check_factors,
    _check_int,
    _check_split,
    _data_sizes,
    _encode,
    _require_varying,
    _sample,
    _sklearn,
    discrete_entropy,
    discrete_mutual_information,
    histogram_discretize,
)


def mig_from_samples(codes, factors, *, num_bins: int = 20) -> float:
    """The mutual information gap of ``codes [n, L]`` (L >= 2) for ``factors [n, K]``: the latents
    discretised into ``num_bins`` equal-width bins (:func:`histogram_discretize`), then
    ``(1/K) Σ_k (I_(1)k − I_(2)k) / H(y_k)`` with ``I_(1)k ≥ I_(2)k`` the two largest
    ``I(z_j; y_k)`` (disentanglement_lib ``mig._compute_mig``). In [0, 1]; a duplicated latent gives 0,
    and a latent encoding two factors is not penalised."""
    z = _check_codes("codes", codes)
    y = _check_factors("factors", factors, n=z.shape[0])
    if z.shape[1] < 2:
        raise ValueError(f"`codes` must have at least two latents for a gap; got L = {z.shape[1]}.")
    _require_varying("factors", y)
    mi = discrete_mutual_information(histogram_discretize(z, num_bins), y)  # [L, K]
    top = np.sort(mi, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / discrete_entropy(y)))


def mutual_information_gap(data, representation: Representation, *, seed: int = 0, num_train: int = 10000,
                           num_bins: int = 20, chunk_size: int = 1024) -> float:
    """MIG (Chen et al., 2018, "Isolating Sources of Disentanglement in Variational Autoencoders", §5)
    on ``num_train`` draws, as disentanglement_lib ``mig.py`` computes it (:func:`mig_from_samples`;
    its discrete MI with the 20-bin histogram discretiser of the study configuration)."""
    sizes = _data_sizes(data)
    num_train, chunk_size = _check_int("num_train", num_train, 2), _check_int("chunk_size", chunk_size)
    num_bins = _check_int("num_bins", num_bins)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    y = _sample(data, sizes, num_train, rng)
    return mig_from_samples(_encode(data, representation, y, chunk_size), y, num_bins=num_bins)


# ----------------------------------------------------------------------------------------------------
# SAP (Kumar et al., 2018)


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """``1 − H_base(p_i)`` for each row of non-negative weights p (normalised per row after adding
    1e-11, as disentanglement_lib's ``scipy.stats.entropy(R + 1e-11, base=...)``)."""
    q = p + 1e-11
    q = q / q.sum(axis=1, keepdims=True)
    return 1.0 - (-np.sum(q * np.log(q), axis=1) / np.log(base))


def dci_from_importance(importance) -> tuple[float, float]:
    """``(disentanglement, completeness)`` of an importance matrix ``R [L, K]`` (L, K >= 2; non-negative;
    disentanglement_lib ``dci.disentanglement`` and ``dci.completeness``):

        D = Σ_j ρ_j (1 − H_K(R_{j·} / Σ_k R_{jk})),   ρ_j = Σ_k R_{jk} / Σ R,
        C = Σ_k ρ̃_k (1 − H_L(R_{·k} / Σ_j R_{jk})),   ρ̃_k = Σ_j R_{jk} / Σ R,

    uniform weights when ``R = 0``. A latent shared by two factors costs D ``log 2 / log K``; a factor
    spread over two latents costs C ``log 2 / log L``.
    """
    r = np.asarray(importance, np.float64)
    if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 2 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"`importance` must be finite, non-negative [L, K] with L, K >= 2 (the entropies have "
                         f"bases K and L); got shape {r.shape}.")
    weights = r if r.sum() > 0 else np.ones_like(r)
    per_code = _one_minus_entropy(r, r.shape[1])
    per_factor = _one_minus_entropy(r.T, r.shape[0])
    d = np.sum(per_code * weights.sum(axis=1) / weights.sum())
    c = np.sum(per_factor * weights.sum(axis=0) / weights.sum())
    return float(d), float(c)


def dci_importance(codes_train, factors_train, codes_test, factors_test, *,
                   seed: int = 0) -> tuple[np.ndarray, float, float]:
    """``(R [L, K], train accuracy, test accuracy)``: ``R_{·k}`` the feature importances of a default
    ``GradientBoostingClassifier`` (``random_state=seed``) predicting ``y_k`` from all latents, the
    accuracies averaged over factors (disentanglement_lib ``dci.compute_importance_gbt``)."""
    _sklearn()
    from sklearn.ensemble import GradientBoostingClassifier

    z, y, zt, yt = _check_split(codes_train, factors_train, codes_test, factors_test)
    seed = _check_int("seed", seed, 0)
    importance = np.zeros((z.shape[1], y.shape[1]))
    train_acc, test_acc = [], []
    for k in range(y.shape[1]):
        model = GradientBoostingClassifier(random_state=seed).fit(z, y[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_acc.append(np.mean(model.predict(z) == y[:, k]))
        test_acc.append(np.mean(model.predict(zt) == yt[:, k]))
    return importance, float(np.mean(train_acc)), float(np.mean(test_acc))


def dci_from_samples(codes_train, factors_train, codes_test, factors_test, *, seed: int = 0) -> DCI:
    """DCI of the given codes: :func:`dci_importance`, then :func:`dci_from_importance`
    (disentanglement_lib ``dci._compute_dci``)."""
    importance, train_acc, test_acc = dci_importance(codes_train, factors_train, codes_test, factors_test,
                                                     seed=seed)
    return DCI(*dci_from_importance(importance), train_acc, test_acc, importance)


def dci(data, representation: Representation, *, seed: int = 0, num_train: int = 10000, num_test: int = 5000,
        chunk_size: int = 1024) -> DCI:
    """Disentanglement, completeness and informativeness (Eastwood & Williams, 2018, "A Framework for
    the Quantitative Evaluation of Disentangled Representations", §2) from gradient-boosted trees, as
    disentanglement_lib ``dci.py`` computes them (:func:`dci_from_samples`). Needs K >= 2 factors and
    L >= 2 latents."""
    sizes = _data_sizes(data)
    num_train, num_test = _check_int("num_train", num_train, 2), _check_int("num_test", num_test)
    chunk_size = _check_int("chunk_size", chunk_size)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    y, yt = _sample(data, sizes, num_train, rng), _sample(data, sizes, num_test, rng)
    z, zt = (_encode(data, representation, f, chunk_size) for f in (y, yt))
    return dci_from_samples(z, y, zt, yt, seed=seed)


# ----------------------------------------------------------------------------------------------------
# Modularity and explicitness (Ridgeway & Mozer, 2018)


def modularity_from_mutual_information(mutual_information) -> float:
    """Mean over latents of ``1 − (Σ_k θ_{jk}² − max_k θ_{jk}²) / (max_k θ_{jk}² (K − 1))`` for
    ``θ = mutual_information [L, K]`` (K >= 2), a latent informative about no factor counting 0
    (disentanglement_lib ``modularity_explicitness.modularity``). 1 when every latent is informative
    about one factor; a latent equally informative about all K factors scores 0."""
    m = np.asarray(mutual_information, np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 2 or not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"`mutual_information` must be finite, non-negative [L, K] with K >= 2; got shape "
                         f"{m.shape}.")
    sq = m ** 2
    top = sq.max(axis=1)
    safe = np.where(top > 0, top, 1.0)
    score = 1.0 - (sq.sum(axis=1) - top) / (safe * (m.shape[1] - 1))
    return float(np.mean(np.where(top > 0, score, 0.0)))


def _auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    onehot = (y[:, None] == classes[None, :]).astype(np.int64)
    cols = [c for c in range(len(classes)) if 0 < onehot[:, c].sum() < len(y)]
    if not cols:
        raise ValueError("explicitness: a factor takes a single value in a split; every factor must vary.")
    return float(np.mean([roc_auc_score(onehot[:, c], proba[:, c]) for c in cols]))


def explicitness_from_samples(codes_train, factors_train, codes_test, factors_test, *,
                              seed: int = 0) -> tuple[float, float]:
    """``(train, test)`` explicitness: for each factor, a default ``LogisticRegression`` predicting it
    from all latents (standardised by the training mean and standard deviation), scored by the
    macro-averaged one-vs-rest ROC-AUC of its class probabilities; the mean over factors
    (disentanglement_lib ``modularity_explicitness.explicitness_per_factor``)."""
    _sklearn()
    from sklearn.linear_model import LogisticRegression

    z, y, zt, yt = _check_split(codes_train, factors_train, codes_test, factors_test)
    mean, std = z.mean(axis=0), z.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z, zt = (z - mean) / std, (zt - mean) / std
    seed = _check_int("seed", seed, 0)
    train, test = [], []
    for k in range(y.shape[1]):
        model = LogisticRegression(random_state=seed).fit(z, y[:, k])
        train.append(_auc(y[:, k], model.predict_proba(z), model.classes_))
        test.append(_auc(yt[:, k], model.predict_proba(zt), model.classes_))
    return float(np.mean(train)), float(np.mean(test))


def modularity_explicitness_from_samples(codes_train, factors_train, codes_test, factors_test, *,
                                         num_bins: int = 20, seed: int = 0) -> ModularityExplicitness:
    """Modularity (:func:`modularity_from_mutual_information` of the discrete mutual information of the
    ``num_bins``-bin discretised training codes with the training factors) and explicitness
    (:func:`explicitness_from_samples`); disentanglement_lib
    ``modularity_explicitness.compute_modularity_explicitness``. Needs K >= 2."""
    z = _check_codes("codes_train", codes_train)
    y = _check_factors("factors_train", factors_train, n=z.shape[0])
    mi = discrete_mutual_information(histogram_discretize(z, num_bins), y)
    modularity = modularity_from_mutual_information(mi)
    return ModularityExplicitness(modularity, *explicitness_from_samples(z, y, codes_test, factors_test,
                                                                         seed=seed))


def modularity_explicitness(data, representation: Representation, *, seed: int = 0, num_train: int = 10000,
                            num_test: int = 5000, num_bins: int = 20,
                            chunk_size: int = 1024) -> ModularityExplicitness:
    """Modularity and explicitness (Ridgeway & Mozer, 2018, "Learning Deep Disentangled Embeddings With
    the F-Statistic Loss", §3), as disentanglement_lib ``modularity_explicitness.py`` computes them
    (:func:`modularity_explicitness_from_samples`)."""
    sizes = _data_sizes(data)
    if len(sizes) < 2:
        raise ValueError("`data` must have at least two factors for modularity.")
    num_train, num_test = _check_int("num_train", num_train, 2), _check_int("num_test", num_test)
    num_bins, chunk_size = _check_int("num_bins", num_bins), _check_int("chunk_size", chunk_size)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    y, yt = _sample(data, sizes, num_train, rng), _sample(data, sizes, num_test, rng)
    z, zt = (_encode(data, representation, f, chunk_size) for f in (y, yt))
    return modularity_explicitness_from_samples(z, y, zt, yt, num_bins=num_bins, seed=seed)
