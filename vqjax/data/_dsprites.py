r"""A procedural dSprites: 64×64 binary images of a square, an ellipse and a heart over the original
dSprites factor grid, rendered from the factor values (:data:`DSPRITES_FACTORS`,
:func:`dsprites_factors`, :func:`dsprites_index`, :func:`dsprites_values`, :func:`render_dsprites`,
:func:`dsprites_source`).

dSprites (Matthey et al., 2017, https://github.com/deepmind/dsprites-dataset) is the data set with
known generative factors on which the disentanglement literature measures its models. This module
reproduces its **factors, not its exact pixels**: the original was drawn with the LOVE framework and
ships as a 737,280-image ``.npz``; here each image is drawn from its factor values by a deterministic
inside test on the pixel grid (NumPy, no download, no anti-aliasing).

What is the original's, from its README and the metadata of its ``.npz``:

* the factors and their order ``('color', 'shape', 'scale', 'orientation', 'posX', 'posY')``,
  ``latents_sizes = [1, 3, 6, 40, 32, 32]``, color constant (white): 737,280 images, each
  combination exactly once;
* the values: shape 1, 2, 3 (square, ellipse, heart), scale ``linspace(0.5, 1, 6)``, orientation
  ``linspace(0, 2π, 40)`` (both ends: orientations 0 and 2π are the same rotation, so factor values
  0 and 39 give the same image, here exactly), posX and posY ``linspace(0, 1, 32)``;
* the image order: index = mixed radix over the factors, posY fastest (``latents_bases``); color
  has one value, so it is dropped here and the 5 varying factors are the ground truth, as
  ``disentanglement_lib``'s ``DSprites`` takes them;
* every sprite lies inside the canvas at every position;
* as in the original, the square looks the same every quarter turn and the ellipse every half
  turn, so their orientation is only defined up to that (the heart's is not).

What is ours (chosen by eye from the original's figures, not measured from its pixels), in pixels
of the 64×64 canvas at scale 1 (every length times the scale):

* square: side 15 (about 1/4 of the canvas); ellipse: axes 18 × 9, the long one along x at
  orientation 0; heart: the implicit heart curve ``(x² + y² - 1)³ - x² y³ ≤ 0`` (a section of
  Taubin's heart surface), its point down at orientation 0, its unit 6.5 pixels: about 15 wide and
  14.5 tall;
* each shape turns about its centroid, counter-clockwise on screen as the orientation grows;
* the centroid is at ``12 + 40·posX`` pixels from the left edge and ``12 + 40·posY`` from the top
  (posY grows downwards, as the rows do): a 45° square reaches 10.6 pixels from its centre, so at
  least one pixel on each border stays empty, and each position step moves the sprite 1.29 pixels;
* pixel ``(row, col)`` is 1 when its centre ``(col + 1/2, row + 1/2)`` is inside the shape.

Images are uint8 0 / 255 (as the library's other sources; :func:`vqjax.data.make_pipeline` gives
them in {0, 1}); the original stores 0 / 1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from vqjax.data._source import Example, ImageSource, _check_split

__all__ = [
    "DSPRITES_FACTORS",
    "DSPRITES_SHAPES",
    "DSPRITES_SIZE",
    "DSpritesSource",
    "dsprites_factors",
    "dsprites_index",
    "dsprites_source",
    "dsprites_values",
    "render_dsprites",
]

# The 5 factors that vary, in the original's order (its first, 'color', has one value), and their sizes.
DSPRITES_FACTORS: tuple[tuple[str, int], ...] = (
    ("shape", 3), ("scale", 6), ("orientation", 40), ("posX", 32), ("posY", 32))
DSPRITES_SHAPES = ("square", "ellipse", "heart")
_SIZES = np.array([size for _, size in DSPRITES_FACTORS], np.int64)
DSPRITES_SIZE = int(np.prod(_SIZES))  # 737,280
_BASES = np.concatenate([np.cumprod(_SIZES[::-1])[::-1][1:], [1]])  # (245760, 40960, 1024, 32, 1)
_VALUES = (np.array([1.0, 2.0, 3.0]), np.linspace(0.5, 1.0, 6), np.linspace(0.0, 2 * np.pi, 40),
           np.linspace(0.0, 1.0, 32), np.linspace(0.0, 1.0, 32))

_CANVAS = 64
_MARGIN = 12.0  # the centroid lies in [12, 52] pixels along each axis
_SQUARE_HALF = 7.5  # half the side at scale 1
_ELLIPSE_AXES = (9.0, 4.5)  # semi-axes at scale 1 (along u, along v)
_HEART_UNIT = 6.5  # pixels per unit of the heart curve at scale 1
# The heart curve's centroid in its own units (x = 0 by symmetry; numerically, on a fine grid), about
# which it turns, and its farthest point from there: the point at (0, -1). Its area is 3.662 units².
_HEART_CENTROID_Y = 0.29348
_HEART_REACH = 1.0 + _HEART_CENTROID_Y
# How far a sprite reaches from its centroid at scale 1, in pixels: the largest of the square's
# half-diagonal (10.61), the ellipse's semi-major axis (9) and the heart's reach (8.41).
_REACH = max(_SQUARE_HALF * np.sqrt(2.0), _ELLIPSE_AXES[0], _HEART_UNIT * _HEART_REACH)
_WINDOW_HALF = int(np.floor(_REACH + 0.5))  # a sprite's pixels lie within this many of floor(centre)
_WINDOW = 2 * _WINDOW_HALF + 2  # the square of pixels rendered around each sprite


def _check_factors(factors) -> np.ndarray:
    f = np.asarray(factors)
    if f.ndim < 1 or f.shape[-1] != len(_SIZES) or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"factor indices must be integers [..., {len(_SIZES)}] in the order "
                         f"{[name for name, _ in DSPRITES_FACTORS]}; got {f.dtype} of shape {f.shape}.")
    if f.size and (np.any(f < 0) or np.any(f >= _SIZES)):
        raise ValueError(f"factor indices must be in [0, {list(map(int, _SIZES))}) factor by factor; got "
                         f"values from {f.reshape(-1, len(_SIZES)).min(0).tolist()} to "
                         f"{f.reshape(-1, len(_SIZES)).max(0).tolist()}.")
    return f.astype(np.int64)


def dsprites_factors(index) -> np.ndarray:
    """The factor indices ``int64 [..., 5]`` (shape, scale, orientation, posX, posY) of image
    ``index`` (an int or an integer array ``[...]`` in ``[0, 737280)``): the original's order, the
    mixed-radix digits of the index with posY fastest."""
    i = np.asarray(index)
    if not np.issubdtype(i.dtype, np.integer):
        raise ValueError(f"index must be an integer or integer array; got {i.dtype}.")
    if i.size and (np.any(i < 0) or np.any(i >= DSPRITES_SIZE)):
        raise IndexError(f"dSprites indices are in [0, {DSPRITES_SIZE}); got {i.min()} to {i.max()}.")
    return (i.astype(np.int64)[..., None] // _BASES) % _SIZES


def dsprites_index(factors) -> np.ndarray:
    """The image index ``int64 [...]`` of factor indices ``[..., 5]``: the inverse of :func:`dsprites_factors`
    (the original's ``latent_to_index`` without its constant color)."""
    return _check_factors(factors) @ _BASES


def dsprites_values(factors) -> np.ndarray:
    """The factor values ``float64 [..., 5]`` of factor indices ``[..., 5]``, as the original's
    ``latents_values`` without its color: shape 1, 2, 3; scale in [0.5, 1]; orientation in [0, 2π]
    (radians); posX and posY in [0, 1]."""
    f = _check_factors(factors)
    return np.stack([_VALUES[k][f[..., k]] for k in range(len(_VALUES))], axis=-1)


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a, b = u / _ELLIPSE_AXES[0], v / _ELLIPSE_AXES[1]
    return a * a + b * b <= 1.0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(x² + y² - 1)³ - x² y³ <= 0 in the curve's units, its centroid at (u, v) = 0."""
    x = u / _HEART_UNIT
    y = v / _HEART_UNIT + _HEART_CENTROID_Y
    x2 = x * x
    r = x2 + y * y - 1.0
    return r * r * r - x2 * y * y * y <= 0.0


# By shape index: whether the points (u, v) (pixels at scale 1 in the sprite's frame, v up) are inside.
_INSIDE = (_square, _ellipse, _heart)
# By orientation index: the rotation's cosine and sine; 2π taken mod 2π, so the last is the first exactly.
_COS, _SIN = np.cos(np.mod(_VALUES[2], 2 * np.pi)), np.sin(np.mod(_VALUES[2], 2 * np.pi))


@functools.cache
def _tables(window: int) -> tuple[np.ndarray, np.ndarray]:
    """By position index (posX and posY have the same values): the first column (row) of the
    ``window``-pixel square rendered around the sprite, int64 ``[32]``, and by position and scale index
    the offsets of those pixels' centres from the sprite's centre over the scale, float64 ``[32, 6, W]``
    (rightwards; for rows, downwards). ``window=64``: the whole canvas."""
    centres = _MARGIN + (_CANVAS - 2 * _MARGIN) * _VALUES[3]  # pixels from the left (top) edge
    first = np.clip(np.floor(centres).astype(np.int64) - (window - 2) // 2, 0, _CANVAS - window)
    offsets = first[:, None] + np.arange(window) + 0.5 - centres[:, None]  # [32, W]
    scaled = offsets[:, None, :] / _VALUES[1][None, :, None]  # [32, 6, W]
    for a in (first, scaled):
        a.setflags(write=False)
    return first, scaled


_CHUNK = 64  # images rendered together: larger batches are slower per image (their temporaries leave the cache)


def _render(f: np.ndarray, *, window: int = _WINDOW) -> np.ndarray:
    """uint8 ``[N, 64, 64]`` (0 / 255) of checked factor indices ``int64 [N, 5]``, :data:`_CHUNK` at a
    time. Only a ``window``-pixel square around each sprite is tested (``window=64``: the whole canvas)."""
    images = np.zeros((len(f), _CANVAS, _CANVAS), np.uint8)
    for start in range(0, len(f), _CHUNK):
        _render_into(images[start:start + _CHUNK], f[start:start + _CHUNK], window)
    return images


def _render_into(images: np.ndarray, f: np.ndarray, window: int) -> None:
    first, scaled = _tables(window)
    shape, scale, orientation, px, py = f.T
    dx = scaled[px, scale][:, None, :]  # [N, 1, W] the pixel centres rightwards of the sprite's centre
    dy = -scaled[py, scale][:, :, None]  # [N, W, 1] upwards
    cos, sin = _COS[orientation][:, None, None], _SIN[orientation][:, None, None]
    u = dx * cos + dy * sin  # in the sprite's frame: turned back by the orientation
    v = dy * cos - dx * sin
    inside = np.zeros(u.shape, bool)
    for s, test in enumerate(_INSIDE):
        rows = shape == s
        if rows.any():
            inside[rows] = test(u[rows], v[rows])
    offsets = np.arange(window)
    rows = (first[py][:, None] + offsets)[:, :, None]
    cols = (first[px][:, None] + offsets)[:, None, :]
    images[np.arange(len(f))[:, None, None], rows, cols] = inside.view(np.uint8) * np.uint8(255)


def _render_one(shape: int, scale: int, orientation: int, px: int, py: int) -> np.ndarray:
    """uint8 ``[64, 64, 1]``: :func:`_render` of one image, the same arithmetic without its batch overhead."""
    first, scaled = _tables(_WINDOW)
    dx = scaled[px, scale][None, :]
    dy = -scaled[py, scale][:, None]
    cos, sin = _COS[orientation], _SIN[orientation]
    inside = _INSIDE[shape](dx * cos + dy * sin, dy * cos - dx * sin)
    image = np.zeros((_CANVAS, _CANVAS, 1), np.uint8)
    r0, c0 = first[py], first[px]
    image[r0:r0 + _WINDOW, c0:c0 + _WINDOW, 0] = inside.view(np.uint8) * np.uint8(255)
    return image


def render_dsprites(factors) -> np.ndarray:
    """The images ``uint8 [N, 64, 64, 1]`` (0 / 255) of factor indices ``int [N, 5]`` (shape,
    scale, orientation, posX, posY; :data:`DSPRITES_FACTORS`). Deterministic; vectorised over N."""
    return _render(_check_factors(factors).reshape(-1, len(_SIZES)))[..., None]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of ``x + golden ratio``: a fixed bijection of uint64 that looks random."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@functools.cache
def _test_indices(num_test: int) -> np.ndarray:
    """The sorted ``num_test`` image indices of the test split: those whose :func:`_mix` is smallest."""
    keys = _mix(np.arange(DSPRITES_SIZE, dtype=np.uint64))
    test = np.sort(np.argpartition(keys, num_test - 1)[:num_test]).astype(np.int64)
    test.setflags(write=False)
    return test


class DSpritesSource(ImageSource):
    """The procedural dSprites as a Grain random-access source (:func:`dsprites_source`).

    ``source[i]`` is ``{"image": uint8 [64, 64, 1] (0 / 255), "label": int32 [] (the shape: 0 square,
    1 ellipse, 2 heart), "factors": int32 [5] (shape, scale, orientation, posX, posY indices),
    "index": int64 [] (the image's index in the full set)}``, rendered when it is read.

    Grain's own batching (``grain.MapDataset.source(src).batch(b)``) keeps every field;
    :func:`vqjax.data.make_pipeline` keeps ``image`` and ``label`` only, as does a resized or
    converted source (``get_source(..., image_size=S)``): the factors of a split's example ``i`` are
    ``dsprites_factors(src.indices(i))``.
    """

    image_shape = (_CANVAS, _CANVAS, 1)
    classes = DSPRITES_SHAPES

    def __init__(self, split: str, indices: np.ndarray | None = None):
        self.name = f"dsprites-procedural:{split}"
        self._indices = indices  # None: all images, in the original's order

    def __len__(self) -> int:
        return DSPRITES_SIZE if self._indices is None else len(self._indices)

    def indices(self, positions) -> np.ndarray:
        """The full set's image indices ``int64 [...]`` of this split's examples ``positions [...]``."""
        p = np.asarray(positions, np.int64)
        if p.size and (np.any(p < 0) or np.any(p >= len(self))):
            raise IndexError(f"{self.name} has {len(self)} examples; got positions {p.min()} to {p.max()}.")
        return p if self._indices is None else self._indices[p]

    def _records(self, positions: Sequence[int]) -> list[Example]:
        index = self.indices(positions)
        factors = dsprites_factors(index)
        images = render_dsprites(factors)
        factors = factors.astype(np.int32)
        return [{"image": images[k], "label": factors[k, 0], "factors": factors[k], "index": index[k]}
                for k in range(len(index))]

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} has {len(self)} examples; got index {index}.")
        image_index = int(index if self._indices is None else self._indices[index])
        digits, rest = [], image_index  # the mixed-radix digits, posY first
        for size in reversed(DSPRITES_FACTORS):
            rest, digit = divmod(rest, size[1])
            digits.append(digit)
        factors = np.array(digits[::-1], np.int32)
        return {"image": _render_one(*digits[::-1]), "label": factors[0], "factors": factors,
                "index": np.int64(image_index)}

    def _getitems(self, indices: Sequence[int]) -> list[Example]:
        """Grain's batched read: the examples ``indices``, rendered together."""
        return self._records(indices)

    def where(self, index: int) -> str:
        return f"example {index} of {self.name} (dSprites image {int(self.indices(index))})"


def dsprites_source(split: str, *, num_test: int = 10_000) -> DSpritesSource:
    """The procedural dSprites (this module's docstring), split as the disentanglement literature uses it.

    * ``"train"``: all 737,280 images in the original's order (the literature trains on the whole set
      and measures its metrics on samples of the same set);
    * ``"test"``: a fixed subset of ``num_test`` of them (default 10,000), for quick evaluations of
      reconstruction and of the metrics. It is *not* held out of "train". The subset is the
      ``num_test`` indices whose splitmix64 hash is smallest: the same on every machine and NumPy version.
    """
    _check_split(split)
    if isinstance(num_test, bool) or not isinstance(num_test, (int, np.integer)) or not 0 < num_test < DSPRITES_SIZE:
        raise ValueError(f"num_test must be an int in (0, {DSPRITES_SIZE}); got {num_test!r}.")
    return DSpritesSource(split, None if split == "train" else _test_indices(int(num_test)))
