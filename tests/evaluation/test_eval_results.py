"""The typed results behind metrics.json (schema 2), subgroups.csv, the report and the console: each
verdict at its exact boundary, every JSON key and value as docs/evaluation.md documents it (hand-written
here), the text of an estimate with its interval, and undefined numbers as ``None``, never NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from xraytriage.evaluation.audit import AuditResult
from xraytriage.evaluation.intervals import INTERVAL_METHODS
from xraytriage.evaluation.results import (
    CANNOT_CERTIFY,
    FAIL,
    NO_LIMITS,
    PASS,
    AttributeResult,
    Calibration,
    ClassResult,
    Counts,
    Estimate,
    EvaluationResult,
    GateCheck,
    GateResult,
    GroupRow,
    Leakage,
    Population,
    ReliabilityBin,
    TargetCheck,
    ValidationSummary,
    json_number,
    worst_verdict,
)
from xraytriage.evaluation.thresholds import OperatingPoint

# ---------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("undefined", [None, float("nan"), float("inf"), -math.inf, np.float32("nan")])
def test_json_number_turns_every_undefined_number_into_none(undefined: object) -> None:
    assert json_number(undefined) is None


@pytest.mark.parametrize(
    ("given", "expected"), [(0.0, 0.0), (np.float32(0.5), 0.5), (np.int64(3), 3.0), (-2, -2.0)]
)
def test_json_number_keeps_finite_numbers_zero_included_as_plain_floats(
    given: object, expected: float
) -> None:
    out = json_number(given)
    assert out == expected and type(out) is float  # json.dumps cannot write numpy scalars


# --------------------------------------------------------------------------------------------- verdicts


def test_no_verdict_at_all_is_a_pass() -> None:
    assert worst_verdict([]) == PASS


@pytest.mark.parametrize(
    ("verdicts", "worst"),
    [
        ([PASS], PASS),
        ([PASS, PASS], PASS),
        ([PASS, CANNOT_CERTIFY], CANNOT_CERTIFY),
        ([CANNOT_CERTIFY, PASS], CANNOT_CERTIFY),
        ([PASS, FAIL, CANNOT_CERTIFY], FAIL),
        ([CANNOT_CERTIFY, FAIL], FAIL),
    ],
)
def test_fail_beats_cannot_certify_beats_pass(verdicts: list[str], worst: str) -> None:
    assert worst_verdict(verdicts) == worst


def test_verdict_names_are_the_documented_words() -> None:
    """metrics.json and the console print these strings; readers and scripts match on them."""
    assert (PASS, FAIL, CANNOT_CERTIFY, NO_LIMITS) == ("pass", "fail", "cannot certify", "no limits")


# -------------------------------------------------------------------------------------------- Estimate


def test_an_undefined_value_drops_its_interval_but_keeps_method_and_note() -> None:
    est = Estimate.of(float("nan"), 0.1, 0.2, "wilson_cluster", "no positives")
    assert est == Estimate(None, None, None, "wilson_cluster", "no positives")


def test_estimate_of_converts_every_part_and_counts_by_default() -> None:
    est = Estimate.of(np.float64(0.75), np.float32(0.5), float("inf"))
    assert est == Estimate(0.75, 0.5, None, "count", None)
    assert type(est.value) is float and type(est.ci_low) is float


def test_estimate_of_keeps_a_defined_value_with_its_interval_method_and_note() -> None:
    est = Estimate.of(np.int64(4), 3, 5, method="bootstrap", note="few patients")
    assert est == Estimate(4.0, 3.0, 5.0, "bootstrap", "few patients")


def test_an_estimate_made_without_arguments_is_a_count_without_interval() -> None:
    assert Estimate(0.5) == Estimate(0.5, None, None, "count", None)


@pytest.mark.parametrize(
    ("ci_low", "ci_high", "has"),
    [(0.1, 0.2, True), (0.0, 0.0, True), (None, 0.2, False), (0.1, None, False), (None, None, False)],
)
def test_an_interval_needs_both_bounds(ci_low: float | None, ci_high: float | None, has: bool) -> None:
    assert Estimate(0.15, ci_low, ci_high).has_interval is has


def test_estimate_text_is_three_decimals_with_the_interval_after_an_en_dash() -> None:
    assert Estimate(0.12345, 0.1, 0.2).text() == "0.123 (0.100–0.200)"


def test_estimate_text_rounds_to_the_digits_asked() -> None:
    assert Estimate(0.12345, 0.06789, 0.25).text(1) == "0.1 (0.1–0.2)"
    assert Estimate(0.12345, 0.06789, 0.25).text(4) == "0.1235 (0.0679–0.2500)"


def test_estimate_text_without_a_full_interval_is_the_value_alone() -> None:
    assert Estimate(0.5).text() == "0.500"
    assert Estimate(0.5, 0.4, None).text() == "0.500"
    assert Estimate(0.5, None, 0.6).text(2) == "0.50"


def test_an_undefined_estimate_reads_undefined() -> None:
    assert Estimate(None).text() == "undefined"
    assert Estimate.of(float("nan"), 0.1, 0.2).text(2) == "undefined"


def test_estimate_json_has_value_bounds_and_method_and_the_note_only_when_given() -> None:
    assert Estimate(0.8, 0.7, 0.9, "wilson_cluster").to_json() == {
        "value": 0.8,
        "ci_low": 0.7,
        "ci_high": 0.9,
        "method": "wilson_cluster",
    }
    assert Estimate(None, method="bootstrap", note="one class").to_json() == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "method": "bootstrap",
        "note": "one class",
    }
    assert "note" not in Estimate(0.8, note="").to_json()


# ------------------------------------------------------------------------------- counts and calibration


def test_counts_json_is_every_count_by_name() -> None:
    counts = Counts(n=10, positives=4, negatives=6, tp=3, fp=1, tn=5, fn=1, excluded=2)
    assert counts.to_json() == {
        "n": 10,
        "positives": 4,
        "negatives": 6,
        "tp": 3,
        "fp": 1,
        "tn": 5,
        "fn": 1,
        "excluded": 2,
    }


def test_calibration_json_lists_each_reliability_bin_with_its_edges() -> None:
    calibration = Calibration(
        ece=0.05,
        bins=2,
        temperature=1.5,
        reliability=[ReliabilityBin(0.0, 0.5, 3, 0.2, 1 / 3), ReliabilityBin(0.5, 1.0, 0, None, None)],
    )
    assert calibration.to_json() == {
        "ece": 0.05,
        "bins": 2,
        "temperature": 1.5,
        "reliability": [
            {"bin_low": 0.0, "bin_high": 0.5, "count": 3, "mean_prob": 0.2, "observed_rate": 1 / 3},
            {"bin_low": 0.5, "bin_high": 1.0, "count": 0, "mean_prob": None, "observed_rate": None},
        ],
    }


def test_validation_json_has_its_size_then_each_figure() -> None:
    summary = ValidationSummary(
        n=50, positives=20, metrics={"sensitivity": Estimate(0.9, 0.8, 0.95, "wilson_cluster")}
    )
    assert summary.to_json() == {
        "n": 50,
        "positives": 20,
        "sensitivity": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "method": "wilson_cluster"},
    }


# ---------------------------------------------------------------------------------------- target check


def _target_check(test: Estimate) -> TargetCheck:
    return TargetCheck(
        metric="sensitivity", target=0.9, validation=0.93, validation_lower_bound=0.91, test=test
    )


@pytest.mark.parametrize(
    ("value", "held"), [(0.9, True), (0.95, True), (math.nextafter(0.9, 0), False), (None, None)]
)
def test_a_target_holds_when_the_test_figure_reaches_it_exactly(
    value: float | None, held: bool | None
) -> None:
    assert _target_check(Estimate(value)).held is held


@pytest.mark.parametrize(
    ("ci_low", "held"), [(0.9, True), (0.92, True), (math.nextafter(0.9, 0), False), (None, None)]
)
def test_a_target_holds_at_the_lower_bound_when_that_bound_reaches_it(
    ci_low: float | None, held: bool | None
) -> None:
    assert _target_check(Estimate(0.95, ci_low, 0.99)).held_at_ci_low is held


def test_target_check_json_reports_the_promise_and_both_ways_it_held() -> None:
    assert _target_check(Estimate(0.92, 0.88, 0.96, "wilson_cluster")).to_json() == {
        "metric": "sensitivity",
        "target": 0.9,
        "validation": 0.93,
        "validation_lower_bound": 0.91,
        "test": 0.92,
        "test_ci_low": 0.88,
        "test_ci_high": 0.96,
        "held": True,
        "held_at_ci_low": False,
    }


def test_an_undefined_test_figure_leaves_both_checks_undecided_in_json() -> None:
    out = _target_check(Estimate(None)).to_json()
    assert (out["test"], out["test_ci_low"], out["held"], out["held_at_ci_low"]) == (None, None, None, None)


# ---------------------------------------------------------------------------------------- gate checks


def _check(verdict: str, group: str = "sex=F", reason: str = "interval inside the limit") -> GateCheck:
    return GateCheck(
        label="finding",
        attribute="sex",
        group=group,
        kind="miss_rate_difference",
        estimate=Estimate(-0.3, -0.38, -0.21, "newcombe_difference_cluster"),
        limit=0.05,
        confidence=0.975,
        verdict=verdict,
        reason=reason,
        reference="sex=M",
    )


def test_gate_check_line_names_class_attribute_group_verdict_and_reason() -> None:
    assert _check(FAIL, reason="difference -0.300").line() == "finding / sex / sex=F: FAIL: difference -0.300"
    assert _check(CANNOT_CERTIFY, reason="r").line() == "finding / sex / sex=F: CANNOT CERTIFY: r"


def test_gate_check_json_has_every_documented_key() -> None:
    assert _check(PASS).to_json() == {
        "label": "finding",
        "attribute": "sex",
        "group": "sex=F",
        "reference": "sex=M",
        "kind": "miss_rate_difference",
        "estimate": {
            "value": -0.3,
            "ci_low": -0.38,
            "ci_high": -0.21,
            "method": "newcombe_difference_cluster",
        },
        "limit": 0.05,
        "confidence": 0.975,
        "verdict": "pass",
        "reason": "interval inside the limit",
    }


def test_a_gate_check_without_reference_has_a_null_reference() -> None:
    check = GateCheck("finding", "site", "site=A", "miss_rate", Estimate(0.2), 0.3, 0.95, PASS, "ok")
    assert check.reference is None and check.to_json()["reference"] is None


# ----------------------------------------------------------------------------------------- group rows


def _group(**changes: object) -> GroupRow:
    fields: dict[str, object] = {
        "attribute": "sex",
        "group": "sex=F",
        "status": "ok",
        "n": 40,
        "patients": 30,
        "positives": 10,
        "negatives": 30,
    }
    fields.update(changes)
    return GroupRow(**fields)  # type: ignore[arg-type]


def test_a_group_is_ok_only_with_status_ok() -> None:
    assert _group().ok
    assert not _group(status="insufficient data: 3 positives < 5").ok


def test_prevalence_is_positives_over_scans_and_undefined_for_an_empty_group() -> None:
    assert _group().prevalence == 0.25
    assert _group(n=0, positives=0, negatives=0).prevalence is None


def test_a_group_value_is_its_metric_value_or_none_when_not_computed() -> None:
    row = _group(metrics={"sensitivity": Estimate(0.8, 0.6, 0.9, "wilson_cluster"), "auroc": Estimate(None)})
    assert row.value("sensitivity") == 0.8
    assert row.value("auroc") is None
    assert row.value("ppv") is None


SUBGROUP_COLUMNS = [  # docs/evaluation.md, subgroups.csv, in this order
    "label", "attribute", "group", "status", "n", "patients", "positives", "negatives", "prevalence",
    "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
    "miss_rate", "miss_rate_ci_low", "miss_rate_ci_high",
    "specificity", "specificity_ci_low", "specificity_ci_high",
    "fpr", "fpr_ci_low", "fpr_ci_high",
    "ppv", "ppv_ci_low", "ppv_ci_high",
    "auroc", "auroc_ci_low", "auroc_ci_high",
    "interval_methods",
    "sensitivity_diff_vs_overall", "miss_rate_diff_vs_overall", "miss_rate_gap_to_best",
    "miss_rate_ratio_to_best", "fpr_gap_to_best", "auroc_gap_to_best", "is_best", "is_worst",
    "compared", "is_reference",
    "miss_rate_diff_vs_reference",
    "miss_rate_diff_vs_reference_ci_low", "miss_rate_diff_vs_reference_ci_high",
    "verdict", "verdict_reason",
]  # fmt: skip


def test_a_group_record_is_one_subgroups_csv_row_with_every_column_in_order() -> None:
    row = _group(
        metrics={
            "sensitivity": Estimate(0.8, 0.6, 0.9, "wilson_cluster"),
            "miss_rate": Estimate(0.2, 0.1, 0.4, "wilson_cluster"),
            "auroc": Estimate(0.85, 0.7, 0.95, "newcombe_auroc_cluster"),
            "ppv": Estimate(None, method="ignored: undefined"),
        },
        sensitivity_diff_vs_overall=-0.05,
        miss_rate_diff_vs_overall=0.05,
        miss_rate_gap_to_best=0.1,
        miss_rate_ratio_to_best=2.0,
        fpr_gap_to_best=0.02,
        auroc_gap_to_best=0.03,
        is_best=False,
        is_worst=True,
        compared=True,
        is_reference=False,
        difference_vs_reference=Estimate(0.1, -0.05, 0.25, "newcombe_difference_cluster"),
        verdict=CANNOT_CERTIFY,
        verdict_reason="interval crosses the limit",
    )
    record = row.record("finding")
    assert list(record) == SUBGROUP_COLUMNS
    assert record == {
        "label": "finding",
        "attribute": "sex",
        "group": "sex=F",
        "status": "ok",
        "n": 40,
        "patients": 30,
        "positives": 10,
        "negatives": 30,
        "prevalence": 0.25,
        "sensitivity": 0.8,
        "sensitivity_ci_low": 0.6,
        "sensitivity_ci_high": 0.9,
        "miss_rate": 0.2,
        "miss_rate_ci_low": 0.1,
        "miss_rate_ci_high": 0.4,
        "specificity": None,
        "specificity_ci_low": None,
        "specificity_ci_high": None,
        "fpr": None,
        "fpr_ci_low": None,
        "fpr_ci_high": None,
        "ppv": None,
        "ppv_ci_low": None,
        "ppv_ci_high": None,
        "auroc": 0.85,
        "auroc_ci_low": 0.7,
        "auroc_ci_high": 0.95,
        "interval_methods": "newcombe_auroc_cluster; wilson_cluster",  # sorted, once each, none undefined
        "sensitivity_diff_vs_overall": -0.05,
        "miss_rate_diff_vs_overall": 0.05,
        "miss_rate_gap_to_best": 0.1,
        "miss_rate_ratio_to_best": 2.0,
        "fpr_gap_to_best": 0.02,
        "auroc_gap_to_best": 0.03,
        "is_best": False,
        "is_worst": True,
        "compared": True,
        "is_reference": False,
        "miss_rate_diff_vs_reference": 0.1,
        "miss_rate_diff_vs_reference_ci_low": -0.05,
        "miss_rate_diff_vs_reference_ci_high": 0.25,
        "verdict": "cannot certify",
        "verdict_reason": "interval crosses the limit",
    }


def test_an_uncompared_group_record_has_empty_figures_and_no_difference() -> None:
    record = _group(
        group="sex=unknown", status="insufficient data: 2 scans", unknown=True, compared=False
    ).record("finding")
    assert record["compared"] is False and record["is_reference"] is False
    assert record["interval_methods"] == ""
    assert [record[c] for c in SUBGROUP_COLUMNS[9:27]] == [None] * 18
    assert [record[c] for c in SUBGROUP_COLUMNS[28:36]] == [None] * 8
    assert [record[c] for c in SUBGROUP_COLUMNS[38:]] == [None, None, None, None, ""]


# ----------------------------------------------------------------------------------------- attributes


def test_compared_groups_are_the_sufficient_known_ones() -> None:
    f, m = _group(), _group(group="sex=M")
    unknown = _group(group="sex=unknown", compared=False)
    small = _group(group="sex=X", status="insufficient data: 1 patient")
    attr = AttributeResult("sex", available=True, groups=[f, unknown, small, m])
    assert attr.compared_groups == [f, m]


def test_an_attribute_without_checks_or_unchecked_items_has_no_verdict() -> None:
    assert AttributeResult("sex", available=True).verdict is None


@pytest.mark.parametrize(
    ("verdicts", "unchecked", "verdict"),
    [
        ([PASS], [], PASS),
        ([PASS, PASS], ["sex=X cannot be assessed"], CANNOT_CERTIFY),
        ([], ["only one sufficient group"], CANNOT_CERTIFY),
        ([PASS, CANNOT_CERTIFY], [], CANNOT_CERTIFY),
        ([FAIL], ["sex=X cannot be assessed"], FAIL),
    ],
)
def test_an_attribute_takes_its_worst_check_and_anything_unchecked_cannot_be_certified(
    verdicts: list[str], unchecked: list[str], verdict: str
) -> None:
    attr = AttributeResult("sex", available=True, checks=[_check(v) for v in verdicts], unchecked=unchecked)
    assert attr.verdict == verdict


def test_an_unavailable_attribute_is_only_its_reason_in_json() -> None:
    attr = AttributeResult("site", available=False, reason="no column 'site'", groups=[_group()])
    assert attr.to_json() == {"available": False, "reason": "no column 'site'"}


MISS_RATE_GAP_NOTE = (
    "largest minus smallest group miss rate: biased upward (noise alone makes it positive); the gate uses "
    "the differences to the reference group"
)


def test_an_available_attribute_json_has_every_documented_key() -> None:
    reference = _group(group="sex=M", is_reference=True)
    compared = _group(
        difference_vs_reference=Estimate(0.1, -0.05, 0.25, "newcombe_difference_cluster"),
        verdict=CANNOT_CERTIFY,
        verdict_reason="interval crosses the limit",
    )
    unknown = _group(group="sex=unknown", compared=False, status="insufficient data: 2 scans")
    attr = AttributeResult(
        "sex",
        available=True,
        groups=[reference, compared, unknown],
        reference_group="sex=M",
        reference_rule="largest group",
        best_group="sex=M",
        worst_group="sex=F",
        worst_group_miss_rate=Estimate(0.2, 0.1, 0.4, "wilson_cluster"),
        miss_rate_gap=0.1,
        equalized_odds_difference=0.12,
        auroc_gap=0.04,
        worst_sensitivity_diff_vs_overall=-0.05,
        note="one note",
        checks=[_check(CANNOT_CERTIFY)],
        unchecked=["sex=unknown not compared"],
    )
    assert attr.to_json() == {
        "available": True,
        "groups": 3,
        "groups_with_sufficient_data": 2,
        "groups_with_insufficient_data": ["sex=unknown"],
        "groups_not_compared": ["sex=unknown"],
        "reference_group": "sex=M",
        "reference_rule": "largest group",
        "best_group": "sex=M",
        "worst_group": "sex=F",
        "worst_group_miss_rate": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.4, "method": "wilson_cluster"},
        "miss_rate_gap": {"value": 0.1, "note": MISS_RATE_GAP_NOTE},
        "equal_opportunity_difference": 0.1,
        "equalized_odds_difference": 0.12,
        "auroc_gap": 0.04,
        "worst_sensitivity_diff_vs_overall": -0.05,
        "comparisons": [
            {
                "group": "sex=F",
                "reference": "sex=M",
                "miss_rate_difference": {
                    "value": 0.1,
                    "ci_low": -0.05,
                    "ci_high": 0.25,
                    "method": "newcombe_difference_cluster",
                },
                "verdict": "cannot certify",
                "reason": "interval crosses the limit",
            }
        ],
        "verdict": "cannot certify",
        "unchecked": ["sex=unknown not compared"],
        "note": "one note",
    }


def test_an_attribute_json_without_worst_group_or_note_has_null_and_no_note() -> None:
    out = AttributeResult("sex", available=True, groups=[_group()], note="").to_json()
    assert out["worst_group_miss_rate"] is None and out["verdict"] is None
    assert out["comparisons"] == [] and out["unchecked"] == []
    assert "note" not in out


def test_an_attribute_json_holds_a_copy_of_its_unchecked_list() -> None:
    attr = AttributeResult("sex", available=True, unchecked=["a"])
    out = attr.to_json()
    out["unchecked"].append("b")
    assert attr.unchecked == ["a"]


# ---------------------------------------------------------------------------------------------- class


def _operating_point(**changes: object) -> OperatingPoint:
    fields: dict[str, object] = {
        "threshold": 0.42,
        "policy": "target_sensitivity",
        "rule": "lower_bound",
        "target": 0.9,
        "confidence": 0.95,
        "validation_value": 0.93,
        "lower_bound": 0.91,
        "validation_cases": 200,
        "validation_patients": 150,
        "source": "bundle",
    }
    fields.update(changes)
    return OperatingPoint(**fields)  # type: ignore[arg-type]


def _class_result(op: OperatingPoint, **changes: object) -> ClassResult:
    fields: dict[str, object] = {
        "label": "finding",
        "operating_point": op,
        "counts": Counts(n=10, positives=4, negatives=6, tp=3, fp=1, tn=5, fn=1, excluded=0),
        "metrics": {"sensitivity": Estimate(0.75, 0.3, 0.95, "wilson_cluster")},
        "confusion": {"tp": Estimate(3.0), "fn": Estimate(1.0)},
        "calibration": Calibration(ece=0.1, bins=10, temperature=1.0, reliability=[]),
    }
    fields.update(changes)
    return ClassResult(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "source"),
    [
        (_operating_point(), "bundle (target_sensitivity, lower_bound)"),
        (_operating_point(rule=None, source="validation"), "validation (target_sensitivity)"),
        (_operating_point(rule=""), "bundle (target_sensitivity)"),
        (OperatingPoint.given(0.5, "command line (--threshold)"), "command line (--threshold)"),
        (
            _operating_point(fallback_reason="no threshold reaches the target"),
            "bundle (target_sensitivity, lower_bound); FALLBACK: no threshold reaches the target",
        ),
        (
            OperatingPoint(0.5, "given", source="config", fallback_reason="no validation split"),
            "config; FALLBACK: no validation split",
        ),
    ],
)
def test_threshold_source_says_where_the_threshold_came_from_and_any_fallback(
    op: OperatingPoint, source: str
) -> None:
    block = _class_result(op)
    assert block.threshold == op.threshold
    assert block.threshold_source == source


def test_class_json_has_every_documented_key() -> None:
    op = _operating_point()
    validation = ValidationSummary(n=200, positives=80, metrics={"sensitivity": Estimate(0.93)})
    target = TargetCheck("sensitivity", 0.9, 0.93, 0.91, Estimate(0.75, 0.3, 0.95, "wilson_cluster"))
    attribute = AttributeResult("site", available=False, reason="no column 'site'")
    block = _class_result(op, validation=validation, target_check=target, attributes={"site": attribute})
    assert block.to_json() == {
        "threshold": 0.42,
        "threshold_source": "bundle (target_sensitivity, lower_bound)",
        "operating_point": op.to_json(),
        "counts": {
            "n": 10,
            "positives": 4,
            "negatives": 6,
            "tp": 3,
            "fp": 1,
            "tn": 5,
            "fn": 1,
            "excluded": 0,
        },
        "metrics": {
            "sensitivity": {"value": 0.75, "ci_low": 0.3, "ci_high": 0.95, "method": "wilson_cluster"}
        },
        "confusion_matrix": {
            "tp": {"value": 3.0, "ci_low": None, "ci_high": None, "method": "count"},
            "fn": {"value": 1.0, "ci_low": None, "ci_high": None, "method": "count"},
        },
        "validation": {
            "n": 200,
            "positives": 80,
            "sensitivity": {"value": 0.93, "ci_low": None, "ci_high": None, "method": "count"},
        },
        "target_check": {
            "metric": "sensitivity",
            "target": 0.9,
            "validation": 0.93,
            "validation_lower_bound": 0.91,
            "test": 0.75,
            "test_ci_low": 0.3,
            "test_ci_high": 0.95,
            "held": False,
            "held_at_ci_low": False,
        },
        "calibration": {"ece": 0.1, "bins": 10, "temperature": 1.0, "reliability": []},
        "subgroups": {"site": {"available": False, "reason": "no column 'site'"}},
    }


def test_class_json_without_validation_or_target_has_nulls() -> None:
    out = _class_result(_operating_point())
    assert (out.to_json()["validation"], out.to_json()["target_check"]) == (None, None)


# ----------------------------------------------------------------------------------------------- gate

LIMITS = {"max_miss_rate_gap": 0.05, "max_miss_rate": None, "reference_groups": {}}


@pytest.mark.parametrize(
    ("limits", "has"),
    [
        (LIMITS, True),
        ({"max_miss_rate_gap": None, "max_miss_rate": 0.3}, True),
        ({"max_miss_rate_gap": 0.0}, True),  # a limit of 0 is a limit (any difference fails)
        ({"max_miss_rate_gap": None, "max_miss_rate": None, "reference_groups": {"sex": "sex=M"}}, False),
        ({"reference_groups": {"sex": "sex=M"}, "min_patients": 5}, False),  # only max_* keys are limits
        ({}, False),
    ],
)
def test_the_gate_has_limits_only_when_a_max_key_is_set(limits: dict[str, object], has: bool) -> None:
    assert GateResult(limits).has_limits is has


def test_a_gate_without_limits_says_so_and_passes_whatever_its_checks() -> None:
    gate = GateResult({"max_miss_rate_gap": None}, checks=[_check(FAIL)], unchecked=["x"])
    assert (gate.verdict, gate.passed) == (NO_LIMITS, True)


@pytest.mark.parametrize(
    ("verdicts", "unchecked", "verdict", "passed"),
    [
        ([], [], PASS, True),
        ([PASS, PASS], [], PASS, True),
        ([PASS], ["finding / site: unavailable"], CANNOT_CERTIFY, False),
        ([PASS, CANNOT_CERTIFY], [], CANNOT_CERTIFY, False),
        ([CANNOT_CERTIFY, FAIL, PASS], ["x"], FAIL, False),
    ],
)
def test_the_gate_takes_the_worst_verdict_and_passes_only_on_pass(
    verdicts: list[str], unchecked: list[str], verdict: str, passed: bool
) -> None:
    gate = GateResult(LIMITS, checks=[_check(v) for v in verdicts], unchecked=unchecked)
    assert (gate.verdict, gate.passed) == (verdict, passed)


def test_gate_failures_and_uncertain_comparisons_are_one_line_each_in_order() -> None:
    checks = [
        _check(FAIL, "sex=F", "a"),
        _check(PASS, "sex=M", "b"),
        _check(CANNOT_CERTIFY, "sex=X", "c"),
        _check(FAIL, "sex=Y", "d"),
    ]
    gate = GateResult(LIMITS, checks=checks)
    assert gate.failures == ["finding / sex / sex=F: FAIL: a", "finding / sex / sex=Y: FAIL: d"]
    assert gate.uncertain == ["finding / sex / sex=X: CANNOT CERTIFY: c"]


def test_gate_json_has_every_documented_key() -> None:
    gate = GateResult(
        LIMITS,
        checks=[_check(FAIL, reason="a"), _check(PASS)],
        unchecked=["finding / site: x"],
        confidence=0.9,
    )
    assert gate.to_json() == {
        "limits": LIMITS,
        "verdict": "fail",
        "passed": False,
        "failures": ["finding / sex / sex=F: FAIL: a"],
        "cannot_certify": [],
        "unchecked": ["finding / site: x"],
        "confidence": 0.9,
        "multiplicity": "Bonferroni over the comparisons of each attribute",
        "checks": [_check(FAIL, reason="a").to_json(), _check(PASS).to_json()],
    }


def test_a_gate_confidence_defaults_to_95_percent() -> None:
    assert GateResult(LIMITS).confidence == 0.95


# --------------------------------------------------------------------------------- leakage, population


def test_the_leakage_warning_names_the_patients_and_each_pair_of_splits() -> None:
    leakage = Leakage(patients=3, pairs={"test/train": 2, "test/val": 1})
    warning = (
        "PATIENT LEAKAGE ALLOWED (--allow-leakage): 3 patient(s) appear in more than one split "
        "(test/train: 2, test/val: 1); every figure here may be optimistic"
    )
    assert leakage.warning == warning
    assert leakage.to_json() == {
        "allowed": True,
        "patients": 3,
        "pairs": {"test/train": 2, "test/val": 1},
        "warning": warning,
    }


def test_population_json_is_every_count_by_name() -> None:
    population = Population(
        scans=100, patients=60, splits={"test": 70, "val": 30}, validation_scans=30, skipped_unreadable=2
    )
    assert population.to_json() == {
        "scans": 100,
        "patients": 60,
        "splits": {"test": 70, "val": 30},
        "validation_scans": 30,
        "skipped_unreadable": 2,
    }


# ---------------------------------------------------------------------------------------- evaluation

SETTINGS = {
    "bootstrap": {"unit": "patient", "iterations": 200, "seed": 0, "confidence": 0.9},
    "prediction_rule": "positive when prob >= threshold",
    "min_group_size": 10,
}


def _evaluation(**changes: object) -> EvaluationResult:
    available = AttributeResult(
        "sex", available=True, groups=[_group(group="sex=M", is_reference=True), _group()]
    )
    unavailable = AttributeResult("site", available=False, reason="no column 'site'")
    first = _class_result(_operating_point(), attributes={"site": unavailable, "sex": available})
    second = _class_result(
        OperatingPoint.given(0.5, "config"),
        label="effusion",
        calibration=Calibration(ece=None, bins=10, temperature=2.5, reliability=[]),
    )
    fields: dict[str, object] = {
        "classes": {"finding": first, "effusion": second},
        "gate": GateResult(LIMITS, checks=[_check(FAIL, reason="a")]),
        "population": Population(100, 60, {"test": 70, "val": 30}, 30, 0),
        "settings": SETTINGS,
        "model_id": "sha256:abc",
        "created_utc": "2026-12-01T12:00:00Z",
        "version": "1.2.3",
    }
    fields.update(changes)
    return EvaluationResult(**fields)  # type: ignore[arg-type]


def test_evaluation_labels_gate_and_confidence_come_from_its_parts() -> None:
    result = _evaluation()
    assert result.labels == ["finding", "effusion"]
    assert result.passed is False
    assert result.gate_failures == ["finding / sex / sex=F: FAIL: a"]
    assert result.confidence == 0.9 and type(result.confidence) is float
    assert _evaluation(gate=GateResult(LIMITS)).passed is True


def test_subgroup_records_are_one_row_per_group_and_one_per_unavailable_attribute() -> None:
    result = _evaluation()
    rows = result.subgroup_records()
    assert [(r["label"], r["attribute"], r["group"], r["status"]) for r in rows] == [
        ("finding", "site", "", "unavailable: no column 'site'"),
        ("finding", "sex", "sex=M", "ok"),  # the attributes after an unavailable one are still listed
        ("finding", "sex", "sex=F", "ok"),
    ]
    assert rows[1] == result.classes["finding"].attributes["sex"].groups[0].record("finding")
    assert rows[0] == {
        "label": "finding",
        "attribute": "site",
        "group": "",
        "status": "unavailable: no column 'site'",
    }
    assert all("leakage_warning" not in r for r in rows)


def test_allowed_leakage_marks_every_subgroup_row() -> None:
    leakage = Leakage(patients=1, pairs={"test/val": 1})
    rows = _evaluation(leakage=leakage).subgroup_records()
    assert len(rows) == 3 and all(r["leakage_warning"] == leakage.warning for r in rows)


def test_metrics_json_has_every_documented_top_level_key_and_is_strict_json() -> None:
    result = _evaluation(timing_seconds={"metrics": 1.5, "total": 2.0})
    out = result.to_json()
    assert list(out) == [
        "schema",
        "schema_version",
        "created_utc",
        "xraytriage_version",
        "model_id",
        "temperatures",
        "labels",
        "population",
        "bootstrap",
        "prediction_rule",
        "min_group_size",
        "interval_methods",
        "classes",
        "fairness_gate",
        "audit",
        "leakage",
        "timing_seconds",
    ]
    assert (out["schema"], out["schema_version"]) == ("xraytriage.metrics", 2)
    assert (out["created_utc"], out["xraytriage_version"], out["model_id"]) == (
        "2026-12-01T12:00:00Z",
        "1.2.3",
        "sha256:abc",
    )
    assert out["temperatures"] == {"finding": 1.0, "effusion": 2.5}
    assert out["labels"] == ["finding", "effusion"]
    assert out["population"] == {
        "scans": 100,
        "patients": 60,
        "splits": {"test": 70, "val": 30},
        "validation_scans": 30,
        "skipped_unreadable": 0,
    }
    assert out["bootstrap"] == SETTINGS["bootstrap"] and out["min_group_size"] == 10
    assert out["interval_methods"] == INTERVAL_METHODS
    assert out["classes"] == {label: c.to_json() for label, c in result.classes.items()}
    assert out["fairness_gate"] == result.gate.to_json()
    assert (out["audit"], out["leakage"]) == (None, None)
    assert out["timing_seconds"] == {"metrics": 1.5, "total": 2.0}
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # what report.py writes


def test_metrics_json_carries_the_audit_and_the_allowed_leakage() -> None:
    audit = AuditResult(
        splits=pd.DataFrame({"split": ["test", "all"], "scans": [3, 3]}),
        subgroups=pd.DataFrame({"split": ["test"], "attribute": ["sex"], "group": ["F"], "scans": [3]}),
        missing=pd.DataFrame({"attribute": ["site"], "missing": [3]}),
        labels=["finding"],
    )
    leakage = Leakage(patients=2, pairs={"test/val": 2})
    out = _evaluation(audit=audit, leakage=leakage).to_json()
    assert out["audit"] == {
        "labels": ["finding"],
        "splits": [{"split": "test", "scans": 3}, {"split": "all", "scans": 3}],
        "subgroups": [{"split": "test", "attribute": "sex", "group": "F", "scans": 3}],
        "missing_attributes": [{"attribute": "site", "missing": 3}],
        "leakage": {"patients": 0, "pairs": {}},
        "errors": [],
    }
    assert out["leakage"] == leakage.to_json()
