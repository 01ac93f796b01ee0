"""Run an Optuna study whose trials are ordinary training runs, pruned on per-epoch validation.

Each trial trains in ``OUT/trial_NNN`` (own checkpoint, metrics.json, model.pt and TensorBoard logs).
The study lives in SQLite, so running the same command again continues it: only the trials still
missing from ``--trials`` are run.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.columns import prob_column
from xraytriage.config import Config, ConfigError, OperatingPointConfig, load_config, save_config
from xraytriage.evaluation.metrics import binary_metrics, known_mask
from xraytriage.evaluation.thresholds import choose_threshold
from xraytriage.models.pretrained import WeightsMismatch, WeightsUnavailable
from xraytriage.training.engine import Trainer, ValidationPass
from xraytriage.tuning.space import Param, to_overrides
from xraytriage.utils.atomic import atomic_path
from xraytriage.utils.csv_safety import safe_frame

log = logging.getLogger(__name__)

OBJECTIVES = ("auroc", "sens_at_spec")
PRUNERS = ("median", "hyperband", "none")
STUDY_DB = "study.db"


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """Highest sensitivity among thresholds whose specificity is at least ``specificity``.

    That threshold is the evaluation module's ``target_specificity`` operating point; NaN when the
    validation labels hold only one class (the policy would fall back to a fixed threshold).
    """
    known = known_mask(y, p)
    if len(np.unique(np.asarray(y, dtype=float)[known])) < 2:
        return float("nan")
    policy = OperatingPointConfig(policy="target_specificity", target=specificity, rule="point_estimate")
    sensitivity = binary_metrics(y, p, choose_threshold(y, p, policy))["sensitivity"]
    return float("nan") if sensitivity is None else float(sensitivity)


def objective_value(
    metrics: dict[str, Any], frame: pd.DataFrame, labels: list[str], objective: str, specificity: float
) -> float:
    """The number a trial maximises, from one validation pass."""
    if objective == "auroc":
        return float(metrics["val_mean_auroc"])
    values = [
        sensitivity_at_specificity(
            frame[lab].to_numpy(float), frame[prob_column(lab)].to_numpy(float), specificity
        )
        for lab in labels
    ]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


class TrialTrainer(Trainer):
    """A Trainer that reports each epoch's objective to an Optuna trial and stops when pruned."""

    def __init__(
        self, cfg: Config, run_dir: str | Path, trial: Any, objective: str = "auroc", specificity: float = 0.9
    ) -> None:
        super().__init__(cfg, run_dir)
        self.trial = trial
        self.objective = objective
        self.specificity = specificity
        self.reported: dict[int, float] = {}

    def _validate(self, epoch: int, with_features: bool = False) -> ValidationPass:
        import optuna

        validated = super()._validate(epoch, with_features)
        if epoch in self.reported:  # the final re-validation of the best epoch in _finish
            return validated
        metrics, frame = validated.metrics, validated.frame
        value = objective_value(metrics, frame, self.labels, self.objective, self.specificity)
        self.reported[epoch] = value
        if math.isfinite(value):
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} ({self.objective} {value:.4f})")
        return validated


@dataclass
class TuneResult:
    out_dir: Path
    n_complete: int
    n_pruned: int
    n_failed: int
    new_trials: int
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    best_run: Path | None
    trials_csv: Path


class _WeightsFailure(Exception):
    """Unavailable or mismatched weights fail every trial alike: they end the study, not one trial
    (Optuna would otherwise record the config error and retry the download for each trial)."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


def _pruner(name: str, epochs: int) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner '{name}': choose one of {', '.join(PRUNERS)}")


def _check_space_against_config(config: Path | None, base: list[str], space: list[Param]) -> None:
    """Fail before any training when a range end would make an invalid config."""
    for param in space:
        for value in param.extremes():
            try:
                load_config(config, [*base, *to_overrides({param.key: value})])
            except ConfigError as exc:
                raise ConfigError(
                    f"search space key '{param.key}' value {value!r} is not allowed: {exc}"
                ) from None


def run_study(
    config: str | Path | None,
    out_dir: str | Path,
    space: list[Param],
    n_trials: int,
    *,
    overrides: list[str] | None = None,
    storage: str | None = None,
    study_name: str = "xraytriage",
    pruner: str = "median",
    objective: str = "auroc",
    specificity: float = 0.9,
    timeout: float | None = None,
    seed: int | None = None,
) -> TuneResult:
    """Run (or continue) the study until ``n_trials`` trials have finished (completed or pruned)."""
    import optuna
    from optuna.trial import TrialState

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}': choose one of {', '.join(OBJECTIVES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = list(overrides or [])
    base_cfg = load_config(config, base)
    _check_space_against_config(Path(config) if config else None, base, space)
    url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    with warnings.catch_warnings():
        # Heartbeats mark trials of a killed process as failed, so a rerun does not wait on them.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    study = optuna.create_study(
        study_name=study_name,
        storage=rdb,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base_cfg.seed if seed is None else seed),
        pruner=_pruner(pruner, base_cfg.train.epochs),
        load_if_exists=True,
    )
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    remaining = max(0, n_trials - done)
    if done:
        log.info("continuing study '%s': %d trial(s) finished, %d to run", study_name, done, remaining)

    def run_trial(trial: optuna.Trial) -> float:
        params = {p.key: p.suggest(trial) for p in space}
        trial_overrides = [*base, *to_overrides(params)]
        trial.set_user_attr("overrides", trial_overrides)
        run_dir = out / f"trial_{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = load_config(config, trial_overrides)
        trainer = TrialTrainer(cfg, run_dir, trial, objective, specificity)
        try:
            trainer.fit()
        except (WeightsUnavailable, WeightsMismatch) as exc:
            raise _WeightsFailure(exc) from None
        finally:
            if trainer.writer is not None:
                trainer.writer.close()
        values = [v for v in trainer.reported.values() if math.isfinite(v)]
        return max(values) if values else float("nan")

    if remaining:
        try:
            study.optimize(run_trial, n_trials=remaining, timeout=timeout, catch=(ConfigError,))
        except _WeightsFailure as failure:
            raise failure.error from None
    return _write_outputs(study, config, out, done)


def _write_outputs(study: Any, config: str | Path | None, out: Path, done_before: int) -> TuneResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
    trials_csv = out / "trials.csv"
    with atomic_path(trials_csv) as tmp:
        safe_frame(frame).to_csv(tmp, index=False)
    counts = {
        s: sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    finished_now = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    best_value, best_params, best_config, best_run = None, {}, None, None
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        best_value, best_params = float(best.value), dict(best.params)
        best_cfg = load_config(config, list(best.user_attrs.get("overrides", to_overrides(best_params))))
        best_config = out / "best.yaml"
        save_config(best_cfg, best_config)
        best_run = Path(best.user_attrs["run_dir"]) if "run_dir" in best.user_attrs else None
    return TuneResult(
        out_dir=out,
        n_complete=counts[TrialState.COMPLETE],
        n_pruned=counts[TrialState.PRUNED],
        n_failed=counts[TrialState.FAIL],
        new_trials=finished_now - done_before,
        best_value=best_value,
        best_params=best_params,
        best_config=best_config,
        best_run=best_run,
        trials_csv=trials_csv,
    )
