"""Subgroup-relevant DICOM attributes; patient identity only ever as a keyed pseudonym."""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

_AS_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def parse_age(value: Any) -> float | None:
    """DICOM AS (``058Y``, ``011M``, ``003W``, ``010D``) or a plain number -> years; None if unknown."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and 0 <= value < 150 else None
    text = str(value).strip()
    if not text:
        return None
    match = _AS_RE.match(text)
    if match:
        return round(int(match.group(1)) * _UNIT_YEARS[match.group(2).upper()], 4)
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and 0 <= number < 150 else None


def parse_study_date(value: Any) -> str | None:
    """DICOM DA (``20240131``, or the retired ``2024.01.31``) -> ``2024-01-31``; None if not a real date."""
    text = str(value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
    except ValueError:
        return None


def normalise_sex(value: Any) -> str:
    """F / M / unknown, whatever spelling the source uses."""
    text = str(value).strip().upper() if value is not None else ""
    if text in {"F", "FEMALE", "W", "WOMAN"}:
        return "F"
    if text in {"M", "MALE", "MAN"}:
        return "M"
    return "unknown"


@dataclass
class ImageMeta:
    """What we keep about a scan. Deliberately has no field for names or birth dates."""

    format: str
    rows: int = 0
    columns: int = 0
    sex: str = "unknown"
    age_years: float | None = None
    view: str | None = None
    modality: str | None = None
    manufacturer: str | None = None
    institution: str | None = None
    body_part: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    patient_pseudonym: str | None = None  # HMAC of PatientID with the site key; set by prepare only
    photometric: str | None = None
    study_date: str | None = None  # ISO YYYY-MM-DD from StudyDate (deployment monitoring by date)
    not_original: list[str] = field(default_factory=list)  # io.presentation codes: for_processing, ...
    transfer_syntax: str | None = None
    bits_stored: int | None = None
    frames: int = 1
    decode_path: str | None = None  # native | pydicom | jpeg2000_reduced/<factor> | nvimgcodec | pillow
    normalization: str | None = None  # voi_window | voi_lut | percentile | minmax | full_scale
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
