"""The VQ-VAE of van den Oord et al. (2017) for 28×28 images, as Flax NNX modules.

``Encoder``: ``[B, 28, 28, C] -> [B, 7, 7, D]`` (two 4×4 stride-2 convolutions, a 3×3
convolution, residual blocks, a 1×1 projection to the code dimension D).
``Decoder``: ``[B, 7, 7, D] -> [B, 28, 28, C]`` logits (a 3×3 convolution, residual blocks,
two 4×4 stride-2 transposed convolutions). ``VQVAE`` joins them through a quantizer module
(:mod:`vqjax.nn._quantizers`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax.nn._layers import ResidualBlock, SubpixelConvTranspose
from vqjax.nn._quantizers import VectorQuantizer

__all__ = ["VQVAE", "Decoder", "Encoder", "VQVAEOutput"]


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
    z_q: jax.Array  # [B, h, w, D] quantized (straight-through) decoder input
    indices: jax.Array  # [B, h, w] int32 code indices ([B, h, w, S] for residual VQ)
    codebook_loss: jax.Array  # [B] ||sg[z_e] - e||² summed over the latent map (0 for EMA and FSQ)
    commitment_loss: jax.Array  # [B] ||z_e - sg[e]||² summed over the latent map, without β
    restarted: jax.Array  # [] dead codes re-seeded by this call (EMA in training mode)


class VQVAE(nnx.Module):
    """Encoder → quantizer → decoder.

    The quantizer is any module of :mod:`vqjax.nn._quantizers` (plain, EMA, FSQ, residual; see
    :func:`vqjax.nn.make_quantizer`); the default is the paper's :class:`VectorQuantizer` with
    ``num_codes`` codes of dimension ``code_dim``, initialised uniform in ``[-1/K, 1/K]`` as in the
    reference implementation (Sonnet's ``VectorQuantizer``). With a ``quantizer`` given, the code
    dimension is its ``code_dim`` and ``num_codes``/``code_dim`` must be left unset. Losses are the
    caller's: :func:`vqjax.objectives.vqvae_objective`.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_codes: int | None = None,
        code_dim: int | None = None,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        quantizer: nnx.Module | None = None,
        rngs: nnx.Rngs,
    ):
        if quantizer is None:
            quantizer = VectorQuantizer(512 if num_codes is None else num_codes,
                                        64 if code_dim is None else code_dim, rngs=rngs)
        elif num_codes is not None or code_dim is not None:
            raise ValueError("`num_codes` and `code_dim` come from the given `quantizer`; leave them unset.")
        for name, v in {
            "in_channels": in_channels, "hidden": hidden, "residual_hidden": residual_hidden,
        }.items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive int; got {v!r}.")
        if hidden % 2:
            raise ValueError(f"`hidden` must be even (the first layer has hidden/2); got {hidden}.")
        kw = {"hidden": hidden, "residual_hidden": residual_hidden, "num_residual": num_residual, "rngs": rngs}
        self.encoder = Encoder(in_channels, quantizer.code_dim, **kw)
        self.quantizer = quantizer
        self.decoder = Decoder(quantizer.code_dim, in_channels, **kw)

    @property
    def num_codes(self) -> int:
        """Codes per stage (the implied codebook size for FSQ)."""
        return self.quantizer.num_codes

    def encode(self, x: jax.Array) -> jax.Array:
        """``x [B, H, W, C] -> indices [B, H/4, W/4]`` (``[..., S]`` for residual VQ)."""
        return self.quantizer.encode(self.encoder(x))

    def decode(self, indices: jax.Array) -> jax.Array:
        """``indices -> logits [B, 4h, 4w, C]``: decode stored codes."""
        return self.decoder(self.quantizer.decode(indices))

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> VQVAEOutput:
        """Reconstruct ``x``; ``key`` draws dead-code restarts (EMA quantizers in training mode)."""
        if x.ndim != 4:
            raise ValueError(f"`x` must be [B, H, W, C]; got shape {x.shape}.")
        z_e = self.encoder(x)
        q = self.quantizer(z_e, key=key)
        codebook, commitment = (jnp.sum(t, axis=(1, 2)) for t in (q.codebook_loss, q.commitment_loss))
        return VQVAEOutput(self.decoder(q.z_q), z_e, q.z_q, q.indices, codebook, commitment, q.restarted)
