"""``make_quantizer``: any of the library's quantizer modules by name, from config-style keywords."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from vqjax.nn._codebook_variants import FactorizedVectorQuantizer, SimVQ
from vqjax.nn._lookup_free import BinarySphericalQuantizer, LookupFreeQuantizer
from vqjax.nn._quantizers import (
    EMAVectorQuantizer,
    FiniteScalarQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)

__all__ = ["QUANTIZERS", "make_quantizer"]

QUANTIZERS = ("vq", "ema", "fsq", "residual", "lfq", "bsq", "simvq", "factorized")


def make_quantizer(
    kind: str,
    *,
    num_codes: int = 512,
    code_dim: int = 64,
    cosine: bool = False,
    rotation_trick: bool = False,
    decay: float = 0.99,
    eps: float = 1e-5,
    dead_code_threshold: float = 0.0,
    fsq_levels: Sequence[int] = (8, 8, 8),
    lloyd_max: bool = False,
    fsq_range_loss: bool = False,
    num_stages: int = 4,
    residual_ema: bool = False,
    bits: int = 10,
    entropy_weight: float = 0.1,
    diversity_weight: float = 1.0,
    temperature: float = 0.01,
    sample_fraction: float = 1.0,
    code_dim_low: int = 8,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The quantizer named ``kind`` (one of :data:`QUANTIZERS`), from config-style keywords.

    ``"vq"``: :class:`VectorQuantizer`; ``"ema"``: :class:`EMAVectorQuantizer`; ``"fsq"``:
    :class:`FiniteScalarQuantizer` (``fsq_levels``, ``lloyd_max``, ``fsq_range_loss``; its code dimension is
    ``len(fsq_levels)``); ``"residual"``: :class:`ResidualVectorQuantizer` (``num_stages``,
    ``residual_ema``). ``rotation_trick`` (vq, ema, residual): the rotation trick instead of
    straight-through. ``"lfq"`` / ``"bsq"``: :class:`LookupFreeQuantizer` / :class:`BinarySphericalQuantizer`
    with ``bits`` binary channels (2^bits implicit codes) and their entropy loss (``entropy_weight``,
    ``diversity_weight``, ``temperature``, ``sample_fraction``); ``"simvq"``: :class:`SimVQ` (``num_codes``,
    ``code_dim``); ``"factorized"``: :class:`FactorizedVectorQuantizer` (``num_codes``, ``code_dim``,
    ``code_dim_low``). Keywords a kind does not use are ignored.
    """
    if kind == "vq":
        return VectorQuantizer(num_codes, code_dim, cosine=cosine, rotation_trick=rotation_trick, rngs=rngs)
    if kind == "ema":
        return EMAVectorQuantizer(num_codes, code_dim, decay=decay, eps=eps, dead_code_threshold=dead_code_threshold,
                                  cosine=cosine, rotation_trick=rotation_trick, rngs=rngs)
    if kind == "fsq":
        return FiniteScalarQuantizer(fsq_levels, lloyd_max=lloyd_max, range_loss=fsq_range_loss)
    if kind == "residual":
        return ResidualVectorQuantizer(num_codes, code_dim, num_stages, ema=residual_ema, decay=decay, eps=eps,
                                       dead_code_threshold=dead_code_threshold, rotation_trick=rotation_trick,
                                       rngs=rngs)
    if kind in ("lfq", "bsq"):
        cls = LookupFreeQuantizer if kind == "lfq" else BinarySphericalQuantizer
        return cls(bits, entropy_weight=entropy_weight, diversity_weight=diversity_weight, temperature=temperature,
                   sample_fraction=sample_fraction)
    if kind == "simvq":
        return SimVQ(num_codes, code_dim, rngs=rngs)
    if kind == "factorized":
        return FactorizedVectorQuantizer(num_codes, code_dim, code_dim_low=code_dim_low, rngs=rngs)
    raise ValueError(f"`kind` must be one of {QUANTIZERS}; got {kind!r}.")
