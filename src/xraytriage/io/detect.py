"""Content sniffing: hospitals export DICOM with any extension, or none."""

from __future__ import annotations

from pathlib import Path

_GROUPS = (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028)
_DICOM_GROUPS_LE = {g.to_bytes(2, "little") for g in _GROUPS}
_DICOM_GROUPS_BE = {g.to_bytes(2, "big") for g in _GROUPS}


def _looks_like_element(head: bytes, order: str) -> bool:
    """A first data element: low group, then an explicit VR (two capitals) or a sane 4-byte length."""
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(head[4:8], order) < (1 << 24)


def sniff_format(path: str | Path) -> str | None:
    """Return ``dicom``, ``png``, ``jpeg``, ``tiff`` or None from the first bytes of the file."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    # DICOM written without preamble/file meta: starts with a (gggg,eeee) tag of a low group in
    # little- or big-endian order, followed by either an explicit VR or a 4-byte length.
    if len(head) >= 8:
        if head[:2] in _DICOM_GROUPS_LE and _looks_like_element(head, "little"):
            return "dicom"
        if head[:2] in _DICOM_GROUPS_BE and _looks_like_element(head, "big"):
            return "dicom"
    return None
