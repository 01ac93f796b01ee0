"""Every pixel-bearing file shipped with pydicom / pydicom-data decodes to pydicom's own reference values.

Reference path: ``pixel_array`` -> ``apply_modality_lut`` -> ``apply_voi_lut`` -> MONOCHROME1 inversion,
scaled to [0, 1] by the output range pydicom's windowing uses. Files without a VOI window/LUT are compared
under ``normalization=minmax`` (min/max of the modality values, padding excluded). A file pydicom itself
cannot decode must raise :class:`UnreadableImage` with the right reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from xraytriage.config import PreprocessConfig
from xraytriage.io import UnreadableImage, load_image
from xraytriage.io.dicom import _ensure_transfer_syntax

TOL = 2e-3  # float32 pipeline vs float64 reference, on a [0, 1] scale


def _corpus() -> list[Path]:
    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    skip_suffix = {".py", ".json", ".txt", ".gz", ".bz2", ".dump", ".icc"}
    files = []
    for root in roots:
        files += [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix not in skip_suffix]
    return [p for p in files if "__pycache__" not in p.parts and p.name != "README"]


# Files pydicom itself cannot decode, and the reason we must give.
EXPECTED_ERRORS = {
    "MR_truncated.dcm": "truncated",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated",
    "JPEG-lossy.dcm": "decode_failed",  # 12-bit JPEG extended with a broken scan header
    # its SIZ marker claims 3722445056 x 1024 pixels: refused before any decoder allocates
    "JPEG2000-embedded-sequence-delimiter.dcm": "too_large",
    "badVR.dcm": "corrupt_header",
    "meta_missing_tsyntax.dcm": "corrupt_header",
    "nested_priv_SQ.dcm": "corrupt_header",
}


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    _ensure_transfer_syntax(ds)
    return ds


def _has_voi(ds: pydicom.Dataset) -> bool:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return True
    return "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowWidth not in (None, "")


def _reference(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(expected image in [0, 1], mask of pixels to compare or None, normalization to ask for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = ds.pixel_array
    if frames > 1:
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR" or int(ds.get("SamplesPerPixel", 1)) == 3:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
            full = float(np.iinfo(arr.dtype).max)
        else:
            full = float(2 ** int(ds.BitsStored) - 1)
        luma = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / full
        return np.clip(luma, 0, 1), None, "voi"
    pad = None
    if "PixelPaddingValue" in ds:
        pad = arr == int(ds.PixelPaddingValue)
    modality = apply_modality_lut(arr, ds).astype(np.float64)
    if _has_voi(ds):
        out = apply_voi_lut(modality, ds, index=0).astype(np.float64)
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            y_min, y_max = 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        else:  # the output range pydicom's apply_windowing maps into
            bits = int(ds.BitsStored)
            if ds.get("ModalityLUTSequence"):
                y_min, y_max = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
            elif int(ds.PixelRepresentation) == 0:
                y_min, y_max = 0.0, 2.0**bits - 1
            else:
                y_min, y_max = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
            if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
                s, i = float(ds.RescaleSlope), float(ds.RescaleIntercept)
                y_min, y_max = y_min * s + i, y_max * s + i
        out = (out - y_min) / (y_max - y_min)
        normalization = "voi"
    else:
        valid = modality[~pad] if pad is not None and pad.any() else modality
        lo, hi = valid.min(), valid.max()
        out = (modality - lo) / (hi - lo) if hi > lo else np.zeros_like(modality)
        normalization = "minmax"
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    keep = ~pad if pad is not None and pad.any() else None
    return np.clip(out, 0, 1), keep, normalization


CORPUS = _corpus()


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_matches_pydicom_reference_or_raises_typed_error(path: Path) -> None:
    try:
        ds = _read(path)
        ds.pixel_array  # noqa: B018  (does pydicom itself decode it?)
        reference_ok = True
    except Exception:
        reference_ok = False

    if not reference_ok:
        with pytest.raises(UnreadableImage) as info:
            load_image(path, PreprocessConfig(), resize=False)
        err = info.value
        assert str(path) in str(err)
        if path.name in EXPECTED_ERRORS:
            assert err.reason == EXPECTED_ERRORS[path.name], str(err)
        else:  # not an image object (SR, RT plan, DICOMDIR, header-only, not DICOM at all)
            assert err.reason in {"no_pixel_data", "not_an_image", "corrupt_header"}, str(err)
        return

    expected, keep, normalization = _reference(ds)
    image, meta = load_image(path, PreprocessConfig(normalization=normalization), resize=False)
    assert image.dtype == np.float32 and image.shape == expected.shape
    assert image.min() >= 0.0 and image.max() <= 1.0
    diff = np.abs(image.astype(np.float64) - expected)
    if keep is not None:
        diff = diff[keep]
    assert diff.max() < TOL, f"{path.name}: max |ours - pydicom| = {diff.max():.4g} ({meta.decode_path})"


def test_corpus_is_large_enough_to_mean_something() -> None:
    assert len(CORPUS) > 100
