"""VQ-VAE-2 (Razavi, van den Oord & Vinyals, 2019): a two-level hierarchy of discrete latents, and
its hierarchical PixelCNN prior, as Flax NNX modules.

For ``x [B, H, W, C]`` (padded with zeros to multiples of 8, e.g. 28×28 MNIST to 32×32; the
factors below are those of the default ``downsample = 2``: ``2^d`` and ``2^(d+1)`` in general):

- bottom encoder ``x -> h_b [B, H/4, W/4, hidden]``; top encoder ``h_b -> z_t [B, H/8, W/8, D]``,
  quantized to ``e_t`` (the *top* codes, global structure);
- top decoder ``e_t -> [B, H/4, W/4, D]``; ``z_b = W [h_b, dec_t(e_t)]`` quantized to ``e_b`` (the
  *bottom* codes, local detail, conditioned on the top);
- decoder ``[e_b, up(e_t)] -> logits``, cropped back to ``H × W``.

The prior factorises as in the paper: ``p(c_t, c_b | y) = p(c_t | y) p(c_b | c_t, y)``, a
class-conditional gated PixelCNN over the top grid and one over the bottom grid conditioned on
the top codes through a convolutional conditioning stack (upsampled ×2 to the bottom grid).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax._checks import check_positive_int
from vqjax.nn._images import check_downsample, output_channels
from vqjax.nn._layers import ResidualBlock, SubpixelConvTranspose
from vqjax.nn._pixelcnn import GatedPixelCNN
from vqjax.nn._precision import compute_dtype
from vqjax.nn._quantizers import VectorQuantizer
from vqjax.nn._sampling import sample_codes
from vqjax.nn._vqvae import Decoder, Encoder

__all__ = ["VQVAE2", "HierarchicalPrior", "VQVAE2Output"]


class VQVAE2Output(NamedTuple):
    """What :class:`VQVAE2` returns for ``x [B, H, W, C]``."""

    logits: jax.Array  # [B, H, W, C]
    top_indices: jax.Array  # [B, H'/8, W'/8] (H', W': H, W padded to multiples of 8; 2^(d+1) generally)
    bottom_indices: jax.Array  # [B, H'/4, W'/4] (H'/2^d)
    codebook_loss: jax.Array  # [B] both levels, summed over their grids
    commitment_loss: jax.Array  # [B] both levels, without β
    restarted: jax.Array  # [] dead codes re-seeded (EMA quantizers in training mode)


def _padding(size: int, multiple: int = 8) -> tuple[int, int]:
    extra = -size % multiple
    return extra // 2, extra - extra // 2


class VQVAE2(nnx.Module):
    """Two-level VQ-VAE: ``top`` and ``bottom`` quantizer modules (default: plain VQ, K=512, D=64).

    Any quantizer of :mod:`vqjax.nn._quantizers` with one stage works (VQ, EMA, FSQ); both must
    share ``code_dim``. ``dtype`` (e.g. ``jnp.bfloat16``) is the networks' computation dtype;
    parameters and quantizers stay float32 (:mod:`vqjax.nn._precision`).

    Any ``[B, H, W, C]`` (``in_channels = C``), padded to multiples of ``2^(d+1)``: the bottom grid
    is ``H'/2^d``, the top grid ``H'/2^(d+1)`` with ``d = downsample`` (default 2: 28×28 padded to
    32×32, an 8×8 bottom and a 4×4 top grid; the top is always one ×2 stage below the bottom, as
    :class:`HierarchicalPrior` assumes). ``likelihood`` sets the decoder's output channels as in
    :class:`vqjax.nn.VQVAE` (``2C`` for ``"discretized_logistic"``).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        top: nnx.Module | None = None,
        bottom: nnx.Module | None = None,
        hidden: int = 64,
        residual_hidden: int = 32,
        num_residual: int = 2,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.float32,
        likelihood: str = "bernoulli",
        downsample: int = 2,
    ):
        dt = compute_dtype(dtype)  # the networks compute in it; parameters and quantizers stay float32
        out_channels = output_channels(in_channels, likelihood)  # checks `likelihood` before any parameter
        self.likelihood, self.downsample = likelihood, check_downsample(downsample)
        top = VectorQuantizer(512, 64, rngs=rngs) if top is None else top
        bottom = VectorQuantizer(512, 64, rngs=rngs) if bottom is None else bottom
        for name, q in {"top": top, "bottom": bottom}.items():
            if getattr(q, "num_stages", 1) != 1:
                raise ValueError(f"`{name}` must be a one-stage quantizer (VQ, EMA or FSQ); got {type(q).__name__} "
                                 f"with {q.num_stages} stages.")
        if top.code_dim != bottom.code_dim:
            raise ValueError(f"`top` and `bottom` must share code_dim; got {top.code_dim} and {bottom.code_dim}.")
        for name, value in {"in_channels": in_channels, "hidden": hidden, "residual_hidden": residual_hidden}.items():
            check_positive_int(value, name)
        if hidden % 2:
            raise ValueError(f"`hidden` must be even; got {hidden}.")
        d = top.code_dim
        kw = {"hidden": hidden, "residual_hidden": residual_hidden, "num_residual": num_residual, "rngs": rngs,
              "dtype": dt}
        self.encoder_bottom = Encoder(in_channels, hidden, downsample=downsample, **kw)  # x -> H/2^d, `hidden` ch.
        self.encoder_top_down = nnx.Conv(hidden, hidden, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt, rngs=rngs)
        self.encoder_top = nnx.List([ResidualBlock(hidden, residual_hidden, rngs=rngs, dtype=dt)
                                     for _ in range(num_residual)])
        self.encoder_top_project = nnx.Linear(hidden, d, dtype=dt, rngs=rngs)
        self.quantizer_top = top
        self.decoder_top_in = nnx.Conv(d, hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.decoder_top = nnx.List([ResidualBlock(hidden, residual_hidden, rngs=rngs, dtype=dt)
                                     for _ in range(num_residual)])
        self.decoder_top_up = SubpixelConvTranspose(hidden, d, rngs=rngs, dtype=dt)  # H/8 -> H/4
        self.bottom_project = nnx.Linear(hidden + d, d, dtype=dt, rngs=rngs)
        self.quantizer_bottom = bottom
        self.upsample_top = SubpixelConvTranspose(d, d, rngs=rngs, dtype=dt)
        self.decoder = Decoder(2 * d, out_channels, downsample=downsample, **kw)  # H/2^d -> H

    @property
    def num_codes(self) -> tuple[int, int]:
        """``(K_top, K_bottom)``."""
        return self.quantizer_top.num_codes, self.quantizer_bottom.num_codes

    def _pad(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"`x` must be [B, H, W, C]; got shape {x.shape}.")
        m = 2 ** (self.downsample + 1)
        return jnp.pad(x, ((0, 0), _padding(x.shape[1], m), _padding(x.shape[2], m), (0, 0)))

    def _top_features(self, h_b: jax.Array) -> jax.Array:
        h = self.encoder_top_down(jax.nn.relu(h_b))
        for block in self.encoder_top:
            h = block(h)
        return self.encoder_top_project(jax.nn.relu(h))

    def _decode_top(self, e_t: jax.Array) -> jax.Array:
        h = self.decoder_top_in(e_t)
        for block in self.decoder_top:
            h = block(h)
        return self.decoder_top_up(jax.nn.relu(h))

    def _decode(self, e_t: jax.Array, e_b: jax.Array, shape: tuple[int, int]) -> jax.Array:
        logits = self.decoder(jnp.concatenate([e_b, self.upsample_top(e_t)], axis=-1))
        m = 2 ** (self.downsample + 1)
        (t, _), (left, _) = _padding(shape[0], m), _padding(shape[1], m)
        return logits[:, t:t + shape[0], left:left + shape[1]]

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x [B, H, W, C] -> (top [B, H'/2^(d+1), W'/2^(d+1)], bottom [B, H'/2^d, W'/2^d])`` code indices
        (default ``d = 2``: ``H'/8`` and ``H'/4``)."""
        h_b = self.encoder_bottom(self._pad(x))
        top = self.quantizer_top.encode(self._top_features(h_b))
        z_b = self.bottom_project(jnp.concatenate([h_b, self._decode_top(self.quantizer_top.decode(top))], -1))
        return top, self.quantizer_bottom.encode(z_b)

    def decode(self, top: jax.Array, bottom: jax.Array, *, image_shape: tuple[int, int] = (28, 28)) -> jax.Array:
        """Code indices -> logits ``[B, *image_shape, C]`` (``image_shape``: the images' ``(H, W)``)."""
        e_t, e_b = self.quantizer_top.decode(top), self.quantizer_bottom.decode(bottom)
        return self._decode(e_t, e_b, image_shape)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> VQVAE2Output:
        """Reconstruct ``x``; ``key`` draws dead-code restarts (EMA quantizers in training mode)."""
        h_b = self.encoder_bottom(self._pad(x))
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        q_t = self.quantizer_top(self._top_features(h_b), key=keys[0])
        z_b = self.bottom_project(jnp.concatenate([h_b, self._decode_top(q_t.z_q)], axis=-1))
        q_b = self.quantizer_bottom(z_b, key=keys[1])
        codebook, commitment = (jnp.sum(getattr(q_t, t), axis=(1, 2)) + jnp.sum(getattr(q_b, t), axis=(1, 2))
                                for t in ("codebook_loss", "commitment_loss"))
        return VQVAE2Output(self._decode(q_t.z_q, q_b.z_q, x.shape[1:3]), q_t.indices, q_b.indices,
                            codebook, commitment, q_t.restarted + q_b.restarted)


class HierarchicalPrior(nnx.Module):
    """``p(c_t | y) · p(c_b | c_t, y)``: two gated PixelCNNs (:class:`GatedPixelCNN`).

    The bottom prior sees the top codes through a conditioning stack: embedding, a 3×3
    convolution and residual blocks on the top grid, then a ×2 transposed convolution to the
    bottom grid, fed to every layer as the spatial conditioning ``s``.

    Args:
      num_codes: ``(K_top, K_bottom)``.
      num_classes: > 0 for class-conditional priors (``labels [B]``).
      hidden, num_layers: of the top prior; ``bottom_hidden``, ``bottom_layers`` of the bottom one.
      cond_hidden: channels of the conditioning stack.
      dtype: the computation dtype of both priors and the stack (parameters stay float32).
    """

    def __init__(
        self,
        num_codes: tuple[int, int],
        *,
        num_classes: int = 0,
        hidden: int = 64,
        num_layers: int = 8,
        bottom_hidden: int = 64,
        bottom_layers: int = 8,
        cond_hidden: int = 64,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.float32,
    ):
        k_top, k_bottom = num_codes
        check_positive_int(cond_hidden, "cond_hidden")
        dt = compute_dtype(dtype)  # of the computation; parameters stay float32
        self.top = GatedPixelCNN(k_top, hidden=hidden, num_layers=num_layers, num_classes=num_classes, rngs=rngs,
                                 dtype=dt)
        self.bottom = GatedPixelCNN(k_bottom, hidden=bottom_hidden, num_layers=bottom_layers,
                                    num_classes=num_classes, cond_channels=cond_hidden, rngs=rngs, dtype=dt)
        self.cond_embed = nnx.Embed(k_top, cond_hidden, dtype=dt, rngs=rngs)
        self.cond_conv = nnx.Conv(cond_hidden, cond_hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.cond_residual = nnx.List([ResidualBlock(cond_hidden, cond_hidden // 2 or 1, rngs=rngs, dtype=dt)
                                       for _ in range(2)])
        self.cond_up = SubpixelConvTranspose(cond_hidden, cond_hidden, rngs=rngs, dtype=dt)

    def condition(self, top: jax.Array) -> jax.Array:
        """``top [B, h, w]`` codes -> ``s [B, 2h, 2w, cond_hidden]`` for the bottom prior."""
        h = self.cond_conv(self.cond_embed(top))
        for block in self.cond_residual:
            h = block(h)
        return self.cond_up(jax.nn.relu(h))

    def __call__(self, top: jax.Array, bottom: jax.Array, *, labels: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """``(top [B, h, w], bottom [B, 2h, 2w]) -> (logits_top [B, h, w, K_t], logits_bottom [B, 2h, 2w, K_b])``."""
        if top.ndim != 3 or bottom.ndim != 3 or bottom.shape != (top.shape[0], 2 * top.shape[1], 2 * top.shape[2]):
            raise ValueError(f"`bottom` must be [B, 2h, 2w] for `top` [B, h, w]; got {bottom.shape} and {top.shape}.")
        return self.top(top, labels=labels), self.bottom(bottom, labels=labels, cond=self.condition(top))

    def sample(self, num_samples: int, top_shape: tuple[int, int], *, key: jax.Array,
               labels: jax.Array | None = None, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
        """Ancestral sampling: the top grid, then the bottom grid given it. Returns ``(top, bottom)``."""
        k_top, k_bottom = jax.random.split(key)
        top = sample_codes(self.top, (num_samples, *top_shape), key=k_top, labels=labels, temperature=temperature)
        cond = jax.jit(lambda m, t: m.condition(t))(self, top)
        bottom = sample_codes(self.bottom, (num_samples, 2 * top_shape[0], 2 * top_shape[1]), key=k_bottom,
                              labels=labels, cond=cond, temperature=temperature)
        return top, bottom
