"""Flax NNX modules that wrap the pure core."""

from vqjax.nn._layers import ResidualBlock, SubpixelConvTranspose
from vqjax.nn._vqvae import VQVAE, Decoder, Encoder, VQVAEOutput

__all__ = ["Encoder", "Decoder", "VQVAE", "VQVAEOutput", "ResidualBlock", "SubpixelConvTranspose"]
