"""A small MNIST classifier: the fixed feature network of the sample-quality scores.

``MNISTClassifier``: ``x [B, 28, 28, 1] -> logits [B, 10]``; two 3×3 convolutions (32, 64
channels) each followed by ReLU and 2×2 average pooling, a 128-unit ReLU layer (the
``features`` of the Fréchet distance, as Inception's pool layer is for FID) and a linear layer.

The trained weights ship with the package (``mnist_classifier.npz``, float16): trained once on the
60,000 MNIST training digits by ``python -m experiments.mnist_classifier``, so every user scores
samples with the same network and gets comparable numbers. :func:`fit_classifier` is also the
training routine of the Classification Accuracy Score.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vqjax._checks import float_dtype

__all__ = [
    "SHIPPED_WEIGHTS",
    "MNISTClassifier",
    "features",
    "fit_classifier",
    "load_classifier",
    "predict",
    "save_classifier",
]

SHIPPED_WEIGHTS = os.path.join(os.path.dirname(__file__), "mnist_classifier.npz")


class MNISTClassifier(nnx.Module):
    """``x [B, 28, 28, 1]`` in [0, 1] -> ``logits [B, 10]``; ``features(x)`` -> ``[B, 128]``.

    ``dtype``: the computation dtype (e.g. ``jnp.bfloat16`` to train it in mixed precision; the
    parameters and the returned logits stay float32; the shipped network computes in float32).
    """

    def __init__(self, *, num_classes: int = 10, rngs: nnx.Rngs, dtype=jnp.float32):
        kw = {"dtype": jnp.dtype(dtype), "rngs": rngs}
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="SAME", **kw)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="SAME", **kw)
        self.hidden = nnx.Linear(7 * 7 * 64, 128, **kw)
        self.out = nnx.Linear(128, num_classes, **kw)

    def features(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (28, 28, 1):
            raise ValueError(f"`x` must be [B, 28, 28, 1] images in [0, 1]; got shape {x.shape}.")
        pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        h = pool(jax.nn.relu(self.conv1(x)))
        h = pool(jax.nn.relu(self.conv2(h)))
        return jax.nn.relu(self.hidden(h.reshape(h.shape[0], -1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        logits = self.out(self.features(x))
        return logits.astype(float_dtype(logits))  # float32 logits for the cross-entropy, whatever `dtype`


def _batches(step, model, images: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(step(model, jnp.asarray(images[i:i + batch_size], jnp.float32)))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


@jax.jit
def _predict(model: MNISTClassifier, x: jax.Array) -> jax.Array:
    return jnp.argmax(model(x), axis=-1)


@jax.jit
def _features(model: MNISTClassifier, x: jax.Array) -> jax.Array:
    return model.features(x)


def predict(model: MNISTClassifier, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """``images [N, 28, 28, 1]`` -> predicted classes ``[N]``."""
    return _batches(_predict, model, images, batch_size)


def features(model: MNISTClassifier, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """``images [N, 28, 28, 1]`` -> ``[N, 128]`` penultimate-layer features."""
    return _batches(_features, model, images, batch_size)


def fit_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> MNISTClassifier:
    """Train a fresh :class:`MNISTClassifier` on ``images [N, 28, 28, 1]`` (in [0, 1]) and
    ``labels [N]`` with Adam (cosine-decayed rate), cross-entropy, ``steps`` minibatches drawn
    epoch by epoch in a ``seed``-shuffled order. Deterministic for a given ``seed``."""
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    if images.ndim != 4 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"`images` must be [N, 28, 28, 1]; got shape {images.shape}.")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"`labels` must be [N] = {images.shape[:1]}; got shape {labels.shape}.")
    if len(images) < batch_size:
        raise ValueError(f"`images` has {len(images)} examples, fewer than batch_size={batch_size}.")
    model = MNISTClassifier(rngs=nnx.Rngs(seed))
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    per_epoch = len(images) // batch_size
    order = rng.permutation(len(images))
    for t in range(steps):
        if t and t % per_epoch == 0:
            order = rng.permutation(len(images))
        idx = order[(t % per_epoch) * batch_size:(t % per_epoch + 1) * batch_size]
        params, opt_state = step(params, opt_state, jnp.asarray(images[idx]), jnp.asarray(labels[idx]))
    return nnx.merge(graphdef, params)


def save_classifier(model: MNISTClassifier, path: str) -> None:
    """Write the parameters to ``path`` (``.npz``, float16: the shipped weights are these values)."""
    flat = {"/".join(map(str, k)): np.asarray(v, np.float16) for k, v in nnx.to_flat_state(nnx.state(model))}
    np.savez_compressed(path, **flat)


def load_classifier(path: str | None = None) -> MNISTClassifier:
    """The classifier with the shipped weights (or those saved at ``path``), in float32."""
    path = SHIPPED_WEIGHTS if path is None else path
    if not os.path.exists(path):
        raise FileNotFoundError(f"No classifier weights at {path}; train them with "
                                "`python -m experiments.mnist_classifier --config.data.idx_dir=/path/to/mnist`.")
    model = nnx.eval_shape(lambda: MNISTClassifier(rngs=nnx.Rngs(0)))  # shapes only: no initialisation
    state = nnx.state(model)
    with np.load(path) as saved:
        flat = []
        for k, v in nnx.to_flat_state(state):
            name = "/".join(map(str, k))
            if name not in saved or saved[name].shape != v.shape:
                raise ValueError(f"{path} is not an MNISTClassifier checkpoint: parameter {name} "
                                 f"{'is missing' if name not in saved else f'has shape {saved[name].shape}'}, "
                                 f"expected {v.shape}.")
            flat.append((k, v.replace(jnp.asarray(saved[name], jnp.float32))))
    nnx.update(model, nnx.from_flat_state(flat))
    return model
