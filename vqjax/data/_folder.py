"""A folder of your own image files, labelled by class sub-folder and read with Pillow one at a time
(:func:`folder_source`)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from vqjax.data._source import _SPLITS, Example, ImageSource, _check_split, _split_positions
from vqjax.data._transform import _FIX_SHAPES, _check_transform, transformed_shape, transformed_source

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
_GRAY_MODES = ("1", "L", "LA", "La")  # and the 16- and 32-bit integer modes "I;16", "I"


def _pil_array(image: Image.Image) -> np.ndarray:
    """uint8 ``[H, W, 1]`` of a grayscale image (16-bit: the high byte), else uint8 ``[H, W, 3]`` (RGB;
    an alpha channel is dropped, a palette resolved)."""
    if image.mode in _GRAY_MODES:
        return np.asarray(image.convert("L"))[..., None]
    if image.mode.startswith("I"):
        return (np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)[..., None]
    return np.asarray(image.convert("RGB"))


def _open_image(path: pathlib.Path, read: Callable[[Image.Image], object]):
    try:
        with Image.open(path) as image:
            return read(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not an image Pillow can read ({err}); expected PNG / JPEG files "
                         f"({', '.join(IMAGE_SUFFIXES)}); remove or fix it.") from err


def _stored_shape(image: Image.Image) -> tuple[int, int, int]:
    """``(H, W, C)`` that :func:`_pil_array` gives, from the header alone."""
    w, h = image.size
    return h, w, 1 if image.mode in _GRAY_MODES or image.mode.startswith("I") else 3


class _FolderSource(ImageSource):
    """Image files read with Pillow when asked for; ``image_shape`` holds None where sizes vary."""

    def __init__(self, name: str, paths: list[pathlib.Path], labels: np.ndarray, image_shape: tuple,
                 classes: tuple[str, ...]):
        self.name = name
        self.image_shape = image_shape
        self.has_labels = bool(classes)
        self.classes = classes
        self._paths = paths
        self._labels = labels

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Example:
        image = _open_image(self._paths[index], _pil_array)
        if any(want not in (None, got) for want, got in zip(self.image_shape, image.shape)):
            raise ValueError(f"{self._paths[index]} has an image of shape {image.shape} where the folder's "
                             f"images are {self.image_shape} (it changed after the folder was read?); "
                             f"{_FIX_SHAPES}.")
        return {"image": image, "label": self._labels[index]}

    def where(self, index: int) -> str:
        return str(self._paths[index])


def _hidden(path: pathlib.Path, root: pathlib.Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _list_images(folder: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, list[pathlib.Path]], int]:
    """``(images directly in folder, {class: images under its sub-folder, at any depth}, other files)``;
    files and folders whose names start with "." are ignored."""
    flat, classes, skipped = [], {}, 0
    for entry in sorted(folder.iterdir()):
        if _hidden(entry, folder):
            continue
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*") if p.is_file() and not _hidden(p, entry))
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += len(files) - len(images)
            if images:
                classes[entry.name] = images
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            flat.append(entry)
        else:
            skipped += 1
    if flat and classes:
        raise ValueError(
            f"image folder {folder} has both image files ({flat[0].name}, ...) and class sub-folders "
            f"({', '.join(classes)}); expected one layout: images in class sub-folders (labelled by the "
            "sub-folder) or images directly in the folder (no labels).")
    return flat, classes, skipped


def folder_source(path: str | os.PathLike, split: str, *, test_fraction: float = 0.1, image_size: int = 0,
                  crop: str = "none", channels: int = 0) -> ImageSource:
    """A folder of your own image files (PNG, JPEG, BMP, GIF, WebP), each read with Pillow when asked for.

    Layouts, as torchvision's ``ImageFolder``::

        path/cat/001.png, path/dog/a/002.jpg, ...      labels: the sorted sub-folder names (cat 0, dog 1)
        path/001.png, path/002.jpg, ...                no labels (has_labels=False, labels 0)
        path/train/..., path/test/...                  the splits, each in one of the layouts above

    With ``train/`` and ``test/`` sub-folders, ``split`` reads one of them (labels index the sorted
    union of their class names); else the images are split deterministically: "test" is the
    ``⌊test_fraction·N⌉`` files whose relative paths have the smallest CRC-32 (the same on every
    machine; adding files moves few others), "train" the rest. Files of other suffixes and names
    starting with "." are skipped; grayscale images give 1 channel, all others RGB (alpha dropped).
    Unless both ``image_size`` and ``channels`` are set, every file's header is read once here to
    check that the images have one shape.

    Args:
      path: the folder.
      split: ``"train"`` or ``"test"``.
      test_fraction: the share of the images that is ``"test"`` without ``train/`` and ``test/`` folders.
      image_size, crop, channels: as :func:`transform_image`.

    Returns:
      An :class:`ImageSource` named ``"folder:<path>"`` with ``classes`` (the sub-folder names, or ``()``).

    Raises:
      FileNotFoundError: the folder does not exist or has no image files.
      ValueError: both image files and class sub-folders, unreadable image files (named), or images
        of mixed shapes without ``image_size`` / ``channels`` (naming two files and their shapes).
    """
    _check_split(split)
    _check_transform(image_size, crop, channels)
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} {'is a file' if root.exists() else 'does not exist'}; "
                                "expected a folder of PNG / JPEG files (in class sub-folders for labels).")
    split_dirs = [root / s for s in _SPLITS]
    folder = root / split if all(d.is_dir() for d in split_dirs) else root
    listings = {d: _list_images(d) for d in (split_dirs if folder != root else [root])}
    if len({bool(classes) for flat, classes, _ in listings.values() if flat or classes}) > 1:
        raise ValueError(f"image folder {root}: one of train/ and test/ has class sub-folders, the other "
                         "does not; expected the same layout in both.")
    classes = tuple(sorted(set().union(*(classes for _, classes, _ in listings.values()))))

    def files(listing) -> tuple[list[pathlib.Path], np.ndarray]:
        flat, by_class, _ = listing
        names = sorted(by_class)
        return (flat + [p for c in names for p in by_class[c]],
                np.array([classes.index(c) for c in names for _ in by_class[c]] or [0] * len(flat), np.int32))

    paths, labels = files(listings[folder])
    if not paths:
        raise FileNotFoundError(
            f"image folder {folder} has no image files ({', '.join(IMAGE_SUFFIXES)}; {listings[folder][2]} "
            "other files skipped); expected images directly in it or in class sub-folders.")
    everything = [p for listing in listings.values() for p in files(listing)[0]]  # both splits: one shape
    if folder == root:
        keys = [p.relative_to(root).as_posix().encode() for p in paths]
        positions = _split_positions(keys, split, test_fraction, f"image folder {root}")
        paths, labels = [paths[i] for i in positions], labels[positions]
    options = {"image_size": image_size, "crop": crop, "channels": channels}
    if image_size and channels:
        stored = (None, None, None)  # the output's shape is known without reading any file
    else:
        shapes = [_open_image(p, _stored_shape) for p in everything]
        out = [transformed_shape(shape, **options) for shape in shapes]
        other = next((i for i, o in enumerate(out) if o != out[0]), None)
        if other is not None:
            raise ValueError(
                f"image folder {root} has images of mixed shapes: {everything[0]} is {shapes[0]} and "
                f"{everything[other]} is {shapes[other]} (H, W, C), giving {out[0]} and {out[other]} "
                f"({sum(o == out[0] for o in out)} of the {len(out)} images give {out[0]}); {_FIX_SHAPES}.")
        stored = tuple(d if all(s[k] == d for s in shapes) else None for k, d in enumerate(shapes[0]))
    source = _FolderSource(f"folder:{root}", paths, labels, stored, classes)
    return transformed_source(source, **options)
