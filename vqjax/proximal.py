r"""The group lasso and its proximal operator: exact zeros for whole groups of weights.

oi-VAE (Ainsworth, Foti, Lee & Fox, 2018) puts the hierarchical Bayesian group lasso on the
columns ``w_{g,j} ∈ R^p`` of each group's latent-to-group matrix ``W_g ∈ R^{p×L}``; at its MAP
it is the penalty

    Ω(W) = λ Σ_{g,j} ||w_{g,j}||₂ .

``Ω`` is not differentiable where a column is zero, and a gradient step on it never lands on
zero. Proximal gradient descent (ISTA) takes the gradient step on the smooth part ``f`` only and
then applies the proximal operator of ``η Ω``, block soft-thresholding (Parikh & Boyd, 2014, §6.5.4):

    prox_{ηλ||·||₂}(w) = (1 - ηλ / ||w||₂)₊ · w ,

which sets every column with ``||w|| ≤ ηλ`` to exactly zero and shrinks the others by ``ηλ``
along their direction.

- :func:`group_norms`, :func:`group_lasso_penalty`, :func:`group_soft_threshold`: pure functions.
- :func:`group_lasso_prox`: the same as an ``optax.GradientTransformation`` placed after any
  optimizer: ``optax.chain(optax.sgd(η), group_lasso_prox(λ, η))`` is exactly ISTA;
  after Adam it is the usual proximal-Adam step (the threshold uses the step size η, the gradient
  step is Adam's). Wrap it in ``optax.masked`` to apply it to some parameters only.

The group axis: ``axis`` names the axes a group spans (default ``-2``: the ``p`` rows of a
column of ``W [..., p, L]``); every other axis indexes groups.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "GroupLassoProxState",
    "group_lasso_penalty",
    "group_lasso_prox",
    "group_norms",
    "group_soft_threshold",
]

Axis = int | tuple[int, ...]


def _axes(w: jax.Array, axis: Axis, name: str = "w") -> tuple[int, ...]:
    axes = tuple(axis) if isinstance(axis, tuple | list) else (axis,)
    if not axes or any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
        raise ValueError(f"`axis` must be an int or a non-empty tuple of ints; got {axis!r}.")
    if any(not -w.ndim <= a < w.ndim for a in axes):
        raise ValueError(f"`axis`={axis!r} is out of range for `{name}` of shape {w.shape}.")
    norm = tuple(sorted(a % w.ndim for a in axes))
    if len(set(norm)) != len(norm):
        raise ValueError(f"`axis`={axis!r} names an axis twice.")
    return norm


def _check_float(w: jax.Array, name: str = "w") -> None:
    if not jnp.issubdtype(jnp.asarray(w).dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a floating-point array; got dtype {jnp.asarray(w).dtype}.")


def _safe_norm(w: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``||w||₂`` over ``axes`` (kept), in float32 at least, with gradient 0 (not NaN) at ``w = 0``.

    Computed as ``a·||w/a||`` with ``a = max|w|``, so that a group of tiny entries (below ~1e-19 in
    float32, whose squares underflow) still has its true, nonzero norm.
    """
    w32 = w if jnp.finfo(w.dtype).bits >= 32 else w.astype(jnp.float32)
    a = jnp.max(jnp.abs(w32), axis=axes, keepdims=True)
    positive = a > 0
    safe_a = jnp.where(positive, a, 1.0)
    sq = jnp.sum(jnp.square(w32 / safe_a), axis=axes, keepdims=True)
    return jnp.where(positive, safe_a * jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def group_norms(w: jax.Array, *, axis: Axis = -2) -> jax.Array:
    r"""``||w_group||₂`` for every group: ``w`` with the ``axis`` axes reduced away.

    For ``W [G, p, L]`` and the default ``axis=-2``: ``[G, L]``, entry ``(g, j)`` the norm of the
    column ``w_{g,j} = W[g, :, j]`` (latent ``j`` → group ``g``). Float32 for lower-precision inputs;
    the gradient at a zero group is 0 (a subgradient) rather than NaN.
    """
    _check_float(w)
    axes = _axes(w, axis)
    return jnp.squeeze(_safe_norm(w, axes), axis=axes)


def group_lasso_penalty(w: jax.Array, *, strength: float | jax.Array, axis: Axis = -2) -> jax.Array:
    r"""``Ω(w) = λ Σ_groups ||w_group||₂``, a scalar (``λ`` = ``strength``).

    The negative log of the group-lasso prior up to a constant (the MAP form of the hierarchical
    Bayesian group lasso of oi-VAE). Not differentiable at a zero group (the gradient given there is
    the subgradient 0): minimise it with :func:`group_soft_threshold`, not with its gradient.
    """
    return strength * jnp.sum(group_norms(w, axis=axis))


def group_soft_threshold(w: jax.Array, threshold: float | jax.Array, *, axis: Axis = -2) -> jax.Array:
    r"""The proximal operator of ``t Σ ||w_group||₂``, block soft-thresholding, with ``t`` = ``threshold``:

        prox(w)_group = (1 - t / ||w_group||₂)₊ · w_group

    ``argmin_u ½||u - w||² + t Σ_groups ||u_group||₂``. Groups with ``||w_group|| ≤ t`` become
    exactly 0; the others keep their direction and lose ``t`` of their length. Same shape and dtype
    as ``w``; ``t ≥ 0`` (a traced ``t`` is not checked).
    """
    _check_float(w)
    axes = _axes(w, axis)
    if isinstance(threshold, int | float) and threshold < 0:
        raise ValueError(f"`threshold` must be >= 0; got {threshold}.")
    norm = _safe_norm(w, axes)
    scale = jnp.maximum(1.0 - threshold / jnp.where(norm > 0, norm, 1.0), 0.0)  # a zero group stays 0
    return (w.astype(scale.dtype) * scale).astype(w.dtype)


def _check_scalar(value, name: str, expected: str, ok) -> None:
    """A Python, NumPy or JAX real scalar; its value is checked when it is concrete (not traced, as
    under ``optax.inject_hyperparams``)."""
    if isinstance(value, bool | str | bytes) or value is None:
        raise ValueError(f"`{name}` must be {expected}; got {value!r}.")
    try:
        arr = jnp.asarray(value)
    except TypeError:
        raise ValueError(f"`{name}` must be {expected}; got {value!r}.") from None
    if arr.ndim != 0 or not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)) \
            or arr.dtype == jnp.bool_:
        raise ValueError(f"`{name}` must be {expected}; got {value!r}.")
    try:
        concrete = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not ok(concrete):
        raise ValueError(f"`{name}` must be {expected}; got {value!r}.")


class GroupLassoProxState(NamedTuple):
    count: jax.Array  # [] int32: updates done, for a learning-rate schedule


def group_lasso_prox(strength: float, learning_rate: float | optax.Schedule, *,
                     axis: Axis = -2) -> optax.GradientTransformation:
    r"""An optax transformation that turns the incoming step into a proximal gradient step on ``Ω``.

    Given the update ``u`` another transformation proposes (e.g. ``-η ∇f`` from ``optax.sgd(η)``),
    it returns ``prox_{η_t λ}(w + u) - w`` for every leaf ``w`` of the parameters, so that
    ``optax.apply_updates`` lands on ``prox_{η_t λ}(w + u)``: exact zeros for weak groups.

    Args:
      strength: λ ≥ 0, on the same scale as the loss being minimised (e.g. per example when the
        loss is a batch mean).
      learning_rate: η, a float or an optax schedule of the step count (the same one the gradient
        step uses).
      axis: the axes of one group in every leaf (default ``-2``: columns of ``[..., p, L]``).

    Needs ``params`` in ``update``. Use ``optax.masked(group_lasso_prox(...), mask)`` to apply it to
    some leaves only, and ``optax.inject_hyperparams(group_lasso_prox, static_args=("axis",))`` to
    change λ or η during training.
    """
    _check_scalar(strength, "strength", "a number >= 0", lambda v: v >= 0)
    if not callable(learning_rate):
        _check_scalar(learning_rate, "learning_rate", "a number > 0 or an optax schedule", lambda v: v > 0)

    _axes(jnp.zeros((1,) * 32), axis)  # a malformed axis fails here, not at the first update

    def init(params):
        del params
        return GroupLassoProxState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("group_lasso_prox needs `params` in `update(updates, state, params)`.")
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        threshold = eta * strength

        def step(u, w):
            if u is None:
                return None
            moved = w + u
            return (group_soft_threshold(moved, threshold, axis=axis) - w).astype(u.dtype)

        new = jax.tree.map(step, updates, params, is_leaf=lambda x: x is None)
        return new, GroupLassoProxState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)
