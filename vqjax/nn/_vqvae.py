"""The VQ-VAE of van den Oord et al. (2017) for 28×28 images, as Flax NNX modules.

``Encoder``: ``[B, 28, 28, C] -> [B, 7, 7, D]`` (two 4×4 stride-2 convolutions, a 3×3
convolution, residual blocks, a 1×1 projection to the code dimension D).
``Decoder``: ``[B, 7, 7, D] -> [B, 28, 28, C]`` logits (a 3×3 convolution, residual blocks,
two 4×4 stride-2 transposed convolutions). ``VQVAE`` joins them through the pure quantizer
:func:`vqjax.quantizers.quantize`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from vqjax import quantizers
from vqjax.nn._layers import ResidualBlock, SubpixelConvTranspose

__all__ = ["Encoder", "Decoder", "VQVAE", "VQVAEOutput"]


class Encoder(nnx.Module):
    """``x [B, H, W, C] -> z_e [B, H/4, W/4, D]``."""

    def __init__(
        self,
        in_channels: int,
        code_dim: int,
        *,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(in_channels, hidden // 2, (4, 4), 2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv2 = nnx.Conv(hidden // 2, hidden, (4, 4), 2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv3 = nnx.Conv(hidden, hidden, (3, 3), padding="SAME", rngs=rngs)
        self.residual = nnx.List(
            [ResidualBlock(hidden, residual_hidden, rngs=rngs) for _ in range(num_residual)]
        )
        self.project = nnx.Linear(hidden, code_dim, rngs=rngs)  # 1x1 convolution

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        h = self.conv3(h)
        for block in self.residual:
            h = block(h)
        return self.project(jax.nn.relu(h))


class Decoder(nnx.Module):
    """``z_q [B, h, w, D] -> logits [B, 4h, 4w, C]``."""

    def __init__(
        self,
        code_dim: int,
        out_channels: int,
        *,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(code_dim, hidden, (3, 3), padding="SAME", rngs=rngs)
        self.residual = nnx.List(
            [ResidualBlock(hidden, residual_hidden, rngs=rngs) for _ in range(num_residual)]
        )
        self.up1 = SubpixelConvTranspose(hidden, hidden // 2, rngs=rngs)
        self.up2 = SubpixelConvTranspose(hidden // 2, out_channels, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.conv1(z)
        for block in self.residual:
            h = block(h)
        h = jax.nn.relu(self.up1(jax.nn.relu(h)))
        return self.up2(h)


class VQVAEOutput(NamedTuple):
    """What :class:`VQVAE` returns for a batch ``x [B, H, W, C]``."""

    logits: jax.Array  # [B, H, W, C] decoder output (Bernoulli logits or Gaussian mean)
    z_e: jax.Array  # [B, h, w, D] encoder output
    codes: jax.Array  # [B, h, w, D] e_k, differentiable in the codebook
    indices: jax.Array  # [B, h, w] int32 code indices


class VQVAE(nnx.Module):
    """Encoder → nearest-code quantizer (straight-through) → decoder.

    The codebook ``e [K, D]`` is an ``nnx.Param``; its initial values are uniform in
    ``[-1/K, 1/K]`` as in the reference implementation (Sonnet's ``VectorQuantizer``).
    Losses are the caller's: :func:`vqjax.losses.vqvae_loss` on the returned arrays.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_codes: int = 512,
        code_dim: int = 64,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        rngs: nnx.Rngs,
    ):
        for name, v in {
            "in_channels": in_channels, "num_codes": num_codes, "code_dim": code_dim, "hidden": hidden,
            "residual_hidden": residual_hidden,
        }.items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive int; got {v!r}.")
        if hidden % 2:
            raise ValueError(f"`hidden` must be even (the first layer has hidden/2); got {hidden}.")
        kw = {"hidden": hidden, "residual_hidden": residual_hidden, "num_residual": num_residual, "rngs": rngs}
        self.encoder = Encoder(in_channels, code_dim, **kw)
        self.decoder = Decoder(code_dim, in_channels, **kw)
        self.codebook = nnx.Param(
            jax.random.uniform(rngs.params(), (num_codes, code_dim), minval=-1.0 / num_codes,
                               maxval=1.0 / num_codes)
        )

    def encode(self, x: jax.Array) -> jax.Array:
        """``x [B, H, W, C] -> indices [B, H/4, W/4]``."""
        return quantizers.nearest_code(self.encoder(x), self.codebook[...])

    def decode(self, indices: jax.Array) -> jax.Array:
        """``indices [B, h, w] -> logits [B, 4h, 4w, C]``: decode stored codes."""
        return self.decoder(quantizers.lookup(indices, self.codebook[...]))

    def __call__(self, x: jax.Array) -> VQVAEOutput:
        if x.ndim != 4:
            raise ValueError(f"`x` must be [B, H, W, C]; got shape {x.shape}.")
        z_e = self.encoder(x)
        q = quantizers.quantize(z_e, self.codebook[...])
        return VQVAEOutput(self.decoder(q.z_q), z_e, q.codes, q.indices)
