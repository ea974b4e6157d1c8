"""Evaluation over a whole split: padded, masked batches; sums turned into means and code statistics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vqjax import data as data_lib
from vqjax.training._mesh import shard_batch


def _perplexity(counts: np.ndarray) -> np.ndarray:
    """``exp(H(p))`` of the usage ``p = counts / Σ counts`` over the last axis (0 counts: 0)."""
    p = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
    return np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), -1))


def summarize(totals: dict) -> dict:
    """Per-split totals of one run -> means, code statistics and ``num_examples``.

    ``sum/<name>`` becomes the mean ``<name>``; ``counts`` (``[K]`` or ``[S, K]``) becomes
    ``perplexity``, ``used_fraction`` and ``dead_codes`` (means over stages) and stays under
    ``_counts``; ``counts_<name>`` (e.g. VQ-VAE-2's ``counts_top``) becomes ``perplexity_<name>``
    and ``used_<name>``.
    """
    weight = float(totals["weight"])
    out = {k[4:]: float(v) / weight for k, v in totals.items() if k.startswith("sum/")}
    if "counts" in totals:
        counts = np.asarray(totals["counts"])
        out["perplexity"] = float(np.mean(_perplexity(counts)))
        out["used_fraction"] = float(np.mean(counts > 0))
        out["dead_codes"] = int(np.sum(counts == 0))
        out["_counts"] = counts
    for key in sorted(k for k in totals if k.startswith("counts_")):
        name, counts = key[len("counts_"):], np.asarray(totals[key])
        out[f"perplexity_{name}"] = float(_perplexity(counts))
        out[f"used_{name}"] = float(np.mean(counts > 0))
    out["num_examples"] = int(weight)
    return out


def evaluate_totals(eval_step: Callable, source, put: Callable, *, batch_size: int, local: bool = True,
                    multiple: int = 1, desc: str | None = None) -> dict:
    """The sums (``sum/*``, ``counts*``, ``weight``) of ``eval_step`` over the whole of ``source``.

    ``eval_step(batch, weights) -> metrics`` (any leading runs axis is kept); ``put(tree)`` places
    host arrays on the mesh. Every batch is padded (with masked rows) to a multiple of ``multiple``
    rows per process (the devices it is split over) and the last one to that full size, so every
    example counts once whatever the batch size and the device count. Each batch gets ``"index"``: int32 ``[B]`` indices unique to each example, its
    position in ``source`` on one host (padding rows get indices past the end). With ``local``, each
    process reads its own shard of the split; otherwise every process reads all of it.
    """
    procs, me = (jax.process_count(), jax.process_index()) if local else (1, 0)
    it = data_lib.make_pipeline(source, batch_size=batch_size, seed=0, shuffle=False, repeat=False,
                                drop_remainder=False, process_index=me, process_count=procs)
    rows = -(-(batch_size // procs) // multiple) * multiple
    totals: dict = {}
    bar = tqdm(total=-(-len(source) // batch_size), desc=desc, dynamic_ncols=True,
               disable=desc is None or jax.process_index() != 0)
    for batch_index, batch in enumerate(it):
        n = batch["image"].shape[0]
        weights = np.zeros((rows,), np.float32)
        weights[:n] = 1.0
        if n < rows:
            batch = jax.tree.map(lambda x, pad=rows - n: np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]),
                                 batch)
        first = (batch_index * procs + me) * rows
        batch = dict(batch, index=np.arange(first, first + rows, dtype=np.int32))
        m = eval_step(*put((batch, weights)))
        bar.update(1)
        keep = {k: v for k, v in m.items() if k.startswith(("sum/", "counts")) or k == "weight"}
        totals = keep if not totals else jax.tree.map(jnp.add, totals, keep)
    bar.close()
    return totals


def evaluate(eval_step, state, source, mesh, *, batch_size: int, desc: str | None = None, hparams=None) -> dict:
    """Metrics of one run over the whole of ``source`` (see :func:`summarize`).

    ``eval_step`` is :func:`vqjax.training.make_eval_step`'s; each process reads its own rows and
    the batch, padded to a multiple of the device count, is sharded over the mesh axis ``"data"``.
    """
    totals = evaluate_totals(lambda b, w: eval_step(state, b, w, hparams), source,
                             lambda tree: shard_batch(tree, mesh), batch_size=batch_size,
                             multiple=mesh.size // jax.process_count(), desc=desc)
    return summarize(jax.device_get(totals))
