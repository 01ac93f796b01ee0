"""``xraytriage send`` without a PACS: destination parsing, C-STORE status mapping, retry/backoff, report."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest

from support.orthanc import free_port
from xraytriage import cli
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.pacs.send import (
    FAILED,
    STORED,
    DestinationError,
    DicomNode,
    PermanentError,
    RetryPolicy,
    TransientError,
    c_store_outcome,
    iter_objects,
    send_paths,
)


def test_destination_parsing() -> None:
    assert DicomNode.parse("ORTHANC@pacs.example:4242") == DicomNode("ORTHANC", "pacs.example", 4242)
    assert DicomNode.parse("A@B@[::1]:104") == DicomNode("A@B", "::1", 104)  # rpartition: last @
    for bad in ("pacs:4242", "ORTHANC@pacs", "@pacs:1", "X@pacs:0", "X@pacs:70000", "X" * 17 + "@h:1"):
        with pytest.raises(DestinationError):
            DicomNode.parse(bad)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, ""),
        (0xB000, "warning 0xB000"),
        (0xB007, "warning 0xB007"),
        (0xA700, TransientError),
        (0xA7FF, TransientError),
        (0xA900, PermanentError),
        (0xC000, PermanentError),
        (0xCFFF, PermanentError),
        (0x0122, PermanentError),
        (0x0110, PermanentError),
    ],
)
def test_c_store_status_mapping(status: int, outcome: object) -> None:
    if isinstance(outcome, str):
        assert outcome in c_store_outcome(status) if outcome else c_store_outcome(status) == ""
    else:
        with pytest.raises(outcome):  # type: ignore[call-overload]
            c_store_outcome(status)


class ScriptedSender:
    """Answers each store() from a script: 'ok', 'transient' or 'permanent', per call."""

    description = "scripted"

    def __init__(self, script: list[str]) -> None:
        self.script, self.calls, self.closed = list(script), [], False

    def store(self, ds: pydicom.Dataset) -> str:
        self.calls.append(str(ds.SOPInstanceUID))
        what = self.script.pop(0)
        if what == "transient":
            raise TransientError("connection dropped")
        if what == "permanent":
            raise PermanentError("refused (status 0xA900)")
        return ""

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("send")
    generate_dataset(root, SyntheticSpec(n_patients=3, size=32, seed=9), progress=False)
    (root / "images" / ".hidden.dcm").write_bytes(b"x")
    return list(iter_objects(root / "images"))


def test_retries_transient_failures_with_exponential_backoff(objects: list[Path]) -> None:
    waits: list[float] = []
    sender = ScriptedSender(["transient", "transient", "ok"] + ["ok"] * (len(objects) - 1))
    report = send_paths(sender, objects, RetryPolicy(attempts=4, first_wait_s=0.5, sleep=waits.append))
    assert waits == [0.5, 1.0] and sender.closed
    assert [r.status for r in report.results] == [STORED] * len(objects)
    assert report.results[0].attempts == 3 and all(r.attempts == 1 for r in report.results[1:])


def test_gives_up_after_the_attempts_and_never_retries_a_refusal(objects: list[Path]) -> None:
    waits: list[float] = []
    sender = ScriptedSender(["transient"] * 3 + ["permanent"] + ["ok"] * 10)
    report = send_paths(sender, objects[:3], RetryPolicy(attempts=3, first_wait_s=1, sleep=waits.append))
    first, second, third = report.results
    assert (first.status, first.attempts) == (FAILED, 3) and first.detail.startswith(
        "gave up after 3 attempts"
    )
    assert (second.status, second.attempts) == (FAILED, 1) and "0xA900" in second.detail
    assert third.status == STORED and waits == [1, 2]
    assert (report.stored, report.failed) == (1, 2)


def test_hidden_files_are_not_sent(objects: list[Path]) -> None:
    assert objects and not any(p.name.startswith(".") for p in objects)


def test_unreachable_pacs_is_reported_per_object_with_exit_1(objects: list[Path], tmp_path: Path) -> None:
    folder = objects[0].parent
    report = tmp_path / "report.csv"
    port = free_port()  # nothing listens there: connection refused, a transient failure
    code = cli.main(
        [
            "send",
            str(folder),
            "--to",
            f"NOBODY@127.0.0.1:{port}",
            "--attempts",
            "2",
            "--timeout",
            "2",
            "--report",
            str(report),
        ]
    )
    assert code == 1
    with open(report, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(objects)
    assert all(
        r["status"] == FAILED and r["attempts"] == "2" and "could not connect" in r["detail"] for r in rows
    )
    assert {r["sop_instance_uid"] for r in rows} == {str(pydicom.dcmread(p).SOPInstanceUID) for p in objects}


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["send", str(tmp_path), "--to", "nonsense"]) == 2
    assert "expected AET@HOST:PORT" in capsys.readouterr().err
    assert cli.main(["send", str(tmp_path / "missing"), "--to", "A@h:1"]) == 2
    assert cli.main(["send", str(tmp_path), "--to", "A@h:1", "--tls-ca", str(tmp_path / "no.pem")]) == 2
    assert "--tls-ca" in capsys.readouterr().err
