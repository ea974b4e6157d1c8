"""Reporters the experiments hand the loop: pictures drawn after training (process 0 only).

A reporter is ``reporter(model, test_source, workdir, summary) -> dict | None``
(:data:`vqjax.training.Reporter`); what it returns joins the run's summary.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.training import read_metrics


def test_images(test_src, n: int) -> np.ndarray:
    """The first ``n`` test images as float32 ``[n, H, W, C]`` in [0, 1]."""
    return np.stack([test_src[i]["image"] for i in range(min(n, len(test_src)))]).astype(np.float32) / 255.0


def reconstructions(reconstruct: Callable) -> Callable:
    """``reconstructions.png``: 64 test images above ``reconstruct(model, x)``."""
    def report(model, test_src, workdir, summary):
        from vqjax import viz

        x = test_images(test_src, 64)
        x_hat = np.asarray(jax.jit(reconstruct)(model, jnp.asarray(x)))
        viz.save_png(os.path.join(workdir, "reconstructions.png"), viz.reconstruction_grid(x, x_hat, ncols=16))

    return report


def code_usage(model, test_src, workdir, summary):
    """``codebook_usage.png`` (test-set use of each code) and ``perplexity.png`` (over training)."""
    from vqjax import viz
    counts, test = summary.get("_counts"), summary["test"]
    if counts is None:
        return
    num_codes = counts.shape[-1]
    rows = [r for r in read_metrics(workdir) if "perplexity" in r]
    series = {}
    for split, label in (("train", "training batches"), ("eval", "test set")):
        pts = [(r["step"], r["perplexity"]) for r in rows if r["split"] == split]
        if split == "eval":
            pts.append((summary["steps"], test["perplexity"]))
        if pts:
            series[label] = tuple(map(np.asarray, zip(*pts)))
    viz.save_history(os.path.join(workdir, "perplexity.png"), series, ylabel="perplexity",
                     title=f"codebook perplexity (dashed: K = {num_codes})", hline=num_codes)
    viz.save_usage_plot(os.path.join(workdir, "codebook_usage.png"), counts,
                        title=f"test-set code usage: perplexity {test['perplexity']:.1f}, "
                              f"{test['used_fraction']:.0%} of {counts.size} codes used")
