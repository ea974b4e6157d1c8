"""Pictures as PNG: image grids (Pillow) and simple plots (matplotlib, imported lazily)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["image_grid", "save_png", "reconstruction_grid", "save_usage_plot", "save_curve"]


def image_grid(images: np.ndarray, *, ncols: int, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile ``images [N, H, W, C]`` in [0, 1] into a ``[rows·(H+pad)+pad, cols·(W+pad)+pad, C]`` uint8 grid."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [N, H, W, C]; got shape {images.shape}.")
    n, h, w, c = images.shape
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive int; got {ncols!r}.")
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.float32)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = img
    return np.round(np.clip(grid, 0.0, 1.0) * 255).astype(np.uint8)


def reconstruction_grid(inputs: np.ndarray, reconstructions: np.ndarray, *, ncols: int = 16) -> np.ndarray:
    """Rows of inputs, each followed by the row of their reconstructions ([N, H, W, C] in [0, 1])."""
    inputs, reconstructions = np.asarray(inputs), np.asarray(reconstructions)
    if inputs.shape != reconstructions.shape:
        raise ValueError(
            f"`inputs` and `reconstructions` must match; got {inputs.shape} and {reconstructions.shape}."
        )
    n = inputs.shape[0] - inputs.shape[0] % ncols or inputs.shape[0]
    ncols = min(ncols, n)
    rows = []
    for start in range(0, n, ncols):
        rows += [inputs[start : start + ncols], reconstructions[start : start + ncols]]
    return image_grid(np.concatenate(rows), ncols=ncols)


def save_png(path: str | os.PathLike, grid: np.ndarray, *, scale: int = 2) -> None:
    """Write a uint8 ``[H, W, C]`` (C in {1, 3}) image, upscaled ``scale``× (nearest)."""
    from PIL import Image

    grid = np.asarray(grid)
    if grid.ndim == 3 and grid.shape[-1] == 1:
        grid = grid[..., 0]
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(os.fspath(path))


def save_usage_plot(path: str | os.PathLike, counts: np.ndarray, *, title: str = "") -> None:
    """Bar plot of per-code counts, sorted, with the perplexity in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.sort(np.asarray(counts, np.float64))[::-1]
    fig, ax = plt.subplots(figsize=(6, 2.5), dpi=120)
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="#3465a4")
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def save_curve(
    path: str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    labels: list[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> None:
    """A line through points ``(x_i, y_i)``, each marked and optionally labelled (one per run of a sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"`x` and `y` must be 1-D of one length; got {x.shape} and {y.shape}.")
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.plot(x, y, "o-", color="#3465a4")
    for i, text in enumerate(labels or []):
        ax.annotate(text, (x[i], y[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if logx:
        ax.set_xscale("log")
    if logy:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
