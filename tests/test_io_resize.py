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
