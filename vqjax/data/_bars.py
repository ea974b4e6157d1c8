"""oi-VAE's synthetic bars: 8×8 images whose rows are driven by 5 factors with a known map
(:data:`BARS_STRUCTURE`, :func:`bars_images`, :func:`bars_source`)."""

from __future__ import annotations

import numpy as np

from vqjax.data._source import ImageSource, _ArraySource, _check_split

# Which of the 5 generating factors drives which of the 8 rows (groups) of a bars image: factor 0
# rows 0-1, factor 1 row 2, factor 2 rows 3-5, factor 3 rows 5-6, factor 4 row 7. Row 5 is shared:
# factor 2 lights its left half, factor 3 its right half.
BARS_STRUCTURE = np.zeros((8, 5), np.int32)  # [G, K] 1 where factor k drives row g
for _k, _rows in enumerate(((0, 1), (2,), (3, 4, 5), (5, 6), (7,))):
    BARS_STRUCTURE[list(_rows), _k] = 1
BARS_STRUCTURE.setflags(write=False)
_BARS_SIZES = {"train": 8192, "test": 1024}
BARS_NOISE = 0.05  # the standard deviation of the pixel noise


def bars_images(num: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r"""``num`` synthetic 8×8 bars images and their generating factors, with a known factor-to-row map.

    Our design in the spirit of oi-VAE's bars (whose authors' script lights one random row per image):
    here several factors, some driving several rows and one row shared, so that the map to recover is
    richer than one-to-one.

    Factors ``z_k ~ N(0, 1)``, k = 0..4; row g's pixels are

        x_{g,c} = 0.1 + 0.8 Σ_k M_{gk} P_{gk,c} σ(2 z_k) + ε,   ε ~ N(0, 0.05²),

    with ``M`` = :data:`BARS_STRUCTURE` and ``P_{gk}`` the whole row, or its left (factor 2) and
    right (factor 3) half in the shared row 5; clipped to [0, 1] and stored as uint8.

    Returns:
      ``(images uint8 [num, 8, 8, 1], factors float32 [num, 5])``.
    """
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((num, BARS_STRUCTURE.shape[1])).astype(np.float32)
    pattern = np.repeat(BARS_STRUCTURE[:, :, None], 8, axis=2).astype(np.float32)  # [G, K, 8 columns]
    pattern[5, 2, 4:] = 0.0
    pattern[5, 3, :4] = 0.0
    intensity = 1.0 / (1.0 + np.exp(-2.0 * factors))  # [N, K]
    mean = 0.1 + 0.8 * np.einsum("nk,gkc->ngc", intensity, pattern)
    x = mean + BARS_NOISE * rng.standard_normal(mean.shape)
    images = np.round(255 * np.clip(x, 0.0, 1.0)).astype(np.uint8)[..., None]
    return images, factors


def bars_source(split: str) -> ImageSource:
    """The bars data set of :func:`bars_images`: 8,192 training (seed 0) and 1,024 test images (seed 1).

    Generated in memory, the same on every machine; no labels (``has_labels=False``, labels 0). The
    truth to recover is :data:`BARS_STRUCTURE`.
    """
    _check_split(split)
    images, _ = bars_images(_BARS_SIZES[split], seed=0 if split == "train" else 1)
    return _ArraySource("bars-8x8", images, np.zeros(len(images), np.int32), has_labels=False)
