"""The fast two-stage shrink (integer box average, then exact area weights) stays close to one INTER_AREA.

Tolerances, on the [0, 1] display scale after modality/VOI/inversion: mean < 0.002 (half an 8-bit grey
level), 99th percentile < 0.01, max < 0.08. The two stages differ from a single area average only where
the image varies inside one box block (its mean is spread evenly over the block's footprint), i.e. at
sharp edges such as lead markers; and they must differ less than swapping INTER_AREA for INTER_LINEAR does.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xraytriage.config import PreprocessConfig
from xraytriage.io import load_image
from xraytriage.io.resize import _prereduce_factor, fit_shape, resize_to


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG3_UNCI.dcm"])
@pytest.mark.parametrize("size", [224, 384, 512])
@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_two_stage_shrink_close_to_single_inter_area(name, size, mode, pydicom_test_file):
    path = pydicom_test_file(name)
    fast, meta = load_image(path, PreprocessConfig(image_size=size, resize_mode=mode))
    # resize_reducing_gap=16 exceeds every ratio here (<= 8.7), so this is one plain INTER_AREA resize.
    one_pass = PreprocessConfig(image_size=size, resize_mode=mode, resize_reducing_gap=16.0)
    single, _ = load_image(path, one_pass)
    h, w = fit_shape(meta.rows, meta.columns, size, mode)
    assert _prereduce_factor(min(meta.columns / w, meta.rows / h), 2.0) >= 2  # the fast path really ran
    diff = np.abs(fast - single)
    assert diff.mean() < 0.002 and np.percentile(diff, 99) < 0.01 and diff.max() < 0.08, (
        diff.mean(),
        np.percentile(diff, 99),
        diff.max(),
    )
    # Yardstick: the same full-resolution display image shrunk with INTER_AREA vs INTER_LINEAR.
    native, _ = load_image(path, PreprocessConfig(), resize=False)
    area = cv2.resize(native, (w, h), interpolation=cv2.INTER_AREA)
    linear = cv2.resize(native, (w, h), interpolation=cv2.INTER_LINEAR)
    yard = np.abs(area - linear)
    top, left = ((size - h) // 2, (size - w) // 2)
    ours = diff[top : top + h, left : left + w]
    assert ours.mean() < yard.mean() and np.percentile(ours, 99) < np.percentile(yard, 99)


def test_partial_blocks_get_their_true_weight():
    """On an image constant within the box blocks, the two stages equal one area resize exactly, including
    the partial last row/column of blocks (giving it a whole block's width would shift the far edge)."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 4096, size=(200, 190), dtype=np.uint16)
    blocky = np.kron(small, np.ones((3, 3), dtype=np.uint16))[:599, :568]  # remainders 2 rows, 1 column
    shape = fit_shape(*blocky.shape, 128)
    assert _prereduce_factor(min(blocky.shape[0] / shape[0], blocky.shape[1] / shape[1]), 2.0) == 3
    fast = resize_to(blocky, shape, 2.0)
    single = cv2.resize(blocky.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    assert fast.dtype in (np.uint16, np.float32)
    np.testing.assert_allclose(fast.astype(np.float32), single, atol=0.02)


@pytest.mark.parametrize("shape", [(1760, 1760), (1955, 1841), (999, 1001)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_no_float64_and_exact_shape(shape, dtype):
    image = (np.arange(shape[0] * shape[1]) % 251).astype(dtype).reshape(shape)
    for size in (224, 512):
        out_shape = fit_shape(*shape, size)
        out = resize_to(image, out_shape)
        assert out.shape == out_shape and out.dtype != np.float64
        assert abs(float(out.mean()) - float(image.mean())) < 1.0  # area averaging keeps the mean


@pytest.mark.parametrize(
    ("ratio", "gap", "factor"),
    [
        (3.44, 2.0, 2),
        (7.86, 2.0, 4),
        (8.73, 2.0, 5),
        (1.9, 2.0, 1),
        (2.0, 2.0, 1),
        (3.44, 1.0, 3),
        (20, 16.0, 2),
        (4.0, 1.0, 4),  # a whole ratio at a gap of 1: the whole shrink in the box stage, exactly
        (4.0, 1.5, 3),
    ],
)
def test_prereduce_factor_examples(ratio, gap, factor):
    assert _prereduce_factor(ratio, gap) == factor


@given(st.floats(1.0, 64.0), st.floats(1.0, 16.0))
def test_prereduce_factor_leaves_a_shrink_of_at_most_gap(ratio, gap):
    k = _prereduce_factor(ratio, gap)
    assert 1 <= k <= max(1, int(ratio + 1e-9))  # never turns the last stage into an enlargement
    assert k == 1 or ratio / k <= gap + 1e-9 or k == int(ratio + 1e-9)
    assert ratio > gap or k == 1  # no pre-reduction at or below the gap


# --- absolute pixel values on small images (hand-computed area averages) ------------------------------


def _block_means(image: np.ndarray, by: int, bx: int) -> np.ndarray:
    h, w = image.shape
    return image.astype(np.float64).reshape(h // by, by, w // bx, bx).mean(axis=(1, 3))


def test_a_whole_block_shrink_is_the_exact_block_mean_in_the_native_dtype() -> None:
    image = np.arange(64, dtype=np.float32).reshape(8, 8) ** 2
    out = resize_to(image, (2, 2))  # ratio 4 > gap 2: a 2x box stage, then area on the 4x4 blocks
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _block_means(image, 4, 4), rtol=1e-6)
    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 16)[:, ::-1].copy()
    out = resize_to(grey, (2, 4))  # ratios 4 and 2: min 2 <= gap, one area pass
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.rint(_block_means(grey, 4, 2)))
    out = resize_to(grey, (1, 1), reducing_gap=3.0)  # ratio 8: box 3, then a partial block: float32
    assert out.dtype == np.float32 and out.shape == (1, 1)
    assert abs(float(out[0, 0]) - grey.mean()) < 1e-3


@pytest.mark.parametrize("shape", [(10, 10), (10, 9), (9, 10), (11, 10)])
def test_partial_last_blocks_weigh_by_their_true_size(shape) -> None:
    small = np.random.default_rng(5).integers(0, 1000, size=(4, 4)).astype(np.float32)
    image = np.kron(small, np.ones((3, 3), dtype=np.float32))[: shape[0], : shape[1]]
    h, w = shape
    assert _prereduce_factor(min(h / 2, w / 2), 2.0) == 3  # box 3 leaves a partial row and/or column
    out = resize_to(image, (2, 2))
    assert out.dtype == np.float32
    # blocks constant within the box: the two stages equal one exact area average
    single = cv2.resize(image, (2, 2), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(out, single, rtol=1e-5)
    if shape == (10, 10):
        np.testing.assert_allclose(out, _block_means(image, 5, 5), rtol=1e-5)


def test_block_weights_are_the_overlaps_over_the_output_width() -> None:
    from xraytriage.io.resize import _block_weights

    # 10 pixels in blocks of 3 ([0,3) [3,6) [6,9) [9,10)) to 2 outputs ([0,5) [5,10))
    expected = [[3 / 5, 2 / 5, 0, 0], [0, 1 / 5, 3 / 5, 1 / 5]]
    np.testing.assert_allclose(_block_weights(10, 3, 2).toarray(), expected, rtol=1e-6)
    # a block ending exactly on an output edge ([0,3) [3,6) [6,9) [9,12) to [0,6) [6,12))
    expected = [[1 / 2, 1 / 2, 0, 0], [0, 0, 1 / 2, 1 / 2]]
    weights = _block_weights(12, 3, 2)
    np.testing.assert_allclose(weights.toarray(), expected, rtol=1e-6)
    assert weights.nnz == 4 and weights.dtype == np.float32


def test_enlarging_or_same_size_or_an_unusual_dtype() -> None:
    image = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    assert resize_to(image, (2, 2)) is image
    big = resize_to(image, (4, 4))
    expected = cv2.resize(image, (4, 4), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(big, expected)
    mixed = resize_to(image, (1, 4))  # taller source, wider output: linear too
    np.testing.assert_array_equal(mixed, cv2.resize(image, (4, 1), interpolation=cv2.INTER_LINEAR))
    wide = np.arange(16, dtype=np.int32).reshape(4, 4)  # OpenCV cannot resize int32: float32 instead
    out = resize_to(wide, (2, 2))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _block_means(wide, 2, 2))
    assert resize_to(wide, (4, 4)).dtype == np.float32


def test_fit_shape_and_resize_native_keep_the_aspect_ratio_or_stretch() -> None:
    from xraytriage.io.resize import resize_native

    assert fit_shape(100, 50, 224) == (224, 112)
    assert fit_shape(50, 100, 224, "letterbox") == (112, 224)
    assert fit_shape(100, 50, 224, "stretch") == (224, 224)
    assert fit_shape(1, 1000, 10) == (1, 10)  # never a zero-pixel side
    assert fit_shape(1000, 1, 10) == (10, 1)
    assert fit_shape(3, 2, 4) == (4, 3)  # 2 * 4/3 = 2.67 rounds to 3
    out, shape = resize_native(np.ones((8, 4), dtype=np.float32), 4)
    assert shape == (4, 2) == out.shape and all(type(s) is int for s in shape)
    out, shape = resize_native(np.ones((8, 4), dtype=np.float32), 4, "stretch")
    assert shape == (4, 4)


def test_pad_to_square_centres_the_image_on_the_fill() -> None:
    from xraytriage.io.resize import pad_to_square

    image = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    expected = np.full((5, 5), 9, dtype=np.uint8)
    expected[1:3, 1:4] = image
    out = pad_to_square(image, 5, fill=9)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(pad_to_square(image, 4)[1:3, 0:3], image)  # odd margins: top-left first
    assert pad_to_square(image, 4).sum() == image.sum()
    assert pad_to_square(image, 3).shape == (3, 3)  # one side already fits: still padded
    square = np.ones((3, 3))
    assert pad_to_square(square, 3) is square


def test_default_gap_keeps_whole_blocks_in_the_native_dtype_and_the_gap_is_passed_on() -> None:
    from xraytriage.io.resize import resize_native

    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 16)[:, ::-1].copy()
    # ratio 8, gap 2: box 4 (whole blocks) then area, uint16; gap 3 would take box 3 and a partial block
    for out in (resize_to(grey, (1, 1)), resize_native(grey, 1)[0]):
        assert out.dtype == np.uint16 and out.shape == (1, 1) and out[0, 0] == round(grey.mean())
    assert resize_native(grey, 1, reducing_gap=3.0)[0].dtype == np.float32


@pytest.mark.parametrize(("shape", "out_shape"), [((9, 16), (3, 8)), ((16, 9), (8, 3))])
def test_the_smaller_ratio_decides_the_box_stage(shape, out_shape) -> None:
    # ratios 2 and 3: the smaller (2) is within the gap, so one native-dtype INTER_AREA pass
    image = (np.arange(shape[0] * shape[1]) ** 2 % 4001).astype(np.uint16).reshape(shape)
    out = resize_to(image, out_shape)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, cv2.resize(image, out_shape[::-1], interpolation=cv2.INTER_AREA))


def test_a_box_of_two_with_a_partial_block_gets_exact_weights() -> None:
    small = np.random.default_rng(7).integers(0, 4096, size=(5, 5)).astype(np.uint16)
    image = np.kron(small, np.ones((2, 2), dtype=np.uint16))[:9, :9]  # ratio 3: box 2, 1 row/column left
    out = resize_to(image, (3, 3))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _block_means(image, 3, 3), rtol=1e-5)


@pytest.mark.parametrize(("shape", "out_shape", "axis"), [((6, 4), (2, 4), 0), ((4, 6), (4, 2), 1)])
def test_a_shrink_along_one_side_only_is_an_area_average(shape, out_shape, axis) -> None:
    image = (np.indices(shape)[axis] ** 2).astype(np.float32)  # 0, 1, 4, 9, 16, 25 along that side
    out = resize_to(image, out_shape)
    means = np.array([5 / 3, 50 / 3], dtype=np.float32)  # (0+1+4)/3, (9+16+25)/3; linear would give 1, 16
    np.testing.assert_allclose(
        out, np.broadcast_to(means[:, None] if axis == 0 else means, out_shape), rtol=1e-6
    )
