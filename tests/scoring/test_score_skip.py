"""Scoring a dataset folder: its LICENSE, readme, label tables and non-image DICOMs are skipped, not failures.

Detection stays by content: an extension-less DICOM is still scored, a scan named ``.txt`` is still a
scan, and a damaged scan (truncated radiograph, corrupt PNG) is still a failure. ``--strict`` restores
the old behaviour (every file that is not decodable counts).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from support.scoring import make_bundle, read_csv_rows, run_score, write_dicom, write_pngs
from xraytriage.scoring.discovery import NOT_A_SCAN, non_scan_kind


def _header_only_radiograph(path: Path) -> Path:
    """A DX image object whose pixel data never arrived (a transfer cut after the header)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = 64, 64
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"MIT License\n\nCopyright (c) 2020\n", "text"),
        ("# Lisez-moi\n\nR\u00e9sum\u00e9 des donn\u00e9es \u2014 radiographies\n".encode(), "text"),
        (b"\xef\xbb\xbfpath,label\na.png,1\nb.png,0\n", "CSV"),
        (b'{"images": [1, 2]}', "JSON"),
        (b'<?xml version="1.0"?><dataset/>', "XML"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, None),  # a damaged image stays a failure
        (b"\x00\x01\x02\x03binary", None),
        (b"", None),
    ],
)
def test_text_files_are_recognised_by_content(tmp_path: Path, content: bytes, kind: str | None) -> None:
    path = tmp_path / "LICENSE"
    path.write_bytes(content)
    assert non_scan_kind(str(path), "not_an_image") == kind


def test_a_cut_multibyte_character_at_the_probe_edge_is_still_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_bytes(b"a" * 8191 + "\u00e9".encode() + b" more")  # 2-byte char split by the 8 KiB probe
    assert non_scan_kind(str(path), "not_an_image") == "text"


def test_dicom_without_pixel_data_is_skipped_only_for_non_image_classes(
    tmp_path: Path, pydicom_test_file
) -> None:
    assert non_scan_kind(pydicom_test_file("DICOMDIR"), "no_pixel_data") == "DICOMDIR"
    sr = non_scan_kind(pydicom_test_file("test-SR.dcm"), "no_pixel_data")
    assert sr is not None and sr.startswith("DICOM ") and "SR" in sr
    rt = non_scan_kind(pydicom_test_file("rtstruct.dcm"), "no_pixel_data")
    assert rt == "DICOM RT Structure Set Storage without pixel data"
    assert non_scan_kind(str(_header_only_radiograph(tmp_path / "cut.dcm")), "no_pixel_data") is None
    assert non_scan_kind(str(tmp_path / "missing.txt"), "not_an_image") is None
    assert non_scan_kind(pydicom_test_file("test-SR.dcm"), "truncated") is None  # other reasons: failures


@pytest.fixture
def dataset_folder(tmp_path: Path, pydicom_test_file) -> Path:
    """A public dataset as downloaded: images, an extension-less DICOM and the dataset's own files."""
    root = tmp_path / "covid-chestxray"
    write_pngs(root / "images", 2)
    write_dicom(pydicom_test_file("CT_small.dcm"), root / "images" / "IM0001", "1.2.3", "1.2.3.1")
    (root / "LICENSE").write_text("Creative Commons Attribution 4.0\n")
    (root / "readme.md").write_text("# COVID-19 image data collection\n")
    (root / "metadata.csv").write_text("patientid,finding,filename\n1,COVID-19,img0000.png\n")
    (root / "annotations.json").write_text('{"version": 1}')
    shutil.copy(pydicom_test_file("test-SR.dcm"), root / "report.dcm")
    return root


def test_a_dataset_folder_scores_with_exit_0_and_its_own_files_skipped(
    dataset_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "model.pt")
    out = tmp_path / "out" / "scores.csv"
    assert run_score(dataset_folder, bundle, out, "--workers", "0") == 0
    scored = {Path(r["path"]).name for r in read_csv_rows(out)}
    assert scored == {"img0000.png", "img0001.png", "IM0001"}  # found by content, no extension needed
    errors = read_csv_rows(out.with_name("scores.errors.csv"))
    assert {Path(r["path"]).name: r["reason"] for r in errors} == dict.fromkeys(
        ["LICENSE", "readme.md", "metadata.csv", "annotations.json", "report.dcm"], NOT_A_SCAN
    )
    kinds = {Path(r["path"]).name: r["message"] for r in errors}
    assert kinds["metadata.csv"] == "skipped: CSV, not a scan" and "JSON" in kinds["annotations.json"]
    summary = capsys.readouterr().err
    assert "skipped 5 files that are not scans" in summary and "failures in the errors file: 0" in summary

    # Resumed: nothing new is scored, the skipped files are not re-examined, still exit 0.
    assert run_score(dataset_folder, bundle, out, "--workers", "0") == 0
    assert len(read_csv_rows(out)) == 3 and len(read_csv_rows(out.with_name("scores.errors.csv"))) == 5
    # --strict over the same outputs: the recorded non-scans now count.
    assert run_score(dataset_folder, bundle, out, "--workers", "0", "--strict") == 1


def test_strict_counts_every_undecodable_file_as_a_failure(dataset_folder: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "model.pt")
    out = tmp_path / "strict" / "scores.csv"
    assert run_score(dataset_folder, bundle, out, "--workers", "0", "--strict") == 1
    reasons = {Path(r["path"]).name: r["reason"] for r in read_csv_rows(out.with_name("scores.errors.csv"))}
    assert reasons["LICENSE"] == "not_an_image" and reasons["report.dcm"] == "no_pixel_data"
    assert NOT_A_SCAN not in reasons.values()


def test_a_damaged_scan_beside_a_readme_still_fails_the_run(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    write_pngs(root, 1)
    (root / "readme.txt").write_text("scans from ward 3\n")
    _header_only_radiograph(root / "cut")
    bundle = make_bundle(tmp_path / "model.pt")
    out = tmp_path / "scores.csv"
    assert run_score(root, bundle, out, "--workers", "0") == 1
    reasons = {Path(r["path"]).name: r["reason"] for r in read_csv_rows(tmp_path / "scores.errors.csv")}
    assert reasons == {"readme.txt": NOT_A_SCAN, "cut": "no_pixel_data"}
