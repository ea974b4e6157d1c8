"""Test models with NumPy-drawn parameters, shared by the prior and VQ-VAE-2 tests."""

import jax.numpy as jnp
import numpy as np
from flax import nnx


def numpy_init(make, seed):
    """The module ``make()`` builds, with NumPy-drawn parameters (He-normal kernels, zero biases,
    standard-normal embeddings and codebooks).

    No test here depends on the initialisation, and JAX's eager initialisers compile one program
    per parameter shape: ~10 s per model on a busy CPU, against a fraction of a second here."""
    graphdef, state = nnx.split(nnx.eval_shape(make))
    r = np.random.default_rng(seed)
    flat = []
    for path, v in nnx.to_flat_state(state):
        if path[-1] == "bias":
            x = np.zeros(v.shape)
        elif path[-1] in ("embedding", "codebook"):
            x = r.normal(size=v.shape)
        else:
            x = r.normal(size=v.shape) * np.sqrt(2 / np.prod(v.shape[:-1]))
        flat.append((path, v.replace(jnp.asarray(x.astype(v.dtype)))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
