"""Optuna tuning: trials train in their own folders, pruning hooks, best.yaml, SQLite resume."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from xraytriage.commands import tune as tune_cmd
from xraytriage.commands.exit_codes import run_guarded
from xraytriage.config import ConfigError, load_config
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.tuning.space import format_value, load_space, parse_space, to_overrides

optuna = pytest.importorskip("optuna")


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """Trials run with train.threads=1 (faster on a shared 2-core box): restore it for later tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    manifest = generate_dataset(root / "data", SyntheticSpec(n_patients=16, size=64, seed=2), progress=False)
    cfg = {
        "data": {"manifest": str(manifest), "num_workers": 0, "labels": ["finding"]},
        "model": {"arch": "resnet18", "task": "binary"},
        "preprocess": {"image_size": 32},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "max_steps_per_epoch": 2,
            "histogram_every_epochs": 0,
            "log_every_steps": 1,
            "threads": 1,
        },
        "evaluation": {"bootstrap_iterations": 0, "min_group_size": 1},
    }
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _space(tmp_path: Path) -> Path:
    space = {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
        "train.batch_size": {"type": "categorical", "choices": [2, 4]},
        "augment.probability": {"type": "float", "low": 0.3, "high": 1.0},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _args(config: Path, out: Path, trials: int, space: Path, **kw: object) -> argparse.Namespace:
    base = {
        "config": config,
        "out": out,
        "trials": trials,
        "space": space,
        "storage": None,
        "study_name": "xraytriage",
        "pruner": "median",
        "objective": "auroc",
        "specificity": 0.9,
        "timeout": None,
        "seed": 3,
        "overrides": [],
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_tune_runs_trials_writes_best_config_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    space = _space(tmp_path)
    assert tune_cmd.run(_args(tiny_config, out, 2, space)) == 0
    for n in (0, 1):
        run = out / f"trial_{n:03d}"
        assert (run / "metrics.json").is_file() and any((run / "tensorboard").iterdir())
    assert (out / "study.db").is_file()

    # Asking for 3 in total continues the stored study: exactly one new trial runs.
    assert tune_cmd.run(_args(tiny_config, out, 3, space)) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["number"]) == [0, 1, 2]
    assert (out / "trial_002").is_dir() and not (out / "trial_003").exists()
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}

    best_cfg = load_config(out / "best.yaml")  # loadable as-is by `xraytriage train --config`
    complete = trials[trials["state"] == "COMPLETE"]
    best_row = complete.loc[complete["value"].idxmax()]
    assert best_cfg.train.lr == pytest.approx(best_row["params_train.lr"])
    assert best_cfg.train.batch_size == best_row["params_train.batch_size"]
    assert best_cfg.train.epochs == 2 and best_cfg.model.arch == "resnet18"

    # A rerun that asks for no more trials trains nothing.
    assert tune_cmd.run(_args(tiny_config, out, 3, space)) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 3


def test_trial_trainer_reports_each_epoch_and_prunes(tiny_config: Path, tmp_path: Path) -> None:
    from xraytriage.tuning.study import TrialTrainer

    class PruneAfterFirst:
        def __init__(self) -> None:
            self.reports: list[tuple[int, float]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((step, value))

        def should_prune(self) -> bool:
            return True

    trial = PruneAfterFirst()
    trainer = TrialTrainer(load_config(tiny_config), tmp_path / "run", trial)
    with pytest.raises(optuna.TrialPruned):
        trainer.fit()
    assert [step for step, _ in trial.reports] == [0]  # stopped after the first of two epochs
    assert 0.0 <= trial.reports[0][1] <= 1.0


def test_sensitivity_at_specificity() -> None:
    from xraytriage.tuning.study import sensitivity_at_specificity

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], float)
    p = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.6, 0.8, 0.95])
    assert sensitivity_at_specificity(y, p, 0.75) == pytest.approx(1.0)
    assert sensitivity_at_specificity(y, p, 1.0) == pytest.approx(0.25)
    assert np.isnan(sensitivity_at_specificity(np.zeros(3), np.ones(3), 0.9))


def test_space_values_round_trip_through_config_overrides() -> None:
    assert format_value(1e-05) == "1.0e-05"
    cfg = load_config(
        None, to_overrides({"train.lr": 1e-05, "train.batch_size": 16, "augment.enabled": False})
    )
    assert cfg.train.lr == pytest.approx(1e-05) and cfg.train.batch_size == 16 and not cfg.augment.enabled
    assert {p.key for p in load_space(None)} >= {"train.lr", "train.freeze_epochs"}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": {"type": "float", "low": 0.1, "high": 1}}, "not a config key"),
        ({"train.lr": {"type": "float", "low": 1, "high": 0.1}}, "must be below"),
        ({"train.lr": {"type": "uniform", "low": 0.1, "high": 1}}, "needs 'type'"),
        ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log range"),
    ],
)
def test_bad_search_space_is_named(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space, "space.yaml")


def test_space_range_invalid_for_config_fails_before_training(tiny_config: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.freeze_epochs": {"type": "int", "low": 0, "high": 5}}))
    args = _args(tiny_config, tmp_path / "s", 1, space)
    assert run_guarded("xraytriage", lambda: tune_cmd.run(args)) == 2
    assert not list((tmp_path / "s").glob("trial_*"))


def test_sens_at_spec_objective_with_hyperband(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = _args(tiny_config, out, 1, _space(tmp_path), objective="sens_at_spec", pruner="hyperband")
    assert tune_cmd.run(args) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["state"]) == ["COMPLETE"] and 0.0 <= trials["value"][0] <= 1.0
    assert (out / "best.yaml").is_file()


def test_unavailable_weights_end_the_study_at_once_with_exit_2(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import urllib.error

    import torchvision

    calls = []

    def offline(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    args = _args(
        tiny_config, tmp_path / "study", 3, _space(tmp_path), overrides=["model.weights=IMAGENET1K_V1"]
    )
    assert run_guarded("xraytriage", lambda: tune_cmd.run(args)) == 2
    assert len(calls) == 1  # one attempt, not one per trial
    assert "resnet18-f37072fd.pth" in capsys.readouterr().err
