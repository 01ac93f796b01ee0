"""PNG (8/16-bit, L/LA/RGB/RGBA/palette), JPEG and TIFF decode to float32 [0, 1] with the same geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xraytriage.config import PreprocessConfig
from xraytriage.io import load_image


def _gradient(h: int = 300, w: int = 200) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).astype(np.uint8)


@pytest.mark.parametrize(
    ("mode", "ext"),
    [
        ("L", "png"),
        ("I;16", "png"),
        ("LA", "png"),
        ("RGB", "png"),
        ("RGBA", "png"),
        ("P", "png"),
        ("L", "jpg"),
        ("RGB", "jpg"),
        ("L", "tif"),
        ("I;16", "tif"),
    ],
)
def test_raster_formats(tmp_path, mode, ext):
    grey = _gradient()
    if mode == "I;16":
        im = Image.fromarray(grey.astype(np.uint16) * 257)
    else:
        im = Image.fromarray(grey).convert(mode)
    path = tmp_path / f"x.{ext}"
    im.save(path)
    native, _meta = load_image(path, resize=False)
    assert native.shape == (300, 200) and native.dtype == np.float32
    expected = grey.astype(np.float32) / 255.0
    tol = 0.03 if ext == "jpg" or mode == "P" else 2e-3
    assert np.abs(native - expected).mean() < tol
    resized, _ = load_image(path, PreprocessConfig(image_size=64))
    assert resized.shape == (64, 64) and resized.min() >= 0.0 and resized.max() <= 1.0


def _png(path, pixels: np.ndarray):
    Image.fromarray(pixels).save(path)
    return path


# 8-bit stored values; the darkest (3) and the brightest (203) sit at odd positions of the flat image.
SMALL = np.array([[10, 3, 50, 60], [70, 80, 90, 203], [110, 120, 130, 140], [150, 160, 170, 180]], np.uint8)


def test_full_scale_is_the_pixel_over_its_dtype_maximum(tmp_path):
    image, meta = load_image(_png(tmp_path / "x.png", SMALL), resize=False)
    assert meta.decode_path == "pillow" and meta.normalization == "full_scale"
    np.testing.assert_allclose(image, SMALL / 255.0, rtol=0, atol=1e-6)
    wide = (SMALL.astype(np.uint16) * 300).astype(np.uint16)
    image, _ = load_image(_png(tmp_path / "w.png", wide), resize=False)
    np.testing.assert_allclose(image, wide / 65535.0, rtol=0, atol=1e-6)


def test_minmax_and_percentile_stretch_every_pixel_by_the_image_own_range(tmp_path):
    path = _png(tmp_path / "x.png", SMALL)
    image, meta = load_image(path, PreprocessConfig(normalization="minmax"), resize=False)
    assert meta.normalization == "minmax" and image.dtype == np.float32
    np.testing.assert_allclose(image, (SMALL - 3.0) / 200.0, rtol=0, atol=1e-6)
    cfg = PreprocessConfig(normalization="percentile", percentile_low=10.0, percentile_high=80.0)
    image, meta = load_image(path, cfg, resize=False)
    lo, hi = np.percentile(SMALL, [10.0, 80.0])  # 45.5 and 150 (numpy's linear interpolation)
    assert meta.normalization == "percentile"
    np.testing.assert_allclose(image, np.clip((SMALL - lo) / (hi - lo), 0, 1), rtol=0, atol=1e-6)
    assert image.min() == 0.0 and image.max() == 1.0  # both ends clipped, not stretched past [0, 1]


@pytest.mark.parametrize("normalization", ["minmax", "percentile"])
def test_a_flat_image_stretches_to_black_not_to_nan(tmp_path, normalization):
    flat = np.full((5, 7), 77, np.uint8)
    image, _ = load_image(
        _png(tmp_path / "f.png", flat), PreprocessConfig(normalization=normalization), resize=False
    )
    assert image.shape == (5, 7) and image.dtype == np.float32 and np.all(image == 0.0)


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_a_wide_raster_keeps_its_aspect_or_fills_the_square(tmp_path, mode):
    wide = np.full((20, 40), 255, np.uint8)  # height 20, width 40
    image, _ = load_image(_png(tmp_path / "w.png", wide), PreprocessConfig(image_size=16, resize_mode=mode))
    assert image.shape == (16, 16)
    if mode == "stretch":
        assert np.all(image == 1.0)
    else:  # 20 x 40 -> 8 x 16, centred: 4 black rows above and below
        assert np.all(image[4:12] == 1.0) and np.all(image[:4] == 0.0) and np.all(image[12:] == 0.0)


def test_a_shrink_within_the_reducing_gap_is_one_exact_area_average(tmp_path):
    """96 x 96 -> 16 x 16 (a factor of 6): with resize_reducing_gap 16 each output pixel is its 6 x 6
    block's mean, rounded once to 8 bits; the default gap (2) first box-averages by 3 (rounded) and so
    may round twice."""
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96)).astype(np.uint8)
    path = _png(tmp_path / "r.png", pixels)
    block_means = pixels.reshape(16, 6, 16, 6).mean(axis=(1, 3))
    image, _ = load_image(path, PreprocessConfig(image_size=16, resize_reducing_gap=16.0))
    assert np.abs(image * 255.0 - block_means).max() <= 0.5 + 1e-3


def test_a_damaged_png_names_its_format(tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(1).integers(0, 256, (64, 64)).astype(np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:-200])
    from xraytriage.io import UnreadableImage

    with pytest.raises(UnreadableImage, match=r"\(png: "):
        load_image(cut)


def test_a_large_image_is_stretched_from_a_sample_close_to_its_full_range(tmp_path):
    """600 x 1000 pixels, more than the statistics sample: min-max from every other pixel still maps
    the image to within one grey level of its exact min-max stretch."""
    grey = _gradient(600, 1000)
    image, _ = load_image(
        _png(tmp_path / "big.png", grey), PreprocessConfig(normalization="minmax"), resize=False
    )
    assert image.shape == (600, 1000)
    assert np.abs(image - grey / 255.0).max() <= 1.0 / 254.0
