"""Every command follows one convention (#21 item 3): a ``HELP`` description, ``register`` returning
None, errors on stderr with the exit code their class carries, no argparse default repeated."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re

import pytest

from xraytriage.cli import COMMANDS
from xraytriage.commands.exit_codes import EXIT_USAGE, fail, run_guarded
from xraytriage.config import ConfigError
from xraytriage.models.bundle import BundleError
from xraytriage.pacs.send import DestinationError
from xraytriage.scoring.engine import EngineUnavailable
from xraytriage.utils.errors import DeviceUnavailable, TriageError, UsageError
from xraytriage.utils.lock import OutputLocked


@pytest.mark.parametrize("name", COMMANDS)
def test_command_module_shape(name: str) -> None:
    module = importlib.import_module(f"xraytriage.commands.{name}")
    assert isinstance(module.HELP, str) and len(module.HELP) > 40
    parser = argparse.ArgumentParser()
    assert module.register(parser.add_subparsers()) is None
    source = inspect.getsource(module)
    assert not re.search(r"getattr\(args, \"\w+\", ", source)  # argparse owns the defaults
    assert "DESCRIPTION" not in source


@pytest.mark.parametrize(
    "cls",
    [
        UsageError,
        ConfigError,
        BundleError,
        DestinationError,
        EngineUnavailable,
        DeviceUnavailable,
        OutputLocked,
    ],
)
def test_user_errors_exit_2_with_one_line_on_stderr(cls: type, capsys: pytest.CaptureFixture[str]) -> None:
    assert issubclass(cls, TriageError) and cls.exit_code == EXIT_USAGE == 2

    def call() -> int:
        raise cls("the file x.csv: fix y")

    assert run_guarded("xraytriage", call) == 2
    captured = capsys.readouterr()
    prefix = "config error: " if issubclass(cls, ConfigError) else ""
    assert captured.out == "" and captured.err == f"xraytriage: {prefix}the file x.csv: fix y\n"


def test_fail_prints_on_stderr_and_returns_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert fail("xraytriage train", "no manifest", 1) == 1
    assert capsys.readouterr().err == "xraytriage train: no manifest\n"
    assert fail("xraytriage score", "bad") == 2
