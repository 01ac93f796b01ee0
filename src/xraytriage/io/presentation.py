"""Is this DICOM a diagnostic original meant to be read? Header rules from the standard, scope-neutral.

A model validated on "for presentation" chest radiographs says nothing reliable about
- raw detector data: PresentationIntentType ``FOR PROCESSING`` (PS3.3 C.8.11.1 DX Series module; the
  DX For Processing SOP class, PS3.4 B.5) is not meant to be displayed, its grey levels are unprocessed;
- derived images: ImageType value 1 ``DERIVED`` or value 2 ``SECONDARY`` (PS3.3 C.7.6.1.1.2, General
  Image module), or any Secondary Capture SOP class (PS3.4 B.5; PS3.3 A.8): screenshots, report pages,
  re-photographed films, post-processed copies;
- images whose pixels carry text: BurnedInAnnotation ``YES`` (PS3.3 C.7.6.1, General Image module;
  type 1 in the DX Image module C.8.11.3): labels, names, markers the model may read instead of lungs.

:func:`dicom_input_rules` only reads header attributes (cheap: no pixel decoding), returns machine-readable
reason codes with a sentence each, and knows nothing of the scope configuration beyond the switches in
:class:`InputRules`, so the scope checker decides what to do with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

FOR_PROCESSING = "for_processing"
DERIVED_IMAGE = "derived_image"
BURNED_IN_TEXT = "burned_in_text"

# PS3.4 Annex B.5 Standard SOP Classes: every Secondary Capture Image Storage class (PS3.3 A.8)
SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
FOR_PROCESSING_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "Digital Intra-Oral X-Ray Image Storage - For Processing",
}


@dataclass(frozen=True)
class InputRules:
    """Which rules apply (proposed config keys ``scope.reject_for_processing``,
    ``scope.reject_derived_images`` and ``scope.reject_burned_in_text``, all true by default)."""

    reject_for_processing: bool = True
    reject_derived_images: bool = True
    reject_burned_in_text: bool = True


@dataclass(frozen=True)
class InputReason:
    """Why a DICOM is not a diagnostic original: ``code`` for tables and filters, ``text`` for people."""

    code: str
    text: str


def _upper(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType")
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values]


def _for_processing(ds: Dataset) -> InputReason | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if _upper(ds, "PresentationIntentType") == "FOR PROCESSING" or sop_class in FOR_PROCESSING_SOP_CLASSES:
        return InputReason(
            FOR_PROCESSING,
            "PresentationIntentType is FOR PROCESSING (raw detector data, not meant to be read; "
            "DICOM PS3.3 C.8.11.1): send the FOR PRESENTATION image of this exposure",
        )
    return None


def _derived(ds: Dataset) -> InputReason | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES:
        return InputReason(
            DERIVED_IMAGE,
            f"{SECONDARY_CAPTURE_SOP_CLASSES[sop_class]} (a screenshot or converted image, DICOM PS3.4 B.5), "
            "not an original radiograph: send the original DX/CR image",
        )
    image_type = _image_type(ds)
    if image_type and image_type[:2] != ["ORIGINAL", "PRIMARY"]:
        shown = "\\".join(image_type[:2])
        return InputReason(
            DERIVED_IMAGE,
            f"ImageType is {shown}, not ORIGINAL\\PRIMARY (a derived or secondary image, DICOM PS3.3 "
            "C.7.6.1.1.2): send the original acquisition",
        )
    return None


def _burned_in(ds: Dataset) -> InputReason | None:
    if _upper(ds, "BurnedInAnnotation") == "YES":
        return InputReason(
            BURNED_IN_TEXT,
            "BurnedInAnnotation is YES (text is written into the pixels, DICOM PS3.3 C.7.6.1): the model "
            "was not validated on annotated images; send the image without burned-in text",
        )
    return None


def dicom_input_rules(ds: Dataset, rules: InputRules | None = None) -> list[InputReason]:
    """Every reason ``ds`` (a header, pixels not needed) is not a diagnostic original; [] when it is.

    Absent attributes are not held against a file (many CR and older DX objects lack ImageType or
    BurnedInAnnotation): only what the header states counts.
    """
    rules = rules or InputRules()
    checks = (
        (rules.reject_for_processing, _for_processing),
        (rules.reject_derived_images, _derived),
        (rules.reject_burned_in_text, _burned_in),
    )
    reasons = []
    for enabled, check in checks:
        found = check(ds) if enabled else None
        if found is not None:
            reasons.append(found)
    return reasons
