"""Test set-up: 8 virtual CPU devices, set before any computation.

The pure core (losses, quantizers) is also tested under strict dtype promotion, through the
``strict_promotion`` fixture; optax itself is not strict-clean, so the training tests run with
JAX's standard promotion.
"""

import os
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_num_cpu_devices", 8)
# Most of the suite's time is XLA compiling the same small programs in many tests and subprocesses:
# JAX's persistent compilation cache shares them (the environment variable reaches the subprocesses).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "vqjax-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def _digits(n, seed):
    """Blurry blobs standing in for digits: uint8 [n, 28, 28]."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = r.uniform(8, 20, size=(2, n, 1, 1))
    img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r.uniform(6, 30, size=(n, 1, 1)))
    return np.round(255 * img).astype(np.uint8)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A folder of MNIST-format IDX files: 512 training and 96 test blobs with labels 0-9."""
    from vqjax import data

    d = tmp_path_factory.mktemp("idx")
    for prefix, n in (("train", 512), ("t10k", 96)):
        data.write_idx(d / f"{prefix}-images-idx3-ubyte.gz", _digits(n, seed=n))
        data.write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    return str(d)
