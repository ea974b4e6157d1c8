r"""The variational information bottleneck (Alemi, Fischer, Dillon & Murphy, 2017).

The information bottleneck of the notes, ``max I(z; Y) - β I(x; z)``, made tractable: a
stochastic encoder ``q(z|x)``, a variational classifier ``q(y|z)`` and a variational marginal
``r(z)`` (here ``N(0, I)``) give (eq. 6 of the paper)::

    I(z; Y) - β I(x; z) ≥ E[log q(y|z)] + H(Y) - β E_x KL(q(z|x) || r(z))

so the loss to minimise per example is ``-log q(y|z) + β KL(q(z|x) || r(z))``. The KL term is an
upper bound on the rate ``I(x; z)``; ``H(Y) - cross-entropy`` is a lower bound on ``I(z; Y)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vqjax._checks import check_class_targets, check_nonnegative, check_same_shape
from vqjax.losses._likelihoods import categorical_log_likelihood

__all__ = ["VIBLoss", "vib_loss"]


class VIBLoss(NamedTuple):
    """Per-example terms of the VIB objective; ``loss`` is what is minimised."""

    loss: jax.Array  # cross_entropy + β·rate
    cross_entropy: jax.Array  # -log q(y|z)
    rate: jax.Array  # KL(q(z|x) || r(z)) ≥ I(x; z)


def vib_loss(logits: jax.Array, labels: jax.Array, kl: jax.Array, *, beta: float) -> VIBLoss:
    r"""VIB loss ``-log q(y|z) + β KL(q(z|x) || r(z))`` per example.

    Args:
      logits: ``[..., C]`` classifier logits computed from a sample ``z ~ q(z|x)``.
      labels: ``[...]`` integer labels in ``[0, C)``.
      kl: ``[...]`` ``KL(q(z|x) || r(z))``, e.g. :func:`gaussian_kl`.
      beta: β ≥ 0, the price of one nat of rate (Alemi et al. sweep 1e-8 … 1).

    Returns:
      :class:`VIBLoss` of ``[...]`` arrays.
    """
    logits, labels, kl = jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(kl)
    check_class_targets(logits, labels, "labels")
    check_same_shape(labels, kl, "labels", "kl")
    check_nonnegative(beta, "beta")
    ce = -categorical_log_likelihood(logits, labels, event_ndim=0)
    rate = kl.astype(ce.dtype)
    return VIBLoss(ce + beta * rate, ce, rate)
