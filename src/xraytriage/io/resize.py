"""Resizing to the network's square input, in the pixel data's native dtype (cheap, no float64).

OpenCV's INTER_AREA has a fast path only for integer shrink factors; for any other ratio it is ~10x
slower (28 ms for a 1955x1841 uint16 radiograph to 224 px on one core). So a large shrink is done as an
integer box-average (fast path) to within 2x of the target, then INTER_AREA for the rest, which runs on
an image a few hundred pixels wide. Both stages are area averages, so the result stays alias-free.
"""

from __future__ import annotations

import cv2
import numpy as np

_CV_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32)}


def _area_resize(image: np.ndarray, width: int, height: int, gap: float = 2.0) -> np.ndarray:
    if image.dtype not in _CV_DTYPES:
        image = image.astype(np.float32)
    h, w = image.shape[:2]
    if w == width and h == height:
        return image
    if width > w or height > h:
        # Enlarging (or mixed): INTER_LINEAR; there is nothing to average.
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    factor = int(min(w / width, h / height) / gap)
    if factor >= 2:
        # Integer box average (OpenCV's fast INTER_AREA path) on whole blocks; the last < factor rows
        # and columns join the image again through the final stage's area weights.
        bh, bw = h // factor, w // factor
        core = cv2.resize(image[: bh * factor, : bw * factor], (bw, bh), interpolation=cv2.INTER_AREA)
        if bh * factor < h or bw * factor < w:
            # Fold the remainder strip in as one extra (partial-weight) row/column of block means.
            core = _with_remainder(image, core, factor)
        image = core
        if image.shape[1] == width and image.shape[0] == height:
            return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _with_remainder(image: np.ndarray, core: np.ndarray, factor: int) -> np.ndarray:
    """Append the block means of the leftover bottom rows / right columns (averaged over what exists).

    This keeps the full field of view; the final INTER_AREA stage weights that partial block slightly
    more than its true area, a sub-pixel effect on the outermost output row/column only.
    """
    h, w = image.shape
    bh, bw = core.shape
    rh, rw = h - bh * factor, w - bw * factor
    out = core
    if rw:
        strip = image[: bh * factor, bw * factor :]
        col = cv2.resize(strip, (1, bh), interpolation=cv2.INTER_AREA)
        out = np.concatenate([out, col.reshape(bh, 1)], axis=1)
    if rh:
        strip = image[bh * factor :, :]
        row = cv2.resize(strip, (out.shape[1], 1), interpolation=cv2.INTER_AREA)
        out = np.concatenate([out, row.reshape(1, -1)], axis=0)
    return out


def fit_shape(h: int, w: int, size: int, mode: str = "letterbox") -> tuple[int, int]:
    """Output (height, width) of :func:`resize_native` for an ``h`` x ``w`` input."""
    if mode == "stretch":
        return size, size
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_native(
    image: np.ndarray, size: int, mode: str = "letterbox", reducing_gap: float = 2.0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize ``image`` (HxW) to fit ``size`` x ``size``; returns the pixels (unpadded) and their shape.

    ``letterbox`` keeps the aspect ratio (the caller pads after normalisation); ``stretch`` fills the square.
    """
    nh, nw = fit_shape(image.shape[0], image.shape[1], size, mode)
    out = _area_resize(image, nw, nh, reducing_gap)
    return out, (int(out.shape[0]), int(out.shape[1]))


def resize_to(image: np.ndarray, shape: tuple[int, int], reducing_gap: float = 2.0) -> np.ndarray:
    """Resize ``image`` to exactly ``shape`` (height, width) with the same area averaging."""
    return _area_resize(image, shape[1], shape[0], reducing_gap)


def pad_to_square(image: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
    """Centre ``image`` on a ``size`` x ``size`` canvas filled with ``fill``."""
    h, w = image.shape
    if h == size and w == size:
        return image
    canvas = np.full((size, size), fill, dtype=image.dtype)
    top, left = (size - h) // 2, (size - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas
