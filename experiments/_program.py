"""What every experiment program does before training: quiet logs, the compilation cache, CPU devices.

Sweeps (one run per β, λ, seed, ...) run on the sweep engine: :func:`vqjax.training.train_sweep`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags, logging

from vqjax import training


def start(*, cpu_devices_per_core: bool = False, batch_sizes: tuple[int, ...] = ()) -> None:
    """Quiet Orbax's and TFDS's per-step INFO logs (unless ``--verbosity`` is given); JAX's persistent
    compilation cache on (:func:`vqjax.training.use_compilation_cache`: ``~/.cache/vqjax/jax``,
    ``VQJAX_COMPILATION_CACHE=off`` to disable); on a CPU host, optionally one XLA device per core
    (:func:`vqjax.training.use_cpu_cores_as_devices`). Call first."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    training.use_compilation_cache()
    if cpu_devices_per_core:
        training.use_cpu_cores_as_devices(batch_sizes)


def check_flags(check: Callable[[object], None], config) -> None:
    """``check(config)`` at a program's start; a ``ValueError`` (a bad flag) is printed with the
    flag's name and no traceback, and the program exits with status 1."""
    try:
        check(config)
    except ValueError as err:
        raise SystemExit(f"{sys.argv[0]}: bad flags:\n{err}") from None
