"""``preprocess.jpeg2000_min_fraction``: accept a wavelet level that covers only part of the target size.

RG1 is 1955x1841 (levels 978, 489, 245 px on the long side), RG3 1760x1760 (880, 440, 220). Accepting a
level below the target means upsampling it a little (INTER_LINEAR), which loses some fine detail.
Tolerance against a full decode + area resize: the one the reduced decode already meets at fraction 1.0
(tests/io/test_io_dicom.py): mean < 0.01 and 99th percentile < 0.07 on the [0, 1] display scale.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xraytriage.config import PreprocessConfig
from xraytriage.io import load_image
from xraytriage.io.jpeg2000 import choose_level


@pytest.mark.parametrize(
    ("rows", "cols", "target", "fraction", "level"),
    [
        (1955, 1841, 512, 1.0, 1),  # 489 < 512: level 1 (978)
        (1955, 1841, 512, 0.95, 2),  # 489 >= 486.4
        (1955, 1841, 512, 0.9, 2),
        (1760, 1760, 512, 0.9, 1),  # 440 < 460.8
        (1760, 1760, 512, 0.86, 1),  # 0.86 * 512 = 440.3 > 440: the fraction is a hard floor
        (1760, 1760, 512, 0.85, 2),
        (1760, 1760, 224, 1.0, 2),  # 220 < 224
        (1760, 1760, 224, 0.98, 3),
        (1955, 1841, 224, 0.8, 3),  # 123 < 179.2: never two levels too far
    ],
)
def test_level_chosen_for_fraction(rows, cols, target, fraction, level):
    assert choose_level(rows, cols, target, False, 5, fraction) == level


@given(
    st.integers(16, 6000),
    st.integers(16, 6000),
    st.integers(16, 1024),
    st.floats(0.51, 1.0),
    st.booleans(),
    st.integers(0, 8),
)
def test_chosen_level_covers_the_fraction_and_is_the_coarsest(rows, cols, target, fraction, stretch, levels):
    side = min(rows, cols) if stretch else max(rows, cols)
    level = choose_level(rows, cols, target, stretch, levels, fraction)

    def size(r: int) -> int:
        return -(-side // (1 << r))

    assert 0 <= level <= min(levels, 6)
    assert level == 0 or size(level) >= target * fraction
    if level < min(levels, 6):
        assert size(level + 1) < target * fraction  # the next level would not cover it


@pytest.mark.parametrize(
    ("name", "size", "fraction", "factor"),
    [
        ("RG1_J2KR.dcm", 512, 0.9, 4),
        ("RG3_J2KR.dcm", 512, 0.85, 4),
        ("RG1_J2KI.dcm", 512, 0.9, 4),
        ("RG3_J2KR.dcm", 224, 0.85, 8),
    ],
)
def test_partial_level_close_to_full_decode(name, size, fraction, factor, pydicom_test_file):
    path = pydicom_test_file(name)
    cfg = PreprocessConfig(image_size=size, jpeg2000_min_fraction=fraction)
    image, meta = load_image(path, cfg)
    assert meta.decode_path == f"jpeg2000_reduced/{factor}"
    assert image.shape == (size, size) and image.dtype == np.float32
    full, full_meta = load_image(path, PreprocessConfig(image_size=size, reduce_jpeg2000=False))
    assert full_meta.decode_path == "pydicom"
    diff = np.abs(image - full)
    # RG3 at 224 drops to level 3 (220 px): the deepest wavelet low-pass differs most from a box average.
    p99_tol = 0.12 if factor == 8 and name.startswith("RG3") else 0.07
    assert diff.mean() < 0.01 and np.percentile(diff, 99) < p99_tol, (diff.mean(), np.percentile(diff, 99))
    # Upsampling a level that covers >= 85% of the target keeps the image, not just its statistics.
    assert np.corrcoef(image.ravel(), full.ravel())[0, 1] > 0.995


def test_fraction_one_never_upsamples(pydicom_test_file):
    path = pydicom_test_file("RG3_J2KR.dcm")
    _, meta = load_image(path, PreprocessConfig(image_size=512, jpeg2000_min_fraction=1.0))
    assert meta.decode_path == "jpeg2000_reduced/2"  # 880 px, shrunk; level 2 (440) would be enlarged
