r"""oi-VAE's grouped generator (Ainsworth, Foti, Lee & Fox, 2018) as a VAE decoder.

The observation splits into G groups ``x = (x_1, ..., x_G)`` (:mod:`vqjax.groups`). All groups
share the latent ``z ∈ R^L``; group g has its own latent-to-group matrix ``W_g ∈ R^{p×L}`` and its
own generator network ``f_g``:

    x_g | z ~ p(x_g | f_g(W_g z)),      W_g = [w_{g,1} … w_{g,L}],  w_{g,j} ∈ R^p.

The columns carry the group-lasso prior ``λ Σ_{g,j} ||w_{g,j}||₂`` (:mod:`vqjax.proximal`): a
column driven to zero cuts latent j from group g, and ``||w_{g,j}||`` ([G, L],
:meth:`GroupedGenerator.latent_to_group_norms`) is the map from latents to groups one reads.
The generators carry the Gaussian prior ``θ ~ N(0, σ_θ² I)`` of the paper, which keeps ``f_g``
from undoing the shrinkage of ``W_g`` by growing its own first layer.

:class:`GroupedGenerator` is a decoder for :class:`vqjax.nn.VAE`: ``VAE(encoder,
GroupedGenerator(groups, image_shape, L, ...), latents=L)`` is the oi-VAE, with every VAE method
(ELBO, IWAE bound, samples) unchanged.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from vqjax import proximal
from vqjax.groups import Groups
from vqjax.nn._precision import compute_dtype

__all__ = ["LATENT_TO_GROUP", "GroupedGenerator", "latent_to_group_mask"]

LATENT_TO_GROUP = "latent_to_group"  # the name of the W parameter, for optimizer masks


class GroupedGenerator(nnx.Module):
    r"""``z [..., L] -> [..., *image_shape]``: per group ``f_g(W_g z)``, scattered back into the image.

    The G generators are one batched computation (their weights stacked on a leading G axis, each
    padded to the largest group): an MLP ``p -> hidden... -> |x_g|`` with ``activation`` between
    layers (no hidden layer: the linear generator of the paper's bars experiment).

    Args:
      groups: the partition of the ``prod(image_shape)`` flattened dimensions.
      image_shape: the decoder's output shape (e.g. ``(28, 28, 1)``).
      latents: L.
      group_input_dim: p, the size of ``W_g z``.
      hidden: widths of the generators' hidden layers.
      activation: between layers (default ReLU).
      dtype: the computation dtype (e.g. ``jnp.bfloat16``); ``W`` and the generators' parameters stay
        float32, and so do the group norms and the generator prior computed from them.
    """

    def __init__(self, groups: Groups, image_shape: Sequence[int], latents: int, *, group_input_dim: int = 1,
                 hidden: int | Sequence[int] = (), activation=jax.nn.relu, rngs: nnx.Rngs,
                 dtype: DTypeLike = jnp.float32):
        if not isinstance(groups, Groups):
            raise ValueError(f"`groups` must be a vqjax.groups.Groups (make_groups, image_regions, ...); "
                             f"got {type(groups).__name__}.")
        self.image_shape = tuple(int(s) for s in image_shape)
        if groups.num_dims != math.prod(self.image_shape):
            raise ValueError(f"`groups` partition {groups.num_dims} dimensions but `image_shape` "
                             f"{self.image_shape} has {math.prod(self.image_shape)}.")
        for name, value in (("latents", latents), ("group_input_dim", group_input_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.dtype = compute_dtype(dtype)
        g, size = groups.num_groups, max(groups.sizes)
        self.latents, self.group_input_dim, self.num_groups, self.activation = latents, group_input_dim, g, activation
        self.group_names = groups.names
        # The flat output of the stacked generators is [G, size]; dimension d of x is entry
        # (group(d), position of d in its group).
        slot = [0] * groups.num_dims
        for gi, idx in enumerate(groups.indices):
            for k, d in enumerate(idx.tolist()):
                slot[d] = gi * size + k
        self.slot = tuple(slot)

        keys = rngs.params
        w = jax.random.normal(keys(), (g, group_input_dim, latents)) / math.sqrt(latents)
        setattr(self, LATENT_TO_GROUP, nnx.Param(w))
        widths = (group_input_dim, *hidden, size)
        self.kernels = nnx.List([
            nnx.Param(jax.random.normal(keys(), (g, a, b)) / math.sqrt(a)) for a, b in itertools.pairwise(widths)
        ])
        # A group smaller than the largest leaves output slots unused: their weights start (and, with
        # no gradient from the likelihood and the prior's pull to 0, stay) at exactly 0.
        used = np.zeros((g, size), np.float32)
        for gi, n in enumerate(groups.sizes):
            used[gi, :n] = 1.0
        self.kernels[-1][...] = self.kernels[-1][...] * used[:, None, :]
        self.biases = nnx.List([nnx.Param(jnp.zeros((g, b))) for b in widths[1:]])

    @property
    def W(self) -> jax.Array:
        """``[G, p, L]``: ``W[g]`` is ``W_g``, ``W[g, :, j]`` the column ``w_{g,j}``."""
        return getattr(self, LATENT_TO_GROUP)[...]

    def group_inputs(self, z: jax.Array) -> jax.Array:
        """``z [..., L] -> [..., G, p]``: ``W_g z`` for every group."""
        if z.shape[-1:] != (self.latents,):
            raise ValueError(f"`z` must be [..., L] with L = {self.latents}; got shape {z.shape}.")
        return jnp.einsum("...l,gpl->...gp", z.astype(self.dtype), self.W.astype(self.dtype))

    def __call__(self, z: jax.Array) -> jax.Array:
        h = self.group_inputs(z)
        n = len(self.kernels)
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            h = jnp.einsum("...ga,gab->...gb", h, kernel[...].astype(self.dtype)) + bias[...].astype(self.dtype)
            if i < n - 1:
                h = self.activation(h)
        flat = h.reshape(*h.shape[:-2], -1)[..., jnp.asarray(self.slot)]  # [..., D]
        return flat.reshape(*z.shape[:-1], *self.image_shape)

    def latent_to_group_norms(self) -> jax.Array:
        """``[G, L]``: ``||w_{g,j}||₂``, how strongly latent j drives group g (0: not at all)."""
        return proximal.group_norms(self.W, axis=-2)

    def generator_sum_of_squares(self) -> jax.Array:
        """``Σ θ²`` over the generators' weights and biases (not W): for the prior ``N(0, σ_θ² I)``."""
        leaves = [k[...] for k in self.kernels] + [b[...] for b in self.biases]
        return sum(jnp.sum(jnp.square(x)) for x in leaves)


def latent_to_group_mask(params):
    """A pytree of bools over ``params`` (an ``nnx.State``), True at the latent-to-group matrices.

    For ``optax.masked(vqjax.proximal.group_lasso_prox(...), latent_to_group_mask)``.
    """
    def is_w(path, _):
        return any(getattr(k, "key", None) == LATENT_TO_GROUP for k in path)

    return jax.tree_util.tree_map_with_path(is_w, params)
