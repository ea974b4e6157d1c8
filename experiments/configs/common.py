"""The config schema every training program shares, declared once.

    c = common.base_config(batch_size=128, learning_rate=1e-3, steps=2000)
    c.model = ml_collections.ConfigDict({...})      # the experiment's own block(s)

Blocks and their fields (every one is a flag: ``--config.train.steps=500``):

- ``seed`` (an int >= 0): initialisation and the randomness of training (binarization, sampling, restarts).
- ``cpu_devices_per_core``: on a CPU host, one XLA device per core (see
  :func:`vqjax.training.use_cpu_cores_as_devices`); off by default: one device whose steps split the
  batch into concurrent micro-batches (``train.micro_batches``) is as fast, with no collective.
- ``dtype`` (``"float32"`` or ``"bfloat16"``): the networks' computation dtype; parameters, optimizer
  state and the quantizers (distances, EMA statistics, rounding, indices) and losses stay float32.
- ``data``: ``dataset`` (``mnist``, ``bars``, a TFDS name such as ``cifar10``, ``folder:PATH``,
  ``npz:PATH`` or ``idx:PATH``: :func:`vqjax.data.get_source`), ``idx_dir`` (a folder of the four IDX
  files; empty: TFDS, else the embedded digits), ``tfds_data_dir`` (empty: TFDS's default),
  ``image_size`` (0: as stored; S: S×S), ``crop`` (``"none"`` or ``"center"``), ``channels`` (0: as
  stored, 1 or 3), ``test_fraction`` (the test share of a folder or ``.npz`` without a test split),
  ``seed`` (the order of the training batches, apart from ``seed`` so that the runs of a sweep over
  ``seed`` read the same batches; -1: ``seed``), ``batch_size`` (global, >= 1), ``eval_batch_size`` (>= 1).
- ``optimizer``: ``learning_rate`` (the peak, > 0), ``warmup_steps`` (>= 0), ``schedule``
  (``"constant"`` or ``"cosine"``).
- ``train``: ``steps``, ``log_every``, ``checkpoint_every`` (each >= 1), ``eval_every`` (0: only at
  the end), ``keep_checkpoints`` (>= 1), ``profile_steps`` (a ``jax.profiler`` trace of that many
  steps after the first, in ``tensorboard/``; 0: none), ``micro_batches`` (each step's batch as the
  mean over that many concurrent parts, for the CPU's cores; 0: automatic — see
  :func:`vqjax.training.auto_micro_batches`; 1: never split).

Every value is checked when a program starts, each error naming its flag
(``--config.train.log_every`` must be an integer >= 1; got 0): these blocks by
:data:`vqjax.training.CONFIG_RULES` (also in :func:`vqjax.training.train_and_evaluate`), an
experiment's own fields by the ``CONFIG_RULES`` and ``check_config`` of its program, which a test
keeps complete (:func:`vqjax.training.unchecked_fields`). A field added here needs its rule there.
"""

from __future__ import annotations

import ml_collections


def data_config(*, dataset: str = "mnist", batch_size: int = 128, eval_batch_size: int = 500,
                **extra) -> ml_collections.ConfigDict:
    """The ``data`` block; ``extra`` adds an experiment's own data fields (e.g. ``dynamic_binarization``)."""
    return ml_collections.ConfigDict({
        "dataset": dataset,
        "idx_dir": "",  # a folder with the four MNIST IDX files; empty: TFDS, else the embedded digits
        "tfds_data_dir": "",  # TFDS data_dir; empty: TFDS's default (~/tensorflow_datasets)
        "image_size": 0,  # 0: as stored; S: every image resized to S×S (vqjax.data.transform_image)
        "crop": "none",  # "center": the central square first (keeps the aspect ratio); "none": whole image
        "channels": 0,  # 0: as stored; 1: grayscale; 3: RGB
        "test_fraction": 0.1,  # a folder / .npz without a test split: this share is "test" (deterministic)
        "seed": 0,  # order of the training batches; every run of a sweep group reads the same batches
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        **extra,
    })


def optimizer_config(*, learning_rate: float = 1e-3, warmup_steps: int = 0,
                     schedule: str = "constant") -> ml_collections.ConfigDict:
    """The ``optimizer`` block: the learning rate's peak, warm-up and shape."""
    return ml_collections.ConfigDict(
        {"learning_rate": learning_rate, "warmup_steps": warmup_steps, "schedule": schedule})


def train_config(*, steps: int, log_every: int = 100, checkpoint_every: int = 1000, eval_every: int = 0,
                 keep_checkpoints: int = 3, profile_steps: int = 0, micro_batches: int = 0) -> ml_collections.ConfigDict:
    """The ``train`` block: how long, and how often to log, checkpoint and evaluate; what to profile;
    how many concurrent micro-batches a step's batch is split into (0: automatic)."""
    return ml_collections.ConfigDict({"steps": steps, "log_every": log_every, "checkpoint_every": checkpoint_every,
                                      "eval_every": eval_every, "keep_checkpoints": keep_checkpoints,
                                      "profile_steps": profile_steps, "micro_batches": micro_batches})


def base_config(*, data: dict | None = None, optimizer: dict | None = None, train: dict | None = None,
                seed: int = 0) -> ml_collections.ConfigDict:
    """``seed``, ``cpu_devices_per_core`` and the ``data``, ``optimizer`` and ``train`` blocks."""
    c = ml_collections.ConfigDict()
    c.seed = seed
    # On a CPU host, True exposes one XLA device per core and trains data-parallel over them (its
    # all-reduce's deadlock is guarded: vqjax.training.use_cpu_cores_as_devices, docs/cpu-devices.md).
    c.cpu_devices_per_core = False
    c.dtype = "float32"  # the networks' computation dtype ("bfloat16": mixed precision); parameters stay float32
    c.data = data_config(**(data or {}))
    c.optimizer = optimizer_config(**(optimizer or {}))
    c.train = train_config(**(train or {"steps": 1000}))
    return c
