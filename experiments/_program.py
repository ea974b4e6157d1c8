"""What every experiment program does before and around training: quiet logs, CPU devices, β sweeps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import ml_collections


def start(*, cpu_devices_per_core: bool = False, batch_sizes: tuple[int, ...] = ()) -> None:
    """Quiet Orbax's and TFDS's per-step INFO logs (unless ``--verbosity`` is given); on a CPU host,
    optionally one XLA device per core (:func:`vqjax.training.use_cpu_cores_as_devices`). Call first."""
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    if cpu_devices_per_core:
        from vqjax import training

        training.use_cpu_cores_as_devices(batch_sizes)


def beta_sweep(
    betas,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    set_beta: Callable[[ml_collections.ConfigDict, float], None],
    build: Callable[[ml_collections.ConfigDict], dict],
    name: str = "beta",
    log=print,
) -> Iterator[tuple[float, dict]]:
    """Train one model per value in ``workdir/<name>=<value>`` (each resumable); yields ``(value, summary)``.

    ``set_beta(config, value)`` sets the swept hyperparameter (β, or any other named ``name``).
    """
    from vqjax import training

    betas = [float(b) for b in betas]
    if not betas or any(not b >= 0 for b in betas):
        raise ValueError(f"`config.{name}s` must be non-negative numbers; got {betas!r}.")
    for beta in betas:
        c = config.copy_and_resolve_references()
        set_beta(c, beta)
        log(f"{name} = {beta:g}")
        yield beta, training.train_and_evaluate(c, os.path.join(workdir, f"{name}={beta:g}"), **build(c), log=log)
