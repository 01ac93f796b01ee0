"""The one exception type that leaves :func:`xraytriage.io.load_image`."""

from __future__ import annotations

from pathlib import Path

REASONS = {
    "file_not_found": "the file does not exist (moved or deleted?)",
    "permission_denied": "the file cannot be read with this user's permissions",
    "empty_file": "the file has zero bytes",
    "not_an_image": "not a DICOM, PNG, JPEG or TIFF file",
    "corrupt_header": "the header cannot be parsed",
    "no_pixel_data": "the DICOM object carries no image (e.g. SR, RTSTRUCT, presentation state)",
    "truncated": "the pixel data is shorter than the header says",
    "missing_codec": "a decoder plugin for this transfer syntax is not installed",
    "unsupported_transfer_syntax": "no installed plugin can decode this transfer syntax",
    "too_large": "the image is larger than preprocess.max_pixels (or decoding ran out of memory)",
    "size_mismatch": "the compressed image's own size differs from the header's Rows x Columns",
    "corrupt_pixel_data": "the pixel data is damaged (the decoder reported it, or its structure is invalid)",
    "multiframe": "multi-frame image rejected by preprocess.multiframe=reject",
    "unsupported_pixels": "pixel layout not supported (photometric interpretation or samples per pixel)",
    "decode_failed": "the decoder failed on this file",
}


OUT_OF_MEMORY = "out of memory while decoding"  # the detail of a too_large raised by a MemoryError


class UnreadableImage(Exception):
    """A scan that cannot be turned into pixels; carries a machine-readable ``reason`` code."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        text = f"{self.path}: {reason}: {REASONS[reason]}"
        if detail:
            text += f" ({detail})"
        super().__init__(text)
