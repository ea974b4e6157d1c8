"""Pictures as PNG: image grids (Pillow) and simple plots (matplotlib, imported lazily)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["image_grid", "reconstruction_grid", "save_curve", "save_heatmap", "save_png", "save_usage_plot"]


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

    counts = np.asarray(counts, np.float64)
    counts = np.sort(counts.reshape(-1, counts.shape[-1]), axis=-1)[:, ::-1].reshape(-1)  # per stage
    fig, ax = plt.subplots(figsize=(6, 2.5), dpi=120)
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="#3465a4")
    ax.set_xlabel("code (sorted by use)")
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def _plain_log_y(ax) -> None:
    """A log y axis whose ticks read as plain numbers (300, not 3×10²)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


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
        _plain_log_y(ax)
    _label(ax, xlabel, ylabel, title)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def save_history(
    path: str | os.PathLike,
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    xlabel: str = "step",
    ylabel: str = "",
    title: str = "",
    hline: float | None = None,
    logy: bool = False,
) -> None:
    """Curves ``label -> (steps, values)`` on one axis, e.g. perplexity over training; ``hline`` marks a bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(series) > 3
    fig, ax = plt.subplots(figsize=(7.2 if many else 5.5, 3.6), dpi=120)
    for label, (x, y) in series.items():
        ax.plot(np.asarray(x), np.asarray(y), "o-" if len(x) < 30 else "-", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="0.5", ls="--", lw=1)
    if logy:
        _plain_log_y(ax)
    _label(ax, xlabel, ylabel, title)
    if many:  # beside the axes, not over the curves
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def pca_2d(points: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Project ``points [N, D]`` (and ``others``, with the same map) on their first two principal axes."""
    points = np.asarray(points, np.float64)
    mean = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(points.shape[1], 2)
    return [(np.asarray(p, np.float64) - mean) @ axes for p in (points, *others)]


def save_codebook_projection(
    path: str | os.PathLike, codebook: np.ndarray, z: np.ndarray, *, counts: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Encoder outputs ``z [N, D]`` (grey) and codes ``codebook [K, D]`` (coloured by use; unused: red x) in 2-D PCA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z2, e2 = pca_2d(z, codebook)
    fig, ax = plt.subplots(figsize=(5, 4.4), dpi=120)
    ax.scatter(z2[:, 0], z2[:, 1], s=2, c="0.7", alpha=0.4, lw=0, label="encoder outputs")
    if counts is None:
        ax.scatter(e2[:, 0], e2[:, 1], s=8, c="#3465a4", label="codes")
    else:
        used = np.asarray(counts).reshape(-1) > 0
        sc = ax.scatter(e2[used, 0], e2[used, 1], s=8, c=np.log10(np.asarray(counts).reshape(-1)[used]),
                        cmap="viridis", label="codes (colour: log10 count)")
        fig.colorbar(sc, ax=ax, shrink=0.8)
        if np.any(~used):
            ax.scatter(e2[~used, 0], e2[~used, 1], s=12, c="#cc0000", marker="x", lw=0.8, label="unused codes")
    ax.set_xlabel("PC 1 of the encoder outputs")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def save_heatmap(
    path: str | os.PathLike,
    matrix: np.ndarray,
    *,
    xlabels: list[str] | None = None,
    ylabels: list[str] | None = None,
    truth: np.ndarray | None = None,
    title: str = "",
) -> None:
    """A heatmap of a non-negative ``[R, C]`` matrix, exact zeros left blank; with ``truth`` (same
    shape, 0/1) a second panel of it, so that a learned map and the one it should recover sit side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, np.float64)
    if m.ndim != 2:
        raise ValueError(f"`matrix` must be 2-D; got shape {m.shape}.")
    if truth is not None and np.shape(truth) != m.shape:
        raise ValueError(f"`truth` must have the shape of `matrix` {m.shape}; got {np.shape(truth)}.")
    panels = [(np.ma.masked_where(m == 0, m), title or "", "viridis")]
    if truth is not None:
        t = np.asarray(truth, np.float64)
        panels.append((np.ma.masked_where(t == 0, t), "truth (latents matched)", "Greys"))
    width = max(4.0, 0.32 * m.shape[1] + 1.8)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), max(3.0, 0.3 * m.shape[0] + 1.5)),
                             dpi=120, squeeze=False)
    for ax, (data, text, cmap) in zip(axes[0], panels, strict=True):
        image = ax.imshow(data, cmap=cmap, aspect="auto", interpolation="nearest",
                          vmin=0.0, vmax=None if cmap == "viridis" else 1.0)
        ax.set_facecolor("white")
        ax.set_xticks(range(m.shape[1]), xlabels or range(m.shape[1]), rotation=90, fontsize=7)
        ax.set_yticks(range(m.shape[0]), ylabels or range(m.shape[0]), fontsize=7)
        ax.set_title(text, fontsize=9)
        ax.set_xticks(np.arange(-0.5, m.shape[1]), minor=True)
        ax.set_yticks(np.arange(-0.5, m.shape[0]), minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        if cmap == "viridis":
            fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def save_sweep_plot(
    path: str | os.PathLike,
    series: dict[str, list[tuple[float, float]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> None:
    """One metric against one swept hyperparameter: per label, the mean over repeats (seeds) at each x
    as a line, their min-max as a band, each run as a dot; log x when x spans more than a factor 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    xs_all = []
    for label, points in series.items():
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        xs = np.unique(pts[:, 0])
        ys = [pts[pts[:, 0] == x, 1] for x in xs]
        line = ax.plot(xs, [y.mean() for y in ys], "-", label=label)[0]
        ax.fill_between(xs, [y.min() for y in ys], [y.max() for y in ys], color=line.get_color(), alpha=0.2, lw=0)
        ax.plot(pts[:, 0], pts[:, 1], "o", ms=3, color=line.get_color())
        xs_all.extend(xs)
    xs_all = np.unique(np.asarray(xs_all))
    if xs_all.size and xs_all.min() > 0 and xs_all.max() / xs_all.min() > 10:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.set_xscale("log")  # ticks at the swept values, written plainly
        ax.xaxis.set_major_locator(FixedLocator(xs_all))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{x:g}" for x in xs_all])
    _label(ax, xlabel, ylabel, title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def save_labeled_points(
    path: str | os.PathLike,
    points: dict[str, tuple[float, list[float]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logy: bool = False,
    spread: float = 0.0,
) -> None:
    """One labelled point per entry ``label: (x, [y over repeats])``: the mean of the repeats, a bar
    from their min to their max, each repeat a small dot (methods of a study against their rate).
    ``spread`` > 0 fans out the entries that share an ``x`` over ``x ± spread`` (sorted by their mean y)
    so that their bars do not overlap; ``logy``: a log y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    means = {label: float(np.mean(ys)) for label, (_, ys) in points.items() if len(ys)}
    offsets: dict[str, float] = {}
    for x in {x for x, _ in points.values()}:
        same = sorted((lab for lab, (xx, _) in points.items() if xx == x and lab in means), key=means.get)
        for j, lab in enumerate(same):
            offsets[lab] = spread * (2 * j / (len(same) - 1) - 1) if len(same) > 1 else 0.0
    for i, (label, (x, ys)) in enumerate(points.items()):
        ys = np.asarray(ys, np.float64).reshape(-1)
        if ys.size == 0:
            continue
        color = plt.cm.tab20(i % 20)
        mean, xo = float(ys.mean()), x + offsets.get(label, 0.0)
        ax.errorbar([xo], [mean], yerr=[[mean - ys.min()], [ys.max() - mean]], fmt="o", color=color, ms=5,
                    capsize=3, label=label)
        ax.plot(np.full(ys.shape, xo), ys, ".", color=color, ms=3)
    if logy:
        _plain_log_y(ax)
    if spread > 0:  # ticks only at the true x values: the fan-out is for legibility
        ax.set_xticks(sorted({float(x) for x, _ in points.values()}))
    _label(ax, xlabel, ylabel, title)
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
