"""A NumPy ``.npz`` file of image (and label) arrays, held in memory (:func:`npz_source`)."""

from __future__ import annotations

import os
import pathlib
import zipfile

import numpy as np

from vqjax.data._source import ImageSource, _ArraySource, _check_split, _split_positions

_NPZ_KEYS = ("arrays x_train and x_test (uint8 [N, H, W] or [N, H, W, C], or floats in [0, 1]) with "
             "integer labels y_train and y_test [N] if labelled, or images (and labels), split by "
             "test_fraction")


def _npz_images(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` of uint8 (or bool, or integer in [0, 255]) or float in [0, 1] images."""
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or not len(a) or a.shape[-1] not in (1, 2, 3, 4):
        channels_first = a.ndim == 4 and a.shape[1] in (1, 3, 4)
        hint = "; channels first? np.moveaxis(x, 1, -1) puts them last" if channels_first else ""
        raise ValueError(f"{what}: images of shape {np.shape(array)}, expected [N, H, W] or [N, H, W, C] "
                         f"with N >= 1 and C in 1..4{hint}.")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    lo, hi = (a.min(), a.max()) if np.issubdtype(a.dtype, np.number) else (None, None)
    if np.issubdtype(a.dtype, np.integer) and 0 <= lo and hi <= 255:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating) and 0 <= lo and hi <= 1:  # NaN fails both comparisons
        return np.round(a.astype(np.float64) * 255).astype(np.uint8)
    raise ValueError(f"{what}: images of {a.dtype} in [{lo}, {hi}], expected uint8 (integers in [0, 255]) "
                     "or floats in [0, 1].")


def _npz_labels(array: np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2 and a.shape[1] == 1:  # Keras' CIFAR-10 labels are [N, 1]
        a = a[:, 0]
    integral = np.issubdtype(a.dtype, np.integer) or (
        np.issubdtype(a.dtype, np.floating) and bool(np.all(np.isfinite(a) & (a == np.round(a)))))
    if a.ndim != 1 or len(a) != n or not integral or (n and a.min() < 0):
        raise ValueError(f"{what}: labels of {a.dtype} and shape {np.shape(array)}, expected {n} integers "
                         f">= 0 (one per image), [N] or [N, 1].")
    return a.astype(np.int32)


def npz_source(path: str | os.PathLike, split: str, *, test_fraction: float = 0.1) -> ImageSource:
    """A NumPy ``.npz`` file of images (and labels), held in memory.

    The keys: ``x_train``, ``x_test`` and, if labelled, ``y_train``, ``y_test`` (the layout of Keras'
    ``mnist.npz``); or ``images`` (and ``labels``), split as :func:`folder_source` splits a folder
    (by the CRC-32 of the example's index). Images are uint8 ``[N, H, W]`` or ``[N, H, W, C]``; floats
    in [0, 1] are converted to uint8 (``round(255 x)``), as are bools and integers in [0, 255].
    Labels are integers ``[N]`` (or ``[N, 1]``).

    Returns:
      An :class:`ImageSource` named ``"npz:<path>"``, ``has_labels=False`` (labels 0) without labels.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an ``.npz`` file, without the keys above, or arrays of another shape or type.
    """
    _check_split(split)
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"npz file {file} does not exist; expected a NumPy .npz file with "
                                f"{_NPZ_KEYS}.")
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{file}: not a NumPy .npz file ({err}); expected {_NPZ_KEYS}.") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(  # noqa: TRY004  (the file's content, not an argument's type)
            f"{file}: one array of shape {np.shape(archive)} (an .npy file), not an .npz archive; "
            f"expected {_NPZ_KEYS} (np.savez(path, x_train=..., ...)).")
    with archive:
        keys = set(archive.files)
        try:
            if {"x_train", "x_test"} <= keys:
                if len(keys & {"y_train", "y_test"}) == 1:
                    has, lacks = ("y_train", "y_test") if "y_train" in keys else ("y_test", "y_train")
                    raise ValueError(f"{file} has {has} but not {lacks}; expected both y_train and y_test "
                                     "(labelled) or neither.")
                images = _npz_images(archive[f"x_{split}"], f"{file}: x_{split}")
                labels = (_npz_labels(archive[f"y_{split}"], len(images), f"{file}: y_{split}")
                          if f"y_{split}" in keys else None)
            elif "images" in keys:
                images = _npz_images(archive["images"], f"{file}: images")
                labels = (_npz_labels(archive["labels"], len(images), f"{file}: labels")
                          if "labels" in keys else None)
                positions = _split_positions([b"%d" % i for i in range(len(images))], split, test_fraction,
                                             f"{file}: images")
                images, labels = images[positions], None if labels is None else labels[positions]
            else:
                raise ValueError(f"{file} has arrays {sorted(keys)}; expected {_NPZ_KEYS}.")
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{file}: a damaged .npz file ({err}); expected {_NPZ_KEYS}.") from err
    if labels is None:
        return _ArraySource(f"npz:{file}", images, np.zeros(len(images), np.int32), has_labels=False)
    return _ArraySource(f"npz:{file}", images, labels)
