"""PNG / JPEG / TIFF decoding (8- and 16-bit, grey, alpha, RGB, palette)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xraytriage.io.errors import UnreadableImage
from xraytriage.io.metadata import ImageMeta


def read_raster(path: Path, fmt: str, max_pixels: int) -> tuple[np.ndarray, float, ImageMeta]:
    """Return the grey pixels in their native integer dtype, the dtype's full-scale value, and meta."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise UnreadableImage(path, "too_large", f"{w}x{h} > max_pixels={max_pixels}")
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                pixels, full_scale = np.clip(grey, 0, 255).astype(np.uint8), 255.0
            elif mode in ("LA", "La"):
                pixels, full_scale = np.asarray(im.getchannel("L")), 255.0
            elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                pixels, full_scale = np.asarray(im, dtype=np.uint16), 65535.0
            elif mode == "I":
                arr = np.asarray(im)
                full_scale = 65535.0 if arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0 else None
                if full_scale is None:
                    raise UnreadableImage(path, "unsupported_pixels", "32-bit signed integer image")
                pixels = arr.astype(np.uint16)
            elif mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
                pixels, full_scale = (arr - lo) / (hi - lo if hi > lo else 1.0), 1.0
            elif mode == "1":
                pixels, full_scale = np.asarray(im.convert("L")), 255.0
            elif mode == "L":
                pixels, full_scale = np.asarray(im), 255.0
            else:
                raise UnreadableImage(path, "unsupported_pixels", f"image mode {mode}")
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "decode_failed"
        raise UnreadableImage(path, reason, f"{fmt}: {exc}") from None
    meta = ImageMeta(format=fmt, rows=int(h), columns=int(w))
    return np.ascontiguousarray(pixels), full_scale, meta
