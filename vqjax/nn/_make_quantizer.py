"""``make_quantizer``: any of the library's quantizer modules by name, from config-style keywords."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from vqjax.nn._codebook_variants import FactorizedVectorQuantizer, GroupedVectorQuantizer, SimVQ
from vqjax.nn._lookup_free import BinarySphericalQuantizer, LookupFreeQuantizer
from vqjax.nn._quantizers import (
    EMAVectorQuantizer,
    FiniteScalarQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)
from vqjax.nn._residual_variants import GroupedResidualVectorQuantizer, ResidualFSQ, ResidualLFQ
from vqjax.nn._stochastic import GumbelVectorQuantizer, StochasticVectorQuantizer

__all__ = ["QUANTIZERS", "make_quantizer"]

QUANTIZERS = ("vq", "ema", "fsq", "residual", "lfq", "bsq", "simvq", "factorized", "grouped", "stochastic",
              "gumbel", "residual_fsq", "residual_lfq", "grouped_residual")


def make_quantizer(
    kind: str,
    *,
    num_codes: int = 512,
    code_dim: int = 64,
    cosine: bool = False,
    rotation_trick: bool = False,
    affine: bool = False,
    sync_nu: float = 0.0,
    decay: float = 0.99,
    eps: float = 1e-5,
    dead_code_threshold: float = 0.0,
    fsq_levels: Sequence[int] = (8, 8, 8),
    lloyd_max: bool = False,
    fsq_range_loss: bool = False,
    num_stages: int = 4,
    residual_ema: bool = False,
    quantize_dropout: bool = False,
    shared_codebook: bool = False,
    groups: int = 2,
    bits: int = 10,
    entropy_weight: float = 0.1,
    diversity_weight: float = 1.0,
    temperature: float = 0.01,
    sample_fraction: float = 1.0,
    code_dim_low: int = 8,
    heads: int = 2,
    grouped_shared: bool = False,
    estimator: str = "straight_through",
    temperature_start: float = 1.0,
    temperature_end: float | None = None,
    anneal_steps: int | None = None,
    kl_weight: float | None = None,
    hard: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The quantizer named ``kind`` (one of :data:`QUANTIZERS`), from config-style keywords.

    ``"vq"``: :class:`VectorQuantizer` (``dead_code_threshold`` > 0: restarts of the learned codebook,
    usage averaged with ``decay``); ``"ema"``: :class:`EMAVectorQuantizer`; ``"fsq"``:
    :class:`FiniteScalarQuantizer` (``fsq_levels``, ``lloyd_max``, ``fsq_range_loss``; its code dimension is
    ``len(fsq_levels)``); ``"residual"``: :class:`ResidualVectorQuantizer` (``num_stages``,
    ``residual_ema``). ``rotation_trick`` (vq, ema, residual): the rotation trick instead of
    straight-through. ``affine``, ``sync_nu`` (vq only; set for another kind: a ValueError, not ignored):
    the affine codebook reparameterisation and the synchronised update of Huh et al. (2023).
    ``"lfq"`` / ``"bsq"``: :class:`LookupFreeQuantizer` / :class:`BinarySphericalQuantizer` with ``bits``
    binary channels (2^bits implicit codes) and their entropy loss (``entropy_weight``,
    ``diversity_weight``, ``temperature``, ``sample_fraction``); ``"simvq"``: :class:`SimVQ` (``num_codes``,
    ``code_dim``); ``"factorized"``: :class:`FactorizedVectorQuantizer` (``num_codes``, ``code_dim``,
    ``code_dim_low``); ``"grouped"``: :class:`GroupedVectorQuantizer` (``heads`` parts of ``code_dim / heads``
    channels, ``num_codes`` codes each; ``grouped_shared``: one codebook for all parts); ``"stochastic"``:
    :class:`StochasticVectorQuantizer` (``estimator``, ``hard``) and ``"gumbel"``: :class:`GumbelVectorQuantizer`
    (``hard``), both with τ annealed from ``temperature_start`` to ``temperature_end`` over ``anneal_steps`` and
    ``kl_weight`` (None: the module's default, 0 and 1); ``"residual_fsq"``: :class:`ResidualFSQ` (``fsq_levels``,
    ``num_stages``); ``"residual_lfq"``: :class:`ResidualLFQ` (``bits``, ``num_stages`` and the entropy loss's
    keywords, applied per stage); ``"grouped_residual"``: :class:`GroupedResidualVectorQuantizer` (``groups``
    parts of ``code_dim``, each a residual VQ of ``num_stages`` stages with the ``"residual"`` keywords).
    ``quantize_dropout`` (the four residual kinds: SoundStream's random number of stages per example in
    training) and ``shared_codebook`` (``"residual"``, ``"grouped_residual"``: one codebook for all the
    stages). Keywords a kind does not use are ignored.
    """
    if kind == "vq":
        return VectorQuantizer(num_codes, code_dim, cosine=cosine, rotation_trick=rotation_trick,
                               dead_code_threshold=dead_code_threshold, decay=decay, affine=affine,
                               sync_nu=sync_nu, rngs=rngs)
    if kind in QUANTIZERS and (affine or sync_nu):
        raise ValueError(f"`affine` and `sync_nu` need kind='vq' (a codebook trained by gradient); got kind={kind!r} "
                         f"with affine={affine!r}, sync_nu={sync_nu!r}.")
    if kind == "ema":
        return EMAVectorQuantizer(num_codes, code_dim, decay=decay, eps=eps, dead_code_threshold=dead_code_threshold,
                                  cosine=cosine, rotation_trick=rotation_trick, rngs=rngs)
    if kind == "fsq":
        return FiniteScalarQuantizer(fsq_levels, lloyd_max=lloyd_max, range_loss=fsq_range_loss)
    if kind == "residual":
        return ResidualVectorQuantizer(num_codes, code_dim, num_stages, ema=residual_ema, decay=decay, eps=eps,
                                       dead_code_threshold=dead_code_threshold, rotation_trick=rotation_trick,
                                       shared_codebook=shared_codebook, quantize_dropout=quantize_dropout, rngs=rngs)
    if kind == "grouped_residual":
        return GroupedResidualVectorQuantizer(num_codes, code_dim, num_stages, groups, ema=residual_ema, decay=decay,
                                              eps=eps, dead_code_threshold=dead_code_threshold,
                                              rotation_trick=rotation_trick, shared_codebook=shared_codebook,
                                              quantize_dropout=quantize_dropout, rngs=rngs)
    if kind == "residual_fsq":
        return ResidualFSQ(fsq_levels, num_stages, quantize_dropout=quantize_dropout)
    if kind == "residual_lfq":
        return ResidualLFQ(bits, num_stages, entropy_weight=entropy_weight, diversity_weight=diversity_weight,
                           temperature=temperature, sample_fraction=sample_fraction, quantize_dropout=quantize_dropout)
    if kind in ("lfq", "bsq"):
        cls = LookupFreeQuantizer if kind == "lfq" else BinarySphericalQuantizer
        return cls(bits, entropy_weight=entropy_weight, diversity_weight=diversity_weight, temperature=temperature,
                   sample_fraction=sample_fraction)
    if kind == "simvq":
        return SimVQ(num_codes, code_dim, rngs=rngs)
    if kind == "factorized":
        return FactorizedVectorQuantizer(num_codes, code_dim, code_dim_low=code_dim_low, rngs=rngs)
    if kind == "grouped":
        return GroupedVectorQuantizer(num_codes, code_dim, heads=heads, shared=grouped_shared, rngs=rngs)
    if kind in ("stochastic", "gumbel"):
        kw = {"temperature": temperature_start, "temperature_end": temperature_end, "anneal_steps": anneal_steps,
              "hard": hard, **({} if kl_weight is None else {"kl_weight": kl_weight})}
        if kind == "gumbel":
            return GumbelVectorQuantizer(num_codes, code_dim, **kw, rngs=rngs)
        return StochasticVectorQuantizer(num_codes, code_dim, estimator=estimator, **kw, rngs=rngs)
    raise ValueError(f"`kind` must be one of {QUANTIZERS}; got {kind!r}.")
