"""Training run directories: one run at a time, a refused run changes nothing, a resume cannot change
what the weights were trained on, and a full disk while checkpointing says so (issue 15, items 10, 13)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from support.training import tiny_config
from xraytriage.config import ConfigError
from xraytriage.training import engine
from xraytriage.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from xraytriage.utils.lock import OutputLocked, exclusive_lock, lock_file_for


@pytest.fixture(scope="module")
def trained(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    engine.train(tiny_config(tiny_manifest, "train.epochs=1"), run)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def test_a_refused_train_leaves_the_run_directory_as_it_was(
    trained: Path,
    tiny_manifest: Path,
    tmp_path: Path,
) -> None:
    run = _copy(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="--resume"):
        engine.train(tiny_config(tiny_manifest, "train.epochs=3", "train.lr=0.5"), run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_resume_with_other_data_preprocess_or_model_settings_is_refused(
    trained: Path,
    tiny_manifest: Path,
    tmp_path: Path,
) -> None:
    run = _copy(trained, tmp_path)
    config_before = (run / "config.yaml").read_bytes()
    for changed, named in [
        (["preprocess.image_size=64", "preprocess.normalization=minmax"], "preprocess.image_size 32 -> 64"),
        (["model.arch=resnet34"], "model.arch 'resnet18' -> 'resnet34'"),
        (["data.val_split=test"], "data.val_split 'val' -> 'test'"),
    ]:
        with pytest.raises(ConfigError, match=named.replace("(", r"\(")) as info:
            engine.train(tiny_config(tiny_manifest, "train.epochs=2", *changed), run, resume=True)
        assert "--resume with changed settings" in str(info.value)
        assert (run / "config.yaml").read_bytes() == config_before
    # epochs, workers and the like may change: the run continues from its checkpoint
    result = engine.train(
        tiny_config(tiny_manifest, "train.epochs=2", "data.num_workers=0"), run, resume=True
    )
    assert len(result.history) == 2 and load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 2
    assert "epochs: 2" in (run / "config.yaml").read_text()


def test_a_second_train_in_a_directory_in_use_is_refused(
    tiny_manifest: Path,
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    held = exclusive_lock(lock_file_for(run), "another training run")
    with held, pytest.raises(OutputLocked, match="in use by another xraytriage run"):
        engine.train(tiny_config(tiny_manifest), run)
    assert not (run / "config.yaml").exists() and not (run / CHECKPOINT_NAME).exists()


@pytest.fixture
def full_disk_for_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every temporary file a checkpoint is written to lands on /dev/full (each write: ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        if CHECKPOINT_NAME in str(kwargs.get("prefix", "")):
            os.close(fd)
            os.unlink(path)
            os.symlink("/dev/full", path)
            fd = os.open(path, os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_full_disk_while_checkpointing_is_an_io_error_naming_the_checkpoint(
    tmp_path: Path, full_disk_for_checkpoints: None
) -> None:
    from xraytriage.commands.exit_codes import io_error_line
    from xraytriage.training.checkpoint import save_checkpoint

    target = tmp_path / CHECKPOINT_NAME
    with pytest.raises(OSError) as info:
        save_checkpoint(target, {"model": {"w": torch.zeros(100_000)}})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert io_error_line(info.value) == f"I/O error: disk full: cannot write {target}"
    assert not list(tmp_path.iterdir())  # no half-written checkpoint left behind


def test_train_command_reports_a_full_disk_in_one_line_with_exit_74(
    tiny_manifest: Path,
    tmp_path: Path,
    full_disk_for_checkpoints: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from xraytriage.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("model:\n  arch: resnet18\n  task: binary\n")
    run = tmp_path / "run"
    overrides = [f"data.manifest={tiny_manifest}", "data.num_workers=0", "preprocess.image_size=32"]
    overrides += ["train.epochs=1", "train.batch_size=8", "evaluation.bootstrap_iterations=10"]
    assert main(["train", "--config", str(config), "--out", str(run), *overrides]) == 74  # EX_IOERR
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == f"xraytriage: I/O error: disk full: cannot write {run / CHECKPOINT_NAME}"
    assert not any("enforce fail" in line or "Traceback" in line for line in err)
