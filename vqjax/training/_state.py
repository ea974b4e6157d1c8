"""The train state: a plain pytree of a run (or, stacked on a leading axis, of many runs)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class TrainState(NamedTuple):
    """Everything a step needs and a checkpoint saves; a plain pytree.

    In a sweep every leaf gains a leading runs axis ``[R, ...]`` (:func:`stack`).
    """

    step: jax.Array  # [] int32
    params: Any  # nnx.State of the nnx.Param variables
    rest: Any  # nnx.State of any other variables (batch statistics, EMA codebooks, ...)
    opt_state: Any  # optax state
    key: jax.Array  # [2] uint32 raw PRNG key data (jax.random.key_data)


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, *, seed: int):
    """Split ``model`` into ``(graphdef, TrainState)`` with a fresh optimizer state."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = jax.random.key_data(jax.random.key(seed))
    state = TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params), key)
    return graphdef, state


def step_key(state: TrainState) -> jax.Array:
    """The key of the next training step: ``fold_in(seed key, step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


_EVAL_STREAM = 0x7FFFFFFF  # evaluation keys: a stream apart from the training steps'


def eval_key(state: TrainState) -> jax.Array:
    """One key for every evaluation batch and checkpoint of a run (see :func:`make_eval_step`)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), _EVAL_STREAM)


def stack(trees: list) -> Any:
    """Runs' pytrees of equal structure -> one pytree with a leading runs axis ``[R, ...]`` (host arrays)."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Run ``index`` of a stacked pytree (host arrays)."""
    return jax.tree.map(lambda x: jax.device_get(x)[index], tree)


def all_finite(tree: Any) -> jax.Array:
    """``[]`` bool: every leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
