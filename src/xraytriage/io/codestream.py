"""How large a compressed frame will be once decoded, read from the codestream itself, before decoding.

The header's Rows x Columns is what ``max_pixels`` checks, but a decoder allocates what the codestream
says: a 4.7 MB DICOM claiming 16 x 16 while holding a 20000 x 20000 JPEG reached 2 GB (65535 x 65535
would need ~21 GB). So the frame's own size -- JPEG / JPEG-LS start-of-frame, JPEG 2000 SIZ, RLE
segment table -- must agree with the header and fit ``max_pixels`` before any decoder runs.
Deflated datasets (the whole object zlib-compressed) are inflated with a ceiling for the same reason.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from xraytriage.io.jpeg2000 import J2K_SYNTAXES, codestream_info

JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # baseline
    "1.2.840.10008.1.2.4.51",  # extended
    "1.2.840.10008.1.2.4.57",  # lossless
    "1.2.840.10008.1.2.4.70",  # lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
# Start-of-frame markers (ITU T.81 B.1.1.3; 0xF7 = JPEG-LS SOF55): every one carries Y, X and Nf.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RST0-7, SOI: markers without a length field


@dataclass(frozen=True)
class FrameSize:
    """What a codestream says about itself: rows, columns and components (RLE: segment count)."""

    rows: int
    columns: int
    components: int


def jpeg_size(frame: bytes) -> FrameSize | None:
    """Rows, columns and components from the first start-of-frame marker; None if there is none."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(frame)
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 10 > end:
                return None
            rows, columns = struct.unpack_from(">HH", frame, pos + 5)
            return FrameSize(rows, columns, frame[pos + 9])
        if length < 2:
            return None
        pos += 2 + length
    return None


def j2k_size(frame: bytes) -> FrameSize | None:
    info = codestream_info(frame)
    if info is None:
        return None
    return FrameSize(info["height"], info["width"], info["components"])


def rle_segments(frame: bytes) -> int | None:
    """The segment count of an RLE frame's header, if the offsets are sane (PS3.5 G.5); else None."""
    if len(frame) < 64:
        return None
    count, *offsets = struct.unpack_from("<16I", frame, 0)
    if not 1 <= count <= 15:
        return None
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in itertools.pairwise(used)) or used[-1] >= len(frame):
        return None
    return count


def frame_size(syntax: str, frame: bytes) -> FrameSize | None:
    """The codestream's own size for the JPEG family and JPEG 2000; None if it states none."""
    if syntax in JPEG_SYNTAXES:
        return jpeg_size(frame)
    if syntax in J2K_SYNTAXES:
        return j2k_size(frame)
    return None


def is_checked(syntax: str) -> bool:
    """Whether frames of this transfer syntax are checked before decoding."""
    return syntax in JPEG_SYNTAXES or syntax in J2K_SYNTAXES or syntax == RLE_SYNTAX


def deflated_size_within(path: Path, limit: int, chunk: int = 1 << 20) -> bool:
    """Whether a deflated dataset inflates to at most ``limit`` bytes (inflated chunk by chunk, never
    more than ``chunk`` bytes of output at a time). The deflate stream starts after the file meta:
    128-byte preamble, ``DICM``, the 12-byte group length element and the group it counts."""
    import pydicom

    meta = pydicom.filereader.read_file_meta_info(path)
    start = 128 + 4 + 12 + int(meta.get("FileMetaInformationGroupLength", 0) or 0)
    with open(path, "rb") as fh:
        fh.seek(start)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not inflater.eof:  # after the end, zlib keeps a byte in unconsumed_tail: stop there
            data = fh.read(chunk)
            if not data:
                return True
            while data and not inflater.eof:
                total += len(inflater.decompress(data, chunk))
                if total > limit:
                    return False
                data = inflater.unconsumed_tail
        return True
