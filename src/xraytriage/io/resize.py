"""Resizing to the network's square input, on the stored values (cheap, no float64).

OpenCV's INTER_AREA has a fast path only for integer shrink factors; for any other ratio its cost grows
with the source size (RG3, 1760 px uint16 -> 512: ~6 ms on one core). So a shrink by more than
``reducing_gap`` is an exact integer box average (fast path, native dtype) with the smallest factor ``k``
that leaves at most ``reducing_gap`` to go, then area weights for the rest on a ``k``-times smaller image.
Both stages are area averages, so the result stays alias-free and close to one INTER_AREA resize
(tests/io/test_io_resize.py). Output is the native dtype, or float32 where a partial block needed exact
weights.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
from scipy import sparse

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
    factor = _prereduce_factor(min(w / width, h / height), gap)
    if factor < 2:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    # Integer box average on whole blocks: OpenCV's fast INTER_AREA path, in the native dtype.
    bh, bw = h // factor, w // factor
    core = cv2.resize(image[: bh * factor, : bw * factor], (bw, bh), interpolation=cv2.INTER_AREA)
    if bh * factor == h and bw * factor == w:
        if core.shape[:2] == (height, width):
            return core
        # Every block has the same size, so OpenCV's area weights on the blocks are the exact ones.
        return cv2.resize(core, (width, height), interpolation=cv2.INTER_AREA)
    # A partial last block row/column: OpenCV would give it a whole block's width and stretch the image
    # by up to one block (a visible misregistration at the far edge), so its weights are computed here.
    blocks = _with_remainder(image, core, factor)
    return _area_from_blocks(blocks, h, w, factor, height, width)


def _prereduce_factor(ratio: float, gap: float) -> int:
    """Integer box factor ``k`` leaving an exact-area stage of at most ``gap`` (``ratio / k <= gap``).

    ``k`` never exceeds ``floor(ratio)``, so the last stage is always a shrink (never an enlargement).
    """
    if ratio <= gap:
        return 1
    return max(1, min(math.ceil(ratio / gap - 1e-9), math.floor(ratio + 1e-9)))


def _with_remainder(image: np.ndarray, core: np.ndarray, factor: int) -> np.ndarray:
    """float32 block means: ``core`` plus the partial blocks of the leftover bottom rows / right columns."""
    h, w = image.shape
    bh, bw = core.shape
    rh, rw = h - bh * factor, w - bw * factor
    out = np.empty((bh + (1 if rh else 0), bw + (1 if rw else 0)), dtype=np.float32)
    out[:bh, :bw] = core
    if rw:
        strip = image[: bh * factor, bw * factor :].reshape(bh, factor, rw)
        out[:bh, bw] = strip.mean(axis=(1, 2), dtype=np.float32)
    if rh:
        strip = image[bh * factor :, : bw * factor].reshape(rh, bw, factor)
        out[bh, :bw] = strip.mean(axis=(0, 2), dtype=np.float32)
    if rh and rw:
        out[bh, bw] = image[bh * factor :, bw * factor :].mean(dtype=np.float32)
    return out


@lru_cache(maxsize=256)
def _block_weights(n: int, factor: int, m: int) -> sparse.csr_array:
    """Area weights (m x ceil(n / factor), float32) from blocks of ``factor`` source pixels to ``m`` outputs.

    Block ``i`` covers source pixels ``[i*factor, min((i+1)*factor, n))`` (the last one may be partial);
    output ``j`` covers ``[j*n/m, (j+1)*n/m)``. Each weight is the overlap over the output's width, so
    every row sums to 1. Built once per geometry (cached); ``factor <= n/m`` means a block meets at most
    two outputs.
    """
    count = -(-n // factor)
    start = np.arange(count, dtype=np.float64) * factor
    end = np.minimum(start + factor, n)
    step = n / m
    first = np.minimum(np.floor(start / step).astype(np.int64), m - 1)
    last = np.minimum(np.floor(end / step - 1e-9).astype(np.int64), m - 1)
    w_first = (np.minimum(end, (first + 1) * step) - start) / step
    w_last = np.where(last > first, (end - last * step) / step, 0.0)
    rows = np.concatenate([first, last])
    cols = np.concatenate([np.arange(count), np.arange(count)])
    vals = np.concatenate([w_first, w_last])
    keep = vals > 0
    return sparse.csr_array(
        (vals[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(m, count), dtype=np.float32
    )


def _area_from_blocks(blocks: np.ndarray, h: int, w: int, factor: int, height: int, width: int) -> np.ndarray:
    """Exact area average of float32 block means (a partial last block weighted by its true size)."""
    rows = _block_weights(h, factor, height)
    cols = _block_weights(w, factor, width)
    tall = rows @ blocks  # (height, blocks across)
    return np.ascontiguousarray((cols @ tall.T).T, dtype=np.float32)


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
