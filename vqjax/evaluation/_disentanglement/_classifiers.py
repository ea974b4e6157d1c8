"""Disentanglement scores fitted by classifiers: the β-VAE score, the FactorVAE score and SAP
(definitions in :mod:`vqjax.evaluation._disentanglement`)."""

from __future__ import annotations

import numpy as np

from vqjax.evaluation._disentanglement._common import (
    BetaVAEScore,
    FactorVAEScore,
    Representation,
    _check_codes,
    _check_factors,
    _check_int,
    _check_split,
    _data_sizes,
    _encode,
    _encode_chunks,
    _sample,
    _sklearn,
)


def beta_vae_from_samples(train_features, train_labels, eval_features, eval_labels, *,
                          seed: int = 0) -> BetaVAEScore:
    """Train and held-out accuracy of scikit-learn's default ``LogisticRegression`` fitted to
    ``(train_features [P, L], train_labels [P])``: the β-VAE score's classifier
    (disentanglement_lib ``beta_vae.compute_beta_vae_sklearn``). Features are ``mean_b |z_b − z'_b|``
    over pairs sharing the labelled factor."""
    _sklearn()
    from sklearn.linear_model import LogisticRegression

    x = _check_codes("train_features", train_features)
    t = _check_factors("train_labels", np.reshape(train_labels, (-1, 1)), n=x.shape[0])[:, 0]
    xe = _check_codes("eval_features", eval_features, num_latents=x.shape[1])
    te = _check_factors("eval_labels", np.reshape(eval_labels, (-1, 1)), n=xe.shape[0])[:, 0]
    if len(np.unique(t)) < 2:
        raise ValueError("`train_labels` must hold at least two classes.")
    model = LogisticRegression(random_state=_check_int("seed", seed, 0)).fit(x, t)
    return BetaVAEScore(float(np.mean(model.predict(x) == t)), float(np.mean(model.predict(xe) == te)))


def _beta_vae_points(data, sizes, representation, rng, num_points, batch_size, chunk_size):
    k = len(sizes)
    labels = rng.integers(k, size=num_points)
    y1 = _sample(data, sizes, num_points * batch_size, rng).reshape(num_points, batch_size, k)
    y2 = _sample(data, sizes, num_points * batch_size, rng).reshape(num_points, batch_size, k)
    points = np.arange(num_points)
    y2[points, :, labels] = y1[points, :, labels]  # the pairs share factor `labels[p]`
    pairs = np.stack([y1, y2], axis=1).reshape(-1, k)  # [P·2·B, K]: point by point
    per_call = max(1, chunk_size // (2 * batch_size)) * 2 * batch_size
    features = []
    for z in _encode_chunks(data, representation, pairs, per_call):
        z = z.reshape(-1, 2, batch_size, z.shape[1])
        features.append(np.mean(np.abs(z[:, 0] - z[:, 1]), axis=1))
    return np.concatenate(features), labels


def beta_vae_score(data, representation: Representation, *, seed: int = 0, batch_size: int = 64,
                   num_train: int = 10000, num_eval: int = 5000, chunk_size: int = 1024) -> BetaVAEScore:
    """The β-VAE disentanglement score (Higgins et al., 2017, "β-VAE: Learning Basic Visual Concepts
    with a Constrained Variational Framework", §3), as disentanglement_lib ``beta_vae.py`` defines it.

    Each of ``num_train`` (then ``num_eval``) points draws a factor k uniformly, ``batch_size`` pairs
    of factor vectors that agree on factor k only by construction, and has the feature
    ``(1/B) Σ_b |r(x(y_b)) − r(x(y'_b))| ∈ ℝ^L`` and the label k; a logistic regression is fitted to the
    training points. ``eval_accuracy`` is the score (1 when each factor leaves a distinct trace).
    ``representation`` is called on ``chunk_size``-sized batches (rounded to whole points).
    """
    sizes = _data_sizes(data)
    if len(sizes) < 2:
        raise ValueError("`data` must have at least two factors for the β-VAE score (it classifies them).")
    batch_size, num_train, num_eval, chunk_size = (_check_int(n, v) for n, v in (
        ("batch_size", batch_size), ("num_train", num_train), ("num_eval", num_eval),
        ("chunk_size", chunk_size)))
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    train = _beta_vae_points(data, sizes, representation, rng, num_train, batch_size, chunk_size)
    evals = _beta_vae_points(data, sizes, representation, rng, num_eval, batch_size, chunk_size)
    return beta_vae_from_samples(*train, *evals, seed=seed)


# ----------------------------------------------------------------------------------------------------
# FactorVAE score (Kim & Mnih, 2018)


def factor_vae_votes(codes, fixed_factors, global_variances, *, num_factors: int,
                     threshold: float = 0.05) -> np.ndarray:
    """``int64 [K, L]`` vote counts: batch p of ``codes [P, B, L]`` (its draws share factor
    ``fixed_factors[p]``) votes for ``argmin_j Var̂_b(z_{pbj}) / global_variances[j]`` (ddof 1) over
    the active latents, those with ``sqrt(global_variances[j]) >= threshold``
    (disentanglement_lib ``factor_vae._generate_training_batch`` and ``_prune_dims``). No active
    latent: no votes."""
    z = np.asarray(codes, np.float64)
    if z.ndim != 3 or z.shape[1] < 2 or z.shape[0] < 1 or z.shape[2] < 1 or not np.all(np.isfinite(z)):
        raise ValueError(f"`codes` must be finite [P, B, L] with B >= 2; got shape {z.shape}.")
    num_factors = _check_int("num_factors", num_factors)
    fixed = _check_factors("fixed_factors", np.reshape(fixed_factors, (-1, 1)), n=z.shape[0])[:, 0]
    if np.any(fixed < 0) or np.any(fixed >= num_factors):
        raise ValueError(f"`fixed_factors` must lie in [0, num_factors = {num_factors}).")
    var = np.asarray(global_variances, np.float64)
    if var.shape != (z.shape[2],) or np.any(~np.isfinite(var)) or np.any(var < 0):
        raise ValueError(f"`global_variances` must be finite, >= 0 and of shape ({z.shape[2]},); got "
                         f"{var.shape}.")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"`threshold` must be >= 0; got {threshold!r}.")
    votes = np.zeros((num_factors, z.shape[2]), np.int64)
    active = np.sqrt(var) >= threshold
    active &= var > 0  # a latent of zero variance cannot be normalised (pruned for any threshold > 0)
    if not active.any():
        return votes
    local = np.var(z, axis=1, ddof=1)  # [P, L]
    ratio = np.where(active, local / np.where(active, var, 1.0), np.inf)
    np.add.at(votes, (fixed, np.argmin(ratio, axis=1)), 1)
    return votes


def factor_vae_from_votes(train_votes, eval_votes) -> tuple[float, float]:
    """Train and eval accuracy of the majority-vote classifier ``latent j ↦ argmax_k train_votes[k, j]``
    (``[K, L]`` counts; disentanglement_lib ``factor_vae.compute_factor_vae``):
    ``Σ_j votes[class(j), j] / Σ votes``. No votes: 0."""
    tv, ev = (np.asarray(v) for v in (train_votes, eval_votes))
    for name, v in (("train_votes", tv), ("eval_votes", ev)):
        if v.ndim != 2 or v.shape != tv.shape or np.any(v < 0) or not np.all(np.isfinite(v)):
            raise ValueError(f"`{name}` must be non-negative counts [K, L] of one shape; got {v.shape}.")
    classes = np.argmax(tv, axis=0)
    cols = np.arange(tv.shape[1])
    acc = [float(v[classes, cols].sum() / v.sum()) if v.sum() > 0 else 0.0 for v in (tv, ev)]
    return acc[0], acc[1]


def _factor_vae_votes(data, sizes, representation, rng, num_points, batch_size, chunk_size, variances,
                      threshold):
    k = len(sizes)
    fixed = rng.integers(k, size=num_points)
    y = _sample(data, sizes, num_points * batch_size, rng).reshape(num_points, batch_size, k)
    points = np.arange(num_points)
    y[points, :, fixed] = y[points, :1, fixed]  # every draw of batch p shares factor fixed[p]
    per_call = max(1, chunk_size // batch_size) * batch_size
    votes = np.zeros((k, variances.shape[0]), np.int64)
    start = 0
    for z in _encode_chunks(data, representation, y.reshape(-1, k), per_call):
        z = z.reshape(-1, batch_size, z.shape[1])
        votes += factor_vae_votes(z, fixed[start:start + z.shape[0]], variances, num_factors=k,
                                  threshold=threshold)
        start += z.shape[0]
    return votes


def factor_vae_score(data, representation: Representation, *, seed: int = 0, batch_size: int = 64,
                     num_train: int = 10000, num_eval: int = 5000, num_variance_estimate: int = 10000,
                     threshold: float = 0.05, chunk_size: int = 1024) -> FactorVAEScore:
    """The FactorVAE disentanglement score (Kim & Mnih, 2018, "Disentangling by Factorising", §4), as
    disentanglement_lib ``factor_vae.py`` defines it.

    ``Var̂(z_j)`` (ddof 1) over ``num_variance_estimate`` draws normalises each latent; latents with
    ``sqrt(Var̂(z_j)) < threshold`` (collapsed to the prior) are pruned. Each of ``num_train`` votes
    draws a factor k and ``batch_size`` factor vectors sharing the value of factor k and votes for the
    active latent of least normalised variance (:func:`factor_vae_votes`); the score is the accuracy of
    the majority-vote classifier on ``num_eval`` fresh votes (:func:`factor_vae_from_votes`), 0 when no
    latent is active.
    """
    sizes = _data_sizes(data)
    num_train, num_eval, chunk_size = (_check_int(n, v) for n, v in (
        ("num_train", num_train), ("num_eval", num_eval), ("chunk_size", chunk_size)))
    batch_size = _check_int("batch_size", batch_size, 2)
    num_variance_estimate = _check_int("num_variance_estimate", num_variance_estimate, 2)
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"`threshold` must be >= 0; got {threshold!r}.")
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    variances = np.var(_encode(data, representation, _sample(data, sizes, num_variance_estimate, rng),
                               chunk_size), axis=0, ddof=1)
    active = (np.sqrt(variances) >= threshold) & (variances > 0)
    if not active.any():
        return FactorVAEScore(0.0, 0.0, 0)
    train = _factor_vae_votes(data, sizes, representation, rng, num_train, batch_size, chunk_size, variances,
                              threshold)
    evals = _factor_vae_votes(data, sizes, representation, rng, num_eval, batch_size, chunk_size, variances,
                              threshold)
    return FactorVAEScore(*factor_vae_from_votes(train, evals), int(active.sum()))


# ----------------------------------------------------------------------------------------------------
# Mutual information gap (Chen et al., 2018)


def sap_score_matrix(codes_train, factors_train, codes_test, factors_test, *,
                     continuous_factors: bool = False, seed: int = 0) -> np.ndarray:
    """``float64 [L, K]`` SAP score matrix (disentanglement_lib ``sap_score.compute_score_matrix``).

    Discrete factors: ``S_{jk}`` is the accuracy on the test codes of ``LinearSVC(C=0.01,
    class_weight="balanced")`` fitted to predict ``y_k`` from ``z_j`` alone on the training codes.
    Continuous factors: ``S_{jk} = Cov(z_j, y_k)² / (Var z_j · Var y_k)`` on the training codes
    (0 where ``Var z_j <= 1e-12``; the test codes are unused).
    """
    z, y, zt, yt = _check_split(codes_train, factors_train, codes_test, factors_test)
    num_latents, num_factors = z.shape[1], y.shape[1]
    scores = np.zeros((num_latents, num_factors))
    if continuous_factors:
        for j in range(num_latents):
            for k in range(num_factors):
                cov = np.cov(z[:, j], y[:, k].astype(np.float64), ddof=1)
                if cov[0, 0] > 1e-12:
                    scores[j, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
        return scores
    _sklearn()
    from sklearn.svm import LinearSVC

    seed = _check_int("seed", seed, 0)
    for j in range(num_latents):
        for k in range(num_factors):
            model = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            model.fit(z[:, j:j + 1], y[:, k])
            scores[j, k] = np.mean(model.predict(zt[:, j:j + 1]) == yt[:, k])
    return scores


def sap_from_score_matrix(score_matrix) -> float:
    """``(1/K) Σ_k (S_(1)k − S_(2)k)``: the mean over factors of the gap between the two largest
    entries of the column of ``score_matrix [L, K]`` (L >= 2; disentanglement_lib
    ``sap_score.compute_avg_diff_top_two``)."""
    s = np.asarray(score_matrix, np.float64)
    if s.ndim != 2 or s.shape[0] < 2 or s.shape[1] < 1 or not np.all(np.isfinite(s)):
        raise ValueError(f"`score_matrix` must be finite [L, K] with L >= 2; got shape {s.shape}.")
    top = np.sort(s, axis=0)
    return float(np.mean(top[-1] - top[-2]))


def sap_from_samples(codes_train, factors_train, codes_test, factors_test, *,
                     continuous_factors: bool = False, seed: int = 0) -> float:
    """SAP of the given codes: :func:`sap_from_score_matrix` of :func:`sap_score_matrix`."""
    z = _check_codes("codes_train", codes_train)
    if z.shape[1] < 2:
        raise ValueError(f"`codes_train` must have at least two latents for a gap; got L = {z.shape[1]}.")
    return sap_from_score_matrix(sap_score_matrix(z, factors_train, codes_test, factors_test,
                                                  continuous_factors=continuous_factors, seed=seed))


def sap_score(data, representation: Representation, *, seed: int = 0, num_train: int = 10000,
              num_test: int = 5000, continuous_factors: bool = False, chunk_size: int = 1024) -> float:
    """The Separated Attribute Predictability score (Kumar et al., 2018, "Variational Inference of
    Disentangled Latent Concepts from Unlabeled Observations", §3), as disentanglement_lib
    ``sap_score.py`` defines it, with its study's discrete factors by default
    (:func:`sap_score_matrix`, :func:`sap_from_score_matrix`)."""
    sizes = _data_sizes(data)
    num_train, num_test = _check_int("num_train", num_train, 2), _check_int("num_test", num_test)
    chunk_size = _check_int("chunk_size", chunk_size)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    y, yt = _sample(data, sizes, num_train, rng), _sample(data, sizes, num_test, rng)
    z, zt = (_encode(data, representation, f, chunk_size) for f in (y, yt))
    return sap_from_samples(z, y, zt, yt, continuous_factors=continuous_factors, seed=seed)


# ----------------------------------------------------------------------------------------------------
# DCI (Eastwood & Williams, 2018)
