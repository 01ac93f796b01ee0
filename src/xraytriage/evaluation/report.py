"""One call that turns a prediction table into every evaluation output.

``evaluate_predictions`` computes per-class metrics with patient-bootstrap intervals at the stored
operating point, validation-vs-test sensitivity at that threshold, calibration, per-subgroup metrics
and gaps, the fairness gate and the data audit, then (optionally) writes ``metrics.json``,
``subgroups.csv``, ``predictions.csv`` and ``report.html`` atomically and logs the same figures to
TensorBoard. The metrics.json schema is documented in docs/evaluation.md (``schema_version``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.audit import AuditResult, audit_manifest
from xraytriage.evaluation.bootstrap import (
    BootstrapTask,
    bootstrap_metrics,
    patient_codes,
    percentile_interval,
)
from xraytriage.evaluation.calibration import reliability_curve
from xraytriage.evaluation.fairness import check_gate
from xraytriage.evaluation.identifiers import identifier_reason
from xraytriage.evaluation.metrics import (
    COUNT_METRICS,
    DEFAULT_ECE_BINS,
    RATE_METRICS,
    binary_metrics,
    known_mask,
    prepare,
)
from xraytriage.evaluation.subgroups import SubgroupResult, age_bands, evaluate_subgroups
from xraytriage.evaluation.thresholds import choose_threshold
from xraytriage.utils.csv_safety import safe_frame

log = logging.getLogger(__name__)

SCHEMA_NAME = "xraytriage.metrics"
SCHEMA_VERSION = 1
OUTPUT_FILES = ("metrics.json", "subgroups.csv", "predictions.csv", "report.html")


@dataclass
class EvaluationResult:
    """What ``evaluate_predictions`` computed; ``gate_failures`` empty means the fairness gate passed."""

    metrics: dict[str, Any]
    subgroups: pd.DataFrame
    gate_failures: list[str]
    audit: AuditResult | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.gate_failures


def _interval(value: float | None, reps: np.ndarray | None, confidence: float) -> dict[str, float | None]:
    lo, hi = percentile_interval(reps, confidence)
    return {"value": value, "ci_low": lo, "ci_high": hi}


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(float)


def _check_columns(frame: pd.DataFrame, labels: list[str], what: str) -> None:
    missing = [c for label in labels for c in (label, f"prob_{label}") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} lack column(s) {', '.join(missing)}; expected a truth column L and a probability "
            "column prob_L for every label L"
        )


def _patients(frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    if "patient_id" in frame.columns:
        return patient_codes(frame["patient_id"])
    log.warning("predictions have no patient_id column: the bootstrap resamples scans, not patients")
    return np.arange(len(frame), dtype=np.int64), len(frame)


def _class_metrics(
    frame: pd.DataFrame,
    label: str,
    threshold: float,
    cfg: EvaluationConfig,
    codes: np.ndarray,
    n_patients: int,
) -> tuple[dict[str, Any], dict[str, float | None]]:
    y, p = _column(frame, label), _column(frame, f"prob_{label}")
    point = binary_metrics(y, p, threshold, n_bins=_ece_bins(cfg))
    keep = known_mask(y, p)
    task = BootstrapTask(prepare(y[keep], p[keep], threshold, _ece_bins(cfg)), codes[keep])
    reps = bootstrap_metrics([task], n_patients, cfg.bootstrap_iterations, cfg.bootstrap_seed)[0]
    metrics = {m: _interval(point[m], reps.get(m), cfg.confidence) for m in RATE_METRICS}
    confusion = {m: _interval(point[m], reps.get(m), cfg.confidence) for m in ("tp", "fp", "tn", "fn")}
    return {"point": point, "metrics": metrics, "confusion_matrix": confusion}, point


def _ece_bins(cfg: EvaluationConfig) -> int:
    return int(getattr(cfg, "calibration_bins", DEFAULT_ECE_BINS))


def _validation_block(
    val: pd.DataFrame, label: str, threshold: float, cfg: EvaluationConfig
) -> dict[str, Any] | None:
    if label not in val.columns or f"prob_{label}" not in val.columns:
        return None
    codes, n_patients = _patients(val)
    block, point = _class_metrics(val, label, threshold, cfg, codes, n_patients)
    return {
        "n": point["n"],
        "positives": point["positives"],
        **{m: block["metrics"][m] for m in ("sensitivity", "miss_rate", "specificity", "ppv", "auroc")},
    }


def _target_check(
    cfg: EvaluationConfig, test: dict[str, Any], val: dict[str, Any] | None
) -> dict[str, Any] | None:
    op = cfg.operating_point
    if op.policy not in ("target_sensitivity", "target_specificity"):
        return None
    metric = "sensitivity" if op.policy == "target_sensitivity" else "specificity"
    t = test["metrics"][metric]
    return {
        "metric": metric,
        "target": op.target,
        "validation": None if val is None else val[metric]["value"],
        "test": t["value"],
        "test_ci_low": t["ci_low"],
        "test_ci_high": t["ci_high"],
        "held": None if t["value"] is None else bool(t["value"] >= op.target),
        "held_at_ci_low": None if t["ci_low"] is None else bool(t["ci_low"] >= op.target),
    }


def evaluate_predictions(
    predictions: pd.DataFrame,
    labels: list[str],
    thresholds: dict[str, float],
    cfg: EvaluationConfig,
    out_dir: Path | None,
    *,
    val_predictions: pd.DataFrame | None = None,
    tb_writer: Any = None,
    model_id: str = "",
    temperature: float = 1.0,
    skipped_unreadable: int = 0,
) -> EvaluationResult:
    """Compute, write (if ``out_dir``) and log (if ``tb_writer``) the full evaluation.

    ``skipped_unreadable``: scans the caller could not decode (recorded in metrics.json).

    ``thresholds`` missing a label: chosen on ``val_predictions`` by ``cfg.operating_point`` if given,
    else ``cfg.operating_point.threshold``; the source is recorded per class.
    """
    started = time.perf_counter()
    _check_columns(predictions, labels, "predictions")
    if val_predictions is not None:
        _check_columns(val_predictions, labels, "validation predictions")
    frame = predictions.reset_index(drop=True).copy()
    if "age" in frame.columns and "age_band" not in frame.columns:
        frame["age_band"] = age_bands(frame["age"], list(cfg.age_bands))
    codes, n_patients = _patients(frame)

    classes: dict[str, Any] = {}
    tables: list[pd.DataFrame] = []
    summaries: dict[str, dict[str, Any]] = {}
    curves: dict[str, pd.DataFrame] = {}
    used_thresholds: dict[str, float] = {}
    for label in labels:
        if label in thresholds:
            threshold, source = float(thresholds[label]), "bundle"
        elif val_predictions is not None:
            threshold = choose_threshold(
                _column(val_predictions, label),
                _column(val_predictions, f"prob_{label}"),
                cfg.operating_point,
            )
            source = f"validation ({cfg.operating_point.policy})"
        else:
            threshold, source = float(cfg.operating_point.threshold), "config (fixed fallback)"
        used_thresholds[label] = threshold
        block, point = _class_metrics(frame, label, threshold, cfg, codes, n_patients)
        val_block = (
            None if val_predictions is None else _validation_block(val_predictions, label, threshold, cfg)
        )
        y, p = _column(frame, label), _column(frame, f"prob_{label}")
        curve = reliability_curve(y, p, _ece_bins(cfg))
        curves[label] = curve
        sub: SubgroupResult = evaluate_subgroups(
            frame, label, threshold, cfg, codes=codes, n_patients=n_patients, overall=point
        )
        tables.append(sub.table)
        summaries[label] = sub.summaries
        classes[label] = {
            "threshold": threshold,
            "threshold_source": source,
            "counts": {k: point[k] for k in (*COUNT_METRICS, "excluded")},
            "metrics": block["metrics"],
            "confusion_matrix": block["confusion_matrix"],
            "validation": val_block,
            "target_check": _target_check(cfg, block, val_block),
            "calibration": {
                "ece": point["ece"],
                "bins": _ece_bins(cfg),
                "temperature": float(temperature),
                "reliability": [
                    {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in rec.items()}
                    for rec in curve.astype(object).to_dict(orient="records")
                ],
            },
            "subgroups": sub.summaries,
        }
    subgroup_table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    failures, unchecked = check_gate(summaries, cfg.fairness)
    audit_frame = frame if val_predictions is None else pd.concat([val_predictions, frame], ignore_index=True)
    audit = audit_manifest(audit_frame, labels, cfg)

    splits = frame["split"].astype("string").fillna("unassigned").value_counts() if "split" in frame else None
    metrics: dict[str, Any] = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "xraytriage_version": _version(),
        "model_id": model_id,
        "temperature": float(temperature),
        "labels": list(labels),
        "population": {
            "scans": len(frame),
            "patients": n_patients,
            "splits": {str(k): int(v) for k, v in splits.items()} if splits is not None else {},
            "validation_scans": None if val_predictions is None else len(val_predictions),
            "skipped_unreadable": int(skipped_unreadable),
        },
        "bootstrap": {
            "unit": "patient",
            "method": "percentile",
            "iterations": cfg.bootstrap_iterations,
            "seed": cfg.bootstrap_seed,
            "confidence": cfg.confidence,
        },
        "operating_point": cfg.operating_point.model_dump(mode="json"),
        "prediction_rule": "positive when prob >= threshold",
        "min_group_size": cfg.min_group_size,
        "classes": classes,
        "fairness_gate": {
            "limits": cfg.fairness.model_dump(mode="json"),
            "passed": not failures,
            "failures": failures,
            "unchecked": unchecked,
        },
        "audit": audit.to_dict(),
    }
    metrics["timing_seconds"] = {"metrics": round(time.perf_counter() - started, 3)}
    result = EvaluationResult(metrics=metrics, subgroups=subgroup_table, gate_failures=failures, audit=audit)

    figures = None
    if out_dir is not None or tb_writer is not None:
        figures = _figures(frame, labels, used_thresholds, classes, subgroup_table, curves)
    if out_dir is not None:
        in_use = [*cfg.subgroups, *(c for combo in cfg.intersections for c in combo)]
        result.files = write_outputs(Path(out_dir), result, frame, used_thresholds, figures, in_use)
    if tb_writer is not None:
        log_tensorboard(tb_writer, result, frame, used_thresholds, figures)
    metrics["timing_seconds"]["total"] = round(time.perf_counter() - started, 3)
    return result


def _version() -> str:
    try:
        from xraytriage import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - version is always importable in practice
        return "unknown"


def _figures(
    frame: pd.DataFrame,
    labels: list[str],
    thresholds: dict[str, float],
    classes: dict[str, Any],
    table: pd.DataFrame,
    curves: dict[str, pd.DataFrame],
) -> dict[str, dict[str, Any]]:
    from xraytriage.evaluation.plots import calibration_figure, roc_pr_figure, subgroup_figure

    figs: dict[str, dict[str, Any]] = {}
    for label in labels:
        y, p = _column(frame, label), _column(frame, f"prob_{label}")
        keep = known_mask(y, p)
        point = {k: v["value"] for k, v in classes[label]["metrics"].items()}
        figs[label] = {
            "roc_pr": roc_pr_figure(y[keep], p[keep], thresholds[label], label, point),
            "calibration": calibration_figure(curves[label], label, point.get("ece")),
            "subgroups": subgroup_figure(table, label, point.get("sensitivity"), thresholds[label]),
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
)


def predictions_output(
    frame: pd.DataFrame, thresholds: dict[str, float], subgroup_columns: Iterable[str] = ()
) -> pd.DataFrame:
    """The prediction table as written: allow-listed columns, the subgroup attributes in use (never an
    identifier), each label's truth, ``prob_L`` and ``pred_L`` (0/1 at threshold)."""
    keep = [c for c in PREDICTION_COLUMNS if c in frame.columns]
    keep += [c for c in subgroup_columns if c in frame.columns and identifier_reason(frame, c) is None]
    for label in thresholds:
        keep += [c for c in (label, f"prob_{label}") if c in frame.columns]
    out = frame[list(dict.fromkeys(keep))].copy()
    for label, threshold in thresholds.items():
        prob = _column(out, f"prob_{label}")
        out[f"pred_{label}"] = np.where(np.isfinite(prob), (prob >= threshold).astype(float), np.nan)
    return out


def write_outputs(
    out_dir: Path,
    result: EvaluationResult,
    frame: pd.DataFrame,
    thresholds: dict[str, float],
    figures: dict[str, dict[str, Any]] | None,
    subgroup_columns: Iterable[str] = (),
) -> dict[str, Path]:
    """Write the four outputs atomically (each file appears whole or not at all); CSV text cells are
    neutralised against spreadsheet formulas."""
    from xraytriage.evaluation.html import render_report
    from xraytriage.utils.atomic import atomic_path, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / name for name in OUTPUT_FILES}
    atomic_write_text(files["metrics.json"], json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    with atomic_path(files["subgroups.csv"]) as tmp:
        safe_frame(result.subgroups).to_csv(tmp, index=False)
    with atomic_path(files["predictions.csv"]) as tmp:
        safe_frame(predictions_output(frame, thresholds, subgroup_columns)).to_csv(tmp, index=False)
    atomic_write_text(files["report.html"], render_report(result, figures or {}))
    return files


def _tag(text: str) -> str:
    return "".join(
        ch if ch.isalnum() or ch in "-_=./+" else "_" for ch in text.replace(" & ", "&").replace("&", "_x_")
    )


def log_tensorboard(
    writer: Any,
    result: EvaluationResult,
    frame: pd.DataFrame,
    thresholds: dict[str, float],
    figures: dict[str, dict[str, Any]] | None,
    step: int = 0,
) -> None:
    """Scalars (with interval bounds), PR curves, figures and a text summary under ``eval/``."""
    m = result.metrics
    for label, block in m["classes"].items():
        base = f"eval/{_tag(label)}"
        writer.add_scalar(f"{base}/threshold", block["threshold"], step)
        for name, stat in block["metrics"].items():
            if stat["value"] is not None:
                writer.add_scalar(f"{base}/{name}", stat["value"], step)
            for bound in ("ci_low", "ci_high"):
                if stat[bound] is not None:
                    writer.add_scalar(f"{base}/{name}_{bound}", stat[bound], step)
        if block.get("validation"):
            for name in ("sensitivity", "miss_rate"):
                val = block["validation"][name]["value"]
                if val is not None:
                    writer.add_scalar(f"{base}/validation_{name}", val, step)
        y, p = _column(frame, label), _column(frame, f"prob_{label}")
        keep = known_mask(y, p)
        if keep.any():
            writer.add_pr_curve(f"{base}/pr_curve", (y[keep] == 1).astype(int), p[keep], step)
        for _, row in result.subgroups[result.subgroups["label"] == label].iterrows():
            if row["status"] != "ok":
                continue
            for name in ("sensitivity", "miss_rate", "auroc"):
                if row[name] is not None and pd.notna(row[name]):
                    writer.add_scalar(
                        f"eval_subgroups/{_tag(label)}/{_tag(row['group'])}/{name}", float(row[name]), step
                    )
        for attr, s in block["subgroups"].items():
            gap = (s.get("miss_rate_gap") or {}).get("value") if s.get("available") else None
            if gap is not None:
                writer.add_scalar(f"eval_fairness/{_tag(label)}/{_tag(attr)}/miss_rate_gap", gap, step)
        for name, fig in (figures or {}).get(label, {}).items():
            writer.add_figure(f"{base}/{name}", fig, step, close=False)
    gate = m["fairness_gate"]
    summary = "fairness gate: " + (
        "passed" if gate["passed"] else "FAILED\n\n" + "\n".join(f"* {f}" for f in gate["failures"])
    )
    writer.add_text("eval/summary", summary, step)
    writer.flush()
