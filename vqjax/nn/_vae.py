r"""The variational autoencoder (Kingma & Welling, 2014) as Flax NNX modules.

Encoders map ``x [B, H, W, C]`` to the parameters ``(μ, log σ²)``, each ``[B, L]``, of
``q(z|x) = N(μ, diag σ²)``; decoders map ``z [B, L]`` to the logits (Bernoulli) or mean
(Gaussian) of ``p(x|z)``, ``[B, H, W, C]``. :class:`VAE` joins a pair and computes the ELBO, the
importance-weighted bound and samples through the pure functions of :mod:`vqjax.losses`.

- :class:`MLPEncoder` / :class:`MLPDecoder`: the Flax VAE example's network (one hidden layer of
  500 ReLU units, 20 latents).
- :class:`ConvEncoder` / :class:`ConvDecoder`: two 4×4 stride-2 convolutions each way.

Each encoder and decoder takes a keyword-only ``dtype``, its computation dtype (e.g. ``jnp.bfloat16``;
parameters stay float32); :class:`VAE` computes its likelihoods, KL and bounds in float32 whatever
the dtype of the networks' outputs (:mod:`vqjax.nn._precision`).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from vqjax import losses
from vqjax.nn._images import MIN_LOG_SCALE, check_divisible, check_downsample, logistic_parameters
from vqjax.nn._layers import SubpixelConvTranspose
from vqjax.nn._precision import compute_dtype, upcast

__all__ = ["VAE", "VAE_LIKELIHOODS", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "VAEOutput"]

VAE_LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
_MIN_LOG_SCALE = MIN_LOG_SCALE  # as PixelCNN++ (-7): a logistic narrower than e^-7 of the [0, 1] range is one bin


class MLPEncoder(nnx.Module):
    """``x [B, *image_shape] -> (μ, log σ²) [B, L]``: flatten, ReLU layers of ``hidden`` units, two linear heads.

    ``hidden`` is one width (the Flax example: 500) or a sequence of widths (VIB: ``(1024, 1024)``).
    """

    def __init__(self, image_shape: tuple[int, ...], latents: int = 20, *,
                 hidden: int | tuple[int, ...] = 500, rngs: nnx.Rngs, dtype: DTypeLike = jnp.float32):
        self.image_shape = tuple(image_shape)
        dt = compute_dtype(dtype)
        widths = (math.prod(image_shape), *((hidden,) if isinstance(hidden, int) else hidden))
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dt, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.mean = nnx.Linear(widths[-1], latents, dtype=dt, rngs=rngs)
        self.log_variance = nnx.Linear(widths[-1], latents, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return self.mean(h), self.log_variance(h)


class MLPDecoder(nnx.Module):
    """``z [B, L] -> logits [B, *image_shape]``: ``hidden`` ReLU units and a linear output."""

    def __init__(self, image_shape: tuple[int, ...], latents: int = 20, *, hidden: int = 500, rngs: nnx.Rngs,
                 dtype: DTypeLike = jnp.float32):
        self.image_shape = tuple(image_shape)
        dt = compute_dtype(dtype)
        self.hidden = nnx.Linear(latents, hidden, dtype=dt, rngs=rngs)
        self.out = nnx.Linear(hidden, math.prod(image_shape), dtype=dt, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(z))).reshape(*z.shape[:-1], *self.image_shape)


def _check_image_shape(image_shape, downsample: int = 2) -> tuple[int, int, int]:
    check_downsample(downsample)
    if len(image_shape) != 3:
        raise ValueError(f"`image_shape` must be (H, W, C); got {image_shape!r}.")
    check_divisible(image_shape, downsample, "image_shape")
    return tuple(image_shape)


class ConvEncoder(nnx.Module):
    """``x [B, H, W, C] -> (μ, log σ²) [B, L]``: ``d = downsample`` 4×4/2 convolutions (default 2) to
    ``H/2^d × W/2^d × 2·hidden``, a linear head (``d = 1``: the second convolution is 3×3, stride 1)."""

    def __init__(self, image_shape: tuple[int, int, int], latents: int = 20, *, hidden: int = 32, rngs: nnx.Rngs,
                 dtype: DTypeLike = jnp.float32, downsample: int = 2):
        h, w, c = _check_image_shape(image_shape, downsample)
        self.image_shape, self.downsample = (h, w, c), downsample
        dt = compute_dtype(dtype)
        self.conv1 = nnx.Conv(c, hidden, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt, rngs=rngs)
        if downsample >= 2:
            self.conv2 = nnx.Conv(hidden, 2 * hidden, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt, rngs=rngs)
        else:
            self.conv2 = nnx.Conv(hidden, 2 * hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        if downsample > 2:  # absent by default: the default's parameters unchanged
            self.down = nnx.List([nnx.Conv(2 * hidden, 2 * hidden, (4, 4), 2, padding=((1, 1), (1, 1)), dtype=dt,
                                           rngs=rngs) for _ in range(downsample - 2)])
        f = 2**downsample
        self.head = nnx.Linear((h // f) * (w // f) * 2 * hidden, 2 * latents, dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        for layer in self.down if self.downsample > 2 else ():
            h = jax.nn.relu(layer(h))
        mean, log_variance = jnp.split(self.head(h.reshape(h.shape[0], -1)), 2, axis=-1)
        return mean, log_variance


class ConvDecoder(nnx.Module):
    """``z [B, L] -> logits [B, H, W, C]``: a linear map to ``H/2^d × W/2^d × 2·hidden``, ``d = downsample``
    4×4/2 transposed convolutions (default 2; ``d = 1``: the first is a 3×3 convolution)."""

    def __init__(self, image_shape: tuple[int, int, int], latents: int = 20, *, hidden: int = 32, rngs: nnx.Rngs,
                 dtype: DTypeLike = jnp.float32, downsample: int = 2):
        h, w, c = _check_image_shape(image_shape, downsample)
        self.image_shape, self.downsample = (h, w, c), downsample
        f = 2**downsample
        self.start = (h // f, w // f, 2 * hidden)
        dt = compute_dtype(dtype)
        self.project = nnx.Linear(latents, math.prod(self.start), dtype=dt, rngs=rngs)
        if downsample > 2:  # absent by default: the default's parameters unchanged
            self.up = nnx.List([SubpixelConvTranspose(2 * hidden, 2 * hidden, rngs=rngs, dtype=dt)
                                for _ in range(downsample - 2)])
        if downsample >= 2:
            self.up1 = SubpixelConvTranspose(2 * hidden, hidden, rngs=rngs, dtype=dt)
        else:
            self.up1 = nnx.Conv(2 * hidden, hidden, (3, 3), padding="SAME", dtype=dt, rngs=rngs)
        self.up2 = SubpixelConvTranspose(hidden, c, rngs=rngs, dtype=dt)

    def __call__(self, z: jax.Array) -> jax.Array:
        lead = z.shape[:-1]
        h = jax.nn.relu(self.project(z.reshape(-1, z.shape[-1]))).reshape(-1, *self.start)
        for layer in self.up if self.downsample > 2 else ():
            h = jax.nn.relu(layer(h))
        out = self.up2(jax.nn.relu(self.up1(h)))
        return out.reshape(*lead, *self.image_shape)


def importance_log_weights(log_likelihood, mean: jax.Array, log_variance: jax.Array, *, key: jax.Array,
                           num_samples: int) -> jax.Array:
    r"""``[S, B]`` importance log weights ``log p(x|z_s) + log p(z_s) - log q(z_s|x)``, ``z_s ~ q(z|x)``.

    ``q(z|x) = N(mean, diag exp(log_variance))`` (``[B, L]`` each), ``p(z) = N(0, I)``, and
    ``log_likelihood(z [S, B, L]) -> [S, B]`` the decoder's ``log p(x_b|z_{s,b})``.
    """
    z = losses.reparameterize(mean, log_variance, key=key, num_samples=num_samples)  # [S, B, L]
    log_q = losses.gaussian_log_likelihood(jnp.broadcast_to(mean, z.shape), z, log_variance=log_variance,
                                           event_ndim=1)
    log_p = losses.gaussian_log_likelihood(jnp.zeros_like(z), z, event_ndim=1)
    return log_likelihood(z) + log_p - log_q


class VAEOutput(NamedTuple):
    """One pass of :class:`VAE`; per-example terms are ``[B]``."""

    logits: jax.Array  # [B, H, W, C] parameters of p(x|z) at the sample z
    mean: jax.Array  # [B, L] μ of q(z|x)
    log_variance: jax.Array  # [B, L] log σ² of q(z|x)
    z: jax.Array  # [B, L] the reparameterized sample
    log_likelihood: jax.Array  # [B] log p(x|z): minus the distortion
    kl: jax.Array  # [B] KL(q(z|x) || N(0, I)): the rate


class VAE(nnx.Module):
    r"""A VAE with prior ``p(z) = N(0, I)``, Gaussian encoder and a Bernoulli or Gaussian decoder.

    ``model(x, key=k)`` encodes, samples ``z = μ + σ ε`` and decodes, returning the one-sample
    ELBO terms; ``model.generate(key=k, num_samples=n)`` follows the notes: ① sample
    ``z ~ p(z)``, ② sample ``x ~ p(x|z)``.

    Args:
      encoder: maps ``x [B, *image]`` to ``(μ, log σ²)``, each ``[B, L]``.
      decoder: maps ``z [..., L]`` to ``[..., *image]`` logits (Bernoulli) or means (Gaussian); for
        ``"discretized_logistic"`` to ``[..., H, W, 2C]``: per pixel a location (through a sigmoid,
        on the [0, 1] scale) and a ``log s`` (clipped below at -7).
      latents: L.
      likelihood: ``"bernoulli"`` (binarized data), ``"gaussian"`` (fixed ``variance``) or
        ``"discretized_logistic"`` (8-bit data as ``k / 255``: a probability mass, so the bound is in
        honest nats and converts to bits per dimension).
      variance: σ² of the Gaussian decoder.
    """

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module, *, latents: int,
                 likelihood: str = "bernoulli", variance: float = 1.0):
        if likelihood not in VAE_LIKELIHOODS:
            raise ValueError(f"`likelihood` must be one of {VAE_LIKELIHOODS}; got {likelihood!r}.")
        self.encoder, self.decoder = encoder, decoder
        self.latents, self.likelihood, self.variance = latents, likelihood, variance

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x [B, *image] -> (μ, log σ²)``, each ``[B, L]``."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """``z [..., L] -> [..., *image]`` parameters of ``p(x|z)``."""
        return self.decoder(z)

    def log_likelihood(self, params: jax.Array, x: jax.Array, *, event_ndim: int | None = None) -> jax.Array:
        """``log p(x|z)`` per example from decoder output ``params [..., *image]`` and ``x [..., *image]``.

        ``event_ndim`` (default ``x.ndim - 1``) is the number of image axes.
        """
        event_ndim = x.ndim - 1 if event_ndim is None else event_ndim
        params = upcast(params)  # a bfloat16 decoder's output: the likelihood in float32
        if self.likelihood == "bernoulli":
            return losses.bernoulli_log_likelihood(params, x, event_ndim=event_ndim)
        if self.likelihood == "discretized_logistic":
            location, log_scale = self._logistic(params)
            return losses.discretized_logistic_log_likelihood(location, log_scale, x, event_ndim=event_ndim)
        return losses.gaussian_log_likelihood(params, x, variance=self.variance, event_ndim=event_ndim)

    @staticmethod
    def _logistic(params: jax.Array) -> tuple[jax.Array, jax.Array]:
        return logistic_parameters(params)  # shared with the VQ-VAEs (vqjax.nn._images)

    def mean_image(self, params: jax.Array) -> jax.Array:
        """The mean of ``p(x|z)``: ``sigmoid(logits)``, the Gaussian mean, or the logistic's location (float32)."""
        params = upcast(params)
        if self.likelihood == "discretized_logistic":
            return self._logistic(params)[0]
        return jax.nn.sigmoid(params) if self.likelihood == "bernoulli" else params

    def __call__(self, x: jax.Array, *, key: jax.Array) -> VAEOutput:
        mean, log_variance = self.encode(x)
        z = losses.reparameterize(mean, log_variance, key=key)
        logits = self.decode(z)
        return VAEOutput(logits, mean, log_variance, z, self.log_likelihood(logits, x),
                         losses.gaussian_kl(mean, log_variance))

    def log_weights(self, x: jax.Array, *, key: jax.Array, num_samples: int) -> jax.Array:
        r"""``[S, B]`` importance log weights ``log p(x|z_s) + log p(z_s) - log q(z_s|x)``, ``z_s ~ q(z|x)``."""
        mean, log_variance = self.encode(x)
        return self._log_weights(x, mean, log_variance, key, num_samples)

    def _log_weights(self, x, mean, log_variance, key, num_samples):
        def log_likelihood(z):  # [S, B, L] -> [S, B]
            params = self.decode(z)  # [S, B, *image]
            xs = jnp.broadcast_to(x, params.shape[:-1] + x.shape[-1:])  # [S, B, *image]
            return self.log_likelihood(params, xs, event_ndim=x.ndim - 1)

        return importance_log_weights(log_likelihood, mean, log_variance, key=key, num_samples=num_samples)

    def iwae_log_likelihood(self, x: jax.Array, *, key: jax.Array, num_samples: int,
                            chunk_size: int = 100) -> jax.Array:
        r"""``[B]`` the importance-weighted estimate of ``log p(x)`` (Burda et al., 2016) with S samples.

        The encoder runs once; the samples are decoded ``chunk_size`` at a time
        (:func:`vqjax.losses.iwae_log_likelihood`), so S = 5000 fits in memory.
        """
        mean, log_variance = self.encode(x)
        return losses.iwae_log_likelihood(
            lambda k, n: self._log_weights(x, mean, log_variance, k, n),
            key=key, num_samples=num_samples, chunk_size=chunk_size,
        )

    def generate(self, *, key: jax.Array, num_samples: int) -> tuple[jax.Array, jax.Array]:
        r"""① ``z ~ p(z) = N(0, I)``, ② ``x ~ p(x|z)``. Returns ``(x, mean of p(x|z))``, each ``[S, *image]``."""
        kz, kx = jax.random.split(key)
        z = jax.random.normal(kz, (num_samples, self.latents))
        params = self.decode(z)
        mean = self.mean_image(params)
        if self.likelihood == "bernoulli":
            x = jax.random.bernoulli(kx, mean).astype(mean.dtype)
        elif self.likelihood == "discretized_logistic":  # a logistic sample, rounded to one of 256 levels
            _, log_scale = self._logistic(params)
            noise = jax.random.logistic(kx, mean.shape, mean.dtype)
            x = jnp.clip(jnp.round((mean + jnp.exp(log_scale) * noise) * 255.0) / 255.0, 0.0, 1.0)
        else:
            x = mean + jnp.sqrt(self.variance) * jax.random.normal(kx, mean.shape, mean.dtype)
        return x, mean
