"""The rotation trick: a gradient estimator through vector quantization other than straight-through.

Fifty et al. (2024), "Restructuring Vector Quantization with the Rotation Trick" (arXiv:2410.06424).
For an encoder output ``z`` (``z_e``) and its code ``e``, with ``ẑ = z/||z||``, ``ê = e/||e||``::

    q̃ = sg[λ R] z,     λ = ||e|| / ||z||,     R = I - 2 r rᵀ + 2 ê ẑᵀ,     r = (ẑ + ê)/||ẑ + ê||

``R`` is the rotation in the plane of ``ẑ`` and ``ê`` that takes ``ẑ`` to ``ê`` (eq. 4.2 of the paper),
so ``λ R z = e``: the forward value is the code, as with straight-through, but the gradient reaching
``z`` is ``(λ R)ᵀ ∂L/∂q̃`` — rotated and rescaled as ``z`` was — instead of a copy of ``∂L/∂q̃``.
``R`` is applied to vectors (``R z = z - 2 r (r·z) + 2 ê (ẑ·z)``), never built as a ``D × D`` matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["rotation_trick"]

# ||z|| below this: the rotation is undefined (ẑ has no direction) and the gradient is copied as
# straight-through. ||ẑ + ê|| below it: z and e point in opposite directions (see rotation_trick).
_EPS = 1e-12


def _normalize(x: jax.Array, norm: jax.Array) -> jax.Array:
    """``x / norm`` where ``norm > _EPS``, else 0 (no NaN, no huge values)."""
    ok = norm > _EPS
    return jnp.where(ok, x / jnp.where(ok, norm, 1.0), 0.0)


def _rotation_delta(z_e: jax.Array, codes: jax.Array) -> jax.Array:
    """``y - sg[y]`` with ``y = sg[λ R] z_e`` (float32): value 0, Jacobian ``λ R`` with respect to ``z_e``."""
    wide = jnp.issubdtype(z_e.dtype, jnp.floating) and jnp.finfo(z_e.dtype).bits >= 32
    z = z_e.astype(z_e.dtype if wide else jnp.float32)  # bfloat16: computed in float32
    zs = jax.lax.stop_gradient(z)
    e = jax.lax.stop_gradient(codes).astype(z.dtype)
    z_norm = jnp.linalg.norm(zs, axis=-1, keepdims=True)
    e_norm = jnp.linalg.norm(e, axis=-1, keepdims=True)
    u, q = _normalize(zs, z_norm), _normalize(e, e_norm)  # ẑ, ê
    s = u + q
    r = _normalize(s, jnp.linalg.norm(s, axis=-1, keepdims=True))  # 0 when ê = -ẑ: R = I - 2 ẑ ẑᵀ
    moving = z_norm > _EPS
    lam = jnp.where(moving, e_norm / jnp.where(moving, z_norm, 1.0), 1.0)
    rotated = z - 2.0 * r * jnp.sum(r * z, axis=-1, keepdims=True) + 2.0 * q * jnp.sum(u * z, axis=-1, keepdims=True)
    y = jnp.where(moving, lam * rotated, z)  # z ≈ 0: straight-through (identity Jacobian)
    return y - jax.lax.stop_gradient(y)


def rotation_trick(z_e: jax.Array, codes: jax.Array) -> jax.Array:
    r"""The rotation trick ``q̃ = sg[λ R] z_e`` of Fifty et al. (2024), per vector of ``[..., D]``.

    ``λ = ||e|| / ||z_e||`` and ``R = I - 2 r rᵀ + 2 ê ẑᵀ`` with ``ẑ = z_e/||z_e||``,
    ``ê = e/||e||``, ``r = (ẑ + ê)/||ẑ + ê||``: the rotation taking ``ẑ`` to ``ê``, so
    ``λ R z_e = e``. Both are treated as constants (stop-gradient).

    Forward: exactly ``codes`` (computed as ``sg[codes] + (y - sg[y])`` with ``y = sg[λR] z_e``, so no
    rounding of ``λ R z_e``). Backward: ``∂q̃/∂z_e = λ R``; ``codes`` receive no gradient (train them
    with :func:`vqjax.losses.codebook_loss`, as with :func:`vqjax.quantizers.straight_through`). When
    ``e = z_e`` the Jacobian is the identity, as straight-through. ``R`` is applied to vectors,
    ``R z = z - 2 r (r·z) + 2 ê (ẑ·z)``: ``O(D)`` per vector, no ``D × D`` matrix. Computed in
    float32 for bfloat16 inputs.

    Degenerate cases, without NaN or infinities:

    - ``||z_e|| ≤ 1e-12`` (a zero encoder output): ``ẑ`` and ``λ`` are undefined; the gradient is
      copied unchanged (straight-through).
    - ``e = 0``: ``λ = 0``, so the gradient is 0 (the limit of ``λ R`` as ``||e|| → 0``).
    - ``e = -c z_e`` (``c > 0``, ``ẑ + ê = 0``): a rotation taking ``ẑ`` to ``-ẑ`` is not unique;
      ``r`` is set to 0, giving ``R = I - 2 ẑ ẑᵀ``, the reflection across the plane normal to ``ẑ``
      (orthogonal, ``R ẑ = ê``; the same matrix vector-quantize-pytorch's ``rotate_to`` uses there).

    Args:
      z_e: ``[..., D]`` encoder outputs.
      codes: ``[..., D]`` their codes ``e`` (e.g. :attr:`Quantized.codes`), same shape.

    Returns:
      ``[..., D]`` with the value of ``codes``, in the dtype ``result_type(z_e, codes)``.
    """
    z_e, codes = jnp.asarray(z_e), jnp.asarray(codes)
    if z_e.shape != codes.shape or z_e.ndim < 1:
        raise ValueError(
            f"`z_e` and `codes` must be [..., D] of the same shape; got {z_e.shape} and {codes.shape}."
        )
    dtype = jnp.result_type(z_e.dtype, codes.dtype)
    return jax.lax.stop_gradient(codes).astype(dtype) + _rotation_delta(z_e, codes).astype(dtype)
