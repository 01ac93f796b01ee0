"""The one exception type that leaves :func:`xraytriage.io.load_image`."""

from __future__ import annotations

from pathlib import Path

REASONS = {
    "empty_file": "the file has zero bytes",
    "not_an_image": "not a DICOM, PNG, JPEG or TIFF file",
    "corrupt_header": "the header cannot be parsed",
    "no_pixel_data": "the DICOM object carries no image (e.g. SR, RTSTRUCT, presentation state)",
    "truncated": "the pixel data is shorter than the header says",
    "missing_codec": "a decoder plugin for this transfer syntax is not installed",
    "unsupported_transfer_syntax": "no installed plugin can decode this transfer syntax",
    "too_large": "the image is larger than preprocess.max_pixels",
    "multiframe": "multi-frame image rejected by preprocess.multiframe=reject",
    "unsupported_pixels": "pixel layout not supported (photometric interpretation or samples per pixel)",
    "decode_failed": "the decoder failed on this file",
}


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
