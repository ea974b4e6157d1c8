"""Trace-time argument checks shared by the pure core and the modules (cost nothing at run time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape; got {name_a}.shape={a.shape} "
            f"and {name_b}.shape={b.shape}."
        )


def check_class_targets(logits: jax.Array, targets: jax.Array, name: str) -> None:
    """``logits [..., C]`` against integer ``targets [...]`` called ``name``."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"`logits` must have the shape of `{name}` plus a trailing class axis; got "
            f"logits.shape={logits.shape}, {name}.shape={targets.shape}."
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"`{name}` must be integer classes; got dtype {targets.dtype}.")


def check_event_ndim(x: jax.Array, event_ndim: int, name: str) -> None:
    if not isinstance(event_ndim, int) or event_ndim < 0 or event_ndim > x.ndim:
        raise ValueError(
            f"`event_ndim` must be an int in [0, {name}.ndim={x.ndim}]; got {event_ndim!r}."
        )


def check_positive_int(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")


def check_nonnegative(value, name: str) -> None:
    """Rejects a negative Python number; traced values are the caller's responsibility."""
    if isinstance(value, jax.core.Tracer):
        return
    if jnp.ndim(value) == 0 and not float(value) >= 0:
        raise ValueError(f"`{name}` must be >= 0; got {value!r}.")


def sum_event(x: jax.Array, event_ndim: int) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(x.ndim - event_ndim, x.ndim)))


def float_dtype(*xs: jax.Array):
    """The result dtype: at least float32 (bfloat16 inputs are summed in float32).

    Not ``jnp.promote_types(..., float32)``: under strict dtype promotion that raises for
    bfloat16 and float64 inputs instead of choosing float32 / float64.
    """
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


def check_weights(weights, shape: tuple[int, ...], what: str) -> jax.Array:
    """A padding mask / nonnegative weights ``weights`` broadcast to ``shape`` as float32.

    ``ValueError`` naming ``weights`` and ``what`` it must broadcast to (e.g. ``"z_e.shape[:-1]"``)
    if its shape does not, or if it is not real or bool.
    """
    w = jnp.asarray(weights)
    shape = tuple(shape)
    try:
        ok = jnp.broadcast_shapes(w.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"`weights` must broadcast to {what} = {shape}; got shape {w.shape}.")
    if not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer) or w.dtype == bool):
        raise ValueError(f"`weights` must be real or bool; got dtype {w.dtype}.")
    return jnp.broadcast_to(w.astype(jnp.float32), shape)
