"""Progress bars only for a person at a terminal; ``--no-progress`` on every long-running command."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.training import tiny_config
from xraytriage.cli import build_parser, main
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.utils import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_switch() -> Iterator[None]:
    yield
    progress.set_progress(True)


def test_bars_only_on_a_terminal_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # redirected to a file or a pipe
    assert not progress.show_progress()
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.show_progress() and not progress.show_progress(requested=False)
    progress.set_progress(False)
    assert not progress.show_progress()


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["prepare", "folder", "--root", "r", "--out", "m.csv"],
        ["cache", "build"],
        ["cache", "verify", "c"],
        ["train", "--config", "c.yaml", "--out", "r"],
        ["tune", "--config", "c.yaml", "--trials", "1", "--out", "t"],
        ["evaluate", "--model", "m.pt", "--manifest", "m.csv", "--out", "e"],
        ["score", "in", "--model", "m.pt", "--out", "s.csv"],
        ["monitor", "s.csv", "--model", "m.pt", "--out", "mon"],
    ],
)
def test_every_long_running_command_takes_no_progress(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args([*argv, "--no-progress"]).no_progress is True
    assert parser.parse_args(argv).no_progress is False


def test_the_command_line_flag_switches_bars_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["cache", "verify", str(tmp_path), "--no-progress"]) == 1  # empty folder: nothing to verify
    assert not progress.show_progress()


def test_training_into_a_log_file_writes_one_line_per_epoch_and_no_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from xraytriage.training import engine

    manifest = generate_dataset(
        tmp_path / "data", SyntheticSpec(n_patients=16, size=48, seed=2), progress=False
    )
    with caplog.at_level(logging.INFO, logger="xraytriage.training.engine"):
        engine.train(tiny_config(manifest, "train.histogram_every_epochs=0"), tmp_path / "run")
    assert "\r" not in capsys.readouterr().err  # stderr is not a terminal here: no bar fragments
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
