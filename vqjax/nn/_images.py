r"""What the image models share: the downsampling factor and its shape check, and the decoder
output of each likelihood (Bernoulli logits, a Gaussian mean, or a discretized logistic's location
and log-scale per pixel, Salimans et al., 2017).

A convolutional model with ``downsample = d`` maps ``[B, H, W, C]`` to a latent grid
``[B, H/2^d, W/2^d, ·]`` through ``d`` stride-2 stages and back, so ``H`` and ``W`` must be
multiples of ``2^d``. Its decoder gives ``C`` channels for ``"bernoulli"`` and ``"gaussian"`` and
``2C`` for ``"discretized_logistic"``: the first ``C`` the location on the [0, 1] scale (through a
sigmoid), the last ``C`` the ``log s`` (clipped below at -7, as in PixelCNN++).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from vqjax._checks import check_positive_int

__all__ = [
    "LIKELIHOODS",
    "MIN_LOG_SCALE",
    "check_divisible",
    "check_downsample",
    "logistic_parameters",
    "mean_image",
    "output_channels",
]

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
MIN_LOG_SCALE = -7.0  # as PixelCNN++: a logistic narrower than e^-7 of the [0, 1] range is one bin


def check_downsample(downsample) -> int:
    """``downsample``, the number of stride-2 stages, as an int >= 1 (else a ValueError naming it)."""
    check_positive_int(downsample, "downsample")
    return downsample


def check_divisible(shape: Sequence[int], downsample: int, name: str = "x") -> None:
    """``shape`` is ``[..., H, W, C]``: a ValueError unless ``H`` and ``W`` are multiples of ``2^downsample``."""
    shape = tuple(shape)
    factor = 2**downsample
    if len(shape) < 3 or shape[-3] % factor or shape[-2] % factor:
        hw = shape[-3:-1] if len(shape) >= 3 else shape
        raise ValueError(
            f"`{name}` must be [..., H, W, C] with H and W divisible by 2**downsample = {factor} "
            f"(downsample={downsample}); got shape {shape} (H, W = {hw}). Crop or pad the images, or "
            "choose a smaller downsample.")


def output_channels(channels: int, likelihood: str) -> int:
    """Decoder channels for ``channels`` image channels: ``2C`` for the discretized logistic, else ``C``."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}.")
    return 2 * channels if likelihood == "discretized_logistic" else channels


def logistic_parameters(params: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``params [..., 2C] -> (location [..., C] in (0, 1), log_scale [..., C] >= -7)``."""
    if params.shape[-1] % 2:
        raise ValueError(
            f"a discretized-logistic decoder gives 2C channels (location, log-scale); got shape {params.shape}.")
    location, log_scale = jnp.split(params, 2, axis=-1)
    return jax.nn.sigmoid(location), jnp.maximum(log_scale, MIN_LOG_SCALE)


def mean_image(params: jax.Array, likelihood: str) -> jax.Array:
    """The decoder's image in [0, 1] (Gaussian: unclipped): ``sigmoid(logits)`` (Bernoulli), the
    Gaussian mean, or the discretized logistic's location."""
    if likelihood == "discretized_logistic":
        return logistic_parameters(params)[0]
    if likelihood == "bernoulli":
        return jax.nn.sigmoid(params)
    if likelihood == "gaussian":
        return params
    raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}.")
