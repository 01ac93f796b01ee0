"""Killed with SIGKILL at arbitrary moments, a rerun completes the output: no lost, duplicate or half rows."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.scoring import make_bundle, run_score, write_pngs

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def _line_count(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _start(inp: Path, bundle: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xraytriage.commands.score", str(inp), "--model", str(bundle)]
    cmd += ["--out", str(out), "--batch-size", "2", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, out: Path, lines: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while _line_count(out) < lines:
        if proc.poll() is not None:
            pytest.fail(f"scoring finished before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("scoring made no progress")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_minus_9_then_rerun_gives_exactly_the_clean_rows(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "model.pt")
    write_pngs(tmp_path / "scans", 120)
    (tmp_path / "scans" / "zero.png").write_bytes(b"")
    clean = tmp_path / "clean.csv"
    assert run_score(tmp_path / "scans", bundle, clean, "--workers", "0") == 1
    reference = {r[0]: r[3] for r in _rows(clean)}
    assert len(reference) == 120

    out = tmp_path / "killed.csv"
    for lines in (12, 60):  # two kills at different depths
        proc = _start(tmp_path / "scans", bundle, out)
        _kill_when(proc, out, lines)
        assert _line_count(out) < 121, "the run completed before the kill: the test proves nothing"
    proc = _start(tmp_path / "scans", bundle, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()[-2000:]  # 1: the zero-byte file failed

    rows = _rows(out)
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "duplicate rows after resume"
    assert set(paths) == set(reference)  # none lost, none extra
    for r in rows:  # same probabilities (batch composition differs, so oneDNN may differ in the 7th digit)
        assert float(r[3]) == pytest.approx(float(reference[r[0]]), abs=1e-5)
    assert all(len(r) == 14 for r in rows)  # 7 + the 7 validated-scope columns: no torn row
    assert out.read_bytes().endswith(b"\n")
    errors = _rows(tmp_path / "killed.errors.csv")
    assert [Path(e[0]).name for e in errors] == ["zero.png"]
