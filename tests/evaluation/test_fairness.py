"""Subgroup metrics and gaps agree with fairlearn; the reference-group comparison and the gate decide
on interval bounds; small, one-class and unknown groups are shown, never dropped, never passed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    equalized_odds_difference,
    false_negative_rate_difference,
    true_positive_rate,
)
from sklearn.metrics import recall_score, roc_auc_score

from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.bootstrap import patient_codes
from xraytriage.evaluation.fairness import check_gate, decide, summarise_attribute
from xraytriage.evaluation.intervals import clustered_proportion, difference_interval
from xraytriage.evaluation.rates import rate_estimates
from xraytriage.evaluation.results import (
    CANNOT_CERTIFY,
    FAIL,
    NO_LIMITS,
    PASS,
    Calibration,
    ClassResult,
    Counts,
)
from xraytriage.evaluation.subgroups import (
    age_band_labels,
    age_bands,
    evaluate_subgroups,
    group_label,
    group_point_estimates,
    resolve_subgroups,
    subgroup_sensitivity,
)
from xraytriage.evaluation.thresholds import OperatingPoint


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    site = rng.choice(["A", "B", "C", "D", "E"], n, p=[0.4, 0.3, 0.2, 0.07, 0.03])
    y = (rng.random(n) < 0.35).astype(float)
    y[site == "D"] = 1.0  # a group with no negative case
    prob = np.round(np.clip(0.35 * y + rng.random(n) * 0.65 + 0.1 * (site == "B"), 0, 1), 2)  # ties
    return pd.DataFrame(
        {
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
            "site": site,
            "age": rng.uniform(18, 95, n),
            "finding": y,
            "prob_finding": prob,
        }
    )


def _run(frame: pd.DataFrame, cfg: EvaluationConfig, threshold: float = 0.5) -> dict:
    codes, _ = patient_codes(frame["patient_id"])
    y, p = frame["finding"].to_numpy(), frame["prob_finding"].to_numpy()
    overall = rate_estimates(y == 1, p >= threshold, codes, cfg.confidence, ["sensitivity", "miss_rate"])
    attributes = evaluate_subgroups(frame, "finding", threshold, cfg, codes=codes)
    for attr in attributes:
        summarise_attribute(attr, overall, cfg)
    return {a.name: a for a in attributes}


def _gate(attributes: dict, cfg: EvaluationConfig):
    block = ClassResult(
        "finding",
        OperatingPoint.given(0.5, "test"),
        Counts(0, 0, 0, 0, 0, 0, 0, 0),
        {},
        {},
        Calibration(None, 10, 1.0, []),
        attributes=attributes,
    )
    return check_gate({"finding": block}, cfg)


def _rows(attr) -> dict:
    return {g.group: g for g in attr.groups}


@pytest.mark.parametrize("seed", range(6))
def test_group_metrics_and_gaps_match_fairlearn(seed):
    rng = np.random.default_rng(seed)
    frame = _frame(rng, int(rng.integers(80, 400)))
    cfg = EvaluationConfig(subgroups=["site", "sex"], min_group_size=8)
    site = _run(frame, cfg)["site"]
    y = frame["finding"].to_numpy().astype(int)
    pred = (frame["prob_finding"].to_numpy() >= 0.5).astype(int)
    mf = MetricFrame(
        metrics={
            "tpr": true_positive_rate,
            "tnr": lambda a, b: recall_score(a, b, pos_label=0, zero_division=np.nan),
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=frame["site"],
    )
    ok_sites = []
    for row in site.groups:
        value = row.group.split("=", 1)[1]
        members = (frame["site"] == value).to_numpy()
        assert row.n == members.sum()  # every present group is listed
        if row.ok:
            ok_sites.append(value)
            assert row.value("sensitivity") == pytest.approx(mf.by_group.loc[value, "tpr"], abs=1e-12)
            assert row.value("specificity") == pytest.approx(mf.by_group.loc[value, "tnr"], abs=1e-12)
            assert row.value("auroc") == pytest.approx(
                roc_auc_score(y[members], frame["prob_finding"][members])
            )
            for metric in ("sensitivity", "miss_rate", "specificity", "fpr", "ppv", "auroc"):
                est = row.metrics[metric]
                assert est.ci_low <= est.value <= est.ci_high and est.ci_low < est.ci_high
        else:
            assert row.status.startswith("insufficient data") and row.metrics == {}
    d_row = _rows(site)["site=D"]
    assert d_row.status == "insufficient data: no negative case" or d_row.n < 8
    if len(ok_sites) >= 2:
        keep = frame["site"].isin(ok_sites).to_numpy()
        sf = frame["site"][keep]
        assert site.equalized_odds_difference == pytest.approx(
            equalized_odds_difference(y[keep], pred[keep], sensitive_features=sf)
        )
        assert site.miss_rate_gap == pytest.approx(
            false_negative_rate_difference(y[keep], pred[keep], sensitive_features=sf)
        )
        worst = next(g for g in site.groups if g.is_worst)
        assert worst.value("miss_rate") == site.worst_group_miss_rate.value
        assert worst.value("miss_rate") - min(
            g.value("miss_rate") for g in site.compared_groups
        ) == pytest.approx(site.miss_rate_gap)


def test_unavailable_attribute_and_tiny_groups_are_reported():
    rng = np.random.default_rng(1)
    frame = _frame(rng, 120)
    frame["scanner_serial"] = [f"SN{i:04d}" for i in range(len(frame))]  # one value per scan
    cfg = EvaluationConfig(
        subgroups=["sex", "manufacturer", "scanner_serial"],
        intersections=[["sex", "site"]],
        min_group_size=15,
    )
    attributes = _run(frame, cfg)
    assert attributes["manufacturer"].reason.startswith("column 'manufacturer'")
    # never a group per scan
    assert attributes["scanner_serial"].reason.startswith("has 120 different values")
    assert not any("SN0" in g.group for a in attributes.values() for g in a.groups)
    with pytest.raises(ValueError, match="'patient_id' is an identifier column"):
        EvaluationConfig(subgroups=["sex", "patient_id"])  # refused by name before any work
    inter = attributes["sex & site"]
    assert len(inter.groups) == frame.groupby(["sex", "site"]).ngroups
    assert all(g.group.startswith("sex=") and " & site=" in g.group for g in inter.groups)
    tiny = [g for g in inter.groups if g.n < 15]
    assert tiny and all(g.status.startswith("insufficient data") and not g.metrics for g in tiny)


def test_reference_group_is_the_largest_unless_configured():
    rng = np.random.default_rng(4)
    frame = _frame(rng, 600)
    cfg = EvaluationConfig(subgroups=["site"], min_group_size=8)
    site = _run(frame, cfg)["site"]
    largest = max(site.compared_groups, key=lambda g: g.patients)
    assert site.reference_group == largest.group == "site=A" and site.reference_rule.startswith("largest")
    conf = cfg.confidence
    for row in site.compared_groups:
        if row is largest:
            assert row.is_reference and row.difference_vs_reference is None
            continue
        diff = row.difference_vs_reference
        assert diff.value == pytest.approx(row.value("miss_rate") - largest.value("miss_rate"), abs=1e-12)
        assert (diff.value, diff.ci_low, diff.ci_high) == pytest.approx(
            difference_interval(row.miss, largest.miss, conf), abs=1e-12
        )
        assert diff.method == "newcombe_difference_cluster"
    for form in ("B", "site=B"):
        configured = _run(
            frame, EvaluationConfig(subgroups=["site"], fairness={"reference_groups": {"site": form}})
        )
        assert (
            configured["site"].reference_group == "site=B"
            and "configured" in configured["site"].reference_rule
        )
    missing = EvaluationConfig(
        subgroups=["site"], fairness={"reference_groups": {"site": "Z"}, "max_miss_rate_gap": 0.2}
    )
    gate = _gate(_run(frame, missing), missing)
    assert gate.verdict == CANNOT_CERTIFY
    assert any("configured reference group 'Z' is not in the data" in u for u in gate.unchecked)


def test_unknown_is_shown_but_not_compared_unless_configured():
    """Was: sex=unknown treated as a demographic group in gaps and the gate (and failed it)."""
    rng = np.random.default_rng(6)
    n = 1200
    sex = rng.choice(["F", "M", ""], n, p=[0.45, 0.45, 0.1])
    y = (rng.random(n) < 0.5).astype(float)
    prob = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, n)
    prob[(sex == "") & (y == 1)] = 0.1  # every positive with unknown sex is missed
    frame = pd.DataFrame(
        {"patient_id": np.arange(n).astype(str), "sex": sex, "finding": y, "prob_finding": prob}
    )
    cfg = EvaluationConfig(subgroups=["sex"], fairness={"max_miss_rate_gap": 0.1})
    sex_attr = _run(frame, cfg)["sex"]
    unknown = _rows(sex_attr)["sex=unknown"]
    assert unknown.ok and unknown.value("miss_rate") == 1.0 and not unknown.compared  # shown
    assert unknown.difference_vs_reference is None and unknown.is_worst is None
    assert sex_attr.miss_rate_gap < 0.1 and sex_attr.worst_group != "sex=unknown"
    gate = _gate({"sex": sex_attr}, cfg)
    assert gate.verdict == PASS and all(c.group != "sex=unknown" for c in gate.checks)
    assert "not compared" in unknown.verdict_reason
    included = EvaluationConfig(
        subgroups=["sex"], fairness={"max_miss_rate_gap": 0.1, "include_unknown": True}
    )
    gate = _gate(_run(frame, included), included)
    assert gate.verdict == FAIL and any("sex=unknown" in f for f in gate.failures)


@pytest.mark.parametrize(
    "low,high,limit,symmetric,verdict",
    [
        (0.11, 0.2, 0.1, True, FAIL),
        (0.1, 0.2, 0.1, True, CANNOT_CERTIFY),  # a bound exactly at the limit does not show it exceeded
        (-0.3, -0.11, 0.1, True, FAIL),
        (-0.3, -0.1, 0.1, True, CANNOT_CERTIFY),
        (-0.1, 0.1, 0.1, True, PASS),  # the limit itself is allowed
        (-0.1000001, 0.05, 0.1, True, CANNOT_CERTIFY),
        (-0.05, 0.1000001, 0.1, True, CANNOT_CERTIFY),
        (0.2, 0.3, 0.1, False, FAIL),
        (0.1, 0.3, 0.1, False, CANNOT_CERTIFY),
        (0.0, 0.1, 0.1, False, PASS),
        (0.05, 0.1000001, 0.1, False, CANNOT_CERTIFY),
        (-0.2, -0.15, 0.1, False, PASS),  # a rate's interval has no lower limit
        (0.0, 1e-9, 0.0, True, CANNOT_CERTIFY),
        (0.0, 0.0, 0.0, True, PASS),
    ],
)
def test_gate_decides_on_interval_bounds(low, high, limit, symmetric, verdict):
    assert decide(low, high, limit, symmetric=symmetric) == verdict


def test_gate_fails_on_a_real_gap_with_simultaneous_intervals():
    rng = np.random.default_rng(3)
    frame = _frame(rng, 1200)
    frame.loc[frame["sex"] == "F", "prob_finding"] *= 0.5  # the model misses more findings in women
    cfg = EvaluationConfig(subgroups=["sex", "site"], fairness={"max_miss_rate_gap": 0.05}, min_group_size=8)
    attributes = _run(frame, cfg)
    gate = _gate(attributes, cfg)
    assert gate.verdict == FAIL
    failure = next(f for f in gate.failures if "/ sex /" in f)
    assert "sex=F" in failure and "evaluation.fairness.max_miss_rate_gap" in failure
    check = next(c for c in gate.checks if c.attribute == "sex")
    ref = _rows(attributes["sex"])[check.reference]
    group = _rows(attributes["sex"])[check.group]
    assert check.confidence == 0.95  # one comparison: no adjustment
    assert (check.estimate.value, check.estimate.ci_low, check.estimate.ci_high) == pytest.approx(
        difference_interval(group.miss, ref.miss, 0.95), abs=1e-12
    )
    site_checks = [c for c in gate.checks if c.attribute == "site"]
    others = len(attributes["site"].compared_groups) - 1
    assert len(site_checks) == others and all(
        c.confidence == pytest.approx(1 - 0.05 / others) for c in site_checks
    )  # Bonferroni over the attribute's comparisons
    assert gate.uncertain or gate.failures
    assert "site=D cannot be assessed: insufficient data" in " ".join(gate.unchecked)


def test_scope_is_reported_not_gated_wherever_it_is_listed():
    """A user may list ``scope`` among the subgroups, before the attributes the gate speaks for: the
    attributes after it are still gated (scope's own groups never are)."""
    rng = np.random.default_rng(3)
    frame = _frame(rng, 1200)
    frame.loc[frame["sex"] == "F", "prob_finding"] *= 0.5  # the model misses more findings in women
    frame["scope"] = np.where(frame["site"] == "A", "in_scope", "out_of_scope")
    cfg = EvaluationConfig(subgroups=["scope", "sex"], fairness={"max_miss_rate_gap": 0.05}, min_group_size=8)
    attributes = _run(frame, cfg)
    assert list(attributes) == ["scope", "sex"] and attributes["scope"].compared_groups
    gate = _gate(attributes, cfg)
    assert gate.verdict == FAIL and {c.attribute for c in gate.checks} == {"sex"}
    assert not attributes["scope"].checks and not any("/ scope" in line for line in gate.unchecked)


def test_worst_group_limit_decides_on_each_groups_interval():
    rng = np.random.default_rng(8)
    frame = _frame(rng, 2000)
    cfg = EvaluationConfig(subgroups=["sex"], fairness={"max_worst_group_miss_rate": 0.9})
    attributes = _run(frame, cfg)
    gate = _gate(attributes, cfg)
    assert gate.verdict == PASS and {c.kind for c in gate.checks} == {"miss_rate"}
    for check in gate.checks:
        assert check.confidence == pytest.approx(1 - 0.05 / 2)
        assert check.estimate.ci_high <= 0.9
    strict = EvaluationConfig(subgroups=["sex"], fairness={"max_worst_group_miss_rate": 0.01})
    gate = _gate(_run(frame, strict), strict)
    assert (
        gate.verdict == FAIL and len(gate.failures) == 2 and "max_worst_group_miss_rate" in gate.failures[0]
    )


def test_small_group_makes_the_gate_cannot_certify_and_says_what_it_lacks():
    """Was: with min_group_size 12 and 8 of 8 female positives missed, sex=F was 'insufficient data',
    nothing failed and nothing was reported unchecked."""
    rng = np.random.default_rng(9)
    men = 300
    frame = pd.DataFrame(
        {
            "patient_id": [f"m{i}" for i in range(men)] + [f"f{i}" for i in range(8)],
            "sex": ["M"] * men + ["F"] * 8,
            "finding": np.r_[(rng.random(men) < 0.5).astype(float), np.ones(8)],
        }
    )
    frame["prob_finding"] = np.where(frame["finding"] == 1, 0.9, 0.1)
    frame.loc[frame["sex"] == "F", "prob_finding"] = 0.05  # all 8 missed
    cfg = EvaluationConfig(subgroups=["sex"], min_group_size=12, fairness={"max_miss_rate_gap": 0.1})
    attributes = _run(frame, cfg)
    gate = _gate(attributes, cfg)
    assert gate.verdict == CANNOT_CERTIFY and not gate.passed
    assert gate.unchecked == [
        "finding / sex: sex=F cannot be assessed: insufficient data: "
        "8 scans with known label < min_group_size 12",
        "finding / sex: only sex=M has sufficient data: no difference can be checked",
    ]
    assert _rows(attributes["sex"])["sex=F"].verdict == CANNOT_CERTIFY


def test_no_limits_means_no_verdict():
    rng = np.random.default_rng(2)
    cfg = EvaluationConfig(subgroups=["sex"])
    attributes = _run(_frame(rng, 300), cfg)
    gate = _gate(attributes, cfg)
    assert gate.verdict == NO_LIMITS and gate.passed and not gate.checks and not gate.unchecked
    assert attributes["sex"].verdict is None
    assert math.isfinite(attributes["sex"].groups[0].metrics["miss_rate"].ci_high)


def test_subgroup_sensitivity_fast_path():
    rng = np.random.default_rng(2)
    frame = _frame(rng, 300)
    cfg = EvaluationConfig(subgroups=["sex", "site", "age_band", "view"], min_group_size=10)
    values = subgroup_sensitivity(frame, "finding", 0.5, cfg)
    for sex in ("F", "M"):
        part = frame[frame["sex"] == sex]
        expected = recall_score(part["finding"].astype(int), (part["prob_finding"] >= 0.5).astype(int))
        assert values[f"sex={sex}"] == pytest.approx(expected)
    assert values["site=D"] is None  # no negative case
    assert not any(k.startswith("view=") for k in values)  # unavailable attribute: left out
    assert any(k.startswith("age_band=") for k in values)


def test_age_bands():
    assert age_band_labels([0, 40, 60, 80, 200]) == ["0-40", "40-60", "60-80", "80+"]
    bands = age_bands(pd.Series([39.9, 40, 79, 80, None, 250, -1]), [0, 40, 60, 80, 200])
    assert list(bands) == ["0-40", "40-60", "60-80", "80+", "unknown", "unknown", "unknown"]
    assert age_band_labels([18, 50.5, 90]) == ["18-50.5", "50.5-90"]


def test_group_miss_counts_are_the_clustered_proportion_of_its_positives():
    rng = np.random.default_rng(12)
    frame = _frame(rng, 400)
    sex = _run(frame, EvaluationConfig(subgroups=["sex"]))["sex"]
    codes, _ = patient_codes(frame["patient_id"])
    for row in sex.groups:
        members = (frame["sex"] == row.group.split("=")[1]).to_numpy() & (frame["finding"] == 1).to_numpy()
        expected = clustered_proportion(frame["prob_finding"].to_numpy()[members] < 0.5, codes[members])
        assert row.miss == expected


def _two_groups(n_a: int, n_b: int, patients_b: int | None = None) -> pd.DataFrame:
    """Group A with n_a scans and group B with n_b (half positive each), one scan per patient unless
    ``patients_b`` folds B's scans into fewer patients."""
    ids_b = [f"b{i % patients_b if patients_b else i}" for i in range(n_b)]
    return pd.DataFrame(
        {
            "patient_id": [f"a{i}" for i in range(n_a)] + ids_b,
            "site": ["A"] * n_a + ["B"] * n_b,
            "finding": [float(i % 2) for i in range(n_a)] + [float(i % 2) for i in range(n_b)],
            "prob_finding": [0.3 + 0.4 * (i % 2) for i in range(n_a + n_b)],
        }
    )


def test_group_size_rules_at_their_exact_boundaries():
    cfg = EvaluationConfig(subgroups=["site"], min_group_size=10, min_group_patients=2)
    rows = _rows(_run(_two_groups(40, 10), cfg)["site"])
    assert rows["site=B"].ok  # exactly min_group_size scans
    rows = _rows(_run(_two_groups(40, 9), cfg)["site"])
    assert rows["site=B"].status == "insufficient data: 9 scans with known label < min_group_size 10"
    rows = _rows(_run(_two_groups(40, 12, patients_b=4), cfg)["site"])
    assert rows["site=B"].ok and rows["site=B"].patients == 4  # 2 positive and 2 negative patients
    rows = _rows(_run(_two_groups(40, 12, patients_b=2), cfg)["site"])
    assert rows["site=B"].status == (
        "insufficient data: negative cases from 1 patient(s) < min_group_patients 2"
    )


def test_reference_ties_break_on_scans_then_label_order():
    frame = _two_groups(20, 20)
    site = _run(frame, EvaluationConfig(subgroups=["site"], min_group_size=5))["site"]
    assert site.reference_group == "site=A"  # equal patients and scans: first label
    frame = _two_groups(20, 24, patients_b=20)
    site = _run(frame, EvaluationConfig(subgroups=["site"], min_group_size=5))["site"]
    assert site.reference_group == "site=B"  # equal patients, more scans


def test_configured_reference_that_cannot_be_used_is_named():
    cfg = EvaluationConfig(
        subgroups=["site"],
        min_group_size=10,
        fairness={"reference_groups": {"site": "B"}, "max_miss_rate_gap": 0.2},
    )
    attributes = _run(_two_groups(40, 6), cfg)
    assert attributes["site"].reference_group is None
    gate = _gate(attributes, cfg)
    assert gate.verdict == CANNOT_CERTIFY
    assert (
        "finding / site: no reference group: configured reference group site=B cannot be used: "
        "insufficient data: 6 scans with known label < min_group_size 10"
    ) in gate.unchecked


def test_an_intersection_with_an_unknown_part_is_not_compared():
    rng = np.random.default_rng(13)
    frame = _frame(rng, 600)
    frame.loc[frame.index[:120], "age"] = np.nan
    attrs = _run(frame, EvaluationConfig(subgroups=[], intersections=[["sex", "age_band"]], min_group_size=5))
    rows = attrs["sex & age_band"].groups
    unknown = [g for g in rows if g.group.endswith("age_band=unknown")]
    assert len(unknown) == 2 and all(g.unknown and not g.compared for g in unknown)
    assert all(g.compared for g in rows if not g.group.endswith("unknown"))


# ------------------------------------------------ hand-computed cases (every gap, sign and verdict)


def _wilson_t(k: int, n: int, level: float) -> tuple[float, float]:
    """Textbook Wilson interval with a t critical value on n - 1 df (one scan per patient)."""
    from scipy import stats

    z = stats.t.ppf(1 - (1 - level) / 2, n - 1)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _newcombe(k1: int, n1: int, k2: int, n2: int, level: float) -> tuple[float, float, float]:
    (l1, u1), (l2, u2) = _wilson_t(k1, n1, level), _wilson_t(k2, n2, level)
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


# site: (positives, missed, negatives, false positives); one scan per patient; threshold 0.5
_SITES = {"A": (100, 20, 200, 20), "B": (100, 50, 100, 30), "C": (100, 10, 100, 15)}


def _three_sites() -> pd.DataFrame:
    """Miss rates A 0.2, B 0.5 (worst), C 0.1 (best); FPR 0.1, 0.3, 0.15; A is the largest group.

    Found positives score 0.8, missed 0.3; true negatives 0.2, false positives 0.7, so the AUROC is
    1 - missed * false positives / (positives * negatives): A 0.98, B 0.85, C 0.985."""
    rows = []
    for site, (pos, missed, neg, fp) in _SITES.items():
        rows += [(site, 1.0, 0.3 if i < missed else 0.8) for i in range(pos)]
        rows += [(site, 0.0, 0.7 if i < fp else 0.2) for i in range(neg)]
    frame = pd.DataFrame(rows, columns=["site", "finding", "prob_finding"])
    frame["patient_id"] = [f"p{i}" for i in range(len(frame))]
    return frame


def test_gaps_to_best_and_to_overall_have_the_hand_computed_values_and_signs():
    site = _run(_three_sites(), EvaluationConfig(subgroups=["site"]))["site"]
    a, b, c = (_rows(site)[f"site={s}"] for s in "ABC")
    overall_miss, overall_sens = 80 / 300, 220 / 300
    expected = {  # row: miss, gap to best, ratio to best, fpr gap, auroc gap, best, worst
        "A": (a, 0.2, 0.1, 2.0, 0.0, 0.005, False, False),
        "B": (b, 0.5, 0.4, 5.0, 0.2, 0.135, False, True),
        "C": (c, 0.1, 0.0, 1.0, 0.05, 0.0, True, False),
    }
    for row, miss, gap, ratio, fpr_gap, auroc_gap, best, worst in expected.values():
        assert row.value("miss_rate") == pytest.approx(miss, abs=1e-12)
        assert row.miss_rate_diff_vs_overall == pytest.approx(miss - overall_miss, abs=1e-12)
        assert row.sensitivity_diff_vs_overall == pytest.approx((1 - miss) - overall_sens, abs=1e-12)
        assert row.miss_rate_gap_to_best == pytest.approx(gap, abs=1e-12)
        assert row.miss_rate_ratio_to_best == pytest.approx(ratio, abs=1e-12)
        assert row.fpr_gap_to_best == pytest.approx(fpr_gap, abs=1e-12)
        assert row.auroc_gap_to_best == pytest.approx(auroc_gap, abs=1e-12)
        assert (row.is_best, row.is_worst) == (best, worst)
    assert a.miss_rate_diff_vs_overall < 0 < b.miss_rate_diff_vs_overall  # worse than overall is +
    assert (site.best_group, site.worst_group) == ("site=C", "site=B")
    assert site.worst_group_miss_rate == b.metrics["miss_rate"]
    assert site.miss_rate_gap == pytest.approx(0.4, abs=1e-12)
    assert site.equalized_odds_difference == pytest.approx(0.4, abs=1e-12)  # max(TPR 0.4, FPR 0.2)
    assert site.auroc_gap == pytest.approx(0.135, abs=1e-12)
    assert site.worst_sensitivity_diff_vs_overall == pytest.approx(0.5 - overall_sens, abs=1e-12)
    assert site.reference_group == "site=A" and site.reference_rule == "largest (most patients)"
    assert site.note is None
    for row, k in ((b, 50), (c, 10)):
        d = row.difference_vs_reference
        assert (d.value, d.ci_low, d.ci_high) == pytest.approx(_newcombe(k, 100, 20, 100, 0.95), abs=1e-9)
        assert d.method == "newcombe_difference_cluster"
    assert a.difference_vs_reference is None and a.is_reference and not b.is_reference


def test_ratio_to_a_best_group_that_misses_nothing_is_undefined():
    frame = _two_groups(40, 40)
    frame.loc[(frame["site"] == "B") & (frame["finding"] == 1), "prob_finding"] = 0.9  # B misses none
    frame.loc[frame.index[:4], "prob_finding"] = 0.2  # A misses 2 of its 20 positives (rows 1, 3)
    site = _run(frame, EvaluationConfig(subgroups=["site"], min_group_size=5))["site"]
    a, b = _rows(site)["site=A"], _rows(site)["site=B"]
    assert b.is_best and b.value("miss_rate") == 0.0 and b.miss_rate_ratio_to_best is None
    assert a.is_worst and a.value("miss_rate") == pytest.approx(0.1) and a.miss_rate_ratio_to_best is None


def test_gate_checks_of_three_groups_are_exact():
    """Both limits on the hand-computed sites: every field of every check, Bonferroni levels, the
    verdict words, and each group's verdict and reason."""
    cfg = EvaluationConfig(
        subgroups=["site"], fairness={"max_miss_rate_gap": 0.1, "max_worst_group_miss_rate": 0.35}
    )
    attributes = _run(_three_sites(), cfg)
    gate = _gate(attributes, cfg)
    diff_level, rate_level = 1 - 0.05 / 2, 1 - 0.05 / 3
    assert [(c.group, c.kind) for c in gate.checks] == [
        ("site=B", "miss_rate_difference"),
        ("site=C", "miss_rate_difference"),
        ("site=A", "miss_rate"),
        ("site=B", "miss_rate"),
        ("site=C", "miss_rate"),
    ]
    b_diff, c_diff, a_rate, b_rate, c_rate = gate.checks
    for check, k in ((b_diff, 50), (c_diff, 10)):
        d, lo, hi = _newcombe(k, 100, 20, 100, diff_level)
        assert (check.estimate.value, check.estimate.ci_low, check.estimate.ci_high) == pytest.approx(
            (d, lo, hi), abs=1e-9
        )
        assert (check.label, check.attribute, check.reference, check.limit, check.confidence) == (
            "finding",
            "site",
            "site=A",
            0.1,
            diff_level,
        )
        assert check.estimate.method == "newcombe_difference_cluster"
    assert b_diff.estimate.ci_low > 0.1 and b_diff.verdict == FAIL
    assert c_diff.estimate.ci_low < -0.1 < c_diff.estimate.ci_high < 0.1 and c_diff.verdict == CANNOT_CERTIFY
    lo, hi = b_diff.estimate.ci_low, b_diff.estimate.ci_high
    assert b_diff.reason == (
        f"miss rate 0.500 vs 0.200 in site=A (reference): difference +0.300, simultaneous 97.5% interval "
        f"({lo:+.3f}, {hi:+.3f}) lies wholly outside the allowed region (within ±0.1) "
        "(evaluation.fairness.max_miss_rate_gap)"
    )
    assert c_diff.reason.endswith(
        "reaches past 0.1: the data cannot tell whether the limit holds "
        "(evaluation.fairness.max_miss_rate_gap)"
    )
    for check, k, verdict in ((a_rate, 20, PASS), (b_rate, 50, FAIL), (c_rate, 10, PASS)):
        lo, hi = _wilson_t(k, 100, rate_level)
        assert (check.estimate.value, check.estimate.ci_low, check.estimate.ci_high) == pytest.approx(
            (k / 100, lo, hi), abs=1e-9
        )
        assert (check.label, check.attribute, check.reference, check.limit, check.confidence) == (
            "finding",
            "site",
            None,
            0.35,
            rate_level,
        )
        assert check.estimate.method == "wilson_cluster" and check.verdict == verdict
    lo, hi = a_rate.estimate.ci_low, a_rate.estimate.ci_high
    assert a_rate.reason == (
        f"miss rate 0.200, simultaneous 98.33% interval ({lo:.3f}, {hi:.3f}) lies at or below 0.35 "
        "(evaluation.fairness.max_worst_group_miss_rate)"
    )
    lo, hi = b_rate.estimate.ci_low, b_rate.estimate.ci_high
    assert b_rate.reason == (
        f"miss rate 0.500, simultaneous 98.33% interval ({lo:.3f}, {hi:.3f}) lies wholly outside the "
        "allowed region (at or below 0.35) (evaluation.fairness.max_worst_group_miss_rate)"
    )
    rows = _rows(attributes["site"])
    assert rows["site=A"].verdict == PASS
    assert rows["site=A"].verdict_reason == f"reference group (largest (most patients)); {a_rate.reason}"
    assert rows["site=B"].verdict == FAIL
    assert rows["site=B"].verdict_reason == f"{b_diff.reason}; {b_rate.reason}"
    assert rows["site=C"].verdict == CANNOT_CERTIFY
    assert rows["site=C"].verdict_reason == f"{c_diff.reason}; {c_rate.reason}"
    assert gate.failures == [
        f"finding / site / site=B: FAIL: {b_diff.reason}",
        f"finding / site / site=B: FAIL: {b_rate.reason}",
    ]
    assert gate.verdict == FAIL and gate.unchecked == [] and gate.confidence == 0.95


def test_worst_group_limit_alone_checks_a_single_sufficient_group():
    """One group with enough data still gets the worst-group check (no difference is needed for it);
    the gate's confidence is the configured one."""
    cfg = EvaluationConfig(
        subgroups=["site"],
        min_group_size=10,
        confidence=0.9,
        fairness={"max_worst_group_miss_rate": 0.6},
    )
    attributes = _run(_two_groups(40, 6), cfg)
    site = attributes["site"]
    assert site.note == "fewer than two groups with sufficient data: no difference can be measured"
    assert site.miss_rate_gap is None and site.auroc_gap is None and site.equalized_odds_difference is None
    gate = _gate(attributes, cfg)
    assert [(c.group, c.kind, c.confidence) for c in gate.checks] == [("site=A", "miss_rate", 0.9)]
    assert gate.confidence == 0.9 and gate.checks[0].verdict == PASS
    assert gate.unchecked == [
        "finding / site: site=B cannot be assessed: insufficient data: "
        "6 scans with known label < min_group_size 10"
    ]
    two = _run(_two_groups(40, 40), cfg)["site"]
    assert two.note is None and two.miss_rate_gap == 0.0


def test_no_sufficient_group_and_unavailable_attributes_are_named_in_the_gate():
    cfg = EvaluationConfig(
        subgroups=["site", "manufacturer"], min_group_size=50, fairness={"max_miss_rate_gap": 0.1}
    )
    attributes = _run(_two_groups(40, 40), cfg)
    site = attributes["site"]
    assert site.note == "no compared group has sufficient data"
    assert site.reference_group is None and site.reference_rule == "no group has sufficient data"
    gate = _gate(attributes, cfg)
    assert gate.verdict == CANNOT_CERTIFY and gate.checks == []
    assert "finding / site: no reference group: no group has sufficient data" in gate.unchecked
    manufacturer = [u for u in gate.unchecked if u.startswith("finding / manufacturer: ")]
    assert manufacturer == [f"finding / manufacturer: unavailable: {attributes['manufacturer'].reason}"]


def test_configured_reference_with_an_unknown_value_is_refused_with_the_reason():
    frame = _two_groups(40, 40)
    frame["sex"] = ["F"] * 40 + [""] * 40
    cfg = EvaluationConfig(
        subgroups=["sex"],
        min_group_size=5,
        fairness={"reference_groups": {"sex": "unknown"}, "max_miss_rate_gap": 0.1},
    )
    attributes = _run(frame, cfg)
    sex = attributes["sex"]
    assert sex.reference_rule == "configured reference group sex=unknown cannot be used: its value is unknown"
    _gate(attributes, cfg)
    assert _rows(sex)["sex=unknown"].verdict_reason == (
        "not compared: unknown value (evaluation.fairness.include_unknown)"
    )
    usable = EvaluationConfig(
        subgroups=["site"], min_group_size=5, fairness={"reference_groups": {"site": "B"}}
    )
    site = _run(_two_groups(40, 20), usable)["site"]
    assert site.reference_group == "site=B"
    assert site.reference_rule == "configured (evaluation.fairness.reference_groups)"


def test_reference_group_has_no_verdict_of_its_own_under_the_gap_limit_alone():
    cfg = EvaluationConfig(subgroups=["site"], fairness={"max_miss_rate_gap": 0.1})
    attributes = _run(_three_sites(), cfg)
    _gate(attributes, cfg)
    a = _rows(attributes["site"])["site=A"]
    assert a.verdict is None and a.verdict_reason == "reference group (largest (most patients))"
    assert _rows(attributes["site"])["site=B"].verdict == FAIL


# ------------------------------------------------------------- subgroups: counts, statuses, labels


def test_group_rows_count_known_scans_patients_and_each_metric_by_hand():
    """Two scans per patient; one scan with an unknown label and one without a probability are left
    out of every count."""
    frame = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"],
            "site": [" X ", "X", "X", "X", "X", "X", "X", "X", "X", "X"],
            "finding": [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, np.nan, 1.0],
            "prob_finding": [0.9, 0.2, 0.8, 0.7, 0.1, 0.6, 0.3, 0.2, 0.9, np.nan],
        }
    )
    cfg = EvaluationConfig(subgroups=["site"], min_group_size=8)
    (row,) = _run(frame, cfg)["site"].groups
    assert (row.group, row.status, row.n, row.patients, row.positives, row.negatives) == (
        "site=X",
        "ok",
        8,
        4,
        4,
        4,
    )
    expected = {"sensitivity": 0.75, "miss_rate": 0.25, "specificity": 0.75, "fpr": 0.25, "ppv": 0.75}
    assert {m: row.value(m) for m in expected} == pytest.approx(expected)
    assert row.value("auroc") == pytest.approx(
        roc_auc_score([1, 1, 1, 1, 0, 0, 0, 0], [0.9, 0.2, 0.8, 0.7, 0.1, 0.6, 0.3, 0.2])
    )
    assert row.metrics["auroc"].method == "newcombe_auroc_cluster"
    assert row.metrics["sensitivity"].method == "wilson_cluster"
    assert (row.miss.successes, row.miss.trials, row.miss.clusters) == (1.0, 4, 2)
    smaller = _run(frame, EvaluationConfig(subgroups=["site"], min_group_size=9))["site"].groups[0]
    assert smaller.status == "insufficient data: 8 scans with known label < min_group_size 9"


def test_group_without_positives_or_negatives_says_which():
    frame = _two_groups(20, 20)
    frame.loc[frame["site"] == "A", "finding"] = 1.0
    frame.loc[frame["site"] == "B", "finding"] = 0.0
    rows = _rows(_run(frame, EvaluationConfig(subgroups=["site"], min_group_size=5))["site"])
    assert rows["site=A"].status == "insufficient data: no negative case"
    assert rows["site=B"].status == "insufficient data: no positive case"
    assert rows["site=A"].metrics == {} and rows["site=A"].miss is None


def test_too_few_positive_patients_is_named_as_positive():
    frame = _two_groups(40, 12)
    frame.loc[(frame["site"] == "B") & (frame["finding"] == 1), "patient_id"] = "only-positive-patient"
    cfg = EvaluationConfig(subgroups=["site"], min_group_size=10, min_group_patients=2)
    rows = _rows(_run(frame, cfg)["site"])
    assert (
        rows["site=B"].status == "insufficient data: positive cases from 1 patient(s) < min_group_patients 2"
    )
    assert rows["site=B"].patients == 7


def test_attribute_values_are_stripped_and_blank_is_unknown_in_label_order():
    frame = _two_groups(20, 20)
    frame["sex"] = ["M ", " F", "", None] * 10
    attrs, specs = resolve_subgroups(frame, EvaluationConfig(subgroups=["sex", "sex"]))
    assert [s.name for s in specs] == ["sex"] and list(attrs["sex"][:4]) == ["M", "F", "unknown", "unknown"]
    sex = _run(frame, EvaluationConfig(subgroups=["sex"], min_group_size=5))["sex"]
    assert [g.group for g in sex.groups] == ["sex=F", "sex=M", "sex=unknown"]
    assert [g.unknown for g in sex.groups] == [False, False, True]


def test_unavailable_attributes_and_intersections_say_why():
    frame = _two_groups(20, 20)
    cfg = EvaluationConfig(
        subgroups=["manufacturer", "age_band"], intersections=[["site", "manufacturer", "age_band"]]
    )
    _, specs = resolve_subgroups(frame, cfg)
    reasons = {s.name: (s.available, s.reason) for s in specs}
    assert reasons["manufacturer"] == (False, "column 'manufacturer' is not in the predictions")
    assert reasons["age_band"] == (False, "no 'age' column to derive age bands from")
    assert reasons["site & manufacturer & age_band"] == (
        False,
        "needs unavailable attribute(s): manufacturer: column 'manufacturer' is not in the predictions; "
        "age_band: no 'age' column to derive age bands from",
    )
    frame["scanner"] = [f"SN{i:05d}" for i in range(len(frame))]  # one value per scan: an identifier
    _, specs = resolve_subgroups(frame, EvaluationConfig(subgroups=["site", "scanner"]))
    assert specs[0].available and specs[0].columns == ["site"]
    assert not specs[1].available and specs[1].reason.endswith(
        "; identifier columns are never used as subgroups"
    )


def test_age_band_labels_mark_an_open_last_band_from_120():
    assert age_band_labels([0, 60, 120]) == ["0-60", "60+"]
    assert age_band_labels([0, 60, 119]) == ["0-60", "60-119"]
    assert age_band_labels([0, 60.5, 119.5]) == ["0-60.5", "60.5-119.5"]
    bands = age_bands(pd.Series(["59.9", "60", "x", 119]), [0, 60, 120])
    assert list(bands) == ["0-60", "60+", "unknown", "60+"]


def test_intersection_groups_are_labelled_and_evaluated_per_combination():
    frame = _two_groups(40, 40)
    frame["sex"] = ["F", "M"] * 40
    cfg = EvaluationConfig(subgroups=[], intersections=[["site", "sex", "site"]], min_group_size=5)
    inter = _run(frame, cfg)["site & sex"]
    assert [g.group for g in inter.groups] == [
        "site=A & sex=F",
        "site=A & sex=M",
        "site=B & sex=F",
        "site=B & sex=M",
    ]
    assert [g.n for g in inter.groups] == [20, 20, 20, 20]


def test_fast_path_sensitivity_by_hand_and_none_for_small_or_one_class_groups():
    frame = _two_groups(20, 6)
    frame.loc[frame.index[:4], "prob_finding"] = 0.9  # A: rows 1 and 3 (positives) found anyway; 0, 2 FP
    frame.loc[frame.index[5], "prob_finding"] = 0.1  # A: one positive of 10 missed
    frame["sex"] = ["F"] * 26
    frame.loc[frame.index[-3:], "finding"] = np.nan  # unknown labels are left out
    values = subgroup_sensitivity(
        frame, "finding", 0.5, EvaluationConfig(subgroups=["site", "sex"], min_group_size=5)
    )
    assert values == {"site=A": pytest.approx(0.9), "site=B": None, "sex=F": pytest.approx(10 / 11)}


def test_fast_path_table_matches_scikit_learn_per_group():
    """Every column of the per-epoch table against scikit-learn on each group's rows, including a group
    without negatives (its specificity, FPR and AUROC undefined) and an intersection of two columns."""
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(21)
    n = 240
    attrs = pd.DataFrame({"site": rng.choice(["A", "B", "C"], n), "sex": rng.choice(["F", "M"], n)})
    y = (rng.random(n) < 0.4).astype(float)
    y[attrs["site"].to_numpy() == "C"] = 1.0
    prob = np.round(rng.random(n), 2)
    for columns in (["site"], ["site", "sex"]):
        table = group_point_estimates(y, prob, 0.5, attrs, columns)
        labels = attrs[columns].astype(str).agg(tuple, axis=1)
        assert sorted(table.index) == sorted({group_label(columns, k) for k in labels})
        for key in set(labels):
            members = (labels == key).to_numpy()
            yt, pred = y[members].astype(int), (prob[members] >= 0.5).astype(int)
            tn, fp, fn, tp = confusion_matrix(yt, pred, labels=[0, 1]).ravel()
            row = table.loc[group_label(columns, key)]
            pos, neg = tp + fn, tn + fp
            assert [row[c] for c in ("n", "positives", "negatives", "tp", "fp")] == [
                members.sum(),
                pos,
                neg,
                tp,
                fp,
            ]
            assert row["sensitivity"] == pytest.approx(tp / pos) and row["miss_rate"] == pytest.approx(
                fn / pos
            )
            assert row["ppv"] == pytest.approx(tp / (tp + fp))
            if neg:
                assert row["specificity"] == pytest.approx(tn / neg) and row["fpr"] == pytest.approx(fp / neg)
                assert row["auroc"] == pytest.approx(roc_auc_score(yt, prob[members]))
            else:
                assert math.isnan(row["specificity"]) and math.isnan(row["fpr"]) and math.isnan(row["auroc"])
    one_site = pd.DataFrame({"site": ["A", "A"]})
    none_flagged = group_point_estimates(np.array([0.0, 1.0]), np.array([0.1, 0.2]), 0.5, one_site, ["site"])
    assert math.isnan(none_flagged["ppv"].iloc[0]) and none_flagged["sensitivity"].iloc[0] == 0.0
    empty = group_point_estimates(np.array([]), np.array([]), 0.5, attrs[:0], ["site"])
    expected_columns = "n positives negatives tp fp sensitivity miss_rate specificity fpr ppv auroc"
    assert empty.empty and list(empty.columns) == expected_columns.split()


def test_fast_path_names_every_group_and_skips_only_unavailable_attributes():
    """A group whose labels are all unknown, one without positives and one with text where a number
    should be: each None, and the attributes after an unavailable one are still evaluated."""
    frame = _two_groups(20, 20)
    frame = frame.astype({"finding": object, "prob_finding": object})
    frame.loc[frame.index[:2], "finding"] = "n/a"  # not a number: left out like an unknown label
    frame.loc[frame.index[2], "prob_finding"] = "?"
    frame["ward"] = ["W1"] * 12 + ["W2"] * 8 + ["W3"] * 10 + ["W4"] * 10
    frame.loc[frame["ward"] == "W3", "finding"] = np.nan  # no known label at all
    frame.loc[frame["ward"] == "W4", "finding"] = 0.0  # no positive case
    cfg = EvaluationConfig(subgroups=["manufacturer", "ward", "site"], min_group_size=5)
    values = subgroup_sensitivity(frame, "finding", 0.5, cfg)
    assert values == {
        "ward=W1": 1.0,
        "ward=W2": 1.0,
        "ward=W3": None,
        "ward=W4": None,
        "site=A": 1.0,
        "site=B": None,
    }
    codes, _ = patient_codes(frame["patient_id"])
    site = evaluate_subgroups(frame, "finding", 0.5, cfg, codes=codes)[2]
    assert _rows(site)["site=A"].n == 17  # 20 scans less two unknown labels and one unknown probability


def test_a_given_age_band_column_is_used_as_it_is():
    frame = _two_groups(20, 20)
    frame["age"] = 30.0  # would give 0-40 for everyone
    frame["age_band"] = ["60-80"] * 20 + ["80+"] * 20
    site = _run(frame, EvaluationConfig(subgroups=["age_band"], min_group_size=5))["age_band"]
    assert [(g.attribute, g.group) for g in site.groups] == [
        ("age_band", "age_band=60-80"),
        ("age_band", "age_band=80+"),
    ]
    _, specs = resolve_subgroups(
        frame, EvaluationConfig(subgroups=["age_band", "ward"], intersections=[["age_band", "ward"]])
    )
    assert (specs[0].available, specs[0].reason, specs[0].columns) == (True, "", ["age_band"])
    assert (specs[2].available, specs[2].columns) == (False, ["age_band", "ward"])


def test_fast_path_table_at_one_scan_one_positive_one_negative_and_none():
    """Groups at the edges: P one found positive scan; Q one missed positive and one false positive;
    N two negatives (one flagged), no positive. Undefined rates are NaN, never a warning."""
    import warnings

    attrs = pd.DataFrame({"g": ["P", "Q", "Q", "N", "N"]})
    y = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    prob = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = group_point_estimates(y, prob, 0.5, attrs, ["g"])
    assert list(table.index) == ["g=N", "g=P", "g=Q"]
    p, q, n = table.loc["g=P"], table.loc["g=Q"], table.loc["g=N"]
    assert [p[c] for c in ("n", "sensitivity", "miss_rate", "ppv")] == [1, 1.0, 0.0, 1.0]
    assert math.isnan(p["specificity"]) and math.isnan(p["fpr"]) and math.isnan(p["auroc"])
    assert [q[c] for c in ("sensitivity", "miss_rate", "specificity", "fpr", "ppv", "auroc")] == [
        0,
        1,
        0,
        1,
        0,
        0,
    ]
    assert math.isnan(n["sensitivity"]) and math.isnan(n["miss_rate"])
    assert (n["specificity"], n["fpr"], n["ppv"]) == (0.5, 0.5, 0.0)
