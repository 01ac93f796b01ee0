"""One call that turns a prediction table into every evaluation output.

``evaluate_predictions`` computes per-class metrics with cluster-adjusted intervals at the operating
point, validation-vs-test figures at that threshold, calibration, per-subgroup metrics with the
reference-group comparison, the fairness gate and the data audit, as one typed
:class:`~xraytriage.evaluation.results.EvaluationResult`; then (optionally) writes ``metrics.json``,
``subgroups.csv``, ``predictions.csv`` and ``report.html`` atomically and logs the same figures to
TensorBoard — every output renders that one object. The metrics.json schema is documented in
docs/evaluation.md (``schema_version``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.columns import IN_SCOPE, OOD_SCORE, SCOPE_REASONS, prob_column
from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.audit import AuditResult, audit_manifest
from xraytriage.evaluation.bootstrap import (
    BootstrapTask,
    bootstrap_estimate,
    bootstrap_metrics,
    patient_codes,
)
from xraytriage.evaluation.calibration import reliability_curve
from xraytriage.evaluation.fairness import check_gate, summarise_attribute
from xraytriage.evaluation.identifiers import identifier_reason
from xraytriage.evaluation.metrics import RATE_METRICS, binary_metrics, known_mask, prepare
from xraytriage.evaluation.rates import RATE_DEFINITIONS, auroc_estimate, rate_estimates
from xraytriage.evaluation.results import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Calibration,
    ClassResult,
    Counts,
    Estimate,
    EvaluationResult,
    Leakage,
    Population,
    ReliabilityBin,
    TargetCheck,
    ValidationSummary,
    json_number,
)
from xraytriage.evaluation.scope_groups import add_scope_group
from xraytriage.evaluation.subgroups import GROUP_METRICS, age_bands, evaluate_subgroups
from xraytriage.evaluation.thresholds import OperatingPoint, choose_operating_point, policy_point
from xraytriage.utils.csv_safety import safe_frame

log = logging.getLogger(__name__)

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "EvaluationResult", "LeakageError", "evaluate_predictions"]

OUTPUT_FILES = ("metrics.json", "subgroups.csv", "predictions.csv", "report.html")
VALIDATION_METRICS = ("sensitivity", "miss_rate", "specificity", "ppv", "auroc")
#: Figures without a closed-form interval: percentile patient bootstrap.
BOOTSTRAP_METRICS = ("f1", "auprc", "brier", "ece")
SUBGROUP_COLUMNS = [
    "label",
    "attribute",
    "group",
    "status",
    "n",
    "patients",
    "positives",
    "negatives",
    "prevalence",
    *[c for m in GROUP_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")],
    "interval_methods",
    "sensitivity_diff_vs_overall",
    "miss_rate_diff_vs_overall",
    "miss_rate_gap_to_best",
    "miss_rate_ratio_to_best",
    "fpr_gap_to_best",
    "auroc_gap_to_best",
    "is_best",
    "is_worst",
    "compared",
    "is_reference",
    "miss_rate_diff_vs_reference",
    "miss_rate_diff_vs_reference_ci_low",
    "miss_rate_diff_vs_reference_ci_high",
    "verdict",
    "verdict_reason",
]


class LeakageError(ValueError):
    """Patients in more than one split: figures would be optimistic. Refused unless allowed."""


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(float)


def _check_columns(frame: pd.DataFrame, labels: list[str], what: str) -> None:
    missing = [c for label in labels for c in (label, prob_column(label)) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} lack column(s) {', '.join(missing)}; expected a truth column L and a probability "
            "column prob_L for every label L"
        )


def _patients(frame: pd.DataFrame, what: str) -> tuple[np.ndarray, int]:
    if "patient_id" not in frame.columns:
        raise ValueError(
            f"{what} have no patient_id column: intervals must resample patients, not scans; add one "
            "(a unique value per scan if every scan is a different patient)"
        )
    try:
        return patient_codes(frame["patient_id"])
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _version() -> str:
    from xraytriage import __version__

    return str(__version__)


class Evaluation:
    """The steps of one evaluation; state is the prepared tables and the configuration."""

    def __init__(
        self,
        predictions: pd.DataFrame,
        labels: list[str],
        thresholds: Mapping[str, float | OperatingPoint],
        cfg: EvaluationConfig,
        *,
        val_predictions: pd.DataFrame | None,
        temperatures: Mapping[str, float] | None,
    ) -> None:
        _check_columns(predictions, labels, "predictions")
        if val_predictions is not None:
            _check_columns(val_predictions, labels, "validation predictions")
        self.frame = predictions.reset_index(drop=True).copy()
        if "age" in self.frame.columns and "age_band" not in self.frame.columns:
            self.frame["age_band"] = age_bands(self.frame["age"], list(cfg.age_bands))
        self.frame, cfg = add_scope_group(self.frame, cfg)
        self.codes, self.n_patients = _patients(self.frame, "predictions")
        self.val = None if val_predictions is None else val_predictions.reset_index(drop=True)
        self.val_codes = None if self.val is None else _patients(self.val, "validation predictions")[0]
        self.labels = list(labels)
        self.thresholds = dict(thresholds)
        self.cfg = cfg
        self.temperatures = {label: float((temperatures or {}).get(label, 1.0)) for label in labels}

    # ------------------------------------------------------------ steps
    def audit(
        self, audit_frame: pd.DataFrame | None, allow_leakage: bool
    ) -> tuple[AuditResult, Leakage | None]:
        """Data audit; patient leakage is refused (:class:`LeakageError`) unless ``allow_leakage``."""
        if audit_frame is None:
            audit_frame = (
                self.frame if self.val is None else pd.concat([self.val, self.frame], ignore_index=True)
            )
        audit = audit_manifest(audit_frame, self.labels, self.cfg)
        if not audit.has_leakage:
            return audit, None
        if not allow_leakage:
            raise LeakageError(
                f"{audit.errors[0]}; evaluation refused because its figures would be optimistic "
                "(allow it with --allow-leakage / allow_leakage=True: every output is then marked)"
            )
        return audit, Leakage(len(audit.leakage), audit.leakage_pairs())

    def operating_point(self, label: str) -> OperatingPoint:
        given = self.thresholds.get(label)
        if isinstance(given, OperatingPoint):
            return given
        if given is not None:
            return OperatingPoint.given(float(given), "given")
        op_cfg = self.cfg.operating_point
        if self.val is not None:
            return choose_operating_point(
                _column(self.val, label),
                _column(self.val, prob_column(label)),
                op_cfg,
                self.val["patient_id"].to_numpy(),
            )
        return policy_point(
            op_cfg,
            float(op_cfg.threshold),
            fallback_reason="no stored threshold and no validation predictions to choose one on; fixed "
            f"threshold {op_cfg.threshold:g} (evaluation.operating_point.threshold) used",
            source="config",
        )

    def overall(self, label: str, threshold: float) -> tuple[Counts, dict[str, Estimate], dict[str, Any]]:
        """Counts, every metric with its interval, and the plain point estimates."""
        cfg = self.cfg
        y, p = _column(self.frame, label), _column(self.frame, prob_column(label))
        keep = known_mask(y, p)
        point = binary_metrics(y, p, threshold, n_bins=cfg.calibration_bins)
        positive, flagged, codes = y[keep] == 1.0, p[keep] >= threshold, self.codes[keep]
        found = rate_estimates(positive, flagged, codes, cfg.confidence, RATE_DEFINITIONS)
        found["auroc"] = auroc_estimate(positive, p[keep], codes, cfg.confidence)
        task = BootstrapTask(prepare(y[keep], p[keep], threshold, cfg.calibration_bins), codes)
        reps = bootstrap_metrics([task], self.n_patients, cfg.bootstrap_iterations, cfg.bootstrap_seed)[0]
        for name in BOOTSTRAP_METRICS:
            found[name] = bootstrap_estimate(json_number(point[name]), reps.get(name), cfg.confidence)
        counts = Counts(
            **{k: int(point[k]) for k in ("n", "positives", "negatives", "tp", "fp", "tn", "fn", "excluded")}
        )
        return counts, {name: found[name] for name in RATE_METRICS}, point

    def validation(self, label: str, threshold: float) -> ValidationSummary | None:
        if self.val is None:
            return None
        y, p = _column(self.val, label), _column(self.val, prob_column(label))
        keep = known_mask(y, p)
        positive, codes = y[keep] == 1.0, self.val_codes[keep]
        rates = [m for m in VALIDATION_METRICS if m != "auroc"]
        metrics = rate_estimates(positive, p[keep] >= threshold, codes, self.cfg.confidence, rates)
        metrics["auroc"] = auroc_estimate(positive, p[keep], codes, self.cfg.confidence)
        return ValidationSummary(int(keep.sum()), int(positive.sum()), metrics)

    def calibration(self, label: str, ece: float | None) -> Calibration:
        curve = reliability_curve(
            _column(self.frame, label), _column(self.frame, prob_column(label)), self.cfg.calibration_bins
        )
        bins = [
            ReliabilityBin(
                float(r.bin_low),
                float(r.bin_high),
                int(r.count),
                json_number(r.mean_prob),
                json_number(r.observed_rate),
            )
            for r in curve.itertuples(index=False)
        ]
        return Calibration(ece, self.cfg.calibration_bins, self.temperatures[label], bins)

    def class_result(self, label: str) -> ClassResult:
        op = self.operating_point(label)
        counts, metrics, point = self.overall(label, op.threshold)
        validation = self.validation(label, op.threshold)
        target = None
        if op.metric is not None:
            val_value = None if validation is None else validation.metrics[op.metric].value
            target = TargetCheck(op.metric, float(op.target), val_value, op.lower_bound, metrics[op.metric])
        attributes = evaluate_subgroups(self.frame, label, op.threshold, self.cfg, codes=self.codes)
        for attr in attributes:
            summarise_attribute(attr, metrics, self.cfg)
        return ClassResult(
            label=label,
            operating_point=op,
            counts=counts,
            metrics=metrics,
            confusion={k: Estimate.of(getattr(counts, k), method="count") for k in ("tp", "fp", "tn", "fn")},
            calibration=self.calibration(label, json_number(point["ece"])),
            validation=validation,
            target_check=target,
            attributes={a.name: a for a in attributes},
        )

    def population(self, skipped_unreadable: int) -> Population:
        splits = {}
        if "split" in self.frame.columns:
            counts = self.frame["split"].astype("string").fillna("unassigned").value_counts()
            splits = {str(k): int(v) for k, v in counts.items()}
        return Population(
            scans=len(self.frame),
            patients=self.n_patients,
            splits=splits,
            validation_scans=None if self.val is None else len(self.val),
            skipped_unreadable=int(skipped_unreadable),
        )

    def settings(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "bootstrap": {
                "unit": "patient",
                "method": "percentile",
                "used_for": list(BOOTSTRAP_METRICS),
                "iterations": cfg.bootstrap_iterations,
                "seed": cfg.bootstrap_seed,
                "confidence": cfg.confidence,
            },
            "operating_point": cfg.operating_point.model_dump(mode="json"),
            "prediction_rule": "positive when prob >= threshold",
            "min_group_size": cfg.min_group_size,
            "min_group_patients": cfg.min_group_patients,
        }


def evaluate_predictions(
    predictions: pd.DataFrame,
    labels: list[str],
    thresholds: Mapping[str, float | OperatingPoint],
    cfg: EvaluationConfig,
    out_dir: Path | None,
    *,
    val_predictions: pd.DataFrame | None = None,
    tb_writer: Any = None,
    model_id: str = "",
    temperatures: Mapping[str, float] | None = None,
    skipped_unreadable: int = 0,
    allow_leakage: bool = False,
    audit_frame: pd.DataFrame | None = None,
) -> EvaluationResult:
    """Compute, write (if ``out_dir``) and log (if ``tb_writer``) the full evaluation.

    ``thresholds``: per label an :class:`OperatingPoint` (as stored in a bundle) or a bare threshold
    (recorded as ``given``); a label missing is chosen on ``val_predictions`` by
    ``cfg.operating_point``, or falls back to the fixed threshold (recorded as a fallback).
    ``audit_frame``: the table to audit for patient leakage (default: validation + test predictions);
    leakage raises :class:`LeakageError` unless ``allow_leakage``, and then marks every output.
    Rows need a ``patient_id``; missing identifiers are refused (ValueError).
    """
    started = time.perf_counter()
    run = Evaluation(
        predictions, labels, thresholds, cfg, val_predictions=val_predictions, temperatures=temperatures
    )
    audit, leakage = run.audit(audit_frame, allow_leakage)
    classes = {label: run.class_result(label) for label in run.labels}
    gate = check_gate(classes, cfg)
    result = EvaluationResult(
        classes=classes,
        gate=gate,
        population=run.population(skipped_unreadable),
        settings=run.settings(),
        model_id=model_id,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        version=_version(),
        audit=audit,
        leakage=leakage,
    )
    result.timing_seconds["metrics"] = round(time.perf_counter() - started, 3)
    figures = None
    if out_dir is not None or tb_writer is not None:
        figures = _figures(run.frame, result)
    if out_dir is not None:
        in_use = [*cfg.subgroups, *(c for combo in cfg.intersections for c in combo)]
        result.files = write_outputs(Path(out_dir), result, run.frame, figures, in_use)
    if tb_writer is not None:
        log_tensorboard(tb_writer, result, run.frame, figures)
    result.timing_seconds["total"] = round(time.perf_counter() - started, 3)
    return result


def subgroup_table(result: EvaluationResult) -> pd.DataFrame:
    """subgroups.csv as a table (fixed column order; the leakage mark last when present)."""
    table = pd.DataFrame(result.subgroup_records())
    columns = SUBGROUP_COLUMNS + (["leakage_warning"] if result.leakage is not None else [])
    for column in columns:
        if column not in table.columns:
            table[column] = None
    return table[columns]


def _figures(frame: pd.DataFrame, result: EvaluationResult) -> dict[str, dict[str, Any]]:
    from xraytriage.evaluation.plots import calibration_figure, roc_pr_figure, subgroup_figure

    table = subgroup_table(result)
    figs: dict[str, dict[str, Any]] = {}
    for label, block in result.classes.items():
        y, p = _column(frame, label), _column(frame, prob_column(label))
        keep = known_mask(y, p)
        point = {k: v.value for k, v in block.metrics.items()}
        curve = reliability_curve(y, p, block.calibration.bins)
        figs[label] = {
            "roc_pr": roc_pr_figure(y[keep], p[keep], block.threshold, label, point),
            "calibration": calibration_figure(curve, label, block.calibration.ece),
            "subgroups": subgroup_figure(table, label, point.get("sensitivity"), block.threshold),
        }
    return figs


#: What predictions.csv may carry besides the labels, probabilities, predictions and the subgroup
#: columns in use: never names, birth dates or anything else a manifest happens to hold.
PREDICTION_COLUMNS = (
    "path",
    "patient_id",
    "study_id",
    "split",
    "fold",
    "sex",
    "age",
    "age_band",
    "view",
    "site",
    "manufacturer",
    IN_SCOPE,  # the validated-scope check (xraytriage.scope), so the file can be evaluated again
    SCOPE_REASONS,
    OOD_SCORE,
)


def predictions_output(
    frame: pd.DataFrame, result: EvaluationResult, subgroup_columns: Iterable[str] = ()
) -> pd.DataFrame:
    """The prediction table as written: allow-listed columns, the subgroup attributes in use (never an
    identifier), each label's truth, ``prob_L`` and ``pred_L`` (0/1 at threshold) and, when leakage was
    allowed, the leakage mark."""
    keep = [c for c in PREDICTION_COLUMNS if c in frame.columns]
    keep += [c for c in subgroup_columns if c in frame.columns and identifier_reason(frame, c) is None]
    for label in result.classes:
        keep += [c for c in (label, prob_column(label)) if c in frame.columns]
    out = frame[list(dict.fromkeys(keep))].copy()
    for label, block in result.classes.items():
        prob = _column(out, prob_column(label))
        out[f"pred_{label}"] = np.where(np.isfinite(prob), (prob >= block.threshold).astype(float), np.nan)
    if result.leakage is not None:
        out["leakage_warning"] = result.leakage.warning
    return out


def write_outputs(
    out_dir: Path,
    result: EvaluationResult,
    frame: pd.DataFrame,
    figures: dict[str, dict[str, Any]] | None,
    subgroup_columns: Iterable[str] = (),
) -> dict[str, Path]:
    """Write the four outputs atomically (each file appears whole or not at all); CSV text cells are
    neutralised against spreadsheet formulas."""
    from xraytriage.evaluation.html import render_report
    from xraytriage.utils.atomic import atomic_path, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / name for name in OUTPUT_FILES}
    atomic_write_text(files["metrics.json"], json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
    with atomic_path(files["subgroups.csv"]) as tmp:
        safe_frame(subgroup_table(result)).to_csv(tmp, index=False)
    with atomic_path(files["predictions.csv"]) as tmp:
        safe_frame(predictions_output(frame, result, subgroup_columns)).to_csv(tmp, index=False)
    atomic_write_text(files["report.html"], render_report(result, figures or {}))
    return files


def _tag(text: str) -> str:
    return "".join(
        ch if ch.isalnum() or ch in "-_=./+" else "_" for ch in text.replace(" & ", "&").replace("&", "_x_")
    )


def summary_text(result: EvaluationResult) -> str:
    """Operating points (with any fallback), the gate verdict and what it rests on, as Markdown
    (TensorBoard's text panel)."""
    gate = result.gate
    lines = [
        f"{label}: operating point {block.operating_point.describe()}"
        for label, block in result.classes.items()
    ]
    lines.append(f"fairness gate: {gate.verdict.upper()}")
    lines += [f"* {line}" for line in gate.failures]
    lines += [f"* {line}" for line in gate.uncertain]
    lines += [f"* could not be checked: {why}" for why in gate.unchecked]
    if result.leakage is not None:
        lines.insert(0, result.leakage.warning)
    return "\n".join(lines)


def log_tensorboard(
    writer: Any,
    result: EvaluationResult,
    frame: pd.DataFrame,
    figures: dict[str, dict[str, Any]] | None,
    step: int = 0,
) -> None:
    """Scalars (with interval bounds), PR curves, figures and a text summary under ``eval/``."""
    for label, block in result.classes.items():
        base = f"eval/{_tag(label)}"
        writer.add_scalar(f"{base}/threshold", block.threshold, step)
        if block.operating_point.lower_bound is not None:
            writer.add_scalar(f"{base}/validation_lower_bound", block.operating_point.lower_bound, step)
        for name, stat in block.metrics.items():
            for suffix, value in (("", stat.value), ("_ci_low", stat.ci_low), ("_ci_high", stat.ci_high)):
                if value is not None:
                    writer.add_scalar(f"{base}/{name}{suffix}", value, step)
        if block.validation is not None:
            for name in ("sensitivity", "miss_rate"):
                value = block.validation.metrics[name].value
                if value is not None:
                    writer.add_scalar(f"{base}/validation_{name}", value, step)
        y, p = _column(frame, label), _column(frame, prob_column(label))
        keep = known_mask(y, p)
        if keep.any():
            writer.add_pr_curve(f"{base}/pr_curve", (y[keep] == 1).astype(int), p[keep], step)
        for attr in block.attributes.values():
            for row in attr.groups if attr.available else []:
                for name in ("sensitivity", "miss_rate", "auroc"):
                    value = row.value(name)
                    if value is not None:
                        writer.add_scalar(
                            f"eval_subgroups/{_tag(label)}/{_tag(row.group)}/{name}", value, step
                        )
                diff = row.difference_vs_reference
                if diff is not None and diff.value is not None:
                    tag = f"eval_fairness/{_tag(label)}/{_tag(row.group)}/miss_rate_diff_vs_reference"
                    writer.add_scalar(tag, diff.value, step)
        for name, fig in (figures or {}).get(label, {}).items():
            writer.add_figure(f"{base}/{name}", fig, step, close=False)
    writer.add_text("eval/summary", summary_text(result), step)
    writer.flush()
