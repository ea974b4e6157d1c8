r"""FactorVAE (Kim & Mnih, 2018, "Disentangling by Factorising"): a VAE and its total-correlation discriminator.

One module holds both networks, so that one training step updates both: the VAE minimises
``-log p(x|z) + KL(q(z|x)||p(z)) + γ log D(z)/(1 - D(z))`` and the discriminator ``D`` its cross-entropy
between samples of ``q(z)`` and permuted samples (:func:`vqjax.objectives.factor_vae_objective`, which
keeps the two gradients on their own parameters). :func:`factor_vae_optimizer` gives each network its
own optimizer (the paper: Adam 1e-4 for the VAE; Adam 1e-4 with β₁ = 0.5, β₂ = 0.9 for ``D``).
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from vqjax.nn._tc_discriminator import TCDiscriminator
from vqjax.nn._vae import VAE, VAEOutput

__all__ = ["FactorVAE", "factor_vae_optimizer"]


class FactorVAE(nnx.Module):
    """A :class:`VAE` (``.vae``) and a :class:`TCDiscriminator` (``.discriminator``) over its latents.

    Everything a VAE does (``encode``, ``decode``, ``generate``, ``mean_image``, the IWAE bound, ...)
    is the inner VAE's: the discriminator only shapes training.

    Args:
      vae: the VAE.
      discriminator: a discriminator of ``vae.latents`` latents.
    """

    def __init__(self, vae: VAE, discriminator: TCDiscriminator):
        if not isinstance(vae, VAE):
            raise ValueError(f"`vae` must be a vqjax.nn.VAE; got {type(vae).__name__}.")  # noqa: TRY004
        if not isinstance(discriminator, TCDiscriminator) or discriminator.latents != vae.latents:
            raise ValueError(f"`discriminator` must be a TCDiscriminator of the VAE's {vae.latents} latents; got "
                             f"{type(discriminator).__name__}"
                             f"{f' of {discriminator.latents}' if hasattr(discriminator, 'latents') else ''}.")
        self.vae, self.discriminator = vae, discriminator
        self.latents, self.likelihood = vae.latents, vae.likelihood

    def __call__(self, x: jax.Array, *, key: jax.Array) -> VAEOutput:
        return self.vae(x, key=key)

    def __getattr__(self, name: str):  # the VAE's methods (encode, decode, generate, mean_image, ...)
        if name.startswith("_") or name in ("vae", "discriminator"):
            raise AttributeError(name)
        return getattr(self.vae, name)


def _labels(params) -> object:
    """``"vae"`` or ``"discriminator"`` for each leaf of a :class:`FactorVAE`'s parameter state."""
    def label(path, _):
        first = path[0]
        return str(getattr(first, "key", getattr(first, "name", first)))

    return jax.tree_util.tree_map_with_path(label, params)


def factor_vae_optimizer(vae: optax.GradientTransformation,
                         discriminator: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optax.multi_transform``: ``vae`` updates the VAE's parameters, ``discriminator`` the discriminator's.

    Apply it to the ``nnx.Param`` state of a :class:`FactorVAE` (``nnx.state(model, nnx.Param)``), whose
    top-level keys are ``vae`` and ``discriminator``.
    """
    return optax.multi_transform({"vae": vae, "discriminator": discriminator}, _labels)
