"""Optional GPU decoding of JPEG 2000 frames with nvImageCodec (``preprocess.gpu_decode: auto``).

Only used when ``nvidia.nvimgcodec`` imports (PyPI ``nvidia-nvimgcodec-cu13``, with its nvJPEG2000
extension) and the CUDA driver reports a device; otherwise, or when a GPU decode fails, the caller keeps
the CPU path and says why in ``meta.notes``. The frame is decoded at full resolution (nvImageCodec's
Python API has no reduced-resolution JPEG 2000 decode) with ``allow_any_depth`` so 9-16-bit stored values
come back unscaled, then copied to the host; everything after that is the usual CPU pipeline.

CUDA and ``fork`` do not mix: a process forked after its parent initialised CUDA cannot use the GPU, so a
forked DataLoader worker simply falls back to the CPU decoder (noted). See docs/pixels.md.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
from typing import Any

import numpy as np

_MODULE = "nvidia.nvimgcodec"

# (pid, id(module)) -> (module, decoder) or the reason there is no GPU decoder; per process because a
# CUDA context never survives fork.
_CACHE: dict[tuple[int, int], tuple[Any, Any] | str] = {}


def cuda_device_count() -> int:
    """CUDA devices the driver shows this process (driver API through ctypes: no torch import needed)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return 0
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:  # fails in a child forked after its parent initialised CUDA
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except (AttributeError, OSError):
            return 0
    return 0


def _import() -> Any:
    return importlib.import_module(_MODULE)


def decoder() -> tuple[Any, Any] | str:
    """``(nvimgcodec module, Decoder)`` for this process, or the reason GPU decoding is unavailable.

    The decoder is restricted to GPU backends, so nvImageCodec's own CPU codecs never stand in silently.
    """
    try:
        module = _import()
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return f"nvImageCodec not available ({exc.__class__.__name__})"
    key = (os.getpid(), id(module))
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    result: tuple[Any, Any] | str
    if cuda_device_count() < 1:
        result = "no CUDA device visible"
    else:
        try:
            kinds = module.BackendKind
            backends = [module.Backend(kinds.GPU_ONLY), module.Backend(kinds.HYBRID_CPU_GPU)]
            result = (module, module.Decoder(backends=backends))
        except Exception as exc:
            result = f"nvImageCodec decoder could not start ({exc.__class__.__name__}: {str(exc)[:120]})"
    _CACHE[key] = result
    return result


def unavailable_reason() -> str | None:
    """None when :func:`decode_frame` can run here, else a short reason for ``meta.notes``."""
    state = decoder()
    return state if isinstance(state, str) else None


def decode_frame(frame: bytes, rows: int, cols: int, bits_stored: int) -> np.ndarray:
    """Stored values (uint8/uint16, rows x cols) of one greyscale JPEG 2000 frame, decoded on the GPU.

    Raises on anything unexpected (no decoder, a failed decode, wrong shape, dtype or value range), so the
    caller can fall back to the CPU decoder.
    """
    state = decoder()
    if isinstance(state, str):
        raise RuntimeError(state)
    module, dec = state
    params = module.DecodeParams(allow_any_depth=True, color_spec=module.ColorSpec.UNCHANGED)
    image = dec.decode(frame, params=params)
    if image is None:
        raise RuntimeError("nvImageCodec returned no image")
    arr = np.asarray(image.cpu())  # device -> host copy; the array keeps the host image alive
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.shape != (rows, cols):
        raise ValueError(f"decoded shape {arr.shape}, header says {(rows, cols)}")
    if arr.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"decoded dtype {arr.dtype}")
    if bits_stored > 8 * arr.dtype.itemsize:
        raise ValueError(f"{bits_stored}-bit data came back as {arr.dtype}: the decoder rescaled it")
    if bits_stored < 8 * arr.dtype.itemsize and int(arr.max()) >= (1 << bits_stored):
        raise ValueError(f"values above {bits_stored} bits: the decoder rescaled them")
    return arr
