"""vqjax.groups: partitions of the flattened dimensions (make_groups, image_regions, grid_regions,
row_groups) against NumPy reshapes and slices, and the errors for every way of not partitioning."""

import numpy as np
import pytest

from vqjax.groups import Groups, grid_regions, image_regions, make_groups, row_groups


def _check_partition(groups: Groups):
    """The invariants every Groups must satisfy."""
    assert isinstance(groups, Groups)
    assert len(groups.indices) == len(groups.names) == groups.num_groups
    assert groups.sizes == tuple(len(i) for i in groups.indices)
    assert sum(groups.sizes) == groups.num_dims
    allidx = np.concatenate(groups.indices)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(groups.num_dims))
    for idx in groups.indices:
        assert idx.ndim == 1 and np.issubdtype(idx.dtype, np.integer)
        assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    a = groups.assignment()
    assert a.shape == (groups.num_dims,) and np.issubdtype(a.dtype, np.integer)
    for g, idx in enumerate(groups.indices):
        np.testing.assert_array_equal(np.flatnonzero(a == g), idx)


# --------------------------------------------------------------------------- make_groups: valid


def test_make_groups_round_trips_an_unsorted_partition():
    lists = [[5, 0, 3], [1], [7, 2, 6, 4]]
    g = make_groups(lists, 8, names=["a", "b", "c"])
    _check_partition(g)
    assert g.names == ("a", "b", "c") and g.num_dims == 8 and g.num_groups == 3
    assert g.sizes == (3, 1, 4)
    for idx, lst in zip(g.indices, lists):
        np.testing.assert_array_equal(idx, sorted(lst))
    np.testing.assert_array_equal(g.assignment(), [0, 1, 2, 0, 2, 0, 2, 2])


def test_make_groups_default_names_and_other_input_types():
    g = make_groups((np.array([2, 0]), (1, 3), range(4, 6)), np.int64(6))
    _check_partition(g)
    assert g.names == ("group 0", "group 1", "group 2")
    assert g.num_dims == 6 and type(g.num_dims) is int
    np.testing.assert_array_equal(g.indices[2], [4, 5])
    single = make_groups([list(range(10))[::-1]], 10, names=("all",))
    _check_partition(single)
    assert single.sizes == (10,) and single.names == ("all",)
    np.testing.assert_array_equal(single.assignment(), np.zeros(10))


def test_make_groups_random_partitions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = int(rng.integers(1, 60))
        k = int(rng.integers(1, d + 1))
        owner = rng.permutation(np.concatenate([np.arange(k), rng.integers(0, k, size=d - k)]))
        lists = [rng.permutation(np.flatnonzero(owner == g)).tolist() for g in range(k)]
        g = make_groups(lists, d)
        _check_partition(g)
        np.testing.assert_array_equal(g.assignment(), owner)


# --------------------------------------------------------------------------- make_groups: errors


def test_overlap_names_both_groups_and_the_shared_dimension():
    with pytest.raises(ValueError, match=r"overlap.*dimension 3.*group 0 \('left'\).*group 1 \('right'\)"):
        make_groups([[0, 1, 2, 3], [3, 4, 5]], 6, names=["left", "right"])
    with pytest.raises(ValueError, match=r"dimension 2.*group 0 .*group 2 "):
        make_groups([[0, 2], [1], [4, 2, 3]], 5)


def test_gap_names_the_missing_dimensions():
    with pytest.raises(ValueError, match=r"gap.*\[2, 5\]"):
        make_groups([[0, 1], [3, 4]], 6)
    with pytest.raises(ValueError, match=r"2 of 6 dimensions"):
        make_groups([[0, 1], [3, 4]], 6)


@pytest.mark.parametrize("bad", [[0, 6], [-1, 2]])
def test_out_of_range_and_negative_indices(bad):
    with pytest.raises(ValueError, match=rf"group 1 \('b'\).*out of range.*\[{bad[0] if bad[0] < 0 else bad[1]}\]"):
        make_groups([[1, 3, 4, 5], bad], 6, names=["a", "b"])


def test_duplicate_index_inside_a_group():
    with pytest.raises(ValueError, match=r"group 0 .*twice.*\[1\]"):
        make_groups([[0, 1, 1], [2]], 3)


def test_empty_group():
    with pytest.raises(ValueError, match=r"group 1 \('mid'\) is empty"):
        make_groups([[0], [], [1]], 2, names=["lo", "mid", "hi"])
    with pytest.raises(ValueError, match="empty"):
        make_groups([[0, 1], np.array([], np.int64)], 2)


@pytest.mark.parametrize("bad", [[0.0, 1.0], [True, False], ["0", "1"], [[0], [1]], np.array([0.5, 1.5])])
def test_non_integer_indices(bad):
    with pytest.raises(ValueError, match=r"group 1 .*flat list of ints"):
        make_groups([[2, 3], bad], 4)


def test_names_must_be_one_distinct_string_per_group():
    with pytest.raises(ValueError, match=r"`names` must be 2 strings"):
        make_groups([[0], [1]], 2, names=["only one"])
    with pytest.raises(ValueError, match=r"`names` must be 2 strings"):
        make_groups([[0], [1]], 2, names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"`names` must be 2 strings"):
        make_groups([[0], [1]], 2, names=["a", 1])
    with pytest.raises(ValueError, match=r"distinct.*'x'"):
        make_groups([[0], [1], [2]], 3, names=["x", "y", "x"])


@pytest.mark.parametrize("num_dims", [0, -3, 2.0, True, "4", None])
def test_num_dims_must_be_a_positive_int(num_dims):
    with pytest.raises(ValueError, match="num_dims"):
        make_groups([[0], [1]], num_dims)


@pytest.mark.parametrize("lists", [[], (), "01", np.array([[0], [1]]), 3, None])
def test_index_lists_must_be_a_non_empty_sequence(lists):
    with pytest.raises(ValueError, match="index_lists"):
        make_groups(lists, 2)


# --------------------------------------------------------------------------- image partitions


def test_row_groups_are_consecutive_flat_rows():
    g = row_groups((8, 8, 1))
    _check_partition(g)
    assert g.num_groups == 8 and g.sizes == (8,) * 8 and g.num_dims == 64
    assert g.names == tuple(f"row {i}" for i in range(8))
    for i, idx in enumerate(g.indices):
        np.testing.assert_array_equal(idx, np.arange(8 * i, 8 * i + 8))
    # With channels: each row holds W*C consecutive flat dimensions.
    g3 = row_groups((4, 5, 3))
    _check_partition(g3)
    assert g3.sizes == (15,) * 4
    np.testing.assert_array_equal(g3.indices[2], np.arange(30, 45))


def test_grid_regions_of_an_mnist_image():
    g = grid_regions((28, 28, 1), (4, 4))
    _check_partition(g)
    assert g.num_groups == 16 and g.sizes == (49,) * 16 and g.num_dims == 784
    assert g.names == tuple(f"r{i}c{j}" for i in range(4) for j in range(4))
    flat = np.arange(784).reshape(28, 28)
    for i in range(4):
        for j in range(4):
            expected = flat[7 * i:7 * i + 7, 7 * j:7 * j + 7].ravel()
            np.testing.assert_array_equal(g.indices[g.names.index(f"r{i}c{j}")], np.sort(expected))
    # Spot-check one region by hand: rows 7..13, columns 21..27.
    r1c3 = g.indices[g.names.index("r1c3")]
    assert r1c3[0] == 7 * 28 + 21 and r1c3[6] == 7 * 28 + 27 and r1c3[7] == 8 * 28 + 21 and r1c3[-1] == 13 * 28 + 27
    # The assignment, seen as an image, is the block pattern.
    np.testing.assert_array_equal(g.assignment().reshape(28, 28),
                                  np.kron(np.arange(16).reshape(4, 4), np.ones((7, 7), int)))


def test_grid_regions_keep_the_channels_of_a_pixel_together():
    g = grid_regions((6, 4, 3), (3, 2))
    _check_partition(g)
    assert g.num_groups == 6 and g.sizes == (12,) * 6
    flat = np.arange(6 * 4 * 3).reshape(6, 4, 3)
    np.testing.assert_array_equal(g.indices[g.names.index("r2c1")], np.sort(flat[4:6, 2:4].ravel()))
    a = g.assignment().reshape(6, 4, 3)
    assert np.all(a == a[:, :, :1])  # all channels of every pixel in one group
    # A 1×1 grid is one group of everything.
    one = grid_regions((6, 4, 3), (1, 1))
    assert one.num_groups == 1 and one.sizes == (72,) and one.names == ("r0c0",)


def test_image_regions_from_named_rectangles():
    regions = {"top": ((0, 2), (0, 5)), "bottom left": ((2, 4), (0, 2)), "bottom right": ((2, 4), (2, 5))}
    g = image_regions((4, 5, 2), regions)
    _check_partition(g)
    assert g.names == ("top", "bottom left", "bottom right")
    flat = np.arange(40).reshape(4, 5, 2)
    for name, ((r0, r1), (c0, c1)) in regions.items():
        np.testing.assert_array_equal(g.indices[g.names.index(name)], np.sort(flat[r0:r1, c0:c1].ravel()))
    assert g.sizes == (20, 8, 12)
    # Non-string keys become their str().
    g2 = image_regions((2, 2, 1), {0: ((0, 1), (0, 2)), 1: ((1, 2), (0, 2))})
    assert g2.names == ("0", "1")


def test_image_regions_overlap_names_both_regions():
    with pytest.raises(ValueError, match=r"overlap.*'upper'.*'lower'"):
        image_regions((4, 4, 1), {"upper": ((0, 3), (0, 4)), "lower": ((2, 4), (0, 4))})


def test_image_regions_with_a_gap():
    # Row 2 is covered by no rectangle: flat dims 8..11.
    with pytest.raises(ValueError, match=r"gap.*\[8, 9, 10, 11\]"):
        image_regions((4, 4, 1), {"upper": ((0, 2), (0, 4)), "lower": ((3, 4), (0, 4))})


@pytest.mark.parametrize("box", [
    ((0, 5), (0, 4)),    # below the image
    ((0, 4), (0, 5)),    # right of the image
    ((-1, 4), (0, 4)),   # negative start
    ((2, 2), (0, 4)),    # empty
    ((3, 1), (0, 4)),    # reversed
])
def test_image_regions_rejects_rectangles_outside_the_image_or_empty(box):
    with pytest.raises(ValueError, match=r"regions\['bad'\].*outside the 4×4 image"):
        image_regions((4, 4, 1), {"bad": box})


@pytest.mark.parametrize("box", [(0, 4), ((0, 4),), ((0, 4), (0, 4), (0, 1)), ((0, 1, 2), (0, 4)), None, 7])
def test_image_regions_rejects_malformed_boxes(box):
    with pytest.raises(ValueError, match=r"regions\['bad'\].*must be \(\(row_start"):
        image_regions((4, 4, 1), {"bad": box})


@pytest.mark.parametrize("box", [((0.0, 4.0), (0, 4)), ((0, 4), (0, 4.0)), (("0", "4"), (0, 4)), ((0, None), (0, 4))])
def test_image_regions_rejects_non_integer_coordinates_with_a_value_error(box):
    """Coordinates that are not ints are a malformed box: a ValueError naming the region."""
    with pytest.raises(ValueError, match=r"regions\['bad'\]"):
        image_regions((4, 4, 1), {"bad": box})


@pytest.mark.parametrize("regions", [{}, [("a", ((0, 4), (0, 4)))], None])
def test_image_regions_needs_a_non_empty_mapping(regions):
    with pytest.raises(ValueError, match="regions"):
        image_regions((4, 4, 1), regions)


@pytest.mark.parametrize("grid", [(3, 4), (4, 3), (0, 4), (4, 0), (-4, 4), (56, 4)])
def test_grid_must_divide_the_image(grid):
    with pytest.raises(ValueError, match=r"`grid`.*divide the 28×28 image"):
        grid_regions((28, 28, 1), grid)


@pytest.mark.parametrize("grid", [(2.0, 2), (4,), (2, 2, 2), 4])
def test_malformed_grid_raises_a_value_error(grid):
    with pytest.raises(ValueError, match="grid"):
        grid_regions((28, 28, 1), grid)


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1, 1), (0, 28, 1), (28, -1, 1), (28, 28, 0),
                                   (28.0, 28, 1), (28, True, 1), ("28", 28, 1), 784])
@pytest.mark.parametrize("fn", [lambda s: row_groups(s), lambda s: grid_regions(s, (2, 2)),
                                lambda s: image_regions(s, {"all": ((0, 28), (0, 28))})],
                         ids=["row_groups", "grid_regions", "image_regions"])
def test_bad_image_shape(fn, shape):
    with pytest.raises(ValueError, match="image_shape"):
        fn(shape)


def test_image_shape_accepts_numpy_ints_and_arrays():
    g = row_groups(np.array([3, 2, 2]))
    _check_partition(g)
    assert g.num_groups == 3 and g.num_dims == 12
    g = grid_regions((np.int64(4), np.int32(4), 1), (2, 2))
    assert g.sizes == (4,) * 4
