"""Reduced-resolution JPEG 2000 decoding: decode only the wavelet level the network input needs.

A JPEG 2000 codestream holds the image as a wavelet pyramid; level ``r`` is the image low-pass
filtered and halved ``r`` times. Decoding it skips the finer sub-bands entirely: a 1955x1841
radiograph decodes in a fraction of the full decode's time when the network wants 224 pixels.

Pillow (which bundles OpenJPEG) exposes this as ``Image.reduce``, but sizes the output by rounding
``size / 2**r`` to nearest, while OpenJPEG uses the ceiling; for widths with ``size % 2**r`` in
``1 .. 2**(r-1)`` Pillow then reports "broken data stream" (RG1_J2KR at r >= 2). We size the tile the way
OpenJPEG does. Anything unexpected returns None, and the caller falls back to a full decode.
"""

from __future__ import annotations

import io

import numpy as np

J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}

_MAX_LEVEL = 6


def codestream_info(frame: bytes) -> dict[str, int] | None:
    """Width, height, components, precision, signedness and decomposition levels from the main header."""
    start = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ (a JP2 wrapper puts boxes before it)
    if start < 0 or len(frame) < start + 42:
        return None
    siz = start + 4
    xsiz = int.from_bytes(frame[siz + 4 : siz + 8], "big")
    ysiz = int.from_bytes(frame[siz + 8 : siz + 12], "big")
    x0 = int.from_bytes(frame[siz + 12 : siz + 16], "big")
    y0 = int.from_bytes(frame[siz + 16 : siz + 20], "big")
    ncomp = int.from_bytes(frame[siz + 36 : siz + 38], "big")
    if ncomp < 1 or len(frame) < siz + 39:
        return None
    ssiz = frame[siz + 38]
    cod = frame.find(b"\xff\x52", siz, siz + 4096)
    if cod < 0 or len(frame) < cod + 10:
        return None
    return {
        "width": xsiz - x0,
        "height": ysiz - y0,
        "x0": x0,
        "y0": y0,
        "components": ncomp,
        "precision": (ssiz & 0x7F) + 1,
        "signed": int(bool(ssiz & 0x80)),
        "levels": frame[cod + 9],
    }


def choose_level(
    height: int, width: int, target: int, stretch: bool, levels: int, min_fraction: float = 1.0
) -> int:
    """Coarsest level whose image still covers ``target`` (x ``min_fraction``) on the scale-setting side."""
    side = min(height, width) if stretch else max(height, width)
    need = target * min_fraction
    level = 0
    while level < min(levels, _MAX_LEVEL) and -(-side // (1 << (level + 1))) >= need:
        level += 1
    return level


def decode_reduced(frame: bytes, level: int) -> np.ndarray | None:
    """Decode one greyscale, unsigned codestream at ``level``; stored values (not Pillow's rescaled ones)."""
    info = codestream_info(frame)
    if info is None or info["components"] != 1 or info["signed"] or info["x0"] or info["y0"]:
        return None
    if not 1 <= info["precision"] <= 16 or level > info["levels"]:
        return None
    try:
        from PIL import Image, ImageFile

        with Image.open(io.BytesIO(frame)) as im:
            if im.format != "JPEG2000" or im.mode not in ("L", "I;16"):
                return None
            power = 1 << level
            size = (-(-info["width"] // power), -(-info["height"] // power))
            if level:
                im.reduce = level
                tile = im.tile[0]
                args = tile[3]
                im._size = size  # the ceil size OpenJPEG produces (see module docstring)
                args = (args[0], level, im.layers, *args[3:])
                im.tile = [ImageFile._Tile(tile[0], (0, 0, *size), tile[2], args)]
            ImageFile.ImageFile.load(im)
            arr = np.asarray(im)
    except Exception:  # any Pillow/OpenJPEG failure: the caller does a full decode
        return None
    if arr.shape != (size[1], size[0]):
        return None
    # Pillow scales samples up to the full 8/16-bit range; undo it to get stored values back.
    shift = (16 if arr.dtype == np.uint16 else 8) - info["precision"]
    if shift > 0:
        arr = arr >> shift
    elif shift < 0:
        return None
    return arr
