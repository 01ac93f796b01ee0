"""Against a real PACS (Orthanc, started on free ports in a temp folder): push demo scans in, score them
with --dicom-out, send the SRs back by C-STORE and by STOW-RS, and check through Orthanc's REST API that
each SR sits in its scan's study and references its scan. Skipped where Orthanc is not installed."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from support.orthanc import (
    Orthanc,
    dicomweb_plugin,
    make_certificates,
    orthanc_binary,
    start_orthanc,
    tls_config,
)
from xraytriage import cli
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset, generate_scope_variants

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (apt-get install orthanc)"),
]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scored(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo scans (and the scope variants) pushed to Orthanc over REST, then scored locally."""
    from support.scoring import make_bundle

    root = tmp_path_factory.mktemp("pacs_round_trip")
    generate_dataset(root / "scans", SyntheticSpec(n_patients=4, size=48, seed=11), progress=False)
    generate_scope_variants(root / "scans" / "images", seed=11, size=64)
    scans = sorted((root / "scans" / "images").glob("*.dcm"))
    for path in scans:
        orthanc.upload(path)
    bundle = make_bundle(root / "model.pt", threshold=0.5)
    args = ["score", str(root / "scans" / "images"), "--model", str(bundle), "--out", str(root / "s.csv")]
    assert cli.main([*args, "--dicom-out", str(root / "results"), "--no-progress", "--workers", "0"]) == 0
    return {"root": root, "results": root / "results", "scans": scans}


def _instances(orthanc: Orthanc) -> list[str]:
    return list(orthanc.get("/instances"))


def _check_filed_with_their_scans(orthanc: Orthanc, reports: list[Path]) -> None:
    for path in reports:
        local = pydicom.dcmread(path)
        stored_id = orthanc.lookup_instance(local.SOPInstanceUID)
        assert stored_id is not None, path.name
        stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(stored_id)))
        image = stored.ContentSequence[0].ReferencedSOPSequence[0]
        assert stored.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "Source image"
        source_id = orthanc.lookup_instance(image.ReferencedSOPInstanceUID)
        assert source_id is not None  # the referenced instance is the scan we pushed
        sr_study = orthanc.get(f"/instances/{stored_id}/study")
        assert sr_study["ID"] == orthanc.get(f"/instances/{source_id}/study")["ID"]
        assert sr_study["MainDicomTags"]["StudyInstanceUID"] == stored.StudyInstanceUID
        sr_series = orthanc.get(f"/instances/{stored_id}/series")
        assert sr_series["ID"] != orthanc.get(f"/instances/{source_id}/series")["ID"]  # a new series
        assert sr_series["MainDicomTags"]["Modality"] == "SR"


def test_c_store_round_trip(orthanc: Orthanc, scored: dict) -> None:
    reports = sorted(scored["results"].glob("SR_*.dcm"))
    assert len(reports) == len(scored["scans"])  # one SR per scored scan
    before = len(_instances(orthanc))
    assert before == len(scored["scans"])
    assert cli.main(["send", str(scored["results"]), "--to", orthanc.destination]) == 0
    assert len(_instances(orthanc)) == before + len(reports)  # sent = stored
    _check_filed_with_their_scans(orthanc, reports)
    with open(scored["results"] / "send_report.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["stored"] * len(reports)
    # sending again never duplicates: a PACS files objects by SOP Instance UID
    assert cli.main(["send", str(scored["results"]), "--to", orthanc.destination]) == 0
    assert len(_instances(orthanc)) == before + len(reports)


def test_wrong_called_ae_title_is_a_refusal_not_retried(
    orthanc: Orthanc, scored: dict, tmp_path: Path
) -> None:
    wrong = orthanc.destination.replace(orthanc.aet, "NOT-ORTHANC")
    report = tmp_path / "r.csv"
    assert cli.main(["send", str(scored["results"]), "--to", wrong, "--report", str(report)]) == 1
    with open(report, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["status"] == "failed" and r["attempts"] == "1" for r in rows)
    assert "check the AE titles" in rows[0]["detail"]


@pytest.mark.skipif(
    dicomweb_plugin() is None, reason="Orthanc DICOMweb plugin not installed (orthanc-dicomweb)"
)
def test_stow_rs_round_trip(orthanc: Orthanc, scored: dict, tmp_path: Path) -> None:
    reports = sorted(scored["results"].glob("SR_*.dcm"))
    for path in reports:  # start from a PACS without the results
        found = orthanc.lookup_instance(pydicom.dcmread(path).SOPInstanceUID)
        if found:
            import requests

            requests.delete(f"{orthanc.url}/instances/{found}", timeout=30).raise_for_status()
    n_scans = len(scored["scans"])
    assert len(_instances(orthanc)) == n_scans
    report = tmp_path / "stow.csv"
    assert (
        cli.main(["send", str(scored["results"]), "--dicomweb", orthanc.dicomweb, "--report", str(report)])
        == 0
    )
    assert len(_instances(orthanc)) == n_scans + len(reports)
    _check_filed_with_their_scans(orthanc, reports)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed (test certificates)")
def test_c_store_over_mutual_tls(scored: dict, tmp_path: Path) -> None:
    """DICOM over TLS (PS3.15 B.1): stored with the CA and our certificate; refused in plain text."""
    certs = make_certificates(tmp_path / "certs")
    server = start_orthanc(tmp_path / "orthanc-tls", extra=tls_config(certs))
    try:
        plain = tmp_path / "plain.csv"
        args = ["send", str(scored["results"]), "--to", server.destination, "--attempts", "1"]
        assert cli.main([*args, "--timeout", "5", "--report", str(plain)]) == 1
        assert _instances(server) == []
        tls = [
            "--tls-ca",
            str(certs["ca"]),
            "--tls-cert",
            str(certs["client"]),
            "--tls-key",
            str(certs["client_key"]),
        ]
        assert cli.main([*args, *tls, "--report", str(tmp_path / "tls.csv")]) == 0
        assert len(_instances(server)) == len(list(scored["results"].glob("SR_*.dcm")))
    finally:
        server.stop()
