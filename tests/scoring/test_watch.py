"""``score --watch``: files taken only once complete; exactly once across kill -9 and restart; SIGTERM
finishes the batch in flight; results sent to a real Orthanc as they are made (where installed)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from support.orthanc import Orthanc, orthanc_binary, start_orthanc
from xraytriage.commands import score as score_cmd
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.scoring.watch import Inbox, SentJournal
from xraytriage.utils import progress

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_inbox_takes_a_file_only_once_it_is_complete(tmp_path: Path) -> None:
    clock = Clock()
    inbox = Inbox(tmp_path, settle_s=1.0, clock=clock)
    growing = tmp_path / "a.dcm"
    growing.write_bytes(b"x" * 10)
    (tmp_path / "b.dcm.part").write_bytes(b"y" * 10)  # a router's name while writing
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert inbox.ready() == []  # first sighting
    clock.now += 0.99
    assert inbox.ready() == []  # unchanged, but not for 1 s yet
    with open(growing, "ab") as fh:  # the router writes more: the clock restarts
        fh.write(b"x" * 10)
    clock.now += 0.02
    assert inbox.ready() == []
    clock.now += 0.99
    assert inbox.ready() == []
    clock.now += 0.01  # exactly settle_s after the last change
    assert inbox.ready() == [str(growing)]
    clock.now += 60
    assert inbox.ready() == [str(growing)]  # .part and empty files are never taken
    (tmp_path / "b.dcm.part").rename(tmp_path / "b.dcm")  # the rename convention
    assert inbox.ready() == [str(growing)]  # the new name is seen...
    clock.now += 1.0
    assert inbox.ready() == [str(growing), str(tmp_path / "b.dcm")]  # ...and taken once settled


def test_inbox_with_settle_zero_takes_a_renamed_file_at_the_next_listing(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, settle_s=0.0, clock=Clock())
    (tmp_path / "c.dcm.tmp").write_bytes(b"z")
    assert inbox.ready() == []
    (tmp_path / "c.dcm.tmp").rename(tmp_path / "c.dcm")
    assert inbox.ready() == []
    assert inbox.ready() == [str(tmp_path / "c.dcm")]


def test_sent_journal_survives_a_restart(tmp_path: Path) -> None:
    first = SentJournal(tmp_path)
    first.record("SR_1.dcm", "stored")
    with open(first.path, "a", encoding="utf-8") as fh:
        fh.write("SR_2.dc")  # a torn last line of a killed run: not counted as sent
    assert SentJournal(tmp_path).done == {"SR_1.dcm"}


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("watch_scans")
    generate_dataset(
        root, SyntheticSpec(n_patients=5, max_images_per_patient=1, size=48, seed=21), progress=False
    )
    return sorted((root / "images").glob("*.dcm"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.scoring import make_bundle

    return make_bundle(tmp_path_factory.mktemp("watch_bundle") / "model.pt")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc | None]:
    if orthanc_binary() is None:
        yield None
        return
    server = start_orthanc(tmp_path_factory.mktemp("watch_orthanc"))
    try:
        yield server
    finally:
        server.stop()


def _watch(tmp: Path, bundle: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "xraytriage", "score", str(tmp / "inbox"), "--model", str(bundle)]
    command += ["--out", str(tmp / "s.csv"), "--dicom-out", str(tmp / "results"), "--watch", "--no-progress"]
    command += ["--workers", "0", "--batch-size", "1", "--settle", "0.2", "--poll", "0.1", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _drop(scan: Path, inbox: Path) -> None:
    """As a router does: write under a .part name, then rename."""
    shutil.copyfile(scan, inbox / f"{scan.name}.part")
    os.replace(inbox / f"{scan.name}.part", inbox / scan.name)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if r.get("scored_at")]


def _wait(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watching_from_a_terminal_shows_a_bar_that_counts_the_scored_scans(
    scans: list[Path], bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for scan in scans[:3]:
        shutil.copyfile(scan, inbox / scan.name)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "_enabled", True)
    extra = ["--watch", "--workers", "0", "--settle", "0", "--poll", "0.05", "--idle-exit", "0.5"]
    argv = [str(inbox), "--model", str(bundle), "--out", str(tmp_path / "s.csv"), *extra]
    assert score_cmd.main(argv) == 0
    assert len(_rows(tmp_path / "s.csv")) == 3
    counts = re.findall(r"watching inbox: (\d+)scan", terminal.getvalue())
    assert counts and counts[-1] == "3", terminal.getvalue()


@pytest.mark.slow
def test_kill_9_and_restart_scores_and_sends_each_file_exactly_once(
    scans: list[Path], bundle: Path, orthanc: Orthanc | None, tmp_path: Path
) -> None:
    (tmp_path / "inbox").mkdir()
    send = ["--send-to", orthanc.destination] if orthanc else []
    if orthanc:
        for scan in scans:
            orthanc.upload(scan)
    proc = _watch(tmp_path, bundle, *send)
    try:
        for scan in scans[:3]:
            _drop(scan, tmp_path / "inbox")
        _wait(lambda: len(_rows(tmp_path / "s.csv")) >= 1)
        for scan in scans[3:]:
            _drop(scan, tmp_path / "inbox")
        _wait(lambda: len(_rows(tmp_path / "s.csv")) >= 2)
    finally:
        proc.kill()  # kill -9: no chance to tidy up
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    restarted = _watch(tmp_path, bundle, "--idle-exit", "2", *send)
    out, _ = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, out[-3000:]
    rows = _rows(tmp_path / "s.csv")
    assert sorted(Path(r["path"]).name for r in rows) == sorted(s.name for s in scans)  # each exactly once
    reports = sorted((tmp_path / "results").glob("SR_*.dcm"))
    sources = {
        pydicom.dcmread(r).ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for r in reports
    }
    assert len(reports) == len(scans) and sources == {r["sop_instance_uid"] for r in rows}
    if orthanc:
        assert len(orthanc.get("/instances")) == 2 * len(scans)  # scans + one SR each, none twice
        for report in reports:
            assert orthanc.lookup_instance(pydicom.dcmread(report).SOPInstanceUID) is not None
        assert SentJournal(tmp_path / "results").done == {r.name for r in reports}


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_flight(scans: list[Path], bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    proc = _watch(tmp_path, bundle)
    try:
        _wait(lambda: (tmp_path / "s.csv").exists())  # the journal is open: the watch has started
        for scan in scans:
            _drop(scan, tmp_path / "inbox")
        _wait(lambda: len(_rows(tmp_path / "s.csv")) >= 1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    rows = _rows(tmp_path / "s.csv")
    with open(tmp_path / "s.csv", encoding="utf-8") as fh:
        assert fh.read().endswith("\n")  # no torn row: the batch in flight was finished and journaled
    assert 1 <= len(rows) <= len(scans)
    assert len(list((tmp_path / "results").glob("SR_*.dcm"))) == len(rows)
