"""Header rules that tell a diagnostic original from raw, derived and annotated images (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from xraytriage.data.synthetic import SyntheticSpec, generate_dataset, generate_scope_variants
from xraytriage.io.presentation import (
    BURNED_IN_TEXT,
    DERIVED_IMAGE,
    FOR_PROCESSING,
    InputRules,
    dicom_input_rules,
)

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def _header(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DX_PRESENTATION
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _codes(ds: Dataset, rules: InputRules | None = None) -> list[str]:
    return [reason.code for reason in dicom_input_rules(ds, rules)]


def test_a_diagnostic_original_passes() -> None:
    assert _codes(_header()) == []
    assert _codes(_header(ImageType=["ORIGINAL", "PRIMARY", "", "RT"])) == []  # values 3+ do not matter


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"PresentationIntentType": "FOR PROCESSING"}, [FOR_PROCESSING]),
        ({"PresentationIntentType": "FOR PROCESSING "}, [FOR_PROCESSING]),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1", "PresentationIntentType": None}, [FOR_PROCESSING]),
        ({"ImageType": ["DERIVED", "PRIMARY"]}, [DERIVED_IMAGE]),
        ({"ImageType": ["ORIGINAL", "SECONDARY"]}, [DERIVED_IMAGE]),
        ({"ImageType": "DERIVED"}, [DERIVED_IMAGE]),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, [DERIVED_IMAGE]),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.3"}, [DERIVED_IMAGE]),
        ({"BurnedInAnnotation": "YES"}, [BURNED_IN_TEXT]),
        (
            {
                "PresentationIntentType": "FOR PROCESSING",
                "ImageType": ["DERIVED"],
                "BurnedInAnnotation": "YES",
            },
            [FOR_PROCESSING, DERIVED_IMAGE, BURNED_IN_TEXT],
        ),
    ],
)
def test_each_rule_names_its_reason(attributes: dict[str, object], expected: list[str]) -> None:
    reasons = dicom_input_rules(_header(**attributes))
    assert [r.code for r in reasons] == expected
    assert all("DICOM PS3." in r.text and "send" in r.text for r in reasons)


def test_absent_attributes_are_not_held_against_a_file() -> None:
    """A CR without ImageType / BurnedInAnnotation / PresentationIntentType is not out of scope by absence."""
    bare = _header(ImageType=None, BurnedInAnnotation=None, PresentationIntentType=None)
    bare.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    assert _codes(bare) == []


def test_rules_can_be_switched_off_one_by_one() -> None:
    everything = _header(
        PresentationIntentType="FOR PROCESSING", ImageType=["DERIVED"], BurnedInAnnotation="YES"
    )
    assert _codes(everything, InputRules(reject_for_processing=False)) == [DERIVED_IMAGE, BURNED_IN_TEXT]
    assert _codes(everything, InputRules(reject_derived_images=False)) == [FOR_PROCESSING, BURNED_IN_TEXT]
    assert _codes(everything, InputRules(reject_burned_in_text=False)) == [FOR_PROCESSING, DERIVED_IMAGE]
    assert _codes(everything, InputRules(False, False, False)) == []


def test_demo_files_and_variants(tmp_path: Path) -> None:
    """The demo's originals pass; each demo variant is caught by exactly its own rule."""
    manifest = generate_dataset(tmp_path / "d", SyntheticSpec(n_patients=4, size=32, seed=5), progress=False)
    for rel in [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]:
        assert _codes(pydicom.dcmread(tmp_path / "d" / rel, stop_before_pixels=True)) == []
    variants = generate_scope_variants(tmp_path / "v", seed=5, size=64)
    found = {name: _codes(pydicom.dcmread(path, stop_before_pixels=True)) for name, path in variants.items()}
    assert found == {
        "for_processing": [FOR_PROCESSING],
        "derived_secondary_capture": [DERIVED_IMAGE],
        "burned_in_annotation": [BURNED_IN_TEXT],
    }
