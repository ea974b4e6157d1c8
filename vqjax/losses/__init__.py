"""Pure losses: likelihoods, KL, ELBO, β-VAE, MMD/InfoVAE, β-TCVAE, FactorVAE, DIP-VAE, VIB, the IWAE
bound, and the VQ-VAE terms.

Every function is per-example: it takes one example's arrays (any shape) and returns a
scalar, or takes arrays with leading batch axes and reduces only the event axes named in its
docstring. Callers reduce over the batch (``jnp.mean``) or ``jax.vmap`` as they like. The only
batch-level quantities are :func:`mmd`, a divergence between two sets of samples, the codebook
regularisers (orthogonality of a codebook; entropy / diversity of a batch's mean code assignment), and
the disentanglement terms, which estimate properties of the aggregate posterior ``q(z)`` from a batch
(β-TCVAE's :func:`tc_decomposition`, FactorVAE's :func:`permute_dims` and discriminator loss, DIP-VAE's
:func:`dip_vae_regularizer`).
"""

from vqjax.losses._disentangle import (
    TC_ESTIMATORS,
    BetaTCVAELoss,
    DIPVAELoss,
    FactorVAELoss,
    TCDecomposition,
    beta_tcvae_loss,
    dip_vae_covariance,
    dip_vae_loss,
    dip_vae_regularizer,
    factor_vae_discriminator_loss,
    factor_vae_loss,
    factor_vae_tc,
    log_importance_weight_matrix,
    pairwise_gaussian_log_density,
    permute_dims,
    tc_decomposition,
)
from vqjax.losses._elbo import BetaVAELoss, beta_vae_loss, elbo, iwae_bound, iwae_log_likelihood
from vqjax.losses._free_bits import free_bits_kl
from vqjax.losses._kl import gaussian_kl, monte_carlo_kl, reparameterize
from vqjax.losses._likelihoods import (
    bernoulli_log_likelihood,
    bits_per_dim,
    categorical_log_likelihood,
    discretized_logistic_log_likelihood,
    gaussian_log_likelihood,
)
from vqjax.losses._mmd import InfoVAELoss, info_vae_loss, inverse_multiquadratic_kernel, mmd, rbf_kernel
from vqjax.losses._regularizers import (
    codebook_diversity_loss,
    codebook_entropy_loss,
    codebook_orthogonality_loss,
)
from vqjax.losses._vib import VIBLoss, vib_loss
from vqjax.losses._vq import VQVAELoss, codebook_loss, commitment_loss, vqvae_loss

__all__ = [
    "TC_ESTIMATORS",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "DIPVAELoss",
    "FactorVAELoss",
    "InfoVAELoss",
    "TCDecomposition",
    "VIBLoss",
    "VQVAELoss",
    # likelihoods p(x|z)
    "bernoulli_log_likelihood",
    # disentanglement: β-TCVAE, FactorVAE, DIP-VAE (batch-level)
    "beta_tcvae_loss",
    "beta_vae_loss",
    "bits_per_dim",
    "categorical_log_likelihood",
    "codebook_diversity_loss",
    "codebook_entropy_loss",
    # VQ-VAE
    "codebook_loss",
    # codebook regularisers (batch-level)
    "codebook_orthogonality_loss",
    "commitment_loss",
    "dip_vae_covariance",
    "dip_vae_loss",
    "dip_vae_regularizer",
    "discretized_logistic_log_likelihood",
    # bounds and objectives
    "elbo",
    "factor_vae_discriminator_loss",
    "factor_vae_loss",
    "factor_vae_tc",
    "free_bits_kl",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "info_vae_loss",
    "inverse_multiquadratic_kernel",
    "iwae_bound",
    "iwae_log_likelihood",
    "log_importance_weight_matrix",
    "mmd",
    "monte_carlo_kl",
    "pairwise_gaussian_log_density",
    "permute_dims",
    "rbf_kernel",
    # the Gaussian encoder and the rate
    "reparameterize",
    "tc_decomposition",
    "vib_loss",
    "vqvae_loss",
]
