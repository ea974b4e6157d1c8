"""Lookup-free quantizer modules: LFQ (MAGVIT-v2) and BSQ, NNX wrappers of the pure functions.

Both have an implicit codebook ``{±1}^D`` (BSQ: ``{±1/√D}^D``) of ``num_codes = 2**D`` codes, no
parameters, and return a :class:`vqjax.nn.QuantizerOutput` with

- ``codebook_loss [...]``: ``entropy_weight ·`` the entropy loss per vector,
  ``H(q(·|z_n)) - γ H(E_m q(·|z_m))`` (:func:`vqjax.quantizers.lfq_entropy_loss`). The codebook
  entropy is a statistic of the whole input (all leading axes), broadcast to every vector, so the
  mean of ``codebook_loss`` over the batch is the paper's loss; it is typically negative.
- ``commitment_loss [...]``: ``‖z - sg[ẑ]‖²`` (BSQ: ``‖u - sg[ẑ]‖²`` with ``u = z/‖z‖``), without β.

Precision: computed in float32 whatever the input's dtype; ``z_q`` in the input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses
from vqjax._checks import check_positive_int
from vqjax.nn._precision import to_float32
from vqjax.nn._quantizers import QuantizerOutput
from vqjax.quantizers._bsq import bsq, bsq_entropy_loss, bsq_indices_to_codes
from vqjax.quantizers._lfq import MAX_DIM, lfq, lfq_entropy_loss, lfq_indices_to_codes
from vqjax.quantizers._vq import l2_normalize

__all__ = ["BinarySphericalQuantizer", "LookupFreeQuantizer"]


class _BinaryQuantizer(nnx.Module):
    num_stages = 1
    _exact_default: bool | None = None

    def __init__(
        self,
        d: int,
        *,
        entropy_weight: float = 0.1,
        diversity_weight: float = 1.0,
        temperature: float = 0.01,
        sample_fraction: float = 1.0,
        exact_codebook_entropy: bool | None = None,
    ):
        check_positive_int(d, "d")
        if d > MAX_DIM:
            raise ValueError(f"`d` must be <= {MAX_DIM} (int32 indices); got {d}.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature!r}.")
        if not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"`sample_fraction` must be in (0, 1]; got {sample_fraction!r}.")
        self.code_dim, self.num_codes = d, 2**d
        self.entropy_weight, self.diversity_weight = float(entropy_weight), float(diversity_weight)
        self.temperature, self.sample_fraction = float(temperature), float(sample_fraction)
        self.exact = self._exact_default if exact_codebook_entropy is None else bool(exact_codebook_entropy)

    def _check(self, z: jax.Array) -> None:
        if z.ndim < 1 or z.shape[-1] != self.code_dim:
            raise ValueError(f"`z` must be [..., D] with D = {self.code_dim}; got shape {z.shape}.")

    def encode(self, z: jax.Array) -> jax.Array:
        """``z [..., D]`` -> int32 indices ``Σ_d [z_d ≥ 0] 2^d`` (the same for LFQ and BSQ: ``u`` has z's signs)."""
        self._check(z)
        return lfq(to_float32(z)[0]).indices

    def codebook_vectors(self) -> jax.Array:
        return self.decode(jnp.arange(self.num_codes, dtype=jnp.int32))


class LookupFreeQuantizer(_BinaryQuantizer):
    """LFQ (Yu et al., 2024): ``ẑ = sign(z) ∈ {±1}^d`` straight-through, with the entropy loss.

    ``temperature`` τ (0.01 = vector-quantize-pytorch's ``inv_temperature=100``), ``diversity_weight``
    γ and ``entropy_weight`` (0.1) as in MAGVIT-v2. ``exact_codebook_entropy``: None enumerates the
    2^d codes for d ≤ 10 and uses the factorised per-bit upper bound above. ``sample_fraction < 1``
    averages the per-sample entropy over that fraction of the vectors and needs ``key``.
    """

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        self._check(z)
        z, dtype = to_float32(z)
        q = lfq(z)
        entropy = lfq_entropy_loss(z, temperature=self.temperature, diversity_weight=self.diversity_weight,
                                   sample_fraction=self.sample_fraction, exact=self.exact, key=key)
        return QuantizerOutput(q.z_q.astype(dtype), q.indices, self.entropy_weight * entropy,
                               losses.commitment_loss(z, q.codes, beta=1.0), jnp.zeros((), jnp.int32))

    def decode(self, indices: jax.Array) -> jax.Array:
        return lfq_indices_to_codes(indices, self.code_dim)


class BinarySphericalQuantizer(_BinaryQuantizer):
    """BSQ (Zhao et al., 2024): ``u = z/‖z‖``, ``ẑ = sign(u)/√d`` straight-through, with the entropy loss.

    Arguments as :class:`LookupFreeQuantizer`, except that the codebook entropy defaults to BSQ's
    factorised per-bit approximation (``exact_codebook_entropy=True`` enumerates the codes).
    """

    _exact_default = False

    def __call__(self, z: jax.Array, *, key: jax.Array | None = None) -> QuantizerOutput:
        self._check(z)
        z, dtype = to_float32(z)
        q = bsq(z)
        entropy = bsq_entropy_loss(z, temperature=self.temperature, diversity_weight=self.diversity_weight,
                                   sample_fraction=self.sample_fraction, exact=self.exact, key=key)
        commitment = losses.commitment_loss(l2_normalize(z), q.codes, beta=1.0)
        return QuantizerOutput(q.z_q.astype(dtype), q.indices, self.entropy_weight * entropy, commitment,
                               jnp.zeros((), jnp.int32))

    def decode(self, indices: jax.Array) -> jax.Array:
        return bsq_indices_to_codes(indices, self.code_dim)
