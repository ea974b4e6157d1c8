"""Classical quantizer design, pure JAX: Lloyd-Max, the DP-optimal scalar quantizer, generalized Lloyd.

Densities and their partial moments (``vqjax._densities``), Lloyd-Max on a density and the
Lloyd-Max levels of ``tanh(N(0, σ²))`` for FSQ (``vqjax._lloyd_max``: both live outside this package
so that :mod:`vqjax.quantizers` can use them without importing it), Lloyd on samples (``_scalar``),
the DP-optimal scalar quantizer (``_dp``), vector quantization (``_vector``) and the reference
formulas of rate-distortion theory (``_theory``). Voronoi assignment is
:func:`vqjax.quantizers.nearest_code`, the same search the VQ-VAE uses; this package uses only the
public API of :mod:`vqjax.quantizers`, which never imports this one.
"""

from vqjax._densities import (
    Density,
    PartialMoments,
    gaussian,
    laplace,
    on_interval,
    partial_moments,
    uniform,
)
from vqjax._lloyd_max import LloydMaxResult, lloyd_max, lloyd_max_levels
from vqjax.quantization._dp import ScalarQuantizerResult, optimal_scalar_quantizer
from vqjax.quantization._scalar import lloyd_1d
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
    "Density",
    "GeneralizedLloydResult",
    "LloydMaxResult",
    "PartialMoments",
    "ScalarQuantizerResult",
    "UniformQuantizerResult",
    "cell_probabilities",
    "gaussian",
    "gaussian_distortion_rate",
    "generalized_lloyd",
    "kmeans_plusplus",
    "laplace",
    "lloyd_1d",
    "lloyd_max",
    "lloyd_max_levels",
    "on_interval",
    "optimal_scalar_quantizer",
    "output_entropy",
    "panter_dite_mse",
    "partial_moments",
    "snr_db",
    "uniform",
    "uniform_quantizer",
]
