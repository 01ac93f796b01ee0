"""Scoring under torchrun: ``--retry-failed`` sharded over ranks, and a real 2-process gloo run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.scoring import make_bundle, read_csv_rows, run_score, write_pngs
from xraytriage.scoring import distributed as dist_utils
from xraytriage.scoring.discovery import shard_of

ROOT = Path(__file__).resolve().parents[2]


def _broken_folder(root: Path, n_good: int, n_bad: int) -> tuple[list[Path], list[Path]]:
    """``n_good`` PNGs and ``n_bad`` zero-byte files spread so that both ranks own some of them."""
    good = write_pngs(root, n_good)
    bad = []
    k = 0
    while len(bad) < n_bad or {shard_of(str(p), 2) for p in bad} != {0, 1}:
        path = root / f"bad_{k}.png"
        k += 1
        if len(bad) == n_bad:  # both shards must hold failures: swap the last one for another name
            bad.pop().unlink()
        path.write_bytes(b"")
        bad.append(path)
    return good, bad


def _fix(paths: list[Path], template: Path) -> None:
    for path in paths:
        shutil.copy(template, path)


def test_retry_failed_is_sharded_over_ranks_and_merged_by_rank_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks run one after the other in this process (rank 1 first, so rank 0 must not clear
    rank 1's new part): each rescores only its shard of the previously failed paths."""
    bundle = make_bundle(tmp_path / "m.pt")
    inp = tmp_path / "in"
    good, bad = _broken_folder(inp, 4, 5)
    out = tmp_path / "s.csv"
    errors = tmp_path / "s.errors.csv"
    assert run_score(inp, bundle, out, "--workers", "0") == 1
    assert {r["path"] for r in read_csv_rows(errors)} == {str(p) for p in bad}
    # A failure left in the part of a rank that this run does not have (an earlier 4-rank run).
    stray = inp / "stray.png"
    stray.write_bytes(b"")
    dist_utils.part_path(errors, 3).write_text(f"path,reason,message,scored_at\n{stray},empty_file,x,t\n")
    still_bad = bad[0]
    _fix([*bad[1:], stray], good[0])  # all but one of them can now be read

    state = {"rank": 0}
    monkeypatch.setattr(
        dist_utils,
        "init_from_env",
        lambda: dist_utils.DistContext(rank=state["rank"], world_size=2, local_rank=0, initialized=True),
    )
    monkeypatch.setattr(dist_utils, "sum_across_ranks", lambda ctx, values: list(values))
    monkeypatch.setattr(dist_utils, "shutdown", lambda ctx: None)

    state["rank"] = 1
    rc = run_score(inp, bundle, out, "--workers", "0", "--retry-failed")
    assert rc == int(shard_of(str(still_bad), 2) == 1)  # a rank's exit code counts its own failures
    retried = {str(p) for p in [*bad, stray]}
    shard1 = {p for p in retried if shard_of(p, 2) == 1}
    part_rows = read_csv_rows(dist_utils.part_path(out, 1))
    part_errors = read_csv_rows(dist_utils.part_path(errors, 1))
    assert {r["path"] for r in part_rows} | {r["path"] for r in part_errors} == shard1  # only its shard
    assert errors.exists()  # rank 1 does not clear the shared errors file; rank 0 does

    state["rank"] = 0
    rc = run_score(inp, bundle, out, "--workers", "0", "--retry-failed")
    assert rc == 1  # still_bad failed again
    rows = read_csv_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in [*good, *bad[1:], stray])
    assert [(r["path"], r["reason"]) for r in read_csv_rows(errors)] == [(str(still_bad), "empty_file")]
    assert not list(tmp_path.glob("*.part"))  # parts merged (and the stray rank-3 part cleared)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(inp: Path, bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={_free_port()}", "-m", "xraytriage.commands.score", str(inp)]
    cmd += ["--model", str(bundle), "--out", str(out), "--workers", "0", "--batch-size", "1"]
    cmd += ["--threads", "1", "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(ROOT / "src")}
    env["TMPDIR"] = str(out.parent)  # torchrun's scratch folders go with the test's, not into /tmp
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


def _comparable(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return sorted(tuple(v for k, v in r.items() if k != "scored_at") for r in rows)


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_single_process_rows(tmp_path: Path) -> None:
    """One real 2-process gloo run: it retries earlier failures and scores new files, sharded over the
    two ranks, and rank 0's merge must equal a single-process run over the same folder, digit for digit."""
    bundle = make_bundle(tmp_path / "m.pt")
    inp = tmp_path / "in"
    pngs = write_pngs(inp, 10)
    flags = ("--workers", "0", "--batch-size", "1", "--threads", "1")
    single = tmp_path / "single.csv"
    assert run_score(inp, bundle, single, *flags) == 0

    # An earlier run saw 2 good files, 4 unreadable ones (fixed since) and not yet the last 4.
    out = tmp_path / "dist.csv"
    saved = {p: p.read_bytes() for p in pngs[2:6]}
    for p in saved:
        p.write_bytes(b"")
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in pngs[6:]:
        p.rename(aside / p.name)
    assert run_score(inp, bundle, out, *flags) == 1
    assert len(read_csv_rows(tmp_path / "dist.errors.csv")) == 4
    for p, data in saved.items():
        p.write_bytes(data)
    for p in pngs[6:]:
        (aside / p.name).rename(p)

    proc = _torchrun(inp, bundle, out, "--retry-failed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks; merged 8 rows" in proc.stderr  # 4 retried + 4 new, scored by the ranks, merged once
    assert _comparable(read_csv_rows(out)) == _comparable(read_csv_rows(single))  # same rows, same digits
    assert read_csv_rows(tmp_path / "dist.errors.csv") == []
    assert not list(tmp_path.glob("*.part"))
