"""Ancestral sampling from an autoregressive prior over code grids, as one jitted loop.

``c_ij ~ Categorical(softmax(logits_ij(c_<ij) / T))`` for the ``H·W`` positions in raster order,
inside ``jax.lax.fori_loop`` over a fixed-shape ``[B, H, W]`` grid: one compilation per
``(prior, shape)``, the whole batch in parallel, no Python loop over positions.

For a two-stack prior (:class:`vqjax.nn.GatedPixelCNN`) the loop runs row by row: the vertical
stack, whose row ``i`` sees only rows ``< i``, is computed once per row, and only the
horizontal stack of the current row is recomputed for each code of it, about ``H`` times less
work than the whole network per code (and the same draws: the test checks it against
``_sample_full``, which any causal prior can use).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax._checks import check_positive_int

__all__ = ["sample_codes"]


def _draw(logits: jax.Array, key: jax.Array, temperature: jax.Array) -> jax.Array:
    """``[B, K]`` logits -> ``[B]`` codes from ``softmax(logits / T)``; ``T = 0``: the argmax."""
    logits = logits.astype(jnp.float32)
    tiny = jnp.finfo(jnp.float32).tiny
    drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, tiny))
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "shape"))
def _sample_rows(graphdef, state, key, labels, cond, temperature, *, shape):
    """Row by row: the vertical stack once per row, the horizontal stack on that row per code."""
    prior = nnx.merge(graphdef, state)
    _, height, width = shape

    def row_body(i, codes):
        to_h = [jax.lax.dynamic_index_in_dim(t, i, axis=1) for t in
                prior.vertical_pass(prior.embed(codes), labels=labels, cond=cond)]  # [B, 1, W, 2C]

        def col_body(j, row):  # row: [B, 1, W] codes of row i
            logits = prior.horizontal_logits(prior.embed(row), to_h)[:, 0]  # [B, W, K]
            c = _draw(jax.lax.dynamic_index_in_dim(logits, j, axis=1, keepdims=False),
                      jax.random.fold_in(key, i * width + j), temperature)
            return jax.lax.dynamic_update_slice(row, c[:, None, None], (0, 0, j))

        row = jax.lax.fori_loop(0, width, col_body, jax.lax.dynamic_index_in_dim(codes, i, axis=1))
        return jax.lax.dynamic_update_slice(codes, row, (0, i, 0))

    return jax.lax.fori_loop(0, height, row_body, jnp.zeros(shape, jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef", "shape"))
def _sample_full(graphdef, state, key, labels, cond, temperature, *, shape):
    """Any causal prior: the whole network on the whole grid for every position."""
    prior = nnx.merge(graphdef, state)
    width = shape[2]

    def body(p, codes):
        i, j = p // width, p % width
        logits = jax.lax.dynamic_index_in_dim(prior(codes, labels=labels, cond=cond), i, axis=1, keepdims=False)
        c = _draw(jax.lax.dynamic_index_in_dim(logits, j, axis=1, keepdims=False), jax.random.fold_in(key, p),
                  temperature)
        return jax.lax.dynamic_update_slice(codes, c[:, None, None], (0, i, j))

    return jax.lax.fori_loop(0, shape[1] * width, body, jnp.zeros(shape, jnp.int32))


def sample_codes(
    prior: nnx.Module,
    shape: tuple[int, int, int],
    *,
    key: jax.Array,
    labels: jax.Array | None = None,
    cond: jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
) -> jax.Array:
    r"""Draw ``[B, H, W]`` code grids from ``prior`` (e.g. :class:`vqjax.nn.GatedPixelCNN`).

    Position ``(i, j)`` in raster order is drawn from ``softmax(logits_ij / T)`` given the codes
    already drawn; ``T = temperature`` (a traced value: changing it does not recompile). ``T = 0``
    takes the most likely code at each step (greedy decoding), the limit of ``T → 0``.

    Args:
      prior: a module mapping ``codes [B, H, W]`` (and ``labels``, ``cond``) to ``[B, H, W, K]``
        logits, causal in raster order.
      shape: ``(B, H, W)``.
      key: a ``jax.random.key``; the draw is a deterministic function of it.
      labels: ``[B]`` classes for a class-conditional prior.
      cond: ``[B, H, W, C_s]`` conditioning map for a spatially conditioned prior.
      temperature: ``T >= 0``.

    Returns:
      ``[B, H, W]`` int32 codes.
    """
    if len(shape) != 3:
        raise ValueError(f"`shape` must be (B, H, W); got {shape!r}.")
    for name, value in zip(("shape[0] (B)", "shape[1] (H)", "shape[2] (W)"), shape, strict=True):
        check_positive_int(value, name)
    if not isinstance(temperature, jax.Array) and temperature < 0:
        raise ValueError(f"`temperature` must be >= 0; got {temperature}.")
    if hasattr(prior, "check_inputs"):
        prior.check_inputs(tuple(shape), labels, cond)
    graphdef, state = nnx.split(prior)
    labels = None if labels is None else jnp.asarray(labels, jnp.int32)
    sample = _sample_rows if hasattr(prior, "vertical_pass") else _sample_full
    return sample(graphdef, state, key, labels, cond, jnp.asarray(temperature, jnp.float32), shape=tuple(shape))
