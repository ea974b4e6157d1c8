r"""A VAE and a VQ-VAE whose decoder is an autoregressive PixelCNN over binary pixels.

Both wrap :class:`vqjax.nn.PixelCNNDecoder`, ``p(x|z) = Π_{i,j} p(x_ij | x_<ij, s(z))``
(Gulrajani et al., 2017, "PixelVAE"; Chen et al., 2017, "Variational Lossy Autoencoder"), and return
the existing :class:`vqjax.nn.VAEOutput` / :class:`vqjax.nn.VQVAEOutput`, so that
:func:`vqjax.objectives.vae_objective`, :func:`~vqjax.objectives.vae_iwae_objective` and
:func:`~vqjax.objectives.vqvae_objective` train them unchanged, with ``likelihood = "bernoulli"``.

Why a Bernoulli logit: teacher-forced, the decoder gives per pixel two logits ``(l0, l1)`` of
``p(x_ij | x_<ij, z)``, and for ``x_ij ∈ {0, 1}``

.. math::
    \log \mathrm{softmax}(l_0, l_1)[x_{ij}] = x_{ij} \log σ(l_1 - l_0) + (1 - x_{ij}) \log σ(l_0 - l_1),

the Bernoulli log-likelihood of the logit ``l1 - l0``. So ``logits = l1 - l0`` ``[B, H, W, 1]``, read
as Bernoulli logits, give exactly ``log p(x|z)``; but they are the conditionals given the true past
pixels: not the parameters of a factorized ``p(x|z)``, and ``sigmoid(logits)`` is not its mean.
These models exist for posterior-collapse experiments (Bowman et al., 2016): a decoder this strong
can model ``x`` without the latent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqjax import losses
from vqjax.nn._pixelcnn_decoder import PixelCNNDecoder
from vqjax.nn._precision import upcast
from vqjax.nn._vae import VAEOutput, importance_log_weights
from vqjax.nn._vqvae import VQVAEOutput

__all__ = ["PixelCNNVAE", "PixelCNNVQVAE"]


def _check_decoder(decoder, latent_ndim: int, what: str) -> PixelCNNDecoder:
    supported = isinstance(decoder, PixelCNNDecoder)
    if not supported:  # a ValueError, as the library's other argument checks
        raise ValueError(f"`decoder` must be a vqjax.nn.PixelCNNDecoder; got {type(decoder).__name__}.")
    if len(decoder.latent_shape) != latent_ndim:
        raise ValueError(f"`decoder` must be built for {what}; got latent_shape={decoder.latent_shape}.")
    return decoder


def _output_shape(module, x_shape: tuple[int, ...]):
    """The output shapes of ``module(x)`` for ``x`` of ``x_shape`` (float32), traced abstractly: no FLOPs."""
    graphdef, state = nnx.split(module)
    return jax.eval_shape(lambda s: nnx.merge(graphdef, s)(jnp.zeros(x_shape, jnp.float32)), state)


def _bernoulli_logits(two_class: jax.Array) -> jax.Array:
    """``[B, H, W, 2]`` categorical logits ``(l0, l1)`` -> ``[B, H, W, 1]`` Bernoulli logits ``l1 - l0``."""
    return two_class[..., 1:] - two_class[..., :1]


def _teacher_forced(decoder: PixelCNNDecoder, x: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One pass of the decoder: ``(logits l1 - l0 [B, H, W, 1], log p(x|z) [B])``.

    ``log p(x|z)`` is :meth:`PixelCNNDecoder.log_likelihood`'s computation, from the same logits."""
    two_class = decoder.logits(x, z)  # checks x and z; float32
    ll = losses.categorical_log_likelihood(two_class, jnp.asarray(x)[..., 0].astype(jnp.int32), event_ndim=2)
    return _bernoulli_logits(two_class), ll


def _mean_image(logits: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(upcast(logits))


class PixelCNNVAE(nnx.Module):
    r"""A VAE with a Gaussian encoder, prior ``p(z) = N(0, I)`` and a PixelCNN decoder over binary images.

    ``model(x, key=k)`` encodes ``x [B, H, W, 1]`` (pixels in {0, 1}), draws ``z = μ + σ ⊙ ε`` and returns the
    one-sample ELBO terms as a :class:`vqjax.nn.VAEOutput`: ``log_likelihood = log p(x|z)`` exactly (the
    autoregressive product), ``kl = KL(q(z|x) || N(0, I))`` analytic, and ``logits = l1 - l0``
    ``[B, H, W, 1]``, the teacher-forced Bernoulli logits of every pixel given the pixels before it (module
    docstring). With ``likelihood = "bernoulli"`` :func:`vqjax.objectives.vae_objective` (β, free bits,
    annealing) and :func:`vqjax.objectives.vae_iwae_objective` train and evaluate it as a :class:`vqjax.nn.VAE`.

    There is no ``decode(z)``: an autoregressive ``p(x|z)`` has no parameters without ``x``; use
    :meth:`sample`, :meth:`log_likelihood_given` or the decoder itself.

    ``x`` must be binary: the decoder checks it outside ``jax.jit`` but under ``jit`` casts it to int32, so
    grey levels would be truncated. :func:`vqjax.objectives.vae_objective` binarizes by default
    (``dynamic_binarization=True``).

    Args:
      encoder: maps ``x [B, H, W, 1]`` to ``(μ, log σ²)``, each ``[B, L]`` (e.g. :class:`vqjax.nn.MLPEncoder`,
        :class:`vqjax.nn.ConvEncoder`).
      decoder: a :class:`vqjax.nn.PixelCNNDecoder` with ``latent_shape = (L,)``.
      latents: L.
    """

    likelihood = "bernoulli"

    def __init__(self, encoder: nnx.Module, decoder: PixelCNNDecoder, *, latents: int):
        if isinstance(latents, bool) or not isinstance(latents, int) or latents < 1:
            raise ValueError(f"`latents` must be a positive int; got {latents!r}.")
        _check_decoder(decoder, 1, "a vector latent, latent_shape=(L,)")
        if decoder.latent_shape != (latents,):
            raise ValueError(f"`decoder` latent_shape={decoder.latent_shape} must be (latents,) = ({latents},).")
        out = _output_shape(encoder, (1, *decoder.image_shape))
        shapes = [tuple(o.shape) for o in out] if isinstance(out, (tuple, list)) else None
        if shapes is None or len(shapes) != 2 or any(s != (1, latents) for s in shapes):
            raise ValueError(f"`encoder` must map [B, {', '.join(map(str, decoder.image_shape))}] images to (μ, log σ²), "
                             f"each [B, latents={latents}]; its outputs have shapes {shapes}.")
        self.encoder, self.decoder, self.latents = encoder, decoder, latents

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x [B, H, W, 1] -> (μ, log σ²)``, each ``[B, L]``."""
        return self.encoder(x)

    def __call__(self, x: jax.Array, *, key: jax.Array) -> VAEOutput:
        mean, log_variance = self.encode(x)
        z = losses.reparameterize(mean, log_variance, key=key)
        logits, ll = _teacher_forced(self.decoder, x, z)
        return VAEOutput(logits, mean, log_variance, z, ll, losses.gaussian_kl(mean, log_variance))

    def mean_image(self, logits: jax.Array) -> jax.Array:
        """``sigmoid(logits)`` float32: for this autoregressive decoder the teacher-forced probability that
        each pixel is white given the true pixels before it, not the mean of ``p(x|z)`` (which has no
        closed form; estimate it by averaging :meth:`sample`)."""
        return _mean_image(logits)

    def log_likelihood_given(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """Exact ``log p(x|z)`` in nats: ``x [B, H, W, 1]`` in {0, 1}, ``z [B, L]`` -> float32 ``[B]``."""
        return self.decoder.log_likelihood(x, z)

    def sample(self, z: jax.Array, *, key: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
        """``x ~ p(x|z)`` in raster order (:meth:`PixelCNNDecoder.sample`): float32 ``[B, H, W, 1]`` in {0, 1}."""
        return self.decoder.sample(z, key=key, temperature=temperature).astype(jnp.float32)

    def generate(self, *, key: jax.Array, num_samples: int) -> tuple[jax.Array, jax.Array]:
        r"""① ``z ~ p(z) = N(0, I)``, ② ``x ~ p(x|z)``. Returns ``(x, x)``, each float32 ``[S, H, W, 1]``.

        :meth:`vqjax.nn.VAE.generate` returns ``(x, mean of p(x|z))``; an autoregressive ``p(x|z)`` has no
        tractable mean, so the sample stands in for it (the pair keeps callers that draw both working).
        """
        kz, kx = jax.random.split(key)
        z = jax.random.normal(kz, (num_samples, self.latents))
        x = self.sample(z, key=kx)
        return x, x

    def log_weights(self, x: jax.Array, *, key: jax.Array, num_samples: int) -> jax.Array:
        r"""``[S, B]`` importance log weights ``log p(x|z_s) + log p(z_s) - log q(z_s|x)``, ``z_s ~ q(z|x)``."""
        mean, log_variance = self.encode(x)
        return self._log_weights(x, mean, log_variance, key, num_samples)

    def _log_weights(self, x, mean, log_variance, key, num_samples):
        def log_likelihood(z):  # [S, B, L] -> [S, B]: the S·B images as one batch
            s, b = z.shape[:2]
            xs = jnp.broadcast_to(x, (s, *x.shape)).reshape(s * b, *x.shape[1:])
            return self.decoder.log_likelihood(xs, z.reshape(s * b, -1)).reshape(s, b)

        return importance_log_weights(log_likelihood, mean, log_variance, key=key, num_samples=num_samples)

    def iwae_log_likelihood(self, x: jax.Array, *, key: jax.Array, num_samples: int,
                            chunk_size: int = 10) -> jax.Array:
        r"""``[B]`` the importance-weighted bound (Burda et al., 2016) ``log (1/S) Σ_s p(x|z_s) p(z_s) / q(z_s|x)``.

        ``z_s ~ q(z|x)``; the encoder runs once and the decoder sees ``chunk_size · B`` images at a time
        inside a ``lax.scan`` (:func:`vqjax.losses.iwae_log_likelihood`: chunk ``c`` draws with
        ``fold_in(key, c)``). A PixelCNN pass costs far more memory per image than a factorized decoder:
        the default chunk is 10 samples, not :meth:`vqjax.nn.VAE.iwae_log_likelihood`'s 100.
        """
        mean, log_variance = self.encode(x)
        return losses.iwae_log_likelihood(
            lambda k, n: self._log_weights(x, mean, log_variance, k, n),
            key=key, num_samples=num_samples, chunk_size=chunk_size,
        )


class PixelCNNVQVAE(nnx.Module):
    r"""Encoder → quantizer → PixelCNN decoder over binary images (a VQ-VAE with an autoregressive decoder).

    ``model(x, key=k)`` is :meth:`vqjax.nn.VQVAE.__call__` with the decoder swapped: ``z_e = encoder(x)``
    ``[B, h, w, D]``, the quantizer's ``z_q`` (straight-through) and indices, its codebook and commitment
    losses summed over the map, ``restarted``; and ``logits = l1 - l0`` ``[B, H, W, 1]``, the teacher-forced
    Bernoulli logits of ``p(x_ij | x_<ij, z_q)`` (module docstring), so that
    :func:`vqjax.objectives.vqvae_objective` with ``likelihood = "bernoulli"`` gives ``-log p(x|z_q)``
    exactly. The codes of :meth:`encode` are ``[B, h, w]`` indices, the input of the PixelCNN prior
    (:func:`vqjax.objectives.prior_objective`). ``vqvae_objective`` does not binarize: feed it binary
    images (under ``jax.jit`` grey levels would be truncated to 0 unchecked).

    Args:
      encoder: maps ``x [B, H, W, 1]`` to ``z_e [B, h, w, D]`` (e.g. ``vqjax.nn.Encoder(1, D)``: 28×28 → 7×7).
      quantizer: any quantizer module of :mod:`vqjax.nn` (:func:`vqjax.nn.make_quantizer`) with ``code_dim = D``.
      decoder: a :class:`vqjax.nn.PixelCNNDecoder` with ``latent_shape = (h, w, D)``.
    """

    likelihood = "bernoulli"

    def __init__(self, encoder: nnx.Module, quantizer: nnx.Module, decoder: PixelCNNDecoder):
        _check_decoder(decoder, 3, "a grid latent, latent_shape=(h, w, D)")
        code_dim = getattr(quantizer, "code_dim", None)
        if code_dim != decoder.latent_shape[-1]:
            raise ValueError(f"`quantizer` code_dim={code_dim!r} must be the D of the `decoder`'s "
                             f"latent_shape={decoder.latent_shape}.")
        out = _output_shape(encoder, (1, *decoder.image_shape))
        shape = tuple(getattr(out, "shape", ()))
        if shape != (1, *decoder.latent_shape):
            raise ValueError(f"`encoder` must map [B, {', '.join(map(str, decoder.image_shape))}] images to "
                             f"z_e [B, {', '.join(map(str, decoder.latent_shape))}] (the `decoder`'s latent_shape); "
                             f"its output has shape {shape or type(out).__name__}.")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder

    @property
    def num_codes(self) -> int:
        """Codes per stage (the implied codebook size for FSQ)."""
        return self.quantizer.num_codes

    def encode(self, x: jax.Array) -> jax.Array:
        """``x [B, H, W, 1] -> codes [B, h, w]`` int32 (``[..., S]`` for residual VQ), the nearest codes."""
        return self.quantizer.encode(self.encoder(x))

    def lookup(self, codes: jax.Array) -> jax.Array:
        """``codes [B, h, w] -> z_q [B, h, w, D]``, the code vectors (the decoder's input for stored codes)."""
        return self.quantizer.decode(codes)

    def quantize(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x [B, H, W, 1] -> z_q [B, h, w, D]``, the decoder's input in :meth:`__call__`.

        It calls the quantizer as :meth:`__call__` does: in training mode an EMA quantizer updates its
        statistics (and a stochastic one samples); after ``model.eval()`` it is ``lookup(encode(x))``."""
        return self.quantizer(self.encoder(x), key=key).z_q

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> VQVAEOutput:
        """Reconstruct ``x [B, H, W, 1]``; ``key`` draws dead-code restarts (EMA quantizers in training mode)."""
        if x.ndim != 4:
            raise ValueError(f"`x` must be [B, H, W, 1]; got shape {x.shape}.")
        z_e = self.encoder(x)
        q = self.quantizer(z_e, key=key)
        codebook, commitment = (jnp.sum(t, axis=(1, 2)) for t in (q.codebook_loss, q.commitment_loss))
        logits, _ = _teacher_forced(self.decoder, x, q.z_q)
        return VQVAEOutput(logits, z_e, q.z_q, q.indices, codebook, commitment, q.restarted)

    def mean_image(self, logits: jax.Array) -> jax.Array:
        """``sigmoid(logits)`` float32: the teacher-forced next-pixel probability, not the mean of ``p(x|z_q)``."""
        return _mean_image(logits)

    def log_likelihood_given(self, x: jax.Array, z_q: jax.Array) -> jax.Array:
        """Exact ``log p(x|z_q)`` in nats: ``x [B, H, W, 1]`` in {0, 1}, ``z_q [B, h, w, D]`` -> float32 ``[B]``."""
        return self.decoder.log_likelihood(x, z_q)

    def sample(self, z_q: jax.Array, *, key: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
        """``x ~ p(x|z_q)`` in raster order: float32 ``[B, H, W, 1]`` in {0, 1} (``z_q``: e.g. :meth:`lookup`
        of a prior's codes)."""
        return self.decoder.sample(z_q, key=key, temperature=temperature).astype(jnp.float32)
