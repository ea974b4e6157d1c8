r"""The convolutional encoder and decoder the disentanglement literature uses for 64×64 images
(:class:`DisentanglementEncoder`, :class:`DisentanglementDecoder`), for :class:`vqjax.nn.VAE`.

They are ``conv_encoder`` and ``deconv_decoder`` of disentanglement_lib
(``disentanglement_lib/methods/shared/architectures.py``), the networks of Locatello et al. (2019),
"Challenging common assumptions in the unsupervised learning of disentangled representations"
(Table 1 of its appendix), themselves row 3 of Table 1 of Higgins et al. (2017), β-VAE::

    encoder  x [B, 64, 64, C]
             conv 32, 4×4, stride 2, ReLU      -> 32×32×32
             conv 32, 4×4, stride 2, ReLU      -> 16×16×32
             conv 64, k×k, stride 2, ReLU      -> 8×8×64     (k: see below)
             conv 64, k×k, stride 2, ReLU      -> 4×4×64
             flatten, dense 256, ReLU
             dense 2·L: (μ, log σ²)
    decoder  z [B, L]
             dense 256, ReLU; dense 4·4·64 = 1024, ReLU; reshape 4×4×64
             transposed conv 64, 4×4, stride 2, ReLU  -> 8×8×64
             transposed conv 32, 4×4, stride 2, ReLU  -> 16×16×32
             transposed conv 32, 4×4, stride 2, ReLU  -> 32×32×32
             transposed conv C,  4×4, stride 2        -> 64×64×C logits

Padding is TensorFlow's ``"same"``, as in disentanglement_lib. One difference between the paper and
the code: Locatello et al.'s table lists four 4×4 convolutions, while disentanglement_lib's
``conv_encoder``, the code that trained the paper's models, has ``kernel_size=2`` for the third and
fourth (e3, e4). The default here is the code's, ``kernel_sizes=(4, 4, 2, 2)``; ``(4, 4, 4, 4)``
is the table's.

The transposed convolutions are :class:`vqjax.nn.SubpixelConvTranspose`: exactly a 4×4, stride-2
transposed convolution with TensorFlow's ``"same"`` padding (PyTorch's ``padding=1``: output
``2H × 2W``), computed as a sub-pixel convolution because XLA:CPU runs the input-dilated form
several times slower. Initialisation is Flax's (LeCun normal; disentanglement_lib's TensorFlow
layers use Glorot uniform). Any ``H × W`` divisible by 16 works (the dense layer's width follows);
the networks are the published ones at 64×64.

Each takes a keyword-only ``dtype``, the computation dtype (parameters stay float32;
:mod:`vqjax.nn._precision`).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax.nn._layers import SubpixelConvTranspose
from vqjax.nn._precision import compute_dtype

__all__ = ["DisentanglementDecoder", "DisentanglementEncoder"]

_CHANNELS = (32, 32, 64, 64)  # the four stride-2 stages, encoder order
_HIDDEN = 256


def _check_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or shape[0] % 16 or shape[1] % 16 or min(shape) < 1:
        raise ValueError(f"`image_shape` must be (H, W, C) with H and W multiples of 16 (four stride-2 "
                         f"stages; the published networks take 64×64); got {image_shape!r}.")
    return shape


class DisentanglementEncoder(nnx.Module):
    """``x [B, H, W, C] -> (μ, log σ²) [B, L]``: disentanglement_lib's ``conv_encoder`` (module docstring).

    Args:
      image_shape: ``(H, W, C)``, H and W multiples of 16 (the literature: ``(64, 64, 1)`` or ``(64, 64, 3)``).
      latents: L (the literature: 10).
      kernel_sizes: the four convolutions' kernel sizes: ``(4, 4, 2, 2)`` as disentanglement_lib's
        code (default), ``(4, 4, 4, 4)`` as Locatello et al.'s Table 1.
      dtype: the computation dtype.
    """

    def __init__(self, image_shape: tuple[int, int, int] = (64, 64, 1), latents: int = 10, *, rngs: nnx.Rngs,
                 kernel_sizes: tuple[int, int, int, int] = (4, 4, 2, 2), dtype: DTypeLike = jnp.float32):
        h, w, c = self.image_shape = _check_shape(image_shape)
        if len(kernel_sizes) != 4 or any(isinstance(k, bool) or not isinstance(k, int) or k < 2
                                         for k in kernel_sizes):
            raise ValueError(f"`kernel_sizes` must be four ints >= 2; got {kernel_sizes!r}.")
        dt = compute_dtype(dtype)
        widths = (c, *_CHANNELS)
        self.convs = nnx.List([nnx.Conv(a, b, (k, k), 2, padding="SAME", dtype=dt, rngs=rngs)
                               for a, b, k in zip(widths[:-1], widths[1:], kernel_sizes, strict=True)])
        self.hidden = nnx.Linear((h // 16) * (w // 16) * _CHANNELS[-1], _HIDDEN, dtype=dt, rngs=rngs)
        self.head = nnx.Linear(_HIDDEN, 2 * latents, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for conv in self.convs:
            h = jax.nn.relu(conv(h))
        h = jax.nn.relu(self.hidden(h.reshape(h.shape[0], -1)))
        mean, log_variance = jnp.split(self.head(h), 2, axis=-1)
        return mean, log_variance


class DisentanglementDecoder(nnx.Module):
    """``z [..., L] -> logits [..., H, W, C]``: disentanglement_lib's ``deconv_decoder`` (module docstring).

    Args:
      image_shape: ``(H, W, C)`` of the output, H and W multiples of 16.
      latents: L.
      dtype: the computation dtype.
    """

    def __init__(self, image_shape: tuple[int, int, int] = (64, 64, 1), latents: int = 10, *, rngs: nnx.Rngs,
                 dtype: DTypeLike = jnp.float32):
        h, w, c = self.image_shape = _check_shape(image_shape)
        dt = compute_dtype(dtype)
        self.start = (h // 16, w // 16, _CHANNELS[-1])
        self.hidden = nnx.Linear(latents, _HIDDEN, dtype=dt, rngs=rngs)
        self.project = nnx.Linear(_HIDDEN, math.prod(self.start), dtype=dt, rngs=rngs)
        widths = (*_CHANNELS[::-1], c)  # 64 -> 64 -> 32 -> 32 -> C
        self.ups = nnx.List([SubpixelConvTranspose(a, b, rngs=rngs, dtype=dt)
                             for a, b in itertools.pairwise(widths)])

    def __call__(self, z: jax.Array) -> jax.Array:
        lead = z.shape[:-1]
        h = jax.nn.relu(self.hidden(z.reshape(-1, z.shape[-1])))
        h = jax.nn.relu(self.project(h)).reshape(-1, *self.start)
        for k, up in enumerate(self.ups):
            h = up(h)
            if k < len(self.ups) - 1:
                h = jax.nn.relu(h)
        return h.reshape(*lead, *self.image_shape)
