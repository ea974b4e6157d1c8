"""vqjax: variational and vector-quantized autoencoders in JAX."""

__version__ = "0.1.0"
