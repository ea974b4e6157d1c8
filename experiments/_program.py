"""What every experiment program does before training: quiet logs, the compilation cache, CPU devices.

Sweeps (one run per β, λ, seed, ...) run on the sweep engine: :func:`vqjax.training.train_sweep`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

from absl import flags, logging

from vqjax import data, training


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


def image_shape(config) -> tuple[int, int, int]:
    """``(H, W, C)`` of the training images ``config.data`` gives (:func:`vqjax.data.get_source`, as the
    loop reads them): the models follow the data. Cached per ``data`` block; opening a source reads
    little (a TFDS source its metadata), but a data set that cannot be had fails here."""
    return _image_shape(json.dumps(config.data.to_dict(), sort_keys=True))


def train_size(config) -> int:
    """The number of training examples ``config.data`` gives (N of the KL decomposition's estimators)."""
    return _train_source_facts(json.dumps(config.data.to_dict(), sort_keys=True))[1]


@functools.lru_cache(maxsize=16)
def _train_source_facts(data_json: str) -> tuple[tuple[int, int, int], int]:
    source = data.get_source(split="train", log=lambda s: None, **data.source_options(json.loads(data_json)))
    return tuple(int(d) for d in source.image_shape), len(source)


def _image_shape(data_json: str) -> tuple[int, int, int]:
    return _train_source_facts(data_json)[0]


def check_image_shape(shape, downsample: int, where: str = "--config") -> None:
    """Images ``(H, W, C)`` must fit ``downsample`` stride-2 stages (H and W multiples of ``2^downsample``):
    a ValueError naming the flags otherwise."""
    f = 2**downsample
    if shape[0] % f or shape[1] % f:
        raise ValueError(
            f"{training.flag('model.downsample', where)}={downsample} needs images whose height and width are "
            f"multiples of 2**{downsample} = {f}; the images of {training.flag('data', where)} are "
            f"{tuple(shape)}: choose a smaller downsample or resize them ({training.flag('data.image_size', where)}).")
