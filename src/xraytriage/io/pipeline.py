"""``load_image``: any scan file -> float32 [0, 1] image where dense tissue is bright, plus metadata.

DICOM order (PS3.4 N.2): decode -> modality LUT -> VOI LUT/window -> MONOCHROME1 inversion -> [0, 1].
Resizing happens on the decoded stored values in their native integer dtype, before the float LUTs.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom

from xraytriage.config import PreprocessConfig
from xraytriage.io import dicom as dcm
from xraytriage.io import gpu, jpeg2000
from xraytriage.io.detect import sniff_format
from xraytriage.io.errors import OUT_OF_MEMORY, UnreadableImage
from xraytriage.io.metadata import ImageMeta
from xraytriage.io.raster import read_raster
from xraytriage.io.resize import fit_shape, pad_to_square, resize_to

_STAT_SAMPLES = 262_144  # statistics from a strided subsample: exact enough, O(1) in image size


def _stats_view(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    flat = values.reshape(-1)
    if mask is not None:
        flat = flat[~mask.reshape(-1)]
    step = max(1, flat.size // _STAT_SAMPLES)
    return flat[::step]


def _stretch(values: np.ndarray, mask: np.ndarray | None, cfg: PreprocessConfig, mode: str) -> np.ndarray:
    """Min-max or percentile stretch to [0, 1]; padding pixels do not count."""
    sample = _stats_view(values, mask)
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    if mode == "minmax":
        lo, hi = float(sample.min()), float(sample.max())
    else:
        lo, hi = (float(v) for v in np.percentile(sample, [cfg.percentile_low, cfg.percentile_high]))
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = values.astype(np.float32) - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _resize_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    if mask.shape == shape:
        return mask
    small = cv2.resize(mask.astype(np.uint8) * 255, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return small >= 128


def _gpu_jpeg2000(ds, geo: dcm.Geometry, meta: ImageMeta) -> np.ndarray | None:
    """Full-resolution stored values decoded on the GPU (``gpu_decode: auto``), or None for the CPU path."""
    if geo.samples != 1 or geo.signed:
        meta.notes.append("gpu_decode: only unsigned greyscale JPEG 2000 is decoded on the GPU; used the CPU")
        return None
    reason = gpu.unavailable_reason()
    if reason is not None:
        meta.notes.append(f"gpu_decode: {reason}; used the CPU decoder")
        return None
    frame = dcm.first_frame_bytes(ds, geo)
    if not frame:
        return None
    try:
        arr = gpu.decode_frame(frame, geo.rows, geo.cols, geo.bits_stored)
    except Exception as exc:  # any GPU-side failure: the CPU decoders still can
        meta.notes.append(f"gpu_decode: GPU decode failed ({exc.__class__.__name__}); used the CPU decoder")
        return None
    meta.decode_path = "nvimgcodec"
    return arr


def _reduced_jpeg2000(ds, path: Path, geo: dcm.Geometry, cfg: PreprocessConfig, meta: ImageMeta):
    """Stored values at the coarsest wavelet level that still covers the output size, or None."""
    if dcm.transfer_syntax(ds) not in jpeg2000.J2K_SYNTAXES or geo.samples != 1 or geo.signed:
        return None
    frame = dcm.first_frame_bytes(ds, geo)
    info = jpeg2000.codestream_info(frame) if frame else None
    if info is None or info["precision"] != geo.bits_stored:
        return None
    if (info["height"], info["width"]) != (geo.rows, geo.cols):
        return None
    level = jpeg2000.choose_level(
        geo.rows,
        geo.cols,
        cfg.image_size,
        cfg.resize_mode == "stretch",
        info["levels"],
        cfg.jpeg2000_min_fraction,
    )
    if level == 0:
        return None
    arr = jpeg2000.decode_reduced(frame, level)
    if arr is None:
        meta.notes.append("reduced JPEG 2000 decode failed; used a full decode")
        return None
    meta.decode_path = f"jpeg2000_reduced/{1 << level}"
    return arr


def _load_dicom(path: Path, cfg: PreprocessConfig, resize: bool) -> tuple[np.ndarray, ImageMeta]:
    ds = dcm.read_dataset(path, max_inflated_bytes=8 * cfg.max_pixels + (64 << 20))
    meta = dcm.read_meta(ds, path)
    geo = dcm.check_pixels(ds, path, cfg.multiframe, cfg.max_pixels)
    dcm.check_codestream(ds, path, geo, cfg.max_pixels)
    meta.frames = geo.frames
    if geo.frames > 1:
        meta.notes.append(f"multi-frame ({geo.frames} frames): first frame used")
    out_shape = fit_shape(geo.rows, geo.cols, cfg.image_size, cfg.resize_mode) if resize else None
    gap = cfg.resize_reducing_gap
    colour = dcm.is_colour(ds)

    stored = None
    if cfg.gpu_decode == "auto" and not colour and dcm.transfer_syntax(ds) in jpeg2000.J2K_SYNTAXES:
        stored = _gpu_jpeg2000(ds, geo, meta)
    if stored is None and resize and cfg.reduce_jpeg2000 and not colour:
        stored = _reduced_jpeg2000(ds, path, geo, cfg, meta)
    if stored is None and not colour:
        stored = dcm.native_frame(ds, path, geo)
        if stored is not None:
            meta.decode_path = "native"
    if stored is None:
        stored = dcm.decode_pixels(
            ds, path, cfg.multiframe, cfg.max_pixels, cfg.corrupt_pixel_data, meta.notes
        )
        meta.decode_path = "pydicom"

    if colour:
        # Colour is already luma in [0, 1] (full scale divided out): no modality/VOI LUT applies.
        grey = resize_to(stored, out_shape, gap) if out_shape else stored
        if cfg.normalization == "voi":
            meta.normalization = "full_scale"
            return np.clip(grey, 0.0, 1.0).astype(np.float32, copy=False), meta
        meta.normalization = cfg.normalization
        return _stretch(grey, None, cfg, cfg.normalization), meta

    mask = dcm.padding_mask(stored, ds)
    if dcm.has_modality_lut_sequence(ds):
        values = dcm.modality_lut(stored, ds)  # a non-linear LUT: apply before averaging
        if out_shape:
            values = resize_to(values, out_shape, gap)
    else:
        if out_shape:
            stored = resize_to(stored, out_shape, gap)
        values = dcm.modality_lut(stored, ds)
    if out_shape:
        mask = _resize_mask(mask, out_shape)

    out = None
    if cfg.normalization == "voi":
        out = dcm.voi(values, ds, cfg.voi_window_index, meta.notes)
        if out is None:
            meta.notes.append("no VOI window or LUT in file; used percentile normalisation")
        else:
            has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
            meta.normalization = "voi_lut" if has_lut else "voi_window"
    if out is None:
        mode = "minmax" if cfg.normalization == "minmax" else "percentile"
        meta.normalization = mode
        out = _stretch(values, mask, cfg, mode)
    if geo.photometric == "MONOCHROME1":
        out = np.subtract(np.float32(1.0), out, out=out) if out.flags.writeable else 1.0 - out
    if mask is not None and mask.any():
        out[mask] = 0.0
    return out.astype(np.float32, copy=False), meta


def _load_raster(path: Path, fmt: str, cfg: PreprocessConfig, resize: bool) -> tuple[np.ndarray, ImageMeta]:
    pixels, full_scale, meta = read_raster(path, fmt, cfg.max_pixels)
    meta.decode_path = "pillow"
    if resize:
        shape = fit_shape(pixels.shape[0], pixels.shape[1], cfg.image_size, cfg.resize_mode)
        pixels = resize_to(pixels, shape, cfg.resize_reducing_gap)
    if cfg.normalization == "voi":
        meta.normalization = "full_scale"
        out = np.clip(pixels.astype(np.float32) * np.float32(1.0 / full_scale), 0.0, 1.0)
    else:
        meta.normalization = cfg.normalization
        out = _stretch(pixels, None, cfg, cfg.normalization)
    return out, meta


def load_image(
    path: str | Path, config: PreprocessConfig | None = None, *, resize: bool = True
) -> tuple[np.ndarray, ImageMeta]:
    """Decode one scan; raise only :class:`UnreadableImage`.

    With ``resize`` the result is ``image_size`` x ``image_size`` (letterboxed or stretched);
    without it, the native resolution.
    """
    cfg = config or PreprocessConfig()
    p = Path(path)
    try:
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            raise UnreadableImage(p, "file_not_found", "no such file") from None
        except PermissionError:
            raise UnreadableImage(p, "permission_denied", "a folder on its path cannot be searched") from None
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableImage(p, "not_an_image", "not a regular file (a folder or a device?)")
        if st.st_size == 0:
            raise UnreadableImage(p, "empty_file")
        try:
            fmt = sniff_format(p)
        except PermissionError:
            raise UnreadableImage(p, "permission_denied", "cannot open the file for reading") from None
        if fmt is None:
            raise UnreadableImage(p, "not_an_image", "unrecognised file signature")
        if fmt == "dicom":
            # pydicom's value-validation warnings quote element values; keep them out of logs.
            with warnings.catch_warnings(), pydicom.config.disable_value_validation():
                warnings.simplefilter("ignore")
                image, meta = _load_dicom(p, cfg, resize)
        else:
            with warnings.catch_warnings():  # Pillow warns (EXIF, TIFF tags) on files it still reads
                warnings.simplefilter("ignore")
                image, meta = _load_raster(p, fmt, cfg, resize)
        if resize and cfg.resize_mode == "letterbox":
            image = pad_to_square(image, cfg.image_size)
        if not np.isfinite(image).all():
            image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
        return np.ascontiguousarray(image, dtype=np.float32), meta
    except UnreadableImage:
        raise
    except MemoryError:
        raise UnreadableImage(p, "too_large", OUT_OF_MEMORY) from None
    except RecursionError:
        raise UnreadableImage(p, "corrupt_header", "nesting too deep") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # the contract: nothing else escapes (Rust decoders panic as BaseException)
        raise UnreadableImage(p, "decode_failed", f"{exc.__class__.__name__}: {str(exc)[:200]}") from None
