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


from vqjax.evaluation._disentanglement._classifiers import (
    beta_vae_from_samples,
    beta_vae_score,
    factor_vae_from_votes,
    factor_vae_score,
    factor_vae_votes,
    sap_from_samples,
    sap_from_score_matrix,
    sap_score,
    sap_score_matrix,
)
from vqjax.evaluation._disentanglement._common import (
    DCI,
    BetaVAEScore,
    FactorVAEScore,
    GroundTruthData,
    ModularityExplicitness,
    discrete_entropy,
    discrete_mutual_information,
    histogram_discretize,
)
from vqjax.evaluation._disentanglement._information import (
    dci,
    dci_from_importance,
    dci_from_samples,
    dci_importance,
    explicitness_from_samples,
    mig_from_samples,
    modularity_explicitness,
    modularity_explicitness_from_samples,
    modularity_from_mutual_information,
    mutual_information_gap,
)

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
