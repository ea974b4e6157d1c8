r"""Affine codebook reparameterisation and the synchronised update of Huh et al. (2023).

Huh, Cheung, Agrawal & Isola (ICML 2023), "Straightening Out the Straight-Through Estimator:
Overcoming Optimization Challenges in Vector Quantized Networks" (arXiv:2305.08842). Shapes: the
codebook ``e`` is ``[K, D]``, encoder outputs ``z`` and their codes ``c_k`` are ``[..., D]``.

**Affine reparameterisation.** The codes the quantizer uses are a shared, learned, per-channel
affine map of the free codebook::

    c_k = s ⊙ e_k + b        (s, b ∈ R^D learned; s = 1, b = 0 at the start: c = e)

With plain codes the codebook loss ``||sg[z] - e_k||²`` reaches only the codes some ``z`` selected:
the other codes never move while the encoder's output distribution drifts ("internal codebook
covariate shift"), fall out of its support and die (index collapse). The gradients of ``s`` and
``b`` sum over every selected code, so each step also moves *every* code — the unused ones too —
towards the encoder outputs, matching the codebook's mean and spread to theirs.

**Synchronised update.** Straight-through copies the task gradient ``g = ∂L_task/∂z_q`` to the
encoder only; the codebook learns from the codebook loss alone, i.e. from where the encoder output
*was*, not from where the task gradient is taking it. The synchronised update also feeds the
codes the task gradient, scaled by ``ν``::

    z_q = z + sg[c - z] + ν c - sg[ν c]          (forward: z_q = c)
    ∂z_q/∂z = I,    ∂z_q/∂c = ν I                (the codebook gets ν g besides its codebook loss)

``ν = 0`` is plain straight-through; ``ν > 0`` also steps each selected code along ``-ν g``, the way the
task gradient pushes its encoder output, so code and output move together: the paper's
"synchronized commitment loss" (eq. 21 of
the authors' draft, as vector-quantize-pytorch cites it). This is the expression of the authors'
``vqtorch`` (``VectorQuant.straight_through_approximation``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vqjax.quantizers import _rotation, _vq

__all__ = ["affine_codebook", "synchronized_update"]


def _float(x: jax.Array) -> jax.Array:
    """``x`` in float32 unless it is float32 or wider already (float64 stays float64)."""
    wide = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits >= 32
    return x if wide else x.astype(jnp.float32)


def affine_codebook(codebook: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    r"""The affine-reparameterised codes ``c_k = scale ⊙ e_k + shift`` of Huh et al. (2023).

    ``scale`` and ``shift`` are shared by all ``K`` codes and learned per channel (initialise them to
    1 and 0, so that ``c = e``). The nearest-code search, the codes fed forward and the codebook loss
    all use ``c``: the loss's gradient reaches the selected rows ``e_k`` (as ``scale ⊙ ∂L/∂c_k``) and,
    through the shared parameters, ``∂L/∂scale = Σ_n ∂L/∂c_{k_n} ⊙ e_{k_n}`` and
    ``∂L/∂shift = Σ_n ∂L/∂c_{k_n}`` — which move every code, also those no vector selected, towards
    the encoder outputs (the paper's remedy for index collapse).

    Not vector-quantize-pytorch's ``affine_param``: there ``scale`` and ``shift`` are not learned but
    set from EMA statistics, ``c = (e - μ_e) σ_z/σ_e + μ_z`` with running means and standard deviations
    of the codebook (``μ_e``, ``σ_e``) and of the batches of encoder outputs (``μ_z``, ``σ_z``), state
    updated in training mode (the form of ``vqtorch``'s ``AffineTransform(use_running_statistics=True)``,
    which its ``VectorQuant`` does not use). This is the learned variant, the authors' ``vqtorch``
    ``VectorQuant(affine_lr=α > 0)``, which writes ``scale = 1 + α s'``, ``shift = α b'`` with ``s' = b' = 0``
    at the start: the same codes, with ``∂L/∂s' = α ∂L/∂scale`` — as training ``scale``, ``shift`` here with
    an Adam learning rate ``α`` times larger (``α²`` times with plain SGD).

    Args:
      codebook: ``[K, D]`` free codes ``e``.
      scale: ``[D]`` per-channel scale ``s``.
      shift: ``[D]`` per-channel shift ``b``.

    Returns:
      ``[K, D]`` codes ``c``, float32 (float64 inputs stay float64), differentiable in all three.
    """
    codebook, scale, shift = jnp.asarray(codebook), jnp.asarray(scale), jnp.asarray(shift)
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(f"`codebook` must be [K, D] with K >= 1; got shape {codebook.shape}.")
    dim = codebook.shape[1]
    for name, v in (("scale", scale), ("shift", shift)):
        if v.shape != (dim,):
            raise ValueError(f"`{name}` must be [D] with D = codebook.shape[1] = {dim}; got shape {v.shape}.")
    return _float(scale)[None, :] * _float(codebook) + _float(shift)[None, :]


def check_nu(nu, name: str = "nu") -> None:
    """``nu``: a real scalar, finite and >= 0 when concrete (a traced value is not checked); a ValueError
    naming ``name`` otherwise."""
    expected = "a finite real number >= 0 (0: plain straight-through)"
    if isinstance(nu, bool | str | bytes) or nu is None:
        raise ValueError(f"`{name}` must be {expected}; got {nu!r}.")
    try:
        arr = jnp.asarray(nu)
    except TypeError:
        raise ValueError(f"`{name}` must be {expected}; got {nu!r}.") from None
    if arr.ndim != 0 or arr.dtype == jnp.bool_ or not (
            jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be {expected} (a scalar); got {nu!r}.")
    try:
        value = float(nu)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"`{name}` must be {expected}; got {nu!r}.")


def _is_zero(nu) -> bool:
    try:
        return float(nu) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


def synchronized_update(z: jax.Array, codes: jax.Array, nu: float | jax.Array, *,
                        rotation_trick: bool = False) -> jax.Array:
    r"""The synchronised update of Huh et al. (2023), their "synchronized commitment loss":
    straight-through, plus ``ν`` times the task gradient for the codes.

    ::

        z_q = z + sg[c - z] + ν c - sg[ν c]

    Forward: exactly ``codes`` (computed as ``sg[c] + (z - sg[z]) + (ν c - sg[ν c])``, whose last two
    terms are exactly 0, so no rounding of ``z + (c - z)``). Backward, for an upstream gradient
    ``g = ∂L/∂z_q``: the encoder output gets ``∂L/∂z = g`` (straight-through, unchanged by ``ν``) and the
    codes get ``∂L/∂c = ν g`` — on top of whatever other loss (the codebook loss) also reaches them.
    For a codebook ``e [K, D]`` with ``c_n = e_{k_n}`` this is ``∂L/∂e_k = ν Σ_{n: k_n = k} g_n``;
    through :func:`affine_codebook`, ``ν Σ_{n: k_n = k} scale ⊙ g_n`` for ``e_k``, ``ν Σ_n g_n ⊙ e_{k_n}``
    for ``scale`` and ``ν Σ_n g_n`` for ``shift``. ``ν = 0`` is :func:`vqjax.quantizers.straight_through`
    exactly (the same function is called). The paper's ``ν`` is in ``[0, 1]`` ("pessimistic" 0 to
    "optimistic" 1); its ``vqtorch`` examples use up to 2; any ``ν >= 0`` is accepted.

    vector-quantize-pytorch's ``sync_update_v`` is *not* this rule: it adds
    ``v (q - sg[q])`` to its already straight-through output ``q = z + sg[c - z]``, whose gradient
    path leads to ``z`` only, so its encoder gets ``(1 + v) g`` and its codebook nothing from the task
    loss (see ``tests/test_peer_affine_sync.py``). Here the codebook gets ``ν g``, as in the
    authors' ``vqtorch`` and the paper.

    With ``rotation_trick=True`` the encoder's path is :func:`vqjax.quantizers.rotation_trick`
    (``∂z_q/∂z = λ R``) instead of straight-through; the codes' ``ν`` term is the same.

    Args:
      z: ``[..., D]`` encoder outputs.
      codes: ``[..., D]`` their codes ``c`` (e.g. :attr:`Quantized.codes`, differentiable in the codebook).
      nu: ``ν >= 0``, a Python number or a scalar array (a traced ``ν`` is not checked).
      rotation_trick: the encoder's gradient through the rotation trick (keyword-only).

    Returns:
      ``[..., D]`` with the value of ``codes``, in the dtype ``result_type(z, codes)``; the ``ν`` term is
      computed in float32 for narrower inputs.
    """
    z, codes = jnp.asarray(z), jnp.asarray(codes)
    if z.shape != codes.shape or z.ndim < 1:
        raise ValueError(
            f"`z` and `codes` must be [..., D] of the same shape; got {z.shape} and {codes.shape}."
        )
    check_nu(nu)
    dtype = jnp.result_type(z.dtype, codes.dtype)
    if rotation_trick:
        out = _rotation.rotation_trick(z, codes)
    else:
        out = _vq.straight_through(z, codes).astype(dtype)
    if _is_zero(nu):
        return out
    c = _float(codes)
    scaled = jnp.asarray(nu, c.dtype) * c
    return out + (scaled - jax.lax.stop_gradient(scaled)).astype(dtype)
