"""Test set-up: 8 virtual CPU devices, set before any computation.

The pure core (losses, quantizers) is also tested under strict dtype promotion, through the
``strict_promotion`` fixture; optax itself is not strict-clean, so the training tests run with
JAX's standard promotion.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield
