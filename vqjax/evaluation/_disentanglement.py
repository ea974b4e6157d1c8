r"""Disentanglement metrics on data with known generative factors, as disentanglement_lib defines them.

A metric samples ground-truth factors ``y ∈ ℕ^K`` (one integer per factor k, uniformly and
independently over the factor grid unless the data says otherwise) from a :class:`GroundTruthData`,
renders the observations ``x(y)`` and scores a representation ``z = r(x) ∈ ℝ^L`` (e.g. the mean of
a VAE encoder). The definitions are those of disentanglement_lib (google-research/disentanglement_lib,
``disentanglement_lib/evaluation/metrics/``; Locatello et al., 2019, "Challenging Common Assumptions
in the Unsupervised Learning of Disentangled Representations", ICML), and the default sample counts
those of its study configuration ``config/unsupervised_study_v1/metric_configs/*.gin``:

- **β-VAE score** (Higgins et al., 2017; ``beta_vae.py``): a point is a factor index k and B pairs
  ``(y, y')`` drawn independently except ``y'_k = y_k``; its feature is ``(1/B) Σ_b |z_b − z'_b|``
  and its label k. The score is the held-out accuracy of a logistic regression on these points.
- **FactorVAE score** (Kim & Mnih, 2018; ``factor_vae.py``): a vote is a factor index k and a batch
  of B draws sharing ``y_k``; it votes for the latent ``argmin_j Var̂_batch(z_j) / Var̂(z_j)`` (each
  variance with ddof 1, ``Var̂(z_j)`` over a large sample), among the latents with
  ``sqrt(Var̂(z_j)) ≥ 0.05``. The majority-vote classifier maps each latent to the factor that voted
  for it most; the score is its accuracy on fresh votes.
- **MIG** (Chen et al., 2018; ``mig.py``): each latent is discretised into 20 equal-width bins
  (``utils._histogram_discretize``), ``I(z_j; y_k)`` is the plug-in discrete mutual information, and

      MIG = (1/K) Σ_k [I(z_{j(1)}; y_k) − I(z_{j(2)}; y_k)] / H(y_k),

  with ``j(1), j(2)`` the latents most and second-most informative about ``y_k``.
- **SAP** (Kumar et al., 2018; ``sap_score.py``): a score matrix ``S_{jk}`` is the test accuracy of
  a linear SVM (``LinearSVC(C=0.01, class_weight="balanced")``) predicting ``y_k`` from ``z_j`` alone
  (for continuous factors instead ``S_{jk} = Cov(z_j, y_k)² / (Var z_j Var y_k)``), and
  ``SAP = (1/K) Σ_k (S_{(1)k} − S_{(2)k})``, the mean gap between the two largest entries per factor.
- **DCI** (Eastwood & Williams, 2018; ``dci.py``): ``R_{jk}`` is the importance of ``z_j`` in a
  gradient-boosted-trees classifier (scikit-learn's default ``GradientBoostingClassifier``) of
  ``y_k``. With ``P_{jk} = R_{jk} / Σ_k' R_{jk'}`` and ``ρ_j = Σ_k R_{jk} / Σ R``,

      D = Σ_j ρ_j (1 − H_K(P_{j·})),   C = Σ_k ρ̃_k (1 − H_L(P̃_{·k})),

  ``H_b`` the entropy in base b and ``P̃, ρ̃`` the same normalisations over latents; informativeness
  is the classifiers' mean accuracy (train and test).
- **Modularity and explicitness** (Ridgeway & Mozer, 2018; ``modularity_explicitness.py``): with
  ``θ_{jk} = I(z_j; y_k)`` on the discretised latents, latent j's modularity is
  ``1 − (Σ_k θ_{jk}² − max_k θ_{jk}²) / (max_k θ_{jk}² (K − 1))`` (0 when ``max_k θ_{jk} = 0``), averaged
  over latents; explicitness is the mean over factors of the macro one-vs-rest ROC-AUC of a logistic
  regression predicting ``y_k`` from all standardised latents.

Each metric is a deterministic function of ``seed`` (a NumPy ``default_rng``) given a deterministic
representation. Each also has a pure ``*_from_samples`` (or ``*_from_*``) function that scores given
codes and factors, with no sampling. scikit-learn fits the classifiers, as in disentanglement_lib.

Deviations from disentanglement_lib, none of which changes a definition: NumPy's ``Generator``
instead of ``RandomState`` (the same sampling scheme, different draws); scikit-learn ≥ 1.5 defaults
(its ``LogisticRegression`` is multinomial L-BFGS; the 2019 library ran scikit-learn < 0.22, whose
default was one-vs-rest liblinear); the FactorVAE votes are indexed by the latent's own index (the
library indexes by the position among active latents; the accuracies are the same) and
``num_active_dims`` counts the active latents (the library reports L); explicitness standardises a
constant latent by 1 (the library divides by 0) and averages the AUC over the classes present in
both labels of a split; inputs on which the library returns NaN or fails (a constant factor, fewer
than two latents for MIG or SAP) raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DCI",
    "BetaVAEScore",
    "FactorVAEScore",
    "GroundTruthData",
    "ModularityExplicitness",
    "beta_vae_from_samples",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "dci_from_samples",
    "dci_importance",
    "discrete_entropy",
    "discrete_mutual_information",
    "explicitness_from_samples",
    "factor_vae_from_votes",
    "factor_vae_score",
    "factor_vae_votes",
    "histogram_discretize",
    "mig_from_samples",
    "modularity_explicitness",
    "modularity_explicitness_from_samples",
    "modularity_from_mutual_information",
    "mutual_information_gap",
    "sap_from_samples",
    "sap_from_score_matrix",
    "sap_score",
    "sap_score_matrix",
]

Representation = Callable[[Any], Any]  # observations [n, ...] -> codes [n, L]


@dataclasses.dataclass(frozen=True)
class GroundTruthData:
    """Data with known generative factors: ``factor_sizes[k]`` values for factor k, observations
    rendered from an ``int [n, K]`` array of factor indices by ``observations``.

    The metrics use only ``factor_sizes``, ``sample_factors(n, rng)`` and ``observations(factors)``,
    so any object with these three attributes will do (e.g. a class whose ``sample_factors`` is not
    uniform); this dataclass samples each factor uniformly and independently, as disentanglement_lib's
    ``StateSpaceAtomIndex`` data sets do. Every factor needs at least two values (a constant factor
    carries no information: leave it out).
    """

    factor_sizes: Sequence[int]
    observations: Callable[[np.ndarray], Any]

    def __post_init__(self):
        object.__setattr__(self, "factor_sizes", _check_factor_sizes(self.factor_sizes))
        if not callable(self.observations):
            raise ValueError("`observations` must be callable: factor indices int [n, K] -> observations.")  # noqa: TRY004

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``int64 [n, K]``: each factor uniform over ``range(factor_sizes[k])``, independently."""
        return rng.integers(0, np.asarray(self.factor_sizes), size=(n, len(self.factor_sizes)))


class BetaVAEScore(NamedTuple):
    train_accuracy: float
    eval_accuracy: float  # the score


class FactorVAEScore(NamedTuple):
    train_accuracy: float
    eval_accuracy: float  # the score
    num_active_dims: int  # latents with sqrt(Var z_j) >= threshold


class DCI(NamedTuple):
    disentanglement: float
    completeness: float
    informativeness_train: float  # mean accuracy of the per-factor classifiers on their training sample
    informativeness_test: float
    importance: np.ndarray  # R [L, K]


class ModularityExplicitness(NamedTuple):
    modularity: float
    explicitness_train: float
    explicitness_test: float


# ----------------------------------------------------------------------------------------------------
# Checks and sampling


def _check_factor_sizes(sizes) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise ValueError(f"`factor_sizes` must be a sequence of ints; got {sizes!r}.") from None
    if not out or any(s < 2 for s in out) or any(s != t for s, t in zip(out, sizes)):
        raise ValueError(f"`factor_sizes` must be a non-empty sequence of ints >= 2 (a factor with one "
                         f"value carries no information); got {sizes!r}.")
    return out


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _check_codes(name: str, codes, n: int | None = None, num_latents: int | None = None) -> np.ndarray:
    z = np.asarray(codes, np.float64)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"`{name}` must be [n, L] with n, L >= 1; got shape {z.shape}.")
    if n is not None and z.shape[0] != n:
        raise ValueError(f"`{name}` must have {n} rows, one per row of the factors; got {z.shape[0]}.")
    if num_latents is not None and z.shape[1] != num_latents:
        raise ValueError(f"`{name}` must have L = {num_latents} columns, as the training codes; got "
                         f"{z.shape[1]}.")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"`{name}` must be finite.")
    return z


def _check_factors(name: str, factors, n: int | None = None, num_factors: int | None = None) -> np.ndarray:
    y = np.asarray(factors)
    if y.ndim != 2 or y.shape[0] < 1 or y.shape[1] < 1:
        raise ValueError(f"`{name}` must be [n, K] with n, K >= 1; got shape {y.shape}.")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"`{name}` must have {n} rows, one per row of the codes; got {y.shape[0]}.")
    if num_factors is not None and y.shape[1] != num_factors:
        raise ValueError(f"`{name}` must have K = {num_factors} columns, as the training factors; got "
                         f"{y.shape[1]}.")
    integral = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    if not integral and (not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y))
                         or np.any(y != np.round(y))):
        raise ValueError(f"`{name}` must hold integer factor values; got dtype {y.dtype} with "
                         f"non-integer entries.")
    return y.astype(np.int64)


def _require_varying(name: str, y: np.ndarray) -> None:
    constant = [k for k in range(y.shape[1]) if np.all(y[:, k] == y[0, k])]
    if constant:
        raise ValueError(f"`{name}`: factor(s) {constant} take a single value in this sample; every factor "
                         f"must vary (use more samples, or leave a constant factor out).")


def _data_sizes(data) -> tuple[int, ...]:
    for attr in ("factor_sizes", "sample_factors", "observations"):
        if not hasattr(data, attr):
            raise ValueError(f"`data` must have `factor_sizes`, `sample_factors(n, rng)` and "
                             f"`observations(factors)` (see GroundTruthData); it has no `{attr}`.")
    return _check_factor_sizes(data.factor_sizes)


def _sample(data, sizes: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    y = np.asarray(data.sample_factors(n, rng))
    if y.shape != (n, len(sizes)) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`data.sample_factors({n}, rng)` must return ints [{n}, {len(sizes)}]; got "
                         f"{y.dtype} {y.shape}.")
    if np.any(y < 0) or np.any(y >= np.asarray(sizes)):
        raise ValueError(f"`data.sample_factors` returned values outside [0, factor_sizes) = {sizes}.")
    return y.astype(np.int64)


def _encode_chunks(data, representation: Representation, factors: np.ndarray,
                   call_size: int) -> Iterator[np.ndarray]:
    """Codes ``float64 [m, L]`` of consecutive chunks of ``call_size`` rows of ``factors`` (fewer in a
    single call when everything fits). The last chunk is padded by repeating its last row, so that
    ``representation`` always sees the same batch size (one compilation of a jitted encoder)."""
    n = factors.shape[0]
    size = min(call_size, n)
    num_latents = None
    for start in range(0, n, size):
        chunk = factors[start:start + size]
        m = chunk.shape[0]
        if m < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - m, axis=0)])
        z = np.asarray(representation(data.observations(chunk)), np.float64)
        if z.ndim != 2 or z.shape[0] != size or (num_latents is not None and z.shape[1] != num_latents):
            raise ValueError(f"`representation` must map {size} observations to codes [{size}, L] (the same "
                             f"L every call); got shape {z.shape}.")
        if not np.all(np.isfinite(z)):
            raise ValueError("`representation` returned non-finite codes.")
        num_latents = z.shape[1]
        yield z[:m]


def _encode(data, representation: Representation, factors: np.ndarray, call_size: int) -> np.ndarray:
    return np.concatenate(list(_encode_chunks(data, representation, factors, call_size)))


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the disentanglement metrics need scikit-learn (pip install 'scikit-learn>=1.5')") from e


# ----------------------------------------------------------------------------------------------------
# Discretisation and discrete information


def histogram_discretize(codes, num_bins: int = 20) -> np.ndarray:
    """Each column of ``codes [n, L]`` replaced by its bin in ``num_bins`` equal-width bins over the
    column's range: ``int64`` in ``1..num_bins`` (disentanglement_lib ``utils._histogram_discretize``:
    ``np.digitize(z, np.histogram(z, num_bins)[1][:-1])``)."""
    z = _check_codes("codes", codes)
    num_bins = _check_int("num_bins", num_bins)
    out = np.empty(z.shape, np.int64)
    for j in range(z.shape[1]):
        edges = np.histogram(z[:, j], num_bins)[1][:-1]
        out[:, j] = np.digitize(z[:, j], edges)
    return out


def _dense_labels(column: np.ndarray) -> tuple[np.ndarray, int]:
    values, inverse = np.unique(column, return_inverse=True)
    return inverse.reshape(-1), len(values)


def _mutual_information(a: np.ndarray, ka: int, b: np.ndarray, kb: int) -> float:
    joint = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb) / a.shape[0]
    outer = np.outer(joint.sum(1), joint.sum(0))
    nz = joint > 0
    return max(float(np.sum(joint[nz] * (np.log(joint[nz]) - np.log(outer[nz])))), 0.0)


def discrete_mutual_information(discrete_codes, factors) -> np.ndarray:
    """``float64 [L, K]``: the plug-in mutual information (nats) ``I(c_j; y_k) = Σ p(c, y) log
    p(c, y) / (p(c) p(y))`` between the columns of ``discrete_codes [n, L]`` and ``factors [n, K]``
    (any integer labels; disentanglement_lib ``utils.discrete_mutual_info``, i.e. scikit-learn's
    ``mutual_info_score``)."""
    c = _check_factors("discrete_codes", discrete_codes)
    y = _check_factors("factors", factors, n=c.shape[0])
    cs = [_dense_labels(c[:, j]) for j in range(c.shape[1])]
    ys = [_dense_labels(y[:, k]) for k in range(y.shape[1])]
    return np.array([[_mutual_information(a, ka, b, kb) for b, kb in ys] for a, ka in cs])


def discrete_entropy(factors) -> np.ndarray:
    """``float64 [K]``: the plug-in entropy (nats) ``H(y_k) = −Σ p(y) log p(y)`` of each column of
    ``factors [n, K]`` (disentanglement_lib ``utils.discrete_entropy``)."""
    y = _check_factors("factors", factors)
    out = np.empty(y.shape[1])
    for k in range(y.shape[1]):
        p = np.unique(y[:, k], return_counts=True)[1] / y.shape[0]
        out[k] = max(float(-np.sum(p * np.log(p))), 0.0)
    return out


# ----------------------------------------------------------------------------------------------------
# β-VAE score (Higgins et al., 2017)


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


def sap_score_matrix(codes_train, factors_train, codes_test, factors_test, *,
                     continuous_factors: bool = False, seed: int = 0) -> np.ndarray:
    """``float64 [L, K]`` SAP score matrix (disentanglement_lib ``sap_score.compute_score_matrix``).

    Discrete factors: ``S_{jk}`` is the accuracy on the test codes of ``LinearSVC(C=0.01,
    class_weight="balanced")`` fitted to predict ``y_k`` from ``z_j`` alone on the training codes.
    Continuous factors: ``S_{jk} = Cov(z_j, y_k)² / (Var z_j · Var y_k)`` on the training codes
    (0 where ``Var z_j <= 1e-12``; the test codes are unused).
    """
    z = _check_codes("codes_train", codes_train)
    y = _check_factors("factors_train", factors_train, n=z.shape[0])
    zt = _check_codes("codes_test", codes_test, num_latents=z.shape[1])
    yt = _check_factors("factors_test", factors_test, n=zt.shape[0], num_factors=y.shape[1])
    _require_varying("factors_train", y)
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

    z = _check_codes("codes_train", codes_train)
    y = _check_factors("factors_train", factors_train, n=z.shape[0])
    zt = _check_codes("codes_test", codes_test, num_latents=z.shape[1])
    yt = _check_factors("factors_test", factors_test, n=zt.shape[0], num_factors=y.shape[1])
    _require_varying("factors_train", y)
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

    z = _check_codes("codes_train", codes_train)
    y = _check_factors("factors_train", factors_train, n=z.shape[0])
    zt = _check_codes("codes_test", codes_test, num_latents=z.shape[1])
    yt = _check_factors("factors_test", factors_test, n=zt.shape[0], num_factors=y.shape[1])
    _require_varying("factors_train", y)
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
