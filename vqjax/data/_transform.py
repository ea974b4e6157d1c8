"""Converting, cropping and resizing images (:func:`transform_image`), and sources whose images are
transformed as they are read (:func:`transformed_source`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vqjax.data._source import Example, ImageSource

CROPS = ("none", "center")
_CHANNELS = (0, 1, 3)
_RESAMPLE = Image.Resampling.BICUBIC  # Pillow's default; antialiased when shrinking
_FIX_SHAPES = ("pass image_size=S (--config.data.image_size=S) to resize every image to S×S, with "
               "crop='center' to keep the aspect ratio, and channels=1 or 3 (--config.data.channels) to "
               "convert between grayscale and RGB")


def _check_transform(image_size: int, crop: str, channels: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 0:
        raise ValueError(f"image_size must be an integer >= 0 (0: as stored), got {image_size!r}.")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}.")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels not in _CHANNELS:
        raise ValueError(f"channels must be one of {_CHANNELS} (0: as stored), got {channels!r}.")


def transformed_shape(shape: Sequence[int | None], *, image_size: int = 0, crop: str = "none",
                      channels: int = 0) -> tuple:
    """The ``(H, W, C)`` that :func:`transform_image` makes of images of ``shape`` (None: varies)."""
    h, w, c = shape
    if image_size:
        h = w = image_size
    elif crop == "center":
        h = w = None if h is None or w is None else min(h, w)
    return h, w, channels or c


def _convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    c = image.shape[-1]
    if not channels or channels == c:
        return image
    if channels == 1 and c in (3, 4):  # Pillow's ITU-R 601-2 luma: L = (299 R + 587 G + 114 B) / 1000
        return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L"))[..., None]
    if channels == 1 and c == 2:  # gray and alpha: the gray
        return image[..., :1]
    if channels == 3 and c in (1, 2):
        return np.repeat(image[..., :1], 3, axis=-1)
    if channels == 3 and c == 4:  # RGBA: the alpha is dropped
        return image[..., :3]
    raise ValueError(f"cannot convert images of {c} channels to {channels}; expected 1, 2, 3 or 4 channels.")


def transform_image(image: np.ndarray, *, image_size: int = 0, crop: str = "none",
                    channels: int = 0) -> np.ndarray:
    """Converts, crops and resizes one image, in that order; deterministic.

    Args:
      image: uint8 ``[H, W, C]``.
      image_size: 0: the stored size; ``S``: ``S×S`` (Pillow's bicubic filter, antialiased when shrinking).
      crop: ``"none"``: the whole image (squeezed to ``S×S`` if its aspect ratio is not 1);
        ``"center"``: the central ``min(H, W)`` square, so that the aspect ratio is kept.
      channels: 0: as stored; 1: grayscale (Pillow's luma ``(299 R + 587 G + 114 B) / 1000`` of RGB(A));
        3: RGB (a gray channel repeated; an alpha channel dropped).

    Returns:
      uint8 ``[H', W', C']``, ``(H', W', C')`` = :func:`transformed_shape` of ``(H, W, C)``.
    """
    _check_transform(image_size, crop, channels)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"image must be uint8 [H, W, C], got {image.dtype} of shape {image.shape}.")
    image = _convert_channels(image, channels)
    h, w = image.shape[:2]
    if crop == "center" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top:top + side, left:left + side]
    if image_size and image.shape[:2] != (image_size, image_size):
        # One channel at a time: the same result as Pillow's RGB resize, and for any C (no
        # premultiplied alpha, as Pillow's RGBA resize would use).
        size = (image_size, image_size)
        planes = (Image.fromarray(np.ascontiguousarray(image[..., k])) for k in range(image.shape[-1]))
        image = np.stack([np.asarray(plane.resize(size, _RESAMPLE)) for plane in planes], axis=-1)
    return image


class _Transformed(ImageSource):
    """``source`` with :func:`transform_image` applied to each example as it is read."""

    def __init__(self, source: ImageSource, image_shape: tuple[int, int, int], options: dict):
        self.name = source.name
        self.image_shape = image_shape
        self.has_labels = source.has_labels
        self.classes = source.classes
        self._source = source
        self._options = options

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Example:
        example = self._source[index]
        image = transform_image(example["image"], **self._options)
        if image.shape != self.image_shape:
            raise ValueError(
                f"{self._source.where(index)} has an image of shape {np.shape(example['image'])}, giving "
                f"{image.shape} where the others give {self.image_shape}: images of mixed shapes; "
                f"{_FIX_SHAPES}.")
        return {"image": image, "label": example["label"]}

    def where(self, index: int) -> str:
        return self._source.where(index)


def transformed_source(source: ImageSource, *, image_size: int = 0, crop: str = "none",
                       channels: int = 0) -> ImageSource:
    """``source`` whose images are converted, cropped and resized by :func:`transform_image` as each
    example is read; ``source`` itself when every option is the default.

    Raises:
      ValueError: a bad option, or images whose size varies (None in ``source.image_shape``) without
        ``image_size`` (channels that vary: without ``channels``).
    """
    _check_transform(image_size, crop, channels)
    options = {"image_size": int(image_size), "crop": crop, "channels": int(channels)}
    if options == {"image_size": 0, "crop": "none", "channels": 0} and None not in source.image_shape:
        return source
    shape = transformed_shape(source.image_shape, **options)
    if None in shape:
        raise ValueError(f"{source.name} has images of varying shape {tuple(source.image_shape)} "
                         f"(None: varies); {_FIX_SHAPES}.")
    return _Transformed(source, shape, options)
