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
