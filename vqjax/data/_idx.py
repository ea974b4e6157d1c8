"""IDX files, the format of the original MNIST / Fashion-MNIST files: reading, writing, and a folder
of them as a source (:func:`idx_source`)."""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import struct
import zlib

import numpy as np

from vqjax.data._source import ImageSource, _ArraySource, _check_split

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
