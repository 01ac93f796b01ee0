"""``score --dicom-out``: a DICOM SR per scored DICOM scan (and Grad-CAM Secondary Captures with --cam),
filed in the scan's study, referencing it, carrying what scores.csv says; dciodvfy-valid; never duplicated."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset

from xraytriage.commands import score as score_cmd
from xraytriage.config import ModelConfig, PreprocessConfig
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.evaluation.thresholds import OperatingPoint
from xraytriage.io.conformance import check_file, dciodvfy_available
from xraytriage.models import build_model, load_bundle, save_bundle
from xraytriage.scoring.dicom_out import USE_STATEMENT, DicomResultWriter, result_uids
from xraytriage.scoring.outputs import read_scores

OP = OperatingPoint(
    threshold=0.0,
    policy="target_sensitivity",
    rule="wilson",
    target=0.9,
    confidence=0.95,
    validation_value=0.95,
    lower_bound=0.91,
    validation_cases=120,
    validation_patients=100,
)


def _bundle(path: Path, threshold: float) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", weights=None, task="binary")
    op = dataclasses.replace(OP, threshold=threshold)
    save_bundle(
        path,
        build_model(cfg, num_outputs=1),
        cfg,
        PreprocessConfig(image_size=32),
        ["finding"],
        {"finding": threshold},
        task="binary",
        operating_points={"finding": op.to_json()},
    )
    return path


CREATION_TIMES = (
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "DateOfSecondaryCapture",
    "TimeOfSecondaryCapture",
    "ContributingEquipmentSequence",  # holds the contribution date and time
)


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of an SR tree, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += _items(item)
    return out


def _by_meaning(ds: Dataset, meaning: str) -> list[Dataset]:
    return [i for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dicom_out")
    manifest = generate_dataset(root / "data", SyntheticSpec(n_patients=3, size=48, seed=4), progress=False)
    incoming = root / "incoming"
    shutil.copytree(root / "data" / "images", incoming)
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(incoming / "photo.png")  # not DICOM: no SR
    bundle = _bundle(root / "model.pt", threshold=0.0)  # flags everything: one capture per scan
    args = ["--model", str(bundle), "--out", str(root / "s.csv"), "--no-progress", "--workers", "0"]
    args += ["--dicom-out", str(root / "results"), "--cam", str(root / "cams")]
    assert score_cmd.main([str(incoming), *args]) == 0
    return {"root": root, "manifest": manifest, "bundle": bundle, "incoming": incoming, "args": args}


def test_one_sr_per_dicom_scan_in_its_study_referencing_it(scored: dict) -> None:
    root, bundle = scored["root"], load_bundle(scored["bundle"])
    scores = read_scores(root / "s.csv", ["finding"])
    dicom_rows = scores[scores["sop_instance_uid"] != ""]
    reports = [pydicom.dcmread(p) for p in sorted((root / "results").glob("SR_*.dcm"))]
    assert len(dicom_rows) == len(scores) - 1 == len(reports) > 0
    by_source = {}
    for sr in reports:
        image = _by_meaning(sr, "Source image")[0].ReferencedSOPSequence[0]
        by_source[image.ReferencedSOPInstanceUID] = sr
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.ReferencedSOPInstanceUID
    for row in dicom_rows.itertuples():
        source, sr = pydicom.dcmread(row.path), by_source[row.sop_instance_uid]
        assert sr.StudyInstanceUID == source.StudyInstanceUID == row.study_instance_uid
        assert (sr.PatientID, sr.PatientName) == (source.PatientID, source.PatientName)
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID
        assert sr.SOPInstanceUID == result_uids(row.sop_instance_uid, sr.StudyInstanceUID, bundle.model_id)[1]
        probability = _by_meaning(sr, "Probability")[0].MeasuredValueSequence[0].NumericValue
        assert float(probability) == pytest.approx(row.prob_finding, abs=1e-6)
        assert _by_meaning(sr, "Flagged at operating point")[0].ConceptCodeSequence[0].CodeMeaning == "Yes"
        assert _by_meaning(sr, "Class")[0].TextValue == "finding"
        assert _by_meaning(sr, "Model identifier")[0].TextValue == bundle.model_id == row.model_id
        assert _by_meaning(sr, "Use statement")[0].TextValue == USE_STATEMENT
        assert not _by_meaning(sr, "Out-of-scope reason")  # no scope column: nothing to report
        op_text = _by_meaning(sr, "Operating point")[0].TextValue
        assert op_text == OperatingPoint.from_json(bundle.operating_points["finding"]).describe()
        assert "lower bound 0.910 (reaches the target 0.9)" in op_text


def test_grad_cam_captures_share_the_sr_series(scored: dict) -> None:
    root = scored["root"]
    reports = {pydicom.dcmread(p).SeriesInstanceUID for p in (root / "results").glob("SR_*.dcm")}
    captures = [pydicom.dcmread(p) for p in (root / "results").glob("SC_*.dcm")]
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, scored["incoming"].glob("*.dcm"))}
    # threshold 0 flags every scan: one capture per DICOM scan; the PNG gets a PNG overlay only
    assert len(captures) == len(sources) == len(list((root / "cams").glob("*.png"))) - 1
    for sc in captures:
        assert sc.SeriesInstanceUID in reports and sc.PhotometricInterpretation == "RGB"
        assert sc.pixel_array.shape == (32, 32, 3) and sc.pixel_array.std() > 0
        source = sources[sc.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert sc.StudyInstanceUID == source.StudyInstanceUID


def test_rescoring_rewrites_the_same_objects(scored: dict, tmp_path: Path) -> None:
    """Resume after losing the journal (the worst case): the same UIDs, the same files, none added."""
    root = scored["root"]
    before = sorted(p.name for p in (root / "results").iterdir())
    assert ".lock" in before and len(before) == 1 + len(list((root / "results").glob("S[RC]_*.dcm")))
    args = list(scored["args"])
    args[args.index(str(root / "s.csv"))] = str(tmp_path / "again.csv")
    assert score_cmd.main([str(scored["incoming"]), *args]) == 0
    assert sorted(p.name for p in (root / "results").iterdir()) == before


def test_result_uids_are_deterministic_valid_and_distinct() -> None:
    from pydicom.uid import UID

    first = result_uids("1.2.3.4", "1.2.3", "model-a")
    assert first == result_uids("1.2.3.4", "1.2.3", "model-a")  # a new process gives the same (pure)
    assert first[1] != result_uids("1.2.3.5", "1.2.3", "model-a")[1]
    assert first[1] != result_uids("1.2.3.4", "1.2.3", "model-b")[1]
    assert first[0] == result_uids("1.2.3.9", "1.2.3", "model-a")[0]  # one series per study and model
    assert all(UID(u).is_valid and u.startswith("2.25.") and len(u) <= 64 for u in first)


def test_scope_reason_is_reported_when_the_row_has_one(scored: dict, tmp_path: Path) -> None:
    source = next(scored["incoming"].glob("*.dcm"))
    ds = pydicom.dcmread(source)
    writer = DicomResultWriter(tmp_path, ["finding"], {"finding": 0.5}, {}, "m1", "xraytriage resnet18")
    row = {"path": str(source), "sop_instance_uid": ds.SOPInstanceUID, "prob_finding": "0.25"}
    written = writer.write({**row, "flag_finding": "0", "scope_reasons": "burned_in_text"})
    sr = pydicom.dcmread(written.sr)
    assert _by_meaning(sr, "Out-of-scope reason")[0].TextValue == "burned_in_text"
    assert _by_meaning(sr, "Flagged at operating point")[0].ConceptCodeSequence[0].CodeMeaning == "No"
    assert "no record of how it was chosen" in _by_meaning(sr, "Operating point")[0].TextValue
    assert writer.write({**row, "sop_instance_uid": "", "flag_finding": "0"}) is None  # PNG row


def test_patient_identity_is_never_printed(scored: dict, tmp_path: Path, capsys, caplog) -> None:
    args = list(scored["args"])
    args[args.index(str(scored["root"] / "s.csv"))] = str(tmp_path / "third.csv")
    args[args.index(str(scored["root"] / "results"))] = str(tmp_path / "results")
    with caplog.at_level("DEBUG"):
        assert score_cmd.main([str(scored["incoming"]), *args]) == 0
    printed = capsys.readouterr()
    # another run into another folder: the same objects, element for element apart from creation times
    for path in sorted((tmp_path / "results").glob("S[RC]_*.dcm")):
        here, there = pydicom.dcmread(path), pydicom.dcmread(scored["root"] / "results" / path.name)
        for ds in (here, there):
            for keyword in CREATION_TIMES:
                if keyword in ds:
                    delattr(ds, keyword)
        assert here == there, path.name
    for text in (printed.out, printed.err, caplog.text):
        assert "Demo^Patient" not in text and "19500101" not in text
    assert "DICOM results written: 8 objects" in printed.err  # 4 SRs + 4 captures


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_every_result_object_passes_dciodvfy(scored: dict) -> None:
    objects = sorted((scored["root"] / "results").glob("*.dcm"))
    kinds = set()
    for path in objects:
        result = check_file(path)
        assert result.errors == [], (path.name, result.errors)
        kinds.add(result.iod)
    assert kinds == {"ComprehensiveSR", "SCImage"}


def test_staged_files_appear_only_on_commit(tmp_path: Path) -> None:
    from xraytriage.scoring.dicom_out import StagedFiles

    staged = StagedFiles()
    for name in ("SR_1.dcm", "SR_2.dcm"):
        staged.temporary(tmp_path / name).write_bytes(name.encode())
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SR_1.dcm", "SR_2.dcm"]
    assert (tmp_path / "SR_2.dcm").read_bytes() == b"SR_2.dcm"
    staged.temporary(tmp_path / "SR_3.dcm").write_bytes(b"x")
    staged.discard()  # a batch that failed half-way leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SR_1.dcm", "SR_2.dcm"]


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dsrdump (dcmtk) not installed")
def test_dcmtk_reads_every_sr_with_the_scores_values(scored: dict) -> None:
    """An independent SR implementation (dcmtk's dsrdump) parses each report and shows the same
    probability and flag as scores.csv."""
    import re
    import subprocess

    scores = read_scores(scored["root"] / "s.csv", ["finding"])
    by_sop = {row.sop_instance_uid: row for row in scores.itertuples()}
    for path in sorted((scored["root"] / "results").glob("SR_*.dcm")):
        proc = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("Comprehensive SR Document"), proc.stderr
        source = pydicom.dcmread(path).ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        row = by_sop[source]
        shown = float(re.search(r'NUM:\(,,"Probability"\)="([0-9.]+)"', proc.stdout).group(1))
        assert shown == pytest.approx(row.prob_finding, abs=1e-6)
        flag = re.search(
            r'CODE:\(,,"Flagged at operating point"\)=\(\d+,SCT,"(Yes|No)"\)', proc.stdout
        ).group(1)
        assert flag == ("Yes" if row.flag_finding else "No")
