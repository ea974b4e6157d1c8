r"""Vector quantizer design: the generalized Lloyd algorithm (Linde, Buzo & Gray, 1980), i.e. k-means.

Shapes: data ``x`` is ``[N, D]`` (``N`` training vectors of dimension ``D``), optional
``weights`` are ``[N]``, the codebook ``e`` is ``[K, D]``.

A vector quantizer ``Q(x) = e_k`` for ``x ∈ R_k`` with mean squared error
``Δ = Σ_i w_i ||x_i - Q(x_i)||² / Σ_i w_i`` is optimal only if both conditions hold
(Lloyd, 1957/1982; Gray & Neuhoff, 1998, §III):

1. *Nearest neighbour*: for the given codes, each region is the Voronoi cell
   ``R_k = {x : ||x - e_k|| ≤ ||x - e_j|| for all j}`` — convex polytopes whose faces lie on the
   perpendicular bisectors between codes.
2. *Centroid*: for the given regions, each code is the (weighted) mean of its cell,
   ``e_k = E[x | x ∈ R_k] = Σ_{i ∈ R_k} w_i x_i / Σ_{i ∈ R_k} w_i``.

The generalized Lloyd algorithm alternates the two; neither step can increase ``Δ``, so the
distortion is non-increasing and the iteration stops at a fixed point (a local optimum).
Voronoi assignment is :func:`vqjax.quantizers.nearest_code`, the same blocked search the VQ-VAE
uses; centroids are weighted segment sums, ``O(N·D)`` and never an ``N × K`` one-hot. Memory is
``O(N·D + K·D + block_size·K)``, so millions of vectors fit.

References:
  S. P. Lloyd, "Least squares quantization in PCM", Bell Labs memo 1957; IEEE Trans. IT 28 (1982).
  Y. Linde, A. Buzo, R. M. Gray, "An algorithm for vector quantizer design", IEEE Trans. Comm. 28 (1980).
  R. M. Gray, D. L. Neuhoff, "Quantization", IEEE Trans. IT 44 (1998).
  D. Arthur, S. Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import quantizers

__all__ = [
    "GeneralizedLloydResult",
    "generalized_lloyd",
    "kmeans_plusplus",
]

_INIT_METHODS = ("kmeans++", "split")
# LBG splitting: a code e becomes e ± ε·σ·g, g ~ N(0, I), σ the per-dimension RMS error of its cell.
# The bisector of the two halves passes through e whatever ε is; ε only has to beat float rounding.
_SPLIT_EPS = 0.05


class GeneralizedLloydResult(NamedTuple):
    """Output of :func:`generalized_lloyd`."""

    codebook: jax.Array  # [K, D] float32 (float64 for float64 x) final codes
    indices: jax.Array  # [N] int32 Voronoi cell of each vector under `codebook`
    distortion: jax.Array  # [] final Σ w ||x - e_k||² / Σ w (squared error per vector)
    history: jax.Array  # [max_iter] distortion after each iteration; NaN after the stop
    num_iterations: jax.Array  # [] int32 Lloyd iterations run (valid entries of `history`)
    converged: jax.Array  # [] bool: stopped because the relative decrease fell to `tol`


class _Cells(NamedTuple):
    sums: jax.Array  # [K, D] Σ_{i ∈ R_k} w_i x_i
    weight: jax.Array  # [K] Σ_{i ∈ R_k} w_i
    distortion: jax.Array  # [K] Σ_{i ∈ R_k} w_i ||x_i - e_k||²


class _State(NamedTuple):
    codebook: jax.Array
    indices: jax.Array
    cells: _Cells
    distortion: jax.Array
    iteration: jax.Array
    history: jax.Array
    converged: jax.Array


# --------------------------------------------------------------------------- checks


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _asarray(a) -> jax.Array:
    """``jnp.asarray(a)``, kept concrete for a concrete ``a`` even inside a ``jax.jit`` trace."""
    if isinstance(a, jax.core.Tracer):
        return a
    with jax.ensure_compile_time_eval():
        return jnp.asarray(a)


def _all(predicate, a) -> bool:
    """``all(predicate(a))`` for a concrete ``a``, evaluated now even inside a ``jax.jit`` trace."""
    with jax.ensure_compile_time_eval():
        return bool(jnp.all(predicate(a)))


def _check_data(x) -> jax.Array:
    x = _asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"`x` must be [N, D] with N >= 1 vectors of dimension D >= 1; got shape {x.shape}. "
            "Reshape [..., D] inputs with x.reshape(-1, D); use jax.vmap for several data sets."
        )
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"`x` must be real numbers; got dtype {x.dtype}.")
    if _is_concrete(x) and not _all(jnp.isfinite, x):
        raise ValueError("`x` must be finite; it holds NaN or inf values.")
    return x


def _check_num_codes(num_codes, n: int) -> None:
    if isinstance(num_codes, bool) or not isinstance(num_codes, (int, np.integer)):
        raise ValueError(f"`num_codes` must be an int; got {num_codes!r}.")
    if not 1 <= num_codes <= n:
        raise ValueError(f"`num_codes` must be in [1, N] with N = x.shape[0] = {n}; got {num_codes}.")


def _check_weights(weights, n: int, dtype) -> jax.Array | None:
    if weights is None:
        return None
    weights = _asarray(weights)
    if weights.shape != (n,):
        raise ValueError(f"`weights` must be [N] = ({n},); got shape {weights.shape}.")
    if _is_concrete(weights):
        if not _all(jnp.isfinite, weights):
            raise ValueError("`weights` must be finite; they hold NaN or inf values.")
        if not _all(lambda v: v >= 0, weights):
            raise ValueError("`weights` must be >= 0; got a negative weight.")
        if not _all(lambda v: jnp.sum(v) > 0, weights):
            raise ValueError("`weights` must have a positive sum; got all zeros.")
    return weights.astype(dtype)


def _check_key(key, init_name: str):
    if key is None:
        raise ValueError(f"`key` is required for init={init_name!r}; pass key=jax.random.key(seed).")
    return key


def _float_dtype(x: jax.Array):
    return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


# --------------------------------------------------------------------------- Lloyd steps


def _assign(x, w, codebook, block_size) -> tuple[jax.Array, _Cells]:
    """Nearest-neighbour condition: Voronoi cells of ``codebook`` and their statistics, O(N·D)."""
    k = codebook.shape[0]
    idx = quantizers.nearest_code(x, codebook, block_size=block_size)
    err = jnp.sum(jnp.square(x - codebook[idx]), axis=-1)

    def seg(v):
        return jax.ops.segment_sum(v, idx, num_segments=k)

    return idx, _Cells(seg(w[:, None] * x), seg(w), seg(w * err))


def _mean_distortion(cells: _Cells) -> jax.Array:
    total = jnp.sum(cells.weight)
    return jnp.sum(cells.distortion) / jnp.maximum(total, jnp.finfo(total.dtype).tiny)


def _fill_empty(codebook, x, w, idx, empty):
    """Give each empty cell a distinct data point with the largest weighted error.

    The score is ``w_i ||x_i - e'_{k(i)}||²`` against the *updated* centroids ``e'``. The j-th
    empty cell (in index order) takes the j-th highest-scoring point if its score is positive,
    and otherwise keeps its code. A moved code sits on its point, whose error becomes 0, so the
    distortion of the next assignment is at most that of the centroid step.
    """
    k = codebook.shape[0]
    score = w * jnp.sum(jnp.square(x - codebook[idx]), axis=-1)
    top_score, top_idx = jax.lax.top_k(score, k)  # k <= N is checked
    rank = jnp.clip(jnp.cumsum(empty.astype(jnp.int32)) - 1, 0, k - 1)
    move = empty & (top_score[rank] > 0)
    return jnp.where(move[:, None], x[top_idx[rank]], codebook)


def _centroid_step(x, w, codebook, idx, cells: _Cells) -> jax.Array:
    """Centroid condition for the current cells, with the empty-cell rule of :func:`_fill_empty`."""
    full = cells.weight > 0
    safe = jnp.where(full, cells.weight, jnp.ones_like(cells.weight))
    new = jnp.where(full[:, None], cells.sums / safe[:, None], codebook)
    return jax.lax.cond(jnp.all(full), lambda c: c, lambda c: _fill_empty(c, x, w, idx, ~full), new)


def _lloyd(x, w, codebook, tol, *, max_iter: int, block_size) -> _State:
    """Lloyd iterations from ``codebook`` until the relative decrease is <= tol or max_iter."""
    idx, cells = _assign(x, w, codebook, block_size)
    state = _State(
        codebook,
        idx,
        cells,
        _mean_distortion(cells),
        jnp.zeros((), jnp.int32),
        jnp.full((max_iter,), jnp.nan, codebook.dtype),
        jnp.zeros((), jnp.bool_),
    )
    if max_iter == 0:
        return state

    def cond(s: _State):
        return (s.iteration < max_iter) & ~s.converged

    def body(s: _State):
        new_codebook = _centroid_step(x, w, s.codebook, s.indices, s.cells)
        new_idx, new_cells = _assign(x, w, new_codebook, block_size)
        dist = _mean_distortion(new_cells)
        converged = (s.distortion - dist) <= tol * s.distortion
        history = s.history.at[s.iteration].set(dist)
        return _State(new_codebook, new_idx, new_cells, dist, s.iteration + 1, history, converged)

    return jax.lax.while_loop(cond, body, state)


# --------------------------------------------------------------------------- initialisations


def _sample(u: jax.Array, p: jax.Array) -> jax.Array:
    """Index drawn with probability ∝ ``p`` (``p >= 0``) by inverse CDF, from two uniforms ``u [2]``.

    Two levels, a block of ⌈√N⌉ entries by its total and then an entry within it, so each
    cumulative sum has only √N terms (float32 cumulative sums over millions of terms would blur
    small probabilities). ``O(N)`` work; an entry of probability 0 is never drawn.
    """
    n = p.shape[0]
    size = math.isqrt(n - 1) + 1 if n > 1 else 1
    blocks = -(-n // size)
    pb = jnp.pad(p, (0, blocks * size - n)).reshape(blocks, size)

    def draw(u, q):
        c = jnp.cumsum(q)
        j = jnp.sum((c <= u * c[-1]).astype(jnp.int32))  # searchsorted(side="right")
        # u·total may round up to the total: fall back to the last entry with mass.
        last = jnp.max(jnp.where(q > 0, jnp.arange(q.shape[0]), 0))
        return jnp.minimum(j, last)

    b = draw(u[0], jnp.sum(pb, axis=1))
    j = draw(u[1], pb[b])
    return jnp.clip(b * size + j, 0, n - 1).astype(jnp.int32)


def _kmeans_plusplus_indices(x, w, key, num_codes: int) -> jax.Array:
    """k-means++ (D² sampling) with a running minimum-distance vector: O(N·K·D) time, O(N) memory."""
    u = jax.random.uniform(key, (num_codes, 2), w.dtype)
    first = _sample(u[0], w)
    min_dist = jnp.sum(jnp.square(x - x[first]), axis=-1)
    chosen = jnp.zeros((num_codes,), jnp.int32).at[0].set(first)

    def body(k, carry):
        chosen, min_dist = carry
        p = w * min_dist
        # Fewer distinct (positive-weight) points than codes: fall back to sampling by weight.
        p = jnp.where(jnp.sum(p) > 0, p, w)
        j = _sample(u[k], p)
        min_dist = jnp.minimum(min_dist, jnp.sum(jnp.square(x - x[j]), axis=-1))
        return chosen.at[k].set(j), min_dist

    chosen, _ = jax.lax.fori_loop(1, num_codes, body, (chosen, min_dist))
    return chosen


def _split_init(x, w, key, tol, *, num_codes: int, max_iter: int, block_size) -> jax.Array:
    """LBG splitting: from the centroid, split the highest-distortion codes, Lloyd after each split."""
    dim = x.shape[1]
    codebook = (jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w))[None]
    _, cells = _assign(x, w, codebook, block_size)
    noise = jax.random.normal(key, (num_codes, dim), codebook.dtype)
    size = 1
    while size < num_codes:
        m = min(size, num_codes - size)
        _, parents = jax.lax.top_k(cells.distortion, m)
        count = jnp.maximum(cells.weight[parents], jnp.finfo(codebook.dtype).tiny)
        sigma = jnp.sqrt(cells.distortion[parents] / count / dim)
        delta = _SPLIT_EPS * sigma[:, None] * noise[size : size + m]
        centre = codebook[parents]
        codebook = jnp.concatenate([codebook.at[parents].set(centre + delta), centre - delta])
        size += m
        if size < num_codes:
            state = _lloyd(x, w, codebook, tol, max_iter=max_iter, block_size=block_size)
            codebook, cells = state.codebook, state.cells
    return codebook


# --------------------------------------------------------------------------- public API


def _fit(x, weights, key, init_codebook, tol, *, num_codes, init_method, max_iter, block_size):
    dtype = _float_dtype(x)
    x = x.astype(dtype)
    w = jnp.ones(x.shape[:1], dtype) if weights is None else weights.astype(dtype)
    tol = jnp.asarray(tol, dtype)
    # Work on centred data: the expanded-form distances and the segment sums lose less precision.
    mean = jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w)
    xc = x - mean
    if init_method == "kmeans++":
        codebook = xc[_kmeans_plusplus_indices(x, w, key, num_codes)]
    elif init_method == "split":
        codebook = _split_init(xc, w, key, tol, num_codes=num_codes, max_iter=max_iter, block_size=block_size)
    else:
        codebook = init_codebook.astype(dtype) - mean
    s = _lloyd(xc, w, codebook, tol, max_iter=max_iter, block_size=block_size)
    return GeneralizedLloydResult(
        s.codebook + mean, s.indices, s.distortion, s.history, s.iteration, s.converged
    )


_fit_jit = jax.jit(_fit, static_argnames=("num_codes", "init_method", "max_iter", "block_size"))


def generalized_lloyd(
    x: jax.Array,
    num_codes: int,
    *,
    key: jax.Array | None = None,
    init: str | jax.Array = "kmeans++",
    max_iter: int = 100,
    tol: float = 1e-4,
    weights: jax.Array | None = None,
    block_size: int | None = None,
) -> GeneralizedLloydResult:
    r"""Design a ``K``-code vector quantizer for ``x [N, D]``: generalized Lloyd / LBG / k-means.

    Each iteration applies the two optimality conditions (see the module docstring):

    1. nearest neighbour — ``k(i) = argmin_k ||x_i - e_k||²``
       (:func:`vqjax.quantizers.nearest_code`, blocked);
    2. centroid — ``e_k ← Σ_{k(i)=k} w_i x_i / Σ_{k(i)=k} w_i`` (``jax.ops.segment_sum``, O(N·D)).

    The distortion ``Δ = Σ_i w_i ||x_i - e_{k(i)}||² / Σ_i w_i`` (squared error per vector,
    summed over the ``D`` coordinates) is measured after every iteration from the assignment
    and never increases, up to float rounding. The loop (a ``jax.lax.while_loop``) stops when
    ``(Δ_prev - Δ) <= tol · Δ_prev`` or after ``max_iter`` iterations.

    *Empty cells* (zero total weight) cannot take a centroid. Rule: after the centroid step,
    the j-th empty cell takes the data point with the j-th largest weighted error
    ``w_i ||x_i - e'_{k(i)}||²`` to the new centroids, if that error is positive, and keeps its
    code otherwise. The point it takes is then coded exactly, so the rule never increases the
    distortion, never divides by zero, and puts idle codes where the error is largest.

    Initialisations (``init``):

    * ``"kmeans++"`` — D² seeding (Arthur & Vassilvitskii, 2007): the first code is a data point
      drawn ∝ ``w``, each next one a point drawn ∝ ``w_i · min_j ||x_i - e_j||²``. ``K`` distinct
      data points whenever ``x`` has ``K`` distinct positive-weight points. O(N·K·D) time,
      O(N) extra memory.
    * ``"split"`` — LBG splitting (Linde, Buzo & Gray, 1980): start from the centroid; repeatedly
      split the codes with the largest cell distortion (all of them while ``2·size <= K``) into
      ``e ± ε·σ·g`` (``g ~ N(0, I)`` from ``key``, ``σ`` the cell's RMS error per dimension,
      ``ε = 0.05``) and run Lloyd (same ``max_iter``, ``tol``) after each split, until ``K``
      codes. ``K`` need not be a power of two.
    * an array ``[K, D]`` — the initial codebook itself (``key`` is then not needed).

    Work is ``O(max_iter · N·K·D)`` and memory ``O(N·D + K·D + block_size·K)``: the search runs in
    row blocks and the centroids are segment sums. Runs under ``jax.jit`` (``num_codes``,
    ``init`` as a name, ``max_iter`` and ``block_size`` static) and ``jax.vmap`` (over data
    sets, weights, keys or initial codebooks). The Lloyd map is piecewise constant in ``x``: there
    is no useful gradient.

    Args:
      x: ``[N, D]`` training vectors (float32 math; float64 if ``x`` is float64 under x64).
      num_codes: ``K``, with ``1 <= K <= N``.
      key: ``jax.random.key`` for ``"kmeans++"`` and ``"split"``.
      init: ``"kmeans++"``, ``"split"`` or an initial codebook ``[K, D]``.
      max_iter: at most this many Lloyd iterations (``>= 0``; 0 returns the initial codebook
        and its cells).
      tol: stop once the relative decrease of the distortion is ``<= tol`` (``>= 0``).
      weights: optional ``[N]`` non-negative weights (e.g. probabilities or counts).
      block_size: rows per nearest-code search block; ``None`` lets
        :func:`~vqjax.quantizers.nearest_code` choose.

    Returns:
      :class:`GeneralizedLloydResult`: ``codebook [K, D]``, ``indices [N]`` (the Voronoi cells
      of the final codebook), ``distortion []`` (mean squared error per vector of the final
      codebook), ``history [max_iter]`` (distortion after iteration ``t``, NaN from
      ``num_iterations`` on), ``num_iterations []``, ``converged []``.

    Raises:
      ValueError: if ``x`` is not ``[N, D]`` or (when concrete) not finite, ``num_codes`` is not
        in ``[1, N]``, ``weights`` are not ``[N]``, negative, non-finite or all zero, ``init`` is
        an unknown name or a codebook of the wrong shape, ``key`` is missing, or ``max_iter``,
        ``tol`` or ``block_size`` are out of range. Value checks run only on concrete arrays.
    """
    x = _check_data(x)
    n, dim = x.shape
    _check_num_codes(num_codes, n)
    num_codes = int(num_codes)
    dtype = _float_dtype(x)
    weights = _check_weights(weights, n, dtype)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"`max_iter` must be an int >= 0; got {max_iter!r}.")
    if _is_concrete(tol) and not float(tol) >= 0:
        raise ValueError(f"`tol` must be >= 0; got {tol!r}.")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"`block_size` must be a positive int or None; got {block_size!r}.")
    init_codebook = None
    if isinstance(init, str):
        if init not in _INIT_METHODS:
            raise ValueError(f"`init` must be one of {_INIT_METHODS} or a [K, D] codebook; got {init!r}.")
        init_method = init
        key = _check_key(key, init)
    else:
        init_codebook = _asarray(init)
        if init_codebook.shape != (num_codes, dim):
            raise ValueError(
                f"`init` as a codebook must be [K, D] = ({num_codes}, {dim}); "
                f"got shape {init_codebook.shape}."
            )
        if _is_concrete(init_codebook) and not _all(jnp.isfinite, init_codebook):
            raise ValueError("`init` codebook must be finite; it holds NaN or inf values.")
        init_method, key = "array", None
    return _fit_jit(
        x,
        weights,
        key,
        init_codebook,
        tol,
        num_codes=num_codes,
        init_method=init_method,
        max_iter=int(max_iter),
        block_size=block_size,
    )


def kmeans_plusplus(
    x: jax.Array, num_codes: int, *, key: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    r"""k-means++ seeding (Arthur & Vassilvitskii, 2007): ``K`` data points by D² sampling.

    The first code is ``x_i`` drawn with probability ∝ ``w_i``; each next one is drawn with
    probability ∝ ``w_i · min_j ||x_i - e_j||²`` over the codes chosen so far. The expected
    distortion of the seeding alone is within ``8 (ln K + 2)`` of the optimum. Points are
    distinct whenever ``x`` has ``K`` distinct positive-weight points (a chosen point has
    probability 0 afterwards). Sequential; a running ``[N]`` minimum-distance vector keeps memory
    at ``O(N)`` beyond ``x``. Each draw is an inverse-CDF lookup in two levels of ``√N`` entries
    (``O(N)`` work, two uniforms).

    Args:
      x: ``[N, D]`` data.
      num_codes: ``K`` in ``[1, N]``.
      key: ``jax.random.key``.
      weights: optional ``[N]`` non-negative weights.

    Returns:
      ``[K, D]`` rows of ``x`` (same dtype), in the order drawn.
    """
    x = _check_data(x)
    _check_num_codes(num_codes, x.shape[0])
    dtype = _float_dtype(x)
    weights = _check_weights(weights, x.shape[0], dtype)
    key = _check_key(key, "kmeans++")
    idx = _kmeans_plusplus_jit(x, weights, key, num_codes=int(num_codes))
    return x[idx]


def _kmeans_plusplus_fit(x, weights, key, *, num_codes):
    dtype = _float_dtype(x)
    xf = x.astype(dtype)
    w = jnp.ones(x.shape[:1], dtype) if weights is None else weights.astype(dtype)
    return _kmeans_plusplus_indices(xf, w, key, num_codes)


_kmeans_plusplus_jit = jax.jit(_kmeans_plusplus_fit, static_argnames=("num_codes",))
