"""Flax NNX modules that wrap the pure core."""

from vqjax.nn._codebook_variants import (
    FactorizedVectorQuantizer,
    FrozenCodebook,
    GroupedVectorQuantizer,
    SimVQ,
)
from vqjax.nn._disentangle_nets import DisentanglementDecoder, DisentanglementEncoder
from vqjax.nn._factor_vae import FactorVAE, factor_vae_optimizer
from vqjax.nn._layers import ResidualBlock, SubpixelConvTranspose
from vqjax.nn._lookup_free import BinarySphericalQuantizer, LookupFreeQuantizer
from vqjax.nn._make_quantizer import QUANTIZERS, make_quantizer
from vqjax.nn._oivae import LATENT_TO_GROUP, GroupedGenerator, latent_to_group_mask
from vqjax.nn._pixelcnn import GatedLayer, GatedPixelCNN
from vqjax.nn._pixelcnn_decoder import PixelCNNDecoder
from vqjax.nn._pixelcnn_models import PixelCNNVAE, PixelCNNVQVAE
from vqjax.nn._quantizers import (
    CodebookStatistic,
    EMAVectorQuantizer,
    FiniteScalarQuantizer,
    Hyperparameter,
    QuantizerOutput,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from vqjax.nn._residual_variants import GroupedResidualVectorQuantizer, ResidualFSQ, ResidualLFQ
from vqjax.nn._sampling import sample_codes
from vqjax.nn._stochastic import GumbelVectorQuantizer, StochasticVectorQuantizer
from vqjax.nn._tc_discriminator import TCDiscriminator
from vqjax.nn._vae import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, VAEOutput
from vqjax.nn._vib import VIBClassifier
from vqjax.nn._vqvae import VQVAE, Decoder, Encoder, VQVAEOutput
from vqjax.nn._vqvae2 import VQVAE2, HierarchicalPrior, VQVAE2Output

__all__ = [
    "LATENT_TO_GROUP",
    "QUANTIZERS",
    "VAE",
    "VQVAE",
    "VQVAE2",
    "BinarySphericalQuantizer",
    "CodebookStatistic",
    "ConvDecoder",
    "ConvEncoder",
    "Decoder",
    "DisentanglementDecoder",
    "DisentanglementEncoder",
    "EMAVectorQuantizer",
    "Encoder",
    "FactorVAE",
    "FactorizedVectorQuantizer",
    "FiniteScalarQuantizer",
    "FrozenCodebook",
    "GatedLayer",
    "GatedPixelCNN",
    "GroupedGenerator",
    "GroupedResidualVectorQuantizer",
    "GroupedVectorQuantizer",
    "GumbelVectorQuantizer",
    "HierarchicalPrior",
    "Hyperparameter",
    "LookupFreeQuantizer",
    "MLPDecoder",
    "MLPEncoder",
    "PixelCNNDecoder",
    "PixelCNNVAE",
    "PixelCNNVQVAE",
    "QuantizerOutput",
    "ResidualBlock",
    "ResidualFSQ",
    "ResidualLFQ",
    "ResidualVectorQuantizer",
    "SimVQ",
    "StochasticVectorQuantizer",
    "SubpixelConvTranspose",
    "TCDiscriminator",
    "VAEOutput",
    "VIBClassifier",
    "VQVAE2Output",
    "VQVAEOutput",
    "VectorQuantizer",
    "factor_vae_optimizer",
    "latent_to_group_mask",
    "make_quantizer",
    "sample_codes",
]
