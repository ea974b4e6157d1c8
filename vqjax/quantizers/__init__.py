"""Pure quantizers for neural networks: arrays in, arrays out; jit, vmap and grad safe.

- ``_vq``: nearest-code search, straight-through quantization (optionally cosine), usage statistics.
- ``_ema``: the EMA codebook update and dead-code restarts on a plain-pytree :class:`EMAState`.
- ``_fsq``: finite scalar quantization, uniform (FSQ) or with Lloyd-Max levels
  (:func:`lloyd_max_levels`, from the neutral ``vqjax._lloyd_max``: this package never imports
  :mod:`vqjax.quantization`, which builds on it).
- ``_residual``: residual VQ, several codebooks on successive residuals.
"""

from vqjax._lloyd_max import lloyd_max_levels
from vqjax.quantizers._ema import EMAState, ema_init, ema_update, ema_usage, restart_dead_codes
from vqjax.quantizers._fsq import (
    fsq,
    fsq_codebook_size,
    fsq_codes_to_indices,
    fsq_indices_to_codes,
    fsq_range_loss,
    scalar_quantize,
)
from vqjax.quantizers._residual import ResidualQuantized, residual_lookup, residual_quantize
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
    "Quantized",
    "ResidualQuantized",
    "code_usage",
    "ema_init",
    "ema_update",
    "ema_usage",
    "fsq",
    "fsq_codebook_size",
    "fsq_codes_to_indices",
    "fsq_indices_to_codes",
    "fsq_range_loss",
    "l2_normalize",
    "lloyd_max_levels",
    "lookup",
    "nearest_code",
    "perplexity",
    "quantize",
    "residual_lookup",
    "residual_quantize",
    "restart_dead_codes",
    "scalar_quantize",
    "squared_distances",
    "straight_through",
]
