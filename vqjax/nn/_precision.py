"""The modules' precision policy: a computation dtype, float32 parameters, float32 quantization.

Every network module takes a keyword-only ``dtype`` (default float32): the dtype its convolutions
and matrix products run in. It is passed to ``nnx.Conv``/``nnx.Linear``/``nnx.Embed`` as their
``dtype`` with ``param_dtype`` left at float32, so parameters, their gradients and the optimizer
state stay float32 and each layer casts its input (the image, for the first one) and its weights
to ``dtype``. ``dtype=jnp.bfloat16`` is mixed precision for GPUs and TPUs; a CPU without bfloat16
instructions emulates it (slower than float32).

The quantizer modules take no ``dtype``: whatever the dtype of their input, distances, nearest
codes, EMA statistics, FSQ and scalar rounding, code indices and their losses are float32, and
``z_q`` comes back in the input's dtype. Likelihoods and losses upcast the decoder's output to
float32 (:func:`vqjax._checks.float_dtype`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqjax._checks import float_dtype

__all__ = ["compute_dtype", "to_float32", "upcast"]


def compute_dtype(dtype) -> jnp.dtype:
    """``dtype`` as a ``jnp.dtype``; ``ValueError`` unless it is a floating dtype."""
    try:
        d = jnp.dtype(dtype)
    except TypeError:
        d = None
    if d is None or not jnp.issubdtype(d, jnp.floating):
        raise ValueError(f"`dtype` must be a floating dtype (jnp.float32, jnp.bfloat16, ...); got {dtype!r}.")
    return d


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a narrower float (bfloat16, float16); otherwise unchanged."""
    return x.astype(float_dtype(x))


def to_float32(z: jax.Array) -> tuple[jax.Array, jnp.dtype]:
    """``(z upcast, z's dtype)``: a quantizer computes on the first and returns ``z_q`` in the second."""
    z = jnp.asarray(z)
    return upcast(z), z.dtype
