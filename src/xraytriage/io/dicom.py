"""DICOM decoding in the standard's order: decode -> modality LUT -> VOI LUT -> MONOCHROME1 inversion.

Resizing happens on the decoded integer pixels before any float conversion: linear LUTs commute with
area averaging, and it keeps a 2k x 2.5k radiograph out of float64 entirely.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from xraytriage.io import codestream
from xraytriage.io.decoder_messages import damage_reports, native_stderr
from xraytriage.io.errors import UnreadableImage

if TYPE_CHECKING:
    from xraytriage.data.pseudonyms import SiteKey
from xraytriage.io.metadata import ImageMeta, normalise_sex, parse_age, parse_study_date
from xraytriage.io.presentation import dicom_input_rules

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Which package provides a decoder for which transfer syntax, for the "missing codec" message.
_CODEC_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        if not len(value):  # no values (a dataset built in memory): absent, not the text "None"
            return None
        value = value[0]
    text = str(value).strip()
    return text or None


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
    return None


_UID_RE = re.compile(r"[0-9.]{1,64}")


def _uid(ds: Dataset, keyword: str, notes: list[str]) -> str | None:
    value = _text(ds, keyword)
    if value is None or _UID_RE.fullmatch(value):
        return value
    notes.append(f"{keyword} is not a valid UID (digits and dots, at most 64); left out")
    return None


def read_meta(ds: Dataset, path: Path, site_key: SiteKey | None = None) -> ImageMeta:
    """Subgroup attributes and UIDs. PatientName and PatientBirthDate are never read; PatientID only
    to make its pseudonym with ``site_key`` (none without one). A UID that is not digits and dots
    (at most 64) is left out with a note: it would be hostile text in every output."""
    notes: list[str] = []
    syntax = None
    if hasattr(ds, "file_meta") and "TransferSyntaxUID" in ds.file_meta:
        syntax = str(ds.file_meta.TransferSyntaxUID)
    bits = ds.get("BitsStored")
    return ImageMeta(
        format="dicom",
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        sex=normalise_sex(_text(ds, "PatientSex")),
        age_years=parse_age(_text(ds, "PatientAge")),
        view=_text(ds, "ViewPosition"),
        modality=_text(ds, "Modality"),
        manufacturer=_text(ds, "Manufacturer"),
        institution=_text(ds, "InstitutionName"),
        body_part=_text(ds, "BodyPartExamined"),
        study_uid=_uid(ds, "StudyInstanceUID", notes),
        series_uid=_uid(ds, "SeriesInstanceUID", notes),
        sop_uid=_uid(ds, "SOPInstanceUID", notes),
        pixel_spacing=_spacing(ds),
        patient_pseudonym=site_key.pseudonym(_text(ds, "PatientID")) if site_key is not None else None,
        photometric=_text(ds, "PhotometricInterpretation"),
        study_date=parse_study_date(_text(ds, "StudyDate")),
        not_original=[reason.code for reason in dicom_input_rules(ds)],
        transfer_syntax=syntax,
        bits_stored=int(bits) if isinstance(bits, int) else None,
        notes=notes,
    )


_DEFER = 16384  # elements larger than this are read lazily (pixel data, overlays, private blobs)

_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


def _dcmread(path: Path, **kwargs: Any) -> Dataset:
    # Value validation is off while reading: pydicom's warnings quote element values (names included).
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True, **kwargs)


def read_dataset(path: Path, max_inflated_bytes: int | None = None) -> Dataset:
    """Header plus lazily-read large elements: the pixel data is only read when it is needed.

    A deflated dataset (zlib over the whole object) is first inflated into nothing, with a ceiling of
    ``max_inflated_bytes``: pydicom inflates it whole in memory, a zip bomb's favourite door.
    """
    if max_inflated_bytes is not None:
        refuse_deflate_bomb(path, max_inflated_bytes)
    try:
        ds = _dcmread(path, defer_size=_DEFER)
    except Exception as exc:  # pydicom raises assorted types on damaged headers
        raise UnreadableImage(path, "corrupt_header", f"{exc.__class__.__name__}: {exc}") from None
    if len(ds) == 0:
        raise UnreadableImage(path, "truncated", "the file ends before the first data element")
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without file meta still say how they were encoded; pydicom's decoders need the UID."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    elif implicit:
        meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian


def refuse_deflate_bomb(path: Path, max_inflated_bytes: int) -> None:
    """A deflated dataset that inflates past ``max_inflated_bytes`` is ``too_large``, found out by
    inflating it into nothing (pydicom would inflate it whole, in memory)."""
    if not _is_deflated(path):
        return
    try:
        within = codestream.deflated_size_within(path, max_inflated_bytes)
    except Exception as exc:  # a damaged meta group or deflate stream
        raise UnreadableImage(path, "corrupt_header", f"deflated dataset: {exc.__class__.__name__}") from None
    if not within:
        raise UnreadableImage(
            path, "too_large", f"deflated dataset inflates beyond {max_inflated_bytes} bytes"
        )


def _is_deflated(path: Path) -> bool:
    """The deflated transfer syntax UID in the file meta (which precedes the deflated stream)."""
    with open(path, "rb") as fh:
        return codestream.DEFLATED_SYNTAX.encode() in fh.read(4096)


def transfer_syntax(ds: Dataset) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")


class Geometry:
    """The header fields decoding depends on, validated once (a damaged value is a corrupt header)."""

    def __init__(self, ds: Dataset, path: Path) -> None:
        try:
            self.rows = int(ds.Rows)
            self.cols = int(ds.Columns)
            self.samples = int(ds.get("SamplesPerPixel", 1) or 1)
            self.bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
            self.bits_stored = int(ds.get("BitsStored", self.bits_allocated) or self.bits_allocated)
            self.signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
            frames = ds.get("NumberOfFrames", 1)
            self.frames = int(frames) if frames not in (None, "") else 1
            self.photometric = (_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            raise UnreadableImage(
                path, "corrupt_header", f"image geometry: {exc.__class__.__name__}: {exc}"
            ) from None
        if self.rows <= 0 or self.cols <= 0:
            raise UnreadableImage(path, "corrupt_header", f"Rows={self.rows}, Columns={self.cols}")
        self.frames = max(self.frames, 1)


def check_pixels(ds: Dataset, path: Path, multiframe: str, max_pixels: int) -> Geometry:
    """Reject, before any decoding, what has no image, is too large, or is multi-frame when refused."""
    if not any(tag in ds for tag in PIXEL_TAGS):
        sop = _text(ds, "SOPClassUID") or "unknown SOP class"
        raise UnreadableImage(path, "no_pixel_data", f"SOP class {sop}")
    geo = Geometry(ds, path)
    if geo.rows * geo.cols > max_pixels:
        raise UnreadableImage(path, "too_large", f"{geo.cols}x{geo.rows} > max_pixels={max_pixels}")
    if geo.frames > 1 and multiframe == "reject":
        raise UnreadableImage(path, "multiframe", f"{geo.frames} frames")
    return geo


def check_codestream(ds: Dataset, path: Path, geo: Geometry, max_pixels: int) -> None:
    """Refuse, before any decoder allocates, a compressed first frame whose own size differs from the
    header's or exceeds ``max_pixels`` (see :mod:`xraytriage.io.codestream`)."""
    syntax = transfer_syntax(ds)
    if not codestream.is_checked(syntax) or "PixelData" not in ds:
        return
    frame = first_frame_bytes(ds, geo)
    if not frame:
        raise UnreadableImage(path, "corrupt_pixel_data", "the compressed pixel data has no readable frame")
    if syntax == codestream.RLE_SYNTAX:
        found = codestream.rle_segments(frame)
        needed = geo.samples * ((geo.bits_allocated + 7) // 8)
        if found is None:
            raise UnreadableImage(path, "corrupt_pixel_data", "the RLE segment table is invalid")
        if found != needed:
            raise UnreadableImage(
                path,
                "size_mismatch",
                f"RLE frame has {found} segments; the header's pixel layout needs {needed}",
            )
        return
    size = codestream.frame_size(syntax, frame)
    if size is None:
        raise UnreadableImage(path, "corrupt_pixel_data", "the compressed frame states no image size")
    if size.rows * size.columns > max_pixels:
        raise UnreadableImage(
            path, "too_large", f"compressed frame is {size.columns}x{size.rows} > max_pixels={max_pixels}"
        )
    if (size.rows, size.columns, size.components) != (geo.rows, geo.cols, geo.samples):
        raise UnreadableImage(
            path,
            "size_mismatch",
            f"compressed frame is {size.columns}x{size.rows}x{size.components}, the header says "
            f"{geo.cols}x{geo.rows}x{geo.samples}",
        )


def native_frame(ds: Dataset, path: Path, geo: Geometry) -> np.ndarray | None:
    """First frame of uncompressed little-endian greyscale data, read straight from the file.

    Reads exactly the bytes of that frame (no copy of the whole element through pydicom). None when the
    layout is one this fast path does not cover; pydicom's decoder then does it.
    """
    if transfer_syntax(ds) not in _NATIVE_LE or geo.samples != 1 or "PixelData" not in ds:
        return None
    if geo.bits_allocated not in (8, 16) or not 1 <= geo.bits_stored <= geo.bits_allocated:
        return None
    if geo.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    dtype = np.dtype(("<i" if geo.signed else "<u") + str(geo.bits_allocated // 8))
    count = geo.rows * geo.cols
    nbytes = count * dtype.itemsize
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem is None or getattr(elem, "is_undefined_length", False):
        return None
    tell = getattr(elem, "value_tell", None)
    if getattr(elem, "value", None) is None and tell is not None:
        length = int(getattr(elem, "length", 0) or 0)
        if length == 0xFFFFFFFF:
            return None
        if length < nbytes or path.stat().st_size < tell + nbytes:
            have = min(length, max(0, path.stat().st_size - tell))
            raise UnreadableImage(path, "truncated", f"pixel data has {have} bytes, one frame needs {nbytes}")
        arr = np.fromfile(path, dtype=dtype, count=count, offset=tell)
    else:
        raw = ds.PixelData
        if not isinstance(raw, (bytes, bytearray)):
            return None
        if len(raw) < nbytes:
            raise UnreadableImage(
                path, "truncated", f"pixel data has {len(raw)} bytes, one frame needs {nbytes}"
            )
        arr = np.frombuffer(raw, dtype=dtype, count=count)
    arr = arr.reshape(geo.rows, geo.cols)
    shift = geo.bits_allocated - geo.bits_stored
    if shift and geo.signed:
        arr = (arr << shift) >> shift  # sign-extend BitsStored-bit two's complement, as pydicom does
    elif shift:
        arr = arr & arr.dtype.type((1 << geo.bits_stored) - 1)  # unused high bits cleared, as pydicom does
    return arr


def first_frame_bytes(ds: Dataset, geo: Geometry) -> bytes | None:
    """The encapsulated codestream of frame 0 (for the reduced JPEG 2000 decode), or None."""
    from pydicom.encaps import get_frame

    try:
        return get_frame(ds.PixelData, 0, number_of_frames=geo.frames)
    except Exception:
        return None


def decode_pixels(
    ds: Dataset,
    path: Path,
    multiframe: str,
    max_pixels: int,
    corrupt: str = "fail",
    notes: list[str] | None = None,
) -> np.ndarray:
    """Decoded stored values of the first frame through pydicom's plugins, colour already reduced to grey.

    A decoder that reports damaged data but returns a picture fails the scan as ``corrupt_pixel_data``
    (``corrupt="accept"``: the picture is kept and the report added to ``notes``).
    """
    geo = check_pixels(ds, path, multiframe, max_pixels)
    syntax = transfer_syntax(ds)
    try:
        with (
            native_stderr() as messages,
            warnings.catch_warnings(),
            pydicom.config.disable_value_validation(),
        ):
            warnings.simplefilter("ignore")
            arr = pydicom.pixels.pixel_array(ds, index=0 if geo.frames > 1 else None)
        damage = damage_reports(messages)
        if damage and corrupt != "accept":
            raise UnreadableImage(path, "corrupt_pixel_data", f"decoder reported: {damage[0][:200]}")
        if damage and notes is not None:
            notes.append(f"decoder reported damaged data, accepted: {damage[0][:200]}")
    except NotImplementedError as exc:
        hint = _CODEC_HINTS.get(syntax)
        if hint:
            raise UnreadableImage(
                path, "missing_codec", f"transfer syntax {syntax}: pip install {hint}"
            ) from None
        raise UnreadableImage(path, "unsupported_transfer_syntax", f"{syntax}: {exc}") from None
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError, EOFError, OSError) as exc:
        text = str(exc).lower()
        if "missing dependencies" in text or "no pixel data decoders" in text or "no decoders" in text:
            hint = _CODEC_HINTS.get(syntax, "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg python-gdcm")
            raise UnreadableImage(
                path, "missing_codec", f"transfer syntax {syntax}: pip install {hint}"
            ) from None
        if "no decoder" in text or ("not supported" in text and "transfer syntax" in text):
            raise UnreadableImage(
                path, "unsupported_transfer_syntax", f"{syntax}: {_scrub(str(exc), ds)}"
            ) from None
        truncated = (
            "less than expected" in text
            or "truncat" in text
            or "not enough" in text
            or "insufficient" in text
            or "end of the" in text
        )
        reason = "truncated" if truncated else "decode_failed"
        raise UnreadableImage(path, reason, f"{exc.__class__.__name__}: {_scrub(str(exc), ds)}") from None
    except (MemoryError, UnreadableImage):
        raise
    except Exception as exc:
        raise UnreadableImage(
            path, "decode_failed", f"{exc.__class__.__name__}: {_scrub(str(exc), ds)}"
        ) from None
    return to_grey(arr, ds, path)


def _scrub(text: str, ds: Dataset) -> str:
    """Error text from a decoder must not carry identifying values into logs."""
    text = text.strip().splitlines()[0] if text.strip() else text
    for keyword in ("PatientName", "PatientBirthDate", "PatientID"):
        try:
            value = str(ds.get(keyword) or "").strip()
        except Exception:
            value = ""
        if len(value) >= 2:
            text = text.replace(value, "<removed>")
    return text[:300]


def is_colour(ds: Dataset) -> bool:
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        samples = 1
    return samples == 3 or photometric == "PALETTE COLOR"


def to_grey(arr: np.ndarray, ds: Dataset, path: Path) -> np.ndarray:
    """Greyscale stored values; colour (RGB, YBR already converted by pydicom, palette) becomes BT.601 luma.

    Colour images come back as float32 in [0, 1] (their full scale divided out), greyscale unchanged.
    """
    photometric = (_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        full = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
        full = float(2**bits - 1)
    if is_colour(ds) or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise UnreadableImage(path, "unsupported_pixels", f"shape {arr.shape} for {photometric}")
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32) / np.float32(full)
        return np.clip(arr.astype(np.float32) @ weights, 0.0, 1.0)
    if arr.ndim != 2:
        raise UnreadableImage(path, "unsupported_pixels", f"unexpected pixel array shape {arr.shape}")
    return arr


def padding_mask(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """True where the stored value is Pixel Padding Value (or in the padding range); excluded from stats."""
    value = ds.get("PixelPaddingValue")
    if value is None or isinstance(value, (bytes, list)):
        return None
    try:
        value = int(value)
        limit = ds.get("PixelPaddingRangeLimit")
        if limit is None:
            mask = arr == value
        else:
            lo, hi = sorted((value, int(limit)))
            mask = (arr >= lo) & (arr <= hi)
    except (TypeError, ValueError, OverflowError):
        return None
    return mask if mask.any() else None


def _lut_table(item: Dataset, apply: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A LUT as (input values, output values), evaluated by pydicom itself so its decoding rules hold."""
    try:
        n, first, _bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        return None
    n = n or 65536
    if first < 0 and first + n > 32768:
        return None
    inputs = np.arange(first, first + n, dtype=np.int64)
    outputs = np.asarray(apply(inputs), dtype=np.float32)
    return inputs.astype(np.float32), outputs


def has_modality_lut_sequence(ds: Dataset) -> bool:
    return "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence) > 0


def modality_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (rescale slope/intercept or Modality LUT Sequence), float32."""
    if has_modality_lut_sequence(ds):
        from pydicom.pixels import apply_modality_lut

        table = _lut_table(ds.ModalityLUTSequence[0], lambda x: apply_modality_lut(x, ds))
        if table is not None:
            return np.interp(values.astype(np.float32), table[0], table[1]).astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    out = values.astype(np.float32, copy=False)
    if slope != 1.0 or intercept != 0.0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def _as_list(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return [float(v) for v in value]
    return [float(value)]


def window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1]; float32 throughout."""
    function = (function or "LINEAR").upper()
    values = values.astype(np.float32, copy=False)
    if function == "SIGMOID":
        z = np.float32(-4.0 / width) * (values - np.float32(center))
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(np.clip(z, -80, 80)))).astype(np.float32)
    if function == "LINEAR_EXACT":
        lo, span = center - width / 2.0, width
    else:
        width = max(width, 1.0)
        lo, span = center - 0.5 - (width - 1.0) / 2.0, width - 1.0
    if span <= 0:
        return (values > np.float32(center - 0.5)).astype(np.float32)
    out = (values - np.float32(lo)) * np.float32(1.0 / span)
    return np.clip(out, 0.0, 1.0, out=out)


def voi(values: np.ndarray, ds: Dataset, index: int, notes: list[str]) -> np.ndarray | None:
    """Apply the file's VOI LUT Sequence or window (VOILUTFunction); None when the file has neither.

    Several windows: ``index`` picks one (preprocess.voi_window_index, default the first, which the standard
    makes the primary one); an index past the end falls back to the last window, with a note.
    """
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        from pydicom.pixels.processing import apply_voi

        idx = min(index, len(ds.VOILUTSequence) - 1)
        item = ds.VOILUTSequence[idx]
        table = _lut_table(item, lambda x: apply_voi(x, ds, index=idx))
        if table is not None:
            bits = int(item.LUTDescriptor[2])
            out = np.interp(values, table[0], table[1]).astype(np.float32)
            return np.clip(out * np.float32(1.0 / (2**bits - 1)), 0.0, 1.0)
        notes.append("VOI LUT Sequence unreadable; used the window or percentile")
    try:
        centers, widths = _as_list(ds.get("WindowCenter")), _as_list(ds.get("WindowWidth"))
    except (TypeError, ValueError):
        notes.append("window center/width unreadable")
        return None
    if not centers or not widths:
        return None
    idx = min(index, len(centers) - 1, len(widths) - 1)
    if idx != index:
        notes.append(f"voi_window_index={index} not present; used window {idx}")
    if not widths[idx] > 0 or not np.isfinite(centers[idx]) or not np.isfinite(widths[idx]):
        notes.append("window width <= 0 ignored")
        return None
    function = _text(ds, "VOILUTFunction") or "LINEAR"
    return window(values, centers[idx], widths[idx], function)
