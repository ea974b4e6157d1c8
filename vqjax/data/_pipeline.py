"""A source as this process's sharded, shuffled, batched, checkpointable Grain iterator
(:func:`make_pipeline`)."""

from __future__ import annotations

import grain
import jax
import numpy as np

from vqjax.data._source import Example, ImageSource

# Grain reads whole batches; a few in flight keep the accelerator fed without holding many in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)


def _to_float(batch: Example) -> Example:
    """``{"image": uint8 [B, H, W, C], "label": [B]}`` -> float32 images in [0, 1], int32 labels; a data set's
    generative factors (``"factors"``, e.g. dSprites') pass through as int32."""
    image = batch["image"].astype(np.float32) / np.float32(255)
    out = {"image": image, "label": batch["label"].astype(np.int32)}
    if "factors" in batch:
        out["factors"] = batch["factors"].astype(np.int32)
    return out


def make_pipeline(
    source: ImageSource,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """This process's Grain iterator of ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}`` (and
    ``"factors"`` int32 ``[B, K]`` for a source whose records carry them: the procedural dSprites).

    Each process reads a disjoint, equal-size shard: the first ``len(source)`` rounded down to a
    multiple of ``process_count`` examples, sliced ``[process_index::process_count]``. The shard
    is shuffled with ``seed`` (a new order each epoch), batched with
    ``B = batch_size // process_count`` (each batch from one epoch; ``drop_remainder`` drops each
    epoch's last partial batch) and, if ``repeat``, repeated forever.

    The iterator is checkpointable: ``it.get_state()`` is a small JSON-able dict and
    ``it.set_state(state)`` on a fresh iterator from the same arguments resumes exactly.

    Args:
      source: any Grain random-access source of ``{"image": uint8 [H, W, C], "label": int}``.
      batch_size: the global batch size, a positive multiple of ``process_count``.
      seed: shuffle seed, in ``[0, 2**32)``.
      shuffle: shuffle (reshuffling every epoch); else the source order.
      repeat: repeat forever; else one epoch.
      drop_remainder: drop the last batch of an epoch if it has fewer than ``B`` examples.
      process_index, process_count: this process and the number of processes; default
        ``jax.process_index()`` and ``jax.process_count()``.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index}.")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size must be a positive multiple of process_count={process_count}, got {batch_size}."
        )
    local_batch = batch_size // process_count
    usable = len(source) - len(source) % process_count
    ds = grain.MapDataset.source(source)[process_index:usable:process_count]
    if drop_remainder and len(ds) < local_batch:
        raise ValueError(
            f"batch_size={batch_size} gives {local_batch} examples per process, more than the "
            f"{len(ds)} in this process's shard of {source!r}; with drop_remainder there would be no batch."
        )
    if shuffle:
        ds = ds.shuffle(seed)
    ds = ds.batch(local_batch, drop_remainder=drop_remainder).map(_to_float)
    if repeat:
        ds = ds.repeat()
    return iter(ds.to_iter_dataset(_READ_OPTIONS))
