r"""FactorVAE's total-correlation discriminator (Kim & Mnih, 2018, "Disentangling by Factorising").

An MLP ``D: z [..., L] -> logits`` that tells samples of the aggregate posterior ``q(z)`` from samples of the
product of its marginals ``Π_j q(z_j)`` (:func:`vqjax.losses.permute_dims`). The paper's network (appendix A,
and disentanglement_lib's ``fc_discriminator``): 6 hidden layers of 1000 units with leaky ReLU (slope 0.2)
and 2 output logits. Its losses are :func:`vqjax.losses.factor_vae_discriminator_loss` (for D) and
:func:`vqjax.losses.factor_vae_tc` (the TC term of the VAE).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax.nn._precision import compute_dtype

__all__ = ["TCDiscriminator"]


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")


class TCDiscriminator(nnx.Module):
    """``z [..., L] -> logits [..., num_outputs]``: dense layers with leaky ReLU, then a linear output.

    With ``num_outputs=2`` (the paper's and disentanglement_lib's choice) logit 0 is the class "sample of
    ``q(z)``" and logit 1 "permuted sample"; with ``num_outputs=1`` the single logit is ``log D/(1 - D)``.
    The logits are returned in the computation ``dtype``; the losses compute in float32.

    Args:
      latents: L, the size of ``z``.
      hidden: the widths of the hidden layers; default the paper's six layers of 1000 units.
      negative_slope: the leaky ReLU's slope for negative inputs (the paper: 0.2, TensorFlow's default of
        ``tf.nn.leaky_relu`` in disentanglement_lib).
      num_outputs: 2 (two-class softmax) or 1 (one logistic logit).
      dtype: the computation dtype (parameters stay float32).
    """

    def __init__(self, latents: int, *, hidden: tuple[int, ...] = (1000,) * 6, negative_slope: float = 0.2,
                 num_outputs: int = 2, rngs: nnx.Rngs, dtype: DTypeLike = jnp.float32):
        _check_positive_int(latents, "latents")
        hidden = (hidden,) if isinstance(hidden, int) and not isinstance(hidden, bool) else tuple(hidden)
        for width in hidden:
            _check_positive_int(width, "hidden")
        if num_outputs not in (1, 2) or isinstance(num_outputs, bool):
            raise ValueError(f"`num_outputs` must be 1 (one logit) or 2 (two classes); got {num_outputs!r}.")
        if not (isinstance(negative_slope, (int, float)) and 0.0 <= negative_slope < 1.0):
            raise ValueError(f"`negative_slope` must be a number in [0, 1); got {negative_slope!r}.")
        self.latents, self.hidden, self.num_outputs = latents, hidden, num_outputs
        self.negative_slope = float(negative_slope)
        self.dtype = compute_dtype(dtype)
        widths = (latents, *hidden)
        self.layers = nnx.List([nnx.Linear(a, b, dtype=self.dtype, rngs=rngs)
                                for a, b in itertools.pairwise(widths)])
        self.out = nnx.Linear(widths[-1], num_outputs, dtype=self.dtype, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        z = jnp.asarray(z)
        if z.ndim == 0 or z.shape[-1] != self.latents:
            raise ValueError(f"`z` must end in an axis of L={self.latents} latents; got shape {z.shape}.")
        h = z.astype(self.dtype)
        for layer in self.layers:
            h = jax.nn.leaky_relu(layer(h), negative_slope=self.negative_slope)
        return self.out(h)
