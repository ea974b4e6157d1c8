"""Classical quantizer design, pure JAX: Lloyd-Max, the DP-optimal scalar quantizer, generalized Lloyd.

Densities and their partial moments (``_densities``), Lloyd-Max and Lloyd on samples
(``_scalar``), the DP-optimal scalar quantizer (``_dp``), vector quantization (``_vector``) and the
reference formulas of rate-distortion theory (``_theory``). Voronoi assignment is :func:`vqjax.quantizers.nearest_code`,
the same search the VQ-VAE uses.
"""

from vqjax.quantization._densities import (
    Density,
    PartialMoments,
    gaussian,
    laplace,
    on_interval,
    partial_moments,
    uniform,
)
from vqjax.quantization._dp import ScalarQuantizerResult, optimal_scalar_quantizer
from vqjax.quantization._scalar import LloydMaxResult, lloyd_1d, lloyd_max
from vqjax.quantization._theory import (
    UniformQuantizerResult,
    cell_probabilities,
    gaussian_distortion_rate,
    output_entropy,
    panter_dite_mse,
    snr_db,
    uniform_quantizer,
)
from vqjax.quantization._vector import GeneralizedLloydResult, generalized_lloyd, kmeans_plusplus

__all__ = [
    "Density", "gaussian", "laplace", "uniform", "on_interval", "PartialMoments", "partial_moments",
    "LloydMaxResult", "lloyd_max", "lloyd_1d", "ScalarQuantizerResult", "optimal_scalar_quantizer",
    "UniformQuantizerResult", "uniform_quantizer", "panter_dite_mse", "gaussian_distortion_rate",
    "cell_probabilities", "output_entropy", "snr_db",
    "GeneralizedLloydResult", "generalized_lloyd", "kmeans_plusplus",
]
