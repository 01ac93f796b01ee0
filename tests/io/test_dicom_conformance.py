"""The demo DICOMs are valid objects of their IODs: dciodvfy (dicom3tools) finds 0 errors, and a pure
pydicom check of the attributes the DX/CR IODs require runs where dicom3tools is not installed."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet

from xraytriage.data.synthetic import (
    DX_FOR_PROCESSING,
    SCOPE_VARIANTS,
    SOP_CLASS,
    SyntheticSpec,
    generate_dataset,
    generate_scope_variants,
)
from xraytriage.io.conformance import check_file, dciodvfy_available

needs_dciodvfy = pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
TYPE_2 = ("StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six patients cover DX and CR, MONOCHROME1/2 and all three transfer syntaxes; plus the variants."""
    root = tmp_path_factory.mktemp("conformance")
    manifest = generate_dataset(root, SyntheticSpec(n_patients=6, size=64, seed=3), progress=False)
    files = {line.split(",")[0]: root / line.split(",")[0] for line in manifest.read_text().splitlines()[1:]}
    for name, path in generate_scope_variants(root / "variants", seed=3, size=96).items():
        files[name] = path
    return files


def test_dx_and_cr_carry_the_attributes_their_iods_require(demo_files: dict[str, Path]) -> None:
    kinds = set()
    for name, path in demo_files.items():
        if name in SCOPE_VARIANTS:
            continue
        ds = pydicom.dcmread(path)
        kinds.add(ds.Modality)
        for keyword in (*TYPE_2, "InstanceNumber", "PatientOrientation", "AnatomicRegionSequence"):
            assert keyword in ds, (name, keyword)
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"] and ds.BurnedInAnnotation == "NO"
        assert ds.ImageLaterality == "U" and ds.LossyImageCompression == "00"
        if ds.Modality == "DX":  # PS3.3 C.8.11.1 / C.8.11.3
            assert ds.SOPClassUID == SOP_CLASS["DX"] and ds.PresentationIntentType == "FOR PRESENTATION"
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
            assert ds.PixelIntensityRelationship == "LOG"
            assert ds.PixelIntensityRelationshipSign == (
                1 if ds.PhotometricInterpretation == "MONOCHROME1" else -1
            )
            assert (
                ds.ViewCodeSequence[0].CodeMeaning
                == {"PA": "postero-anterior", "AP": "antero-posterior"}[ds.ViewPosition]
            )
    assert kinds == {"DX", "CR"}


def test_variants_are_what_their_names_say(demo_files: dict[str, Path]) -> None:
    raw = pydicom.dcmread(demo_files["for_processing"])
    assert raw.SOPClassUID == DX_FOR_PROCESSING and raw.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in raw  # a VOI window is for presentation images only
    sc = pydicom.dcmread(demo_files["derived_secondary_capture"])
    assert sc.SOPClassUID == SC_IMAGE and list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    burned = pydicom.dcmread(demo_files["burned_in_annotation"])
    assert burned.BurnedInAnnotation == "YES" and list(burned.ImageType) == ["ORIGINAL", "PRIMARY"]
    clean = pydicom.dcmread(demo_files["for_processing"]).pixel_array
    text = burned.pixel_array
    assert clean.shape == text.shape and (text[:40] == text.max()).sum() > 50  # the text is in the pixels


def test_pydicom_fileset_accepts_every_demo_file(demo_files: dict[str, Path], tmp_path: Path) -> None:
    """FileSet.add refused the old demo files (missing type 1/2 attributes a DICOMDIR record needs)."""
    fs = FileSet()
    for path in demo_files.values():
        fs.add(pydicom.dcmread(path))
    fs.write(tmp_path / "media")
    assert len(fs) == len(demo_files)


@needs_dciodvfy
def test_dciodvfy_finds_no_error_in_any_demo_file(demo_files: dict[str, Path]) -> None:
    iods = {}
    for name, path in demo_files.items():
        result = check_file(path)
        assert result.errors == [], (name, result.errors)
        iods[name] = result.iod
    assert iods["for_processing"] == "DXImageForProcessing" and iods["derived_secondary_capture"] == "SCImage"
    assert {iod for name, iod in iods.items() if name not in SCOPE_VARIANTS} == {
        "DXImageForPresentation",
        "CRImage",
    }


@needs_dciodvfy
def test_dciodvfy_check_counts_errors_it_is_shown(demo_files: dict[str, Path], tmp_path: Path) -> None:
    """Negative control: the same file without its type 1 ImageType and type 2 StudyTime has 2 errors."""
    ds = pydicom.dcmread(next(p for n, p in demo_files.items() if n not in SCOPE_VARIANTS))
    del ds.ImageType, ds.StudyTime
    ds.save_as(tmp_path / "broken.dcm")
    errors = check_file(tmp_path / "broken.dcm").errors
    assert (
        len(errors) == 2 and any("ImageType" in e for e in errors) and any("StudyTime" in e for e in errors)
    )
