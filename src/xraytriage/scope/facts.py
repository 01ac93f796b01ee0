"""What the scope rules look at in one scan: its header attributes, from the DICOM or the manifest."""

from __future__ import annotations

from dataclasses import dataclass

from xraytriage.io.metadata import ImageMeta


@dataclass(frozen=True)
class ScanFacts:
    """The scope-relevant header attributes of one scan. None = the file does not carry the tag (a
    PNG carries none): a rule is only applied to a scan that has its attribute.

    The rule names are the field names; add a field here (and a rule in ``scope.check``) to check a
    new attribute."""

    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    sex: str | None = None
    manufacturer: str | None = None
    site: str | None = None
    photometric: str | None = None
    age: float | None = None
    pixel_spacing: float | None = None  # the smaller of row/column spacing, mm
    rows: float | None = None
    columns: float | None = None
    study_date: str | None = None  # not a rule: carried to scores.csv for monitoring
    not_original: tuple[str, ...] = ()  # io.presentation codes the header states (input rules)

    @classmethod
    def from_meta(cls, meta: ImageMeta) -> ScanFacts:
        """A DICOM's header; a raster file's meta has no tags, so no header rule applies to it."""
        if meta.format != "dicom":
            return cls()
        return cls(
            modality=_upper(meta.modality),
            body_part=_upper(meta.body_part),
            view=_upper(meta.view),
            sex=meta.sex if meta.sex in ("F", "M") else None,
            manufacturer=_clean(meta.manufacturer),
            site=_clean(meta.institution),
            photometric=_upper(meta.photometric),
            age=meta.age_years,
            pixel_spacing=min(meta.pixel_spacing) if meta.pixel_spacing else None,
            rows=float(meta.rows) if meta.rows else None,
            columns=float(meta.columns) if meta.columns else None,
            study_date=meta.study_date,
            not_original=tuple(meta.not_original),
        )


def _clean(value: str | None) -> str | None:
    text = " ".join(str(value).split()) if value is not None else ""
    return text or None


def _upper(value: str | None) -> str | None:
    text = _clean(value)
    return text.upper() if text else None


VALUE_RULES = ("modality", "body_part", "view", "sex", "manufacturer", "site", "photometric")
RANGE_RULES = ("age", "pixel_spacing", "rows", "columns")
