"""The VQ-VAE of van den Oord et al. (2017) for ``H×W×C`` images, as Flax NNX modules.

``Encoder``: ``[B, H, W, C] -> [B, H/2^d, W/2^d, D]`` (``d = downsample`` 4×4 stride-2
convolutions, default 2: 28×28 -> 7×7, 32×32 -> 8×8; a 3×3 convolution, residual blocks, a 1×1
projection to the code dimension D).
``Decoder``: ``[B, h, w, D] -> [B, 2^d h, 2^d w, C]`` logits (a 3×3 convolution, residual blocks,
``d`` 4×4 stride-2 transposed convolutions). ``VQVAE`` joins them through a quantizer module
(:mod:`vqjax.nn._quantizers`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax.nn._images import check_divisible, check_downsample, output_channels
from vqjax.nn._layers import ResidualBlock, SubpixelConvTranspose
from vqjax.nn._precision import compute_dtype
from vqjax.nn._quantizers import VectorQuantizer

__all__ = ["VQVAE", "Decoder", "Encoder", "VQVAEOutput"]


class Encoder(nnx.Module):
    """``x [B, H, W, C] -> z_e [B, H/2^d, W/2^d, D]`` with ``d = downsample`` (default 2: ``H/4``).

    ``d`` stride-2 4×4 convolutions (``C -> hidden/2 -> hidden [-> hidden ...]``; with ``d = 1`` the
    second is a 3×3 stride-1 convolution), a 3×3 convolution, residual blocks, a 1×1 projection.
    """

    def __init__(
        self,
        in_channels: int,
        code_dim: int,
        *,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.float32,
        downsample: int = 2,
    ):
        self.downsample = check_downsample(downsample)
        self.dtype = dt = compute_dtype(dtype)  # of the computation (conv1 casts x to it); parameters: float32
        self.conv1 = nnx.Conv(in_channels, hidden // 2, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt, rngs=rngs)
        if downsample >= 2:
            self.conv2 = nnx.Conv(hidden // 2, hidden, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt, rngs=rngs)
        else:  # one stride-2 stage: the second convolution keeps the size
            self.conv2 = nnx.Conv(hidden // 2, hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        if downsample > 2:  # the stages beyond the second (absent by default: the default's parameters unchanged)
            self.down = nnx.List([nnx.Conv(hidden, hidden, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt, rngs=rngs)
                                  for _ in range(downsample - 2)])
        self.conv3 = nnx.Conv(hidden, hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.residual = nnx.List(
            [ResidualBlock(hidden, residual_hidden, rngs=rngs, dtype=dt) for _ in range(num_residual)]
        )
        self.project = nnx.Linear(hidden, code_dim, dtype=dt, rngs=rngs)  # 1x1 convolution

    def __call__(self, x: jax.Array) -> jax.Array:
        check_divisible(x.shape, self.downsample)
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        for layer in self.down if self.downsample > 2 else ():
            h = jax.nn.relu(layer(h))
        h = self.conv3(h)
        for block in self.residual:
            h = block(h)
        return self.project(jax.nn.relu(h))


class Decoder(nnx.Module):
    """``z_q [B, h, w, D] -> logits [B, 2^d h, 2^d w, C_out]`` with ``d = downsample`` (default 2: ``4h``).

    A 3×3 convolution, residual blocks, ``d`` stride-2 4×4 transposed convolutions
    (``hidden [-> hidden ...] -> hidden/2 -> C_out``; with ``d = 1`` the first is a 3×3 convolution).
    """

    def __init__(
        self,
        code_dim: int,
        out_channels: int,
        *,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.float32,
        downsample: int = 2,
    ):
        self.downsample = check_downsample(downsample)
        self.dtype = dt = compute_dtype(dtype)  # of the computation (conv1 casts z to it); parameters: float32
        self.conv1 = nnx.Conv(code_dim, hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.residual = nnx.List(
            [ResidualBlock(hidden, residual_hidden, rngs=rngs, dtype=dt) for _ in range(num_residual)]
        )
        if downsample > 2:  # the stages beyond the last two (absent by default: the default's parameters unchanged)
            self.up = nnx.List([SubpixelConvTranspose(hidden, hidden, rngs=rngs, dtype=dt)
                                for _ in range(downsample - 2)])
        if downsample >= 2:
            self.up1 = SubpixelConvTranspose(hidden, hidden // 2, rngs=rngs, dtype=dt)
        else:  # one stride-2 stage: the first keeps the size
            self.up1 = nnx.Conv(hidden, hidden // 2, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.up2 = SubpixelConvTranspose(hidden // 2, out_channels, rngs=rngs, dtype=dt)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.conv1(z)
        for block in self.residual:
            h = block(h)
        h = jax.nn.relu(h)
        for layer in self.up if self.downsample > 2 else ():
            h = jax.nn.relu(layer(h))
        h = jax.nn.relu(self.up1(h))
        return self.up2(h)


class VQVAEOutput(NamedTuple):
    """What :class:`VQVAE` returns for a batch ``x [B, H, W, C]``."""

    logits: jax.Array  # [B, H, W, C] decoder output (Bernoulli logits or Gaussian mean; [B, H, W, 2C] logistic)
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
    caller's: :func:`vqjax.objectives.vqvae_objective`. ``dtype`` (e.g. ``jnp.bfloat16``) is the
    encoder's and decoder's computation dtype; parameters and the quantizer stay float32
    (:mod:`vqjax.nn._precision`).

    Any ``[B, H, W, C]`` with ``H`` and ``W`` multiples of ``2^downsample`` (``in_channels = C``):
    ``downsample`` stride-2 stages each way (2: MNIST 28×28 to a 7×7 grid, CIFAR-10 32×32 to 8×8).
    ``likelihood`` sets the decoder's output (:mod:`vqjax.nn._images`): ``C`` channels for
    ``"bernoulli"`` (logits) and ``"gaussian"`` (the mean), ``2C`` for ``"discretized_logistic"``
    (location and log-scale per pixel); :func:`vqjax.objectives.vqvae_objective` reads it from the model.
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
        dtype: DTypeLike = jnp.float32,
        likelihood: str = "bernoulli",
        downsample: int = 2,
    ):
        dtype = compute_dtype(dtype)  # encoder and decoder compute in it; the quantizer in float32
        out_channels = output_channels(in_channels, likelihood)  # checks `likelihood` before any parameter
        check_downsample(downsample)
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
        kw = {"hidden": hidden, "residual_hidden": residual_hidden, "num_residual": num_residual, "rngs": rngs,
              "dtype": dtype, "downsample": downsample}
        self.likelihood, self.downsample = likelihood, downsample
        self.encoder = Encoder(in_channels, quantizer.code_dim, **kw)
        self.quantizer = quantizer
        self.decoder = Decoder(quantizer.code_dim, out_channels, **kw)

    @property
    def num_codes(self) -> int:
        """Codes per stage (the implied codebook size for FSQ)."""
        return self.quantizer.num_codes

    def encode(self, x: jax.Array) -> jax.Array:
        """``x [B, H, W, C] -> indices [B, H/2^d, W/2^d]`` (``[..., S]`` for residual VQ)."""
        return self.quantizer.encode(self.encoder(x))

    def decode(self, indices: jax.Array) -> jax.Array:
        """``indices -> logits [B, 2^d h, 2^d w, C]`` (``2C`` for the discretized logistic): decode stored codes."""
        return self.decoder(self.quantizer.decode(indices))

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> VQVAEOutput:
        """Reconstruct ``x``; ``key`` draws dead-code restarts (EMA quantizers in training mode)."""
        if x.ndim != 4:
            raise ValueError(f"`x` must be [B, H, W, C]; got shape {x.shape}.")
        z_e = self.encoder(x)
        q = self.quantizer(z_e, key=key)
        codebook, commitment = (jnp.sum(t, axis=(1, 2)) for t in (q.codebook_loss, q.commitment_loss))
        return VQVAEOutput(self.decoder(q.z_q), z_e, q.z_q, q.indices, codebook, commitment, q.restarted)
