"""Pure quantizers for neural networks: arrays in, arrays out; jit, vmap and grad safe.

- ``_vq``: nearest-code search, straight-through quantization (optionally cosine), usage statistics.
- ``_ema``: the EMA codebook update and dead-code restarts on a plain-pytree :class:`EMAState`.
- ``_fsq``: finite scalar quantization, uniform (FSQ) or with Lloyd-Max levels
  (:func:`lloyd_max_levels`, from the neutral ``vqjax._lloyd_max``: this package never imports
  :mod:`vqjax.quantization`, which builds on it).
- ``_residual``: residual VQ, several codebooks on successive residuals (quantize dropout, a shared
  codebook, grouped residual VQ, residual FSQ and LFQ).
- ``_lfq``, ``_bsq``: lookup-free (LFQ) and binary spherical (BSQ) quantization, ``{±1}^D`` codes, entropy losses.
- ``_grouped``: grouped / multi-head VQ and product quantization, a codebook per part of ``z``.
- ``_rotation``: the rotation trick, a gradient estimator through VQ other than straight-through.
- ``_affine``: the affine codebook reparameterisation and the synchronised update (Huh et al., 2023).
- ``_stochastic``: sampled codes (straight-through categorical, Gumbel-softmax) and a temperature schedule.
"""

from vqjax._lloyd_max import lloyd_max_levels
from vqjax.quantizers._affine import affine_codebook, synchronized_update
from vqjax.quantizers._bsq import bsq, bsq_entropy_loss, bsq_indices_to_codes
from vqjax.quantizers._ema import (
    EMAState,
    EMAStatistics,
    ema_accumulate,
    ema_apply,
    ema_init,
    ema_statistics_init,
    ema_update,
    ema_usage,
    restart_dead_codes,
)
from vqjax.quantizers._fsq import (
    fsq,
    fsq_codebook_size,
    fsq_codes_to_indices,
    fsq_indices_to_codes,
    fsq_range_loss,
    scalar_quantize,
)
from vqjax.quantizers._grouped import GroupedQuantized, grouped_lookup, grouped_quantize
from vqjax.quantizers._lfq import lfq, lfq_codes_to_indices, lfq_entropy_loss, lfq_indices_to_codes
from vqjax.quantizers._residual import (
    ResidualQuantized,
    grouped_residual_lookup,
    grouped_residual_quantize,
    quantize_dropout_stages,
    residual_fsq,
    residual_fsq_indices_to_codes,
    residual_lfq,
    residual_lfq_indices_to_codes,
    residual_lookup,
    residual_quantize,
)
from vqjax.quantizers._rotation import rotation_trick
from vqjax.quantizers._stochastic import (
    SampledCodes,
    gumbel_softmax_code,
    kl_to_uniform,
    sample_code,
    temperature_schedule,
)
from vqjax.quantizers._vq import (
    CodeUsage,
    Quantized,
    code_usage,
    l2_normalize,
    lookup,
    nearest_code,
    perplexity,
    quantize,
    squared_distances,
    straight_through,
)

__all__ = [
    "CodeUsage",
    "EMAState",
    "EMAStatistics",
    "GroupedQuantized",
    "Quantized",
    "ResidualQuantized",
    "SampledCodes",
    "affine_codebook",
    "bsq",
    "bsq_entropy_loss",
    "bsq_indices_to_codes",
    "code_usage",
    "ema_accumulate",
    "ema_apply",
    "ema_init",
    "ema_statistics_init",
    "ema_update",
    "ema_usage",
    "fsq",
    "fsq_codebook_size",
    "fsq_codes_to_indices",
    "fsq_indices_to_codes",
    "fsq_range_loss",
    "grouped_lookup",
    "grouped_quantize",
    "grouped_residual_lookup",
    "grouped_residual_quantize",
    "gumbel_softmax_code",
    "kl_to_uniform",
    "l2_normalize",
    "lfq",
    "lfq_codes_to_indices",
    "lfq_entropy_loss",
    "lfq_indices_to_codes",
    "lloyd_max_levels",
    "lookup",
    "nearest_code",
    "perplexity",
    "quantize",
    "quantize_dropout_stages",
    "residual_fsq",
    "residual_fsq_indices_to_codes",
    "residual_lfq",
    "residual_lfq_indices_to_codes",
    "residual_lookup",
    "residual_quantize",
    "restart_dead_codes",
    "rotation_trick",
    "sample_code",
    "scalar_quantize",
    "squared_distances",
    "straight_through",
    "synchronized_update",
    "temperature_schedule",
]
