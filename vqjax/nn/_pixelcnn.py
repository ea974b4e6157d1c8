"""The gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
Decoders") as a prior over a grid of VQ-VAE code indices.

``codes [B, H, W] -> logits [B, H, W, K]`` with ``logits[:, i, j]`` a function of the codes
before ``(i, j)`` in raster order only: ``p(c) = Π_{i,j} p(c_ij | c_<ij, y, s)``.

Two stacks remove the blind spot of the masked PixelCNN:

- the *vertical* stack: ``(r+1) × k`` convolutions (``r = k // 2``) padded so that row ``i`` sees
  rows ``i - r .. i``; it never feeds the horizontal stack directly but through a one-row shift
  down, so the horizontal stack at ``(i, j)`` sees all rows ``< i`` within the receptive field;
- the *horizontal* stack: ``1 × (r+1)`` convolutions padded so that ``(i, j)`` sees columns
  ``j - r .. j`` of its own row; the first layer reads its input shifted one column right (mask
  A: not the current code), later layers include the current position (mask B, which now
  holds only information from before it), and have residual connections.

Each layer is gated, ``y = tanh(W_f * x + V_f h + U_f s) ⊙ σ(W_g * x + V_g h + U_g s)``, with an
optional class ``y ∈ {0..num_classes-1}`` (embedded, a per-layer bias ``V h``) and an optional
spatial conditioning map ``s [B, H, W, C_s]`` (``U s`` a 1×1 convolution; VQ-VAE-2's bottom prior
conditioned on the top codes). The conditioning never depends on the codes, so it keeps the
autoregressive order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax._checks import check_positive_int
from vqjax.nn._precision import compute_dtype

__all__ = ["GatedLayer", "GatedPixelCNN"]


def _shift_down(x: jax.Array) -> jax.Array:
    """``[B, H, W, C]``: row ``i`` takes row ``i - 1`` (zeros in row 0)."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def _shift_right(x: jax.Array) -> jax.Array:
    """``[B, H, W, C]``: column ``j`` takes column ``j - 1`` (zeros in column 0)."""
    return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _gate(x: jax.Array) -> jax.Array:
    """``tanh(a) ⊙ σ(b)`` for ``x = [a, b]`` split on the last axis."""
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.tanh(a) * jax.nn.sigmoid(b)


class GatedLayer(nnx.Module):
    """One layer of both stacks: ``(v [B,H,W,C], h [B,H,W,C]) -> (v', h')``.

    ``first=True`` is the mask-A layer: its horizontal input is shifted one column right and it
    has no residual connection (the residual would carry the current code to its own output).
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 3,
        first: bool = False,
        num_classes: int = 0,
        cond_channels: int = 0,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.float32,
    ):
        r = kernel_size // 2
        c2 = 2 * channels
        self.first = first
        dt = compute_dtype(dtype)  # of the computation; parameters stay float32
        self.vertical = nnx.Conv(channels, c2, (r + 1, kernel_size), padding=((r, 0), (r, r)), dtype=dt, rngs=rngs)
        self.horizontal = nnx.Conv(channels, c2, (1, r + 1), padding=((0, 0), (r, 0)), dtype=dt, rngs=rngs)
        self.vertical_to_horizontal = nnx.Linear(c2, c2, dtype=dt, rngs=rngs)  # 1x1
        self.horizontal_out = nnx.Linear(channels, channels, dtype=dt, rngs=rngs)  # 1x1
        self.class_bias = nnx.Embed(num_classes, 2 * c2, dtype=dt, rngs=rngs) if num_classes else None
        self.cond_proj = nnx.Linear(cond_channels, 2 * c2, dtype=dt, rngs=rngs) if cond_channels else None

    def _conditioning(self, labels: jax.Array | None, cond: jax.Array | None):
        """``(e_v, e_h)``: the class and spatial terms added to each stack's ``2C`` pre-activations."""
        extra = 0.0
        if self.class_bias is not None:
            extra = extra + self.class_bias(labels)[:, None, None, :]
        if self.cond_proj is not None:
            extra = extra + self.cond_proj(cond)
        if self.class_bias is None and self.cond_proj is None:
            return 0.0, 0.0
        return tuple(jnp.split(extra, 2, axis=-1))

    def vertical_pass(self, v: jax.Array, *, labels: jax.Array | None = None,
                      cond: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``v [B, H, W, C] -> (v' [B, H, W, C], to_h [B, H, W, 2C])``.

        ``to_h`` is all the horizontal stack gets from above: the vertical pre-activations shifted
        one row down (row ``i`` sees rows ``< i``) through a 1×1 convolution, plus the
        conditioning terms.
        """
        e_v, e_h = self._conditioning(labels, cond)
        v_pre = self.vertical(v)
        return _gate(v_pre + e_v), self.vertical_to_horizontal(_shift_down(v_pre)) + e_h

    def horizontal_pass(self, h: jax.Array, to_h: jax.Array) -> jax.Array:
        """``h [B, R, W, C]``, ``to_h [B, R, W, 2C] -> h' [B, R, W, C]``, row by row (any R rows)."""
        h_out = self.horizontal_out(_gate(self.horizontal(_shift_right(h) if self.first else h) + to_h))
        return h_out if self.first else h + h_out


class GatedPixelCNN(nnx.Module):
    """Autoregressive prior ``p(c | y, s)`` over ``[H, W]`` grids of ``num_codes`` codes.

    Args:
      num_codes: K, the number of code values (the VQ-VAE's codebook size).
      hidden: channels of each stack.
      num_layers: gated layers; with ``r = kernel_size // 2`` the receptive field reaches
        ``num_layers · r + 1`` rows up (the vertical stack's row shift adds one) and
        ``num_layers · r + 1`` columns left in the current row (mask A's column shift adds one).
      kernel_size: odd width of the vertical kernels (``(k//2 + 1) × k``) and twice the width
        minus one of the horizontal ones (``1 × (k//2 + 1)``).
      num_classes: > 0 for a class-conditional prior (``labels [B]`` required).
      cond_channels: > 0 for a spatially conditioned prior (``cond [B, H, W, C_s]`` required).
      out_hidden: channels of the 1×1 output layer before the K logits.
      dtype: the computation dtype (e.g. ``jnp.bfloat16``; parameters stay float32, and the
        likelihood and sampling upcast the logits to float32).
    """

    def __init__(
        self,
        num_codes: int,
        *,
        hidden: int = 64,
        num_layers: int = 8,
        kernel_size: int = 3,
        num_classes: int = 0,
        cond_channels: int = 0,
        out_hidden: int = 128,
        rngs: nnx.Rngs,
        dtype: DTypeLike = jnp.float32,
    ):
        for name, value in {"num_codes": num_codes, "hidden": hidden, "num_layers": num_layers,
                            "out_hidden": out_hidden}.items():
            check_positive_int(value, name)
        if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be an odd int >= 3; got {kernel_size!r}.")
        for name, value in {"num_classes": num_classes, "cond_channels": cond_channels}.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0 (0: unconditional); got {value!r}.")
        self.num_codes, self.num_classes, self.cond_channels = num_codes, num_classes, cond_channels
        dt = compute_dtype(dtype)
        self.embed = nnx.Embed(num_codes, hidden, dtype=dt, rngs=rngs)
        self.layers = nnx.List([
            GatedLayer(hidden, kernel_size=kernel_size, first=i == 0, num_classes=num_classes,
                       cond_channels=cond_channels, rngs=rngs, dtype=dt)
            for i in range(num_layers)
        ])
        self.out_hidden = nnx.Linear(hidden, out_hidden, dtype=dt, rngs=rngs)
        self.out = nnx.Linear(out_hidden, num_codes, dtype=dt, rngs=rngs)

    def check_inputs(self, codes_shape: tuple[int, ...], labels: jax.Array | None, cond: jax.Array | None) -> None:
        """Trace-time checks of the conditioning against the code grid ``[B, H, W]``."""
        if len(codes_shape) != 3:
            raise ValueError(f"`codes` must be [B, H, W] code indices; got shape {tuple(codes_shape)}.")
        if self.num_classes:
            if labels is None or jnp.shape(labels) != codes_shape[:1]:
                raise ValueError(f"This prior is class-conditional ({self.num_classes} classes): `labels` must be "
                                 f"[B] = {codes_shape[:1]}; got {None if labels is None else jnp.shape(labels)}.")
        elif labels is not None:
            raise ValueError("`labels` given to an unconditional prior (built with num_classes=0).")
        if self.cond_channels:
            want = (*codes_shape, self.cond_channels)
            if cond is None or jnp.shape(cond) != want:
                raise ValueError(f"This prior is spatially conditioned: `cond` must be [B, H, W, C_s] = {want}; "
                                 f"got {None if cond is None else jnp.shape(cond)}.")
        elif cond is not None:
            raise ValueError("`cond` given to a prior built with cond_channels=0.")

    def vertical_pass(self, e: jax.Array, *, labels: jax.Array | None = None,
                      cond: jax.Array | None = None) -> list[jax.Array]:
        """``e [B, H, W, hidden]`` (embedded codes) -> each layer's ``to_h [B, H, W, 2·hidden]``.

        Row ``i`` of every ``to_h`` depends on the codes of rows ``< i`` only.
        """
        v, to_h = e, []
        for layer in self.layers:
            v, t = layer.vertical_pass(v, labels=labels, cond=cond)
            to_h.append(t)
        return to_h

    def horizontal_logits(self, e: jax.Array, to_h: list[jax.Array]) -> jax.Array:
        """``e [B, R, W, hidden]`` and the matching rows of :meth:`vertical_pass` -> ``[B, R, W, K]``."""
        h = e
        for layer, t in zip(self.layers, to_h, strict=True):
            h = layer.horizontal_pass(h, t)
        return self.out(jax.nn.relu(self.out_hidden(jax.nn.relu(h))))

    def logits_from_embedding(self, e: jax.Array, *, labels: jax.Array | None = None,
                              cond: jax.Array | None = None) -> jax.Array:
        """``e [B, H, W, hidden]`` (embedded codes) ``-> logits [B, H, W, K]``.

        Differentiable in ``e``: the causality test takes gradients through it.
        """
        return self.horizontal_logits(e, self.vertical_pass(e, labels=labels, cond=cond))

    def __call__(self, codes: jax.Array, *, labels: jax.Array | None = None,
                 cond: jax.Array | None = None) -> jax.Array:
        """``codes [B, H, W]`` int -> ``logits [B, H, W, K]`` of ``p(c_ij | c_<ij, labels, cond)``."""
        self.check_inputs(jnp.shape(codes), labels, cond)
        return self.logits_from_embedding(self.embed(codes), labels=labels, cond=cond)
