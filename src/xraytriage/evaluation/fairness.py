"""Gaps between subgroups, the reference-group comparison and the fairness gate.

For each attribute (and intersection), among the *compared* groups (sufficient data; ``unknown``
values only with ``evaluation.fairness.include_unknown``):

* the **reference group** — ``evaluation.fairness.reference_groups[attribute]``, else the group with
  the most patients — and, for every other group, the difference of its miss rate to the
  reference's, with Newcombe's hybrid score interval (cluster-adjusted);
* descriptive gaps: ``miss_rate_gap`` (largest minus smallest miss rate = fairlearn's equal-opportunity
  difference; biased upward, since noise alone makes it positive), ``equalized_odds_difference``,
  ``auroc_gap``, the worst group's miss rate, and per group the difference to the overall figure and
  to the best group.

The gate (``evaluation.fairness``) decides on interval bounds, never on point estimates. Intervals are
simultaneous over the comparisons of one attribute (Bonferroni), so a fail is a finding, not noise:

* ``max_miss_rate_gap`` Δ: **fail** when a difference's interval lies wholly outside [-Δ, Δ],
  **pass** when every interval lies within it, **cannot certify** otherwise;
* ``max_worst_group_miss_rate`` L: **fail** when a group's miss-rate interval lies above L, **pass**
  when every upper bound is at most L, **cannot certify** otherwise;
* a compared group with insufficient data, an unavailable attribute or a missing reference group make
  the attribute **cannot certify**, naming what is missing.

The overall verdict is the worst one: fail, then cannot certify, then pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from xraytriage.config import EvaluationConfig, FairnessGateConfig
from xraytriage.evaluation.intervals import difference_interval, wilson_interval
from xraytriage.evaluation.results import (
    CANNOT_CERTIFY,
    FAIL,
    PASS,
    AttributeResult,
    ClassResult,
    Estimate,
    GateCheck,
    GateResult,
    GroupRow,
    worst_verdict,
)
from xraytriage.evaluation.scope_groups import SCOPE_ATTRIBUTE

_GAP_KEY = "evaluation.fairness.max_miss_rate_gap"
_WORST_KEY = "evaluation.fairness.max_worst_group_miss_rate"


def _spread(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return max(finite) - min(finite) if len(finite) >= 2 else None


def _reference(attr: AttributeResult, gate: FairnessGateConfig) -> tuple[GroupRow | None, str]:
    """(reference row among the compared groups or None, how it was chosen / why there is none)."""
    configured = gate.reference_groups.get(attr.name)
    if configured is not None:
        names = {configured, f"{attr.name}={configured}"}
        row = next((g for g in attr.groups if g.group in names), None)
        if row is None:
            return None, f"configured reference group '{configured}' is not in the data"
        if not (row.ok and row.compared):
            why = row.status if not row.ok else "its value is unknown"
            return None, f"configured reference group {row.group} cannot be used: {why}"
        return row, "configured (evaluation.fairness.reference_groups)"
    compared = attr.compared_groups
    if not compared:
        return None, "no group has sufficient data"
    row = max(compared, key=lambda g: (g.patients, g.n))  # first of equals, in label order
    return row, "largest (most patients)"


def summarise_attribute(
    attr: AttributeResult, overall: Mapping[str, Estimate], cfg: EvaluationConfig
) -> None:
    """Fill in the reference group, the differences to it and the descriptive gaps (in place)."""
    if not attr.available:
        return
    ref, rule = _reference(attr, cfg.fairness)
    attr.reference_group = None if ref is None else ref.group
    attr.reference_rule = rule
    compared = attr.compared_groups
    if not compared:
        attr.note = "no compared group has sufficient data"
        return
    _gaps(attr, compared, overall)
    if ref is None:
        return
    ref.is_reference = True
    for row in compared:
        if row is ref:
            continue
        d, lo, hi = difference_interval(row.miss, ref.miss, cfg.confidence)
        row.difference_vs_reference = Estimate.of(d, lo, hi, method="newcombe_difference_cluster")
    if len(compared) < 2:
        attr.note = "fewer than two groups with sufficient data: no difference can be measured"


def _gaps(attr: AttributeResult, compared: list[GroupRow], overall: Mapping[str, Estimate]) -> None:
    miss = [g.value("miss_rate") for g in compared]
    fpr = [g.value("fpr") for g in compared]
    auroc = [g.value("auroc") for g in compared]
    best_i = int(np.argmin(miss))
    worst_i = int(np.argmax(miss))
    best_fpr = min((v for v in fpr if v is not None), default=None)
    best_auroc = max((v for v in auroc if v is not None), default=None)
    overall_sens, overall_miss = overall["sensitivity"].value, overall["miss_rate"].value
    for i, row in enumerate(compared):
        if overall_sens is not None:
            row.sensitivity_diff_vs_overall = row.value("sensitivity") - overall_sens
            row.miss_rate_diff_vs_overall = miss[i] - overall_miss
        row.miss_rate_gap_to_best = miss[i] - miss[best_i]
        row.miss_rate_ratio_to_best = miss[i] / miss[best_i] if miss[best_i] > 0 else None
        if fpr[i] is not None and best_fpr is not None:
            row.fpr_gap_to_best = fpr[i] - best_fpr
        if auroc[i] is not None and best_auroc is not None:
            row.auroc_gap_to_best = best_auroc - auroc[i]
        row.is_best, row.is_worst = i == best_i, i == worst_i
    attr.best_group, attr.worst_group = compared[best_i].group, compared[worst_i].group
    attr.worst_group_miss_rate = compared[worst_i].metrics["miss_rate"]
    attr.miss_rate_gap = _spread(miss)
    tpr_gap, fpr_gap = _spread([g.value("sensitivity") for g in compared]), _spread(fpr)
    gaps = [v for v in (tpr_gap, fpr_gap) if v is not None]
    attr.equalized_odds_difference = max(gaps) if gaps else None
    attr.auroc_gap = _spread(auroc)
    diffs = [g.sensitivity_diff_vs_overall for g in compared if g.sensitivity_diff_vs_overall is not None]
    attr.worst_sensitivity_diff_vs_overall = min(diffs) if diffs else None


# ---------------------------------------------------------------- the gate


def decide(low: float, high: float, limit: float, *, symmetric: bool) -> str:
    """Verdict from an interval's bounds. ``symmetric``: the allowed region is [-limit, limit]
    (a difference); otherwise (-inf, limit] (a rate)."""
    floor = -limit if symmetric else -math.inf
    if low > limit or high < floor:
        return FAIL
    if low >= floor and high <= limit:
        return PASS
    return CANNOT_CERTIFY


def _interval_words(verdict: str, symmetric: bool, limit: float) -> str:
    region = f"within ±{limit:g}" if symmetric else f"at or below {limit:g}"
    if verdict == FAIL:
        return f"lies wholly outside the allowed region ({region})"
    if verdict == PASS:
        return f"lies {region}"
    return f"reaches past {limit:g}: the data cannot tell whether the limit holds"


def _difference_check(
    label: str, attr: AttributeResult, row: GroupRow, ref: GroupRow, limit: float, level: float
) -> GateCheck:
    d, lo, hi = difference_interval(row.miss, ref.miss, level)
    verdict = decide(lo, hi, limit, symmetric=True)
    reason = (
        f"miss rate {row.value('miss_rate'):.3f} vs {ref.value('miss_rate'):.3f} in {ref.group} (reference): "
        f"difference {d:+.3f}, simultaneous {level * 100:.4g}% interval ({lo:+.3f}, {hi:+.3f}) "
        f"{_interval_words(verdict, True, limit)} ({_GAP_KEY})"
    )
    estimate = Estimate.of(d, lo, hi, method="newcombe_difference_cluster")
    return GateCheck(
        label,
        attr.name,
        row.group,
        "miss_rate_difference",
        estimate,
        limit,
        level,
        verdict,
        reason,
        ref.group,
    )


def _rate_check(label: str, attr: AttributeResult, row: GroupRow, limit: float, level: float) -> GateCheck:
    lo, hi = wilson_interval(row.miss, level)
    verdict = decide(lo, hi, limit, symmetric=False)
    reason = (
        f"miss rate {row.value('miss_rate'):.3f}, simultaneous {level * 100:.4g}% interval "
        f"({lo:.3f}, {hi:.3f}) {_interval_words(verdict, False, limit)} ({_WORST_KEY})"
    )
    estimate = Estimate.of(row.value("miss_rate"), lo, hi, method="wilson_cluster")
    return GateCheck(label, attr.name, row.group, "miss_rate", estimate, limit, level, verdict, reason)


def _check_attribute(label: str, attr: AttributeResult, cfg: EvaluationConfig) -> None:
    """Set ``attr.checks``, ``attr.unchecked`` and each group's verdict."""
    gate = cfg.fairness
    alpha = 1.0 - cfg.confidence
    if not attr.available:
        attr.unchecked = [f"unavailable: {attr.reason}"]
        return
    for row in attr.groups:
        if row.compared and not row.ok:
            attr.unchecked.append(f"{row.group} cannot be assessed: {row.status}")
            row.verdict, row.verdict_reason = CANNOT_CERTIFY, f"cannot be assessed: {row.status}"
        elif not row.compared:
            row.verdict_reason = "not compared: unknown value (evaluation.fairness.include_unknown)"
    compared = attr.compared_groups
    if gate.max_miss_rate_gap is not None:
        ref = next((g for g in compared if g.is_reference), None)
        others = [g for g in compared if g is not ref]
        if ref is None:
            attr.unchecked.append(f"no reference group: {attr.reference_rule}")
        elif not others:
            attr.unchecked.append(f"only {ref.group} has sufficient data: no difference can be checked")
        for row in others if ref is not None else []:
            check = _difference_check(
                label, attr, row, ref, gate.max_miss_rate_gap, 1.0 - alpha / len(others)
            )
            attr.checks.append(check)
    if gate.max_worst_group_miss_rate is not None and compared:
        level = 1.0 - alpha / len(compared)
        attr.checks.extend(
            _rate_check(label, attr, row, gate.max_worst_group_miss_rate, level) for row in compared
        )
    _group_verdicts(attr)


def _group_verdicts(attr: AttributeResult) -> None:
    for row in attr.compared_groups:
        mine = [c for c in attr.checks if c.group == row.group]
        reasons = [c.reason for c in mine]
        if row.is_reference:
            reasons.insert(0, f"reference group ({attr.reference_rule})")
        row.verdict = worst_verdict([c.verdict for c in mine]) if mine else None
        row.verdict_reason = "; ".join(reasons)


def check_gate(classes: Mapping[str, ClassResult], cfg: EvaluationConfig) -> GateResult:
    """Decide the gate for every class and attribute (fills each attribute's checks and verdicts)."""
    result = GateResult(limits=cfg.fairness.model_dump(mode="json"), confidence=cfg.confidence)
    if not result.has_limits:
        return result
    for label, block in classes.items():
        for attr in block.attributes.values():
            if attr.name == SCOPE_ATTRIBUTE:
                continue  # reported, not gated (evaluation.scope_groups)
            _check_attribute(label, attr, cfg)
            result.checks.extend(attr.checks)
            result.unchecked.extend(f"{label} / {attr.name}: {why}" for why in attr.unchecked)
    return result
