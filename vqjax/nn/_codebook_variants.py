r"""Codebook parameterisations beyond a free ``[K, D]`` table: SimVQ and low-dimensional factorised codes.

Both return the :class:`vqjax.nn.QuantizerOutput` of :class:`vqjax.nn.VectorQuantizer` (per-vector
codebook and commitment losses, the objective adds ``codebook_loss + β · commitment_loss``) and
have ``num_codes``, ``num_stages``, ``code_dim``, ``encode``, ``decode`` and ``codebook_vectors``.

- :class:`SimVQ` (Zhu et al., 2024): the codes are a learned linear map of a frozen random basis,
  ``E = C W``, so the codebook loss of the selected codes moves every code.
- :class:`FactorizedVectorQuantizer` (Yu et al., 2022, ViT-VQGAN): lookup by cosine similarity in a
  learned low-dimensional space, the code projected back to ``D``.
- :class:`GroupedVectorQuantizer`: multi-head / product quantization, ``H`` parts of ``D/H``
  channels each with its own ``K``-code codebook (or one shared), ``K^H`` product codes from ``H·K``.

Precision: the input is upcast to float32 (:func:`vqjax.nn._precision.to_float32`); projections,
distances, indices and losses are float32 and ``z_q`` comes back in the input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses, quantizers
from vqjax._checks import check_positive_int
from vqjax.nn._precision import to_float32
from vqjax.nn._quantizers import QuantizerOutput, _uniform_codebook

__all__ = ["FactorizedVectorQuantizer", "FrozenCodebook", "GroupedVectorQuantizer", "SimVQ"]


class FrozenCodebook(nnx.Variable):
    """A fixed, non-trainable codebook basis (SimVQ's ``C``): not an ``nnx.Param``, so an optimizer
    built with ``wrt=nnx.Param`` never updates it."""


def _linear_init(key: jax.Array, fan_in: int, fan_out: int) -> jax.Array:
    """``U(-1/√fan_in, 1/√fan_in)``: PyTorch's ``nn.Linear`` weight initialisation, as ``[fan_in, fan_out]``."""
    bound = 1.0 / jnp.sqrt(jnp.float32(fan_in))
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -bound, bound)


def _no_restart() -> jax.Array:
    return jnp.zeros((), jnp.int32)


class SimVQ(nnx.Module):
    r"""SimVQ: codes ``E = C W`` from a frozen random ``C [K, D']`` and a learned ``W [D', D]``.

    Zhu et al. (2024), "Addressing Representation Collapse in Vector
    Quantized Models with One Linear Layer" (arXiv:2411.02038)::

        E = C W                        (C ~ N(0, 1/D') fixed; W learned)
        k = argmin_i ||z - E_i||²      z_q = z + sg[E_k - z]
        codebook loss   ||sg[z] - E_k||²  = ||sg[z] - C_k W||²
        commitment loss ||z - sg[E_k]||²

    In a plain VQ the codebook loss's gradient reaches only the selected rows ``E_k``; codes never
    selected never move and die (representation collapse). Here the gradient is
    ``∂L/∂W = C_kᵀ (C_k W - sg[z])``: it moves ``W``, hence the whole latent space spanned by the
    codebook, and every code ``E_i = C_i W`` with it — also the codes no vector selected.

    ``C`` is a :class:`FrozenCodebook` variable (``randn · D'^{-1/2}``, as vector-quantize-pytorch's
    ``SimVQ``) and ``W`` an ``nnx.Param`` (``U(±1/√D')``, PyTorch's ``nn.Linear`` init; the torch
    module stores ``W`` transposed, as ``code_transform.weight [D, D']``).

    Args:
      num_codes: K.
      code_dim: D, the dimension of ``z`` and of the codes.
      frozen_dim: D', the dimension of the frozen basis (default ``D``).
      rngs: ``rngs.params()`` draws ``C`` and ``W``.
    """

    num_stages = 1

    def __init__(self, num_codes: int, code_dim: int, *, frozen_dim: int | None = None, rngs: nnx.Rngs):
        frozen_dim = code_dim if frozen_dim is None else frozen_dim
        for name, v in (("num_codes", num_codes), ("code_dim", code_dim), ("frozen_dim", frozen_dim)):
            check_positive_int(v, name)
        self.num_codes, self.code_dim, self.frozen_dim = num_codes, code_dim, frozen_dim
        key_c, key_w = jax.random.split(rngs.params())
        basis = jax.random.normal(key_c, (num_codes, frozen_dim), jnp.float32) / jnp.sqrt(jnp.float32(frozen_dim))
        self.frozen_codebook = FrozenCodebook(basis)
        self.transform = nnx.Param(_linear_init(key_w, frozen_dim, code_dim))

    def _codes(self) -> jax.Array:
        """``E = C W``, ``[K, D]`` float32; differentiable in ``W``."""
        return self.frozen_codebook[...] @ self.transform[...]

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        del key
        z, dtype = to_float32(z)
        q = quantizers.quantize(z, self._codes())
        return QuantizerOutput(q.z_q.astype(dtype), q.indices, losses.codebook_loss(z, q.codes),
                               losses.commitment_loss(z, q.codes, beta=1.0), _no_restart())

    def encode(self, z: jax.Array) -> jax.Array:
        return quantizers.nearest_code(to_float32(z)[0], self._codes())

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.lookup(indices, self._codes())

    def codebook_vectors(self) -> jax.Array:
        return self._codes()


class FactorizedVectorQuantizer(nnx.Module):
    r"""Factorised, l2-normalised codes (Yu et al., 2022, "Vector-quantized Image Modeling with
    Improved VQGAN", ViT-VQGAN §3.2).

    A linear map ``P_in: R^D → R^d`` (``d = code_dim_low``, 8 or 32 in the paper) projects the
    encoder output to a low-dimensional lookup space; there the vector and the codes ``e [K, d]``
    are l2-normalised and the nearest code is the one of largest cosine similarity; a second linear
    map ``P_out: R^d → R^D`` takes the code back::

        u = P_in z / ||P_in z||        ê_i = e_i / ||e_i||
        k = argmin_i ||u - ê_i||² = argmax_i cos(P_in z, e_i)
        u_q = u + sg[ê_k - u]          (straight-through at the low-dimensional stage)
        z_q = P_out u_q
        codebook loss ||sg[u] - ê_k||²,  commitment loss ||u - sg[ê_k]||²   (in the low space)

    The decoder's gradient reaches ``P_out`` directly and ``P_in`` (and the encoder) through the
    straight-through copy; the commitment loss also trains ``P_in``. ``code_dim`` is ``D``;
    ``codebook_vectors()`` are the projected codes ``P_out ê_i`` (``[K, D]``), what the decoder sees.
    """

    num_stages = 1

    def __init__(self, num_codes: int, code_dim: int, *, code_dim_low: int = 8, rngs: nnx.Rngs):
        for name, v in (("num_codes", num_codes), ("code_dim", code_dim), ("code_dim_low", code_dim_low)):
            check_positive_int(v, name)
        self.num_codes, self.code_dim, self.code_dim_low = num_codes, code_dim, code_dim_low
        self.project_in = nnx.Linear(code_dim, code_dim_low, rngs=rngs)
        self.project_out = nnx.Linear(code_dim_low, code_dim, rngs=rngs)
        self.codebook = nnx.Param(jax.random.normal(rngs.params(), (num_codes, code_dim_low), jnp.float32))

    def _low(self, z: jax.Array) -> jax.Array:
        """``P_in z / ||P_in z||`` in float32."""
        return quantizers.l2_normalize(self.project_in(to_float32(z)[0]))

    def _codes_low(self) -> jax.Array:
        return quantizers.l2_normalize(self.codebook[...])

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        del key
        dtype = jnp.asarray(z).dtype
        u = self._low(z)
        q = quantizers.quantize(u, self._codes_low())
        z_q = self.project_out(q.z_q)
        return QuantizerOutput(z_q.astype(dtype), q.indices, losses.codebook_loss(u, q.codes),
                               losses.commitment_loss(u, q.codes, beta=1.0), _no_restart())

    def encode(self, z: jax.Array) -> jax.Array:
        return quantizers.nearest_code(self._low(z), self._codes_low())

    def decode(self, indices: jax.Array) -> jax.Array:
        return self.project_out(quantizers.lookup(indices, self._codes_low()))

    def codebook_vectors(self) -> jax.Array:
        return self.project_out(self._codes_low())


class GroupedVectorQuantizer(nnx.Module):
    r"""Grouped (multi-head) VQ / product quantization (:func:`vqjax.quantizers.grouped_quantize`).

    ``z [..., D]`` is split into ``heads`` parts of ``D/H`` channels; part ``h`` goes to its nearest
    code in its own learned codebook ``e^(h) [K, D/H]`` (``shared=True``: one codebook for all parts).
    The product codebook has ``K^H`` codes, ``H·log2 K`` bits per latent, from ``H·K`` stored codes.
    Losses as :class:`VectorQuantizer`'s, summed over the parts (the squared distance is a sum over
    them)::

        codebook loss ||sg[z] - q(z)||² = Σ_h ||sg[z^(h)] - e^(h)_{k_h}||²,  commitment ||z - sg[q(z)]||²

    Indices are ``[..., H]`` with ``num_stages = H`` and ``num_codes = K`` per part, so usage metrics
    (perplexity, codes used) are per part, averaged over parts as for residual VQ's stages.
    ``codebook_vectors()`` is ``[H·K, D/H]`` (``[K, D/H]`` shared); ``part_dim`` is ``D/H``.
    Codebooks start ``U(-1/K, 1/K)`` as the paper's single codebook.
    """

    def __init__(self, num_codes: int, code_dim: int, *, heads: int = 2, shared: bool = False, rngs: nnx.Rngs):
        for name, v in (("num_codes", num_codes), ("code_dim", code_dim), ("heads", heads)):
            check_positive_int(v, name)
        if code_dim % heads:
            raise ValueError(f"`code_dim` must be a multiple of `heads` = {heads} (D/H channels per part); "
                             f"got code_dim={code_dim}.")
        self.num_codes, self.code_dim, self.heads, self.shared = num_codes, code_dim, heads, bool(shared)
        self.num_stages, self.part_dim = heads, code_dim // heads
        shape = (num_codes, self.part_dim) if shared else (heads, num_codes, self.part_dim)
        self.codebooks = nnx.Param(_uniform_codebook(rngs.params(), shape, num_codes))

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        del key
        z, dtype = to_float32(z)
        q = quantizers.grouped_quantize(z, self.codebooks[...])
        return QuantizerOutput(q.z_q.astype(dtype), q.indices, losses.codebook_loss(z, q.codes),
                               losses.commitment_loss(z, q.codes, beta=1.0), _no_restart())

    def encode(self, z: jax.Array) -> jax.Array:
        return quantizers.grouped_quantize(to_float32(z)[0], self.codebooks[...]).indices

    def decode(self, indices: jax.Array) -> jax.Array:
        return quantizers.grouped_lookup(indices, self.codebooks[...])

    def codebook_vectors(self) -> jax.Array:
        return self.codebooks[...].reshape(-1, self.part_dim)
