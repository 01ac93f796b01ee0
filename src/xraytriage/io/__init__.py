"""Scan decoding: DICOM (every transfer syntax pydicom's plugins handle), PNG, JPEG, TIFF."""

from xraytriage.io.detect import sniff_format
from xraytriage.io.errors import REASONS, UnreadableImage
from xraytriage.io.metadata import ImageMeta, parse_age
from xraytriage.io.pipeline import load_image

__all__ = ["REASONS", "ImageMeta", "UnreadableImage", "load_image", "parse_age", "sniff_format"]
