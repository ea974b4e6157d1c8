r"""A classifier through a stochastic bottleneck: the deep VIB of Alemi et al. (2017).

``x -> q(z|x) = N(μ, diag σ²) -> z -> q(y|z) = softmax(W z + b)``. The paper's MNIST model: an
MLP encoder 784-1024-1024 to ``2·K`` outputs with K = 256 latents, and a linear softmax decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax import losses
from vqjax.nn._precision import compute_dtype, upcast

__all__ = ["VIBClassifier"]


class VIBClassifier(nnx.Module):
    """``x [B, *image] -> logits [B, C]`` through a sampled ``z ~ q(z|x)``.

    Args:
      encoder: maps ``x`` to ``(μ, log σ²)``, each ``[B, L]`` (e.g. :class:`MLPEncoder`).
      latents: L.
      num_classes: C.
      dtype: the classifier's computation dtype (give the encoder its own; parameters stay float32).
    """

    def __init__(self, encoder: nnx.Module, *, latents: int, num_classes: int, rngs: nnx.Rngs,
                 dtype: DTypeLike = jnp.float32):
        self.encoder = encoder
        self.latents, self.num_classes = latents, num_classes
        self.classifier = nnx.Linear(latents, num_classes, dtype=compute_dtype(dtype), rngs=rngs)

    def __call__(self, x: jax.Array, *, key: jax.Array, num_samples: int = 1):
        """``(logits [S, B, C], mean [B, L], log_variance [B, L], kl [B])`` for S samples of ``z``."""
        mean, log_variance = self.encoder(x)
        z = losses.reparameterize(mean, log_variance, key=key, num_samples=num_samples)
        return self.classifier(z), mean, log_variance, losses.gaussian_kl(mean, log_variance)

    def predict(self, x: jax.Array, *, key: jax.Array, num_samples: int = 12) -> jax.Array:
        """``[B, C]`` class probabilities averaged over S samples of ``z`` (Alemi et al. use 12)."""
        logits, *_ = self(x, key=key, num_samples=num_samples)
        return jnp.mean(jax.nn.softmax(upcast(logits), axis=-1), axis=0)
