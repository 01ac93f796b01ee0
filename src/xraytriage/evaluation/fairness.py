"""Gaps between subgroups and the fairness gate.

For each attribute (and intersection), among the groups with sufficient data:

* ``miss_rate_gap`` — worst minus best group miss rate; equal to the *equal-opportunity difference*
  (largest difference in sensitivity between groups), with a patient-bootstrap interval;
* ``equalized_odds_difference`` — the larger of the sensitivity and false-positive-rate gaps
  (fairlearn's ``equalized_odds_difference``, between groups, worst case);
* ``auroc_gap`` — best minus worst group AUROC;
* ``worst_group_miss_rate`` — with the worst group's own interval;
* per group: difference to the overall sensitivity/miss rate, gap and ratio to the best group.

The gate (``evaluation.fairness``) compares point estimates with the configured limits and returns
one human-readable line per violation, naming the class, the attribute, the group and the metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from xraytriage.config import FairnessGateConfig
from xraytriage.evaluation.bootstrap import percentile_interval
from xraytriage.evaluation.subgroups import OK


def _values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)


def _gap(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.max() - finite.min()) if finite.size >= 2 else None


def summarise_attribute(
    rows: list[dict[str, Any]], overall: Mapping[str, float | None], confidence: float
) -> dict[str, Any]:
    """Add gap columns to ``rows`` (in place) and return the attribute's summary."""
    ok = [r for r in rows if r.get("status") == OK]
    summary: dict[str, Any] = {
        "available": True,
        "groups": len(rows),
        "groups_with_sufficient_data": len(ok),
        "groups_with_insufficient_data": [r["group"] for r in rows if r.get("status") != OK],
    }
    if not ok:
        summary["note"] = "no group has sufficient data"
        return summary
    miss = _values(ok, "miss_rate")
    fpr = _values(ok, "fpr")
    auroc = _values(ok, "auroc")
    best_i = int(np.nanargmin(miss)) if np.isfinite(miss).any() else 0
    worst_i = int(np.nanargmax(miss)) if np.isfinite(miss).any() else 0
    best_miss = miss[best_i]
    best_fpr = np.nanmin(fpr) if np.isfinite(fpr).any() else np.nan
    best_auroc = np.nanmax(auroc) if np.isfinite(auroc).any() else np.nan
    for i, row in enumerate(ok):
        sens = row.get("sensitivity")
        if sens is not None and overall.get("sensitivity") is not None:
            row["sensitivity_diff_vs_overall"] = float(sens) - float(overall["sensitivity"])  # type: ignore[arg-type]
        if row.get("miss_rate") is not None and overall.get("miss_rate") is not None:
            row["miss_rate_diff_vs_overall"] = float(row["miss_rate"]) - float(overall["miss_rate"])  # type: ignore[arg-type]
        if np.isfinite(miss[i]):
            row["miss_rate_gap_to_best"] = float(miss[i] - best_miss)
            row["miss_rate_ratio_to_best"] = float(miss[i] / best_miss) if best_miss > 0 else None
        if np.isfinite(fpr[i]) and np.isfinite(best_fpr):
            row["fpr_gap_to_best"] = float(fpr[i] - best_fpr)
        if np.isfinite(auroc[i]) and np.isfinite(best_auroc):
            row["auroc_gap_to_best"] = float(best_auroc - auroc[i])
        row["is_best"] = i == best_i
        row["is_worst"] = i == worst_i
    worst = ok[worst_i]
    tpr_gap = _gap(1.0 - miss)
    fpr_gap = _gap(fpr)
    eo = None if tpr_gap is None and fpr_gap is None else max(x for x in (tpr_gap, fpr_gap) if x is not None)
    summary.update(
        best_group=ok[best_i]["group"],
        worst_group=worst["group"],
        worst_group_miss_rate={
            "value": worst.get("miss_rate"),
            "ci_low": worst.get("miss_rate_ci_low"),
            "ci_high": worst.get("miss_rate_ci_high"),
        },
        miss_rate_gap={"value": _gap(miss), **_gap_interval(ok, "miss_rate", confidence)},
        equal_opportunity_difference=tpr_gap,
        equalized_odds_difference=eo,
        auroc_gap=_gap(auroc),
        worst_sensitivity_diff_vs_overall=(
            min(
                r["sensitivity_diff_vs_overall"]
                for r in ok
                if r.get("sensitivity_diff_vs_overall") is not None
            )
            if any(r.get("sensitivity_diff_vs_overall") is not None for r in ok)
            else None
        ),
    )
    if len(ok) < 2:
        summary["note"] = "fewer than two groups with sufficient data: no gap can be measured"
    return summary


def _gap_interval(ok: list[dict[str, Any]], metric: str, confidence: float) -> dict[str, float | None]:
    """Interval of max-min across groups, per bootstrap replicate (replicates shared by all groups)."""
    reps = [r.get("_reps", {}).get(metric) for r in ok]
    if len(ok) < 2 or any(r is None for r in reps):
        return {"ci_low": None, "ci_high": None}
    stacked = np.vstack(reps)  # (groups, replicates)
    usable = np.isfinite(stacked).all(axis=0)
    gaps = np.where(usable, np.nanmax(stacked, axis=0) - np.nanmin(stacked, axis=0), np.nan)
    lo, hi = percentile_interval(gaps, confidence)
    return {"ci_low": lo, "ci_high": hi}


def check_gate(
    summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], gate: FairnessGateConfig
) -> tuple[list[str], list[str]]:
    """(failures, unchecked) for ``{label: {attribute: summary}}`` against the configured limits."""
    failures: list[str] = []
    unchecked: list[str] = []
    limits = (gate.max_miss_rate_gap, gate.max_worst_group_miss_rate)
    if all(limit is None for limit in limits):
        return failures, unchecked
    for label, by_attr in summaries.items():
        for attr, s in by_attr.items():
            if not s.get("available", False):
                continue
            worst = s.get("worst_group_miss_rate", {}) or {}
            gap = (s.get("miss_rate_gap") or {}).get("value")
            if gap is None and worst.get("value") is None:
                unchecked.append(f"{label} / {attr}: {s.get('note', 'no group with sufficient data')}")
                continue
            if gate.max_miss_rate_gap is not None and gap is not None and gap > gate.max_miss_rate_gap:
                failures.append(
                    f"{label} / {attr}: miss-rate gap {gap:.3f} between {s['worst_group']} "
                    f"(miss rate {worst['value']:.3f}) and {s['best_group']} exceeds the limit "
                    f"{gate.max_miss_rate_gap:g} (evaluation.fairness.max_miss_rate_gap)"
                )
            limit = gate.max_worst_group_miss_rate
            if limit is not None and worst.get("value") is not None and worst["value"] > limit:
                failures.append(
                    f"{label} / {attr}: worst-group miss rate {worst['value']:.3f} in {s['worst_group']} "
                    f"exceeds the limit {limit:g} (evaluation.fairness.max_worst_group_miss_rate)"
                )
    return failures, unchecked
