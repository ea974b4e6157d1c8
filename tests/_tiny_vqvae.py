"""A tiny VQ-VAE trained a few Adam steps around a given quantizer module (the quantizer tests' shared loop)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vqjax.nn import VQVAE


def train_tiny_vqvae(quantizer, steps: int) -> tuple[VQVAE, list[float]]:
    """``(model, losses)`` after ``steps`` jitted Adam steps (3e-3) on 8 random binary 28×28 images with the
    Bernoulli reconstruction, the codebook loss and 0.25 × the commitment loss."""
    model = VQVAE(in_channels=1, hidden=8, residual_hidden=4, num_residual=1, quantizer=quantizer,
                  rngs=nnx.Rngs(0))
    x = (jax.random.uniform(jax.random.key(0), (8, 28, 28, 1)) > 0.7).astype(jnp.float32)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    def loss_fn(m):
        out = m(x)
        rec = jnp.sum(optax.sigmoid_binary_cross_entropy(out.logits, x), axis=(1, 2, 3))
        return jnp.mean(rec + out.codebook_loss + 0.25 * out.commitment_loss)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    return model, [float(step(model, optimizer)) for _ in range(steps)]
