"""Operating-point policies: exact definitions (both rules), the guarantee's bound against scipy's
Clopper-Pearson, recorded fallbacks, degenerate inputs never crash."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from xraytriage.config import OperatingPointConfig
from xraytriage.evaluation.intervals import lower_bounds_in_order
from xraytriage.evaluation.metrics import binary_metrics
from xraytriage.evaluation.thresholds import OperatingPoint, choose_operating_point, choose_threshold

probs = st.integers(0, 20).map(lambda k: k / 20)
rows = st.lists(st.tuples(st.sampled_from([0.0, 1.0, -1.0, np.nan]), probs), min_size=1, max_size=50)


@settings(max_examples=150, deadline=None)
@given(rows, st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]))
def test_target_sensitivity_is_the_highest_threshold_reaching_the_target(data, target):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] for r in data])
    cfg = OperatingPointConfig(
        policy="target_sensitivity", target=target, threshold=0.37, rule="point_estimate"
    )
    t = choose_threshold(y, p, cfg)
    if not (y == 1).any():
        assert t == 0.37  # documented fallback
        return
    assert binary_metrics(y, p, t)["sensitivity"] >= target - 1e-12
    higher = np.unique(p[np.isin(y, [0, 1]) & (p > t)])
    for candidate in higher:  # every higher observed score misses the target
        assert binary_metrics(y, p, candidate)["sensitivity"] < target


@settings(max_examples=150, deadline=None)
@given(rows, st.sampled_from([0.5, 0.8, 0.9, 1.0]))
def test_target_specificity_is_the_lowest_threshold_reaching_the_target(data, target):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] for r in data])
    cfg = OperatingPointConfig(
        policy="target_specificity", target=target, threshold=0.37, rule="point_estimate"
    )
    t = choose_threshold(y, p, cfg)
    if not (y == 0).any():
        assert t == 0.37
        return
    assert binary_metrics(y, p, t)["specificity"] >= target - 1e-12
    known = np.isin(y, [0, 1])
    for candidate in np.unique(p[known & (p < t)]):  # every lower observed score misses the target
        assert binary_metrics(y, p, candidate)["specificity"] < target


@settings(max_examples=100, deadline=None)
@given(rows)
def test_youden_maximises_j_over_observed_scores(data):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] for r in data])
    cfg = OperatingPointConfig(policy="youden", threshold=0.42)
    t = choose_threshold(y, p, cfg)
    if not ((y == 1).any() and (y == 0).any()):
        assert t == 0.42
        return

    def j(thr: float) -> float:
        m = binary_metrics(y, p, thr)
        return m["sensitivity"] + m["specificity"] - 1

    best = max(j(c) for c in np.unique(p[np.isin(y, [0, 1])]))
    assert j(t) == pytest.approx(best)


def test_fixed_policy_and_fallback_warning(caplog):
    assert (
        choose_threshold(
            np.array([1.0]), np.array([0.9]), OperatingPointConfig(policy="fixed", threshold=0.2)
        )
        == 0.2
    )
    with caplog.at_level(logging.WARNING):
        op = choose_operating_point(
            np.array([0.0, 0.0]), np.array([0.1, 0.2]), OperatingPointConfig(threshold=0.6), None
        )
    assert op.threshold == 0.6 and "no positive" in caplog.text
    assert op.fallback and "no positive validation case" in op.fallback_reason and "0.6" in op.fallback_reason


def test_target_sensitivity_example():
    # 10 positives; 0.9 needs 9 of them at or above the threshold -> the 9th highest positive score
    pos = np.linspace(0.1, 1.0, 10)
    neg = np.array([0.05, 0.15, 0.5])
    y = np.r_[np.ones(10), np.zeros(3)]
    t = choose_threshold(y, np.r_[pos, neg], OperatingPointConfig(target=0.9, rule="point_estimate"))
    assert t == pytest.approx(0.2)


def _cp_lower(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound (scipy's exact two-sided interval at 2c - 1)."""
    return 0.0 if k == 0 else stats.binomtest(k, n).proportion_ci(2 * confidence - 1, method="exact").low


@settings(max_examples=150, deadline=None)
@given(rows, st.sampled_from([0.5, 0.7, 0.8, 0.9]), st.sampled_from([0.8, 0.95]))
def test_lower_bound_rule_is_the_highest_threshold_whose_bound_reaches_the_target(data, target, confidence):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] for r in data])
    cfg = OperatingPointConfig(target=target, confidence=confidence, threshold=0.37)
    op = choose_operating_point(y, p, cfg, None)  # every scan its own patient: exact Clopper-Pearson
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        assert op.threshold == 0.37 and op.fallback
        return
    n = pos.size
    caught = int((pos >= op.threshold).sum())
    assert op.validation_value == caught / n and op.validation_cases == n
    assert op.lower_bound == pytest.approx(_cp_lower(caught, n, confidence), abs=1e-9)
    reaching = [t for t in np.unique(pos) if _cp_lower(int((pos >= t).sum()), n, confidence) >= target]
    if reaching:
        assert not op.fallback and op.threshold == max(reaching) and op.guaranteed
    else:  # too few positives for the guarantee: every positive flagged, and said so
        assert op.fallback and op.threshold == pos.min() and "cannot reach" in op.fallback_reason
        assert op.guaranteed is False


@settings(max_examples=100, deadline=None)
@given(rows, st.sampled_from([0.5, 0.8, 0.9]))
def test_lower_bound_rule_for_specificity(data, target):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] for r in data])
    op = choose_operating_point(y, p, OperatingPointConfig(policy="target_specificity", target=target), None)
    neg = p[y == 0]
    if neg.size == 0:
        assert op.fallback
        return
    below = int((neg < op.threshold).sum())
    assert op.lower_bound == pytest.approx(_cp_lower(below, neg.size, 0.95), abs=1e-9)
    if not op.fallback:
        assert op.lower_bound >= target
        known = np.isin(y, [0, 1])
        for candidate in np.unique(p[known & (p < op.threshold)]):  # every lower observed score fails
            assert _cp_lower(int((neg < candidate).sum()), neg.size, 0.95) < target


def test_bound_counts_patients_not_scans():
    """The same 200 scores as 100 patients with two scans each: the bound is lower, so the
    guaranteed threshold is lower (flags more) than if the scans were 200 patients."""
    rng = np.random.default_rng(0)
    scores = np.repeat(rng.random(100), 2) + rng.normal(0, 0.01, 200)  # the two scans of a patient agree
    y = np.ones(200)
    cfg = OperatingPointConfig(target=0.8)
    as_scans = choose_operating_point(y, scores, cfg, None)
    as_patients = choose_operating_point(y, scores, cfg, np.repeat(np.arange(100), 2).astype(str))
    assert as_patients.validation_patients == 100 and as_scans.validation_patients == 200
    assert as_patients.threshold < as_scans.threshold
    assert as_patients.lower_bound >= 0.8 and as_scans.lower_bound >= 0.8


def test_missing_patient_ids_are_refused():
    with pytest.raises(ValueError, match="patient_id is missing for 1 of 3"):
        choose_operating_point(np.ones(3), np.ones(3) / 2, OperatingPointConfig(), np.array(["a", None, "b"]))


def test_operating_point_round_trips_through_json():
    op = OperatingPoint(
        0.42, "target_sensitivity", "lower_bound", 0.9, 0.95, 0.95, 0.91, 60, 40, None, "validation"
    )
    data = op.to_json()
    assert data["guaranteed"] is True and data["fallback"] is False and data["metric"] == "sensitivity"
    assert OperatingPoint.from_json(data) == op
    assert OperatingPoint.from_json(data).with_source("bundle").source == "bundle"
    assert "lower bound 0.910 (reaches the target 0.9)" in op.describe()
    failed = OperatingPoint(0.5, "target_sensitivity", fallback_reason="no positive validation case")
    assert "FALLBACK: no positive validation case" in failed.describe()


# ----------------------------------------------- the record and its one-line description, by hand


def _hand_case():
    """5 positives (0.55 ... 0.95) and 10 negatives (0.0 ... 0.9) of 5 patients, two scans each."""
    y = np.r_[np.ones(5), np.zeros(10)]
    p = np.r_[np.linspace(0.55, 0.95, 5), np.arange(10) / 10]
    ids = np.r_[[f"p{i}" for i in range(5)], [f"n{i // 2}" for i in range(10)]]
    return y, p, ids


def test_target_specificity_record_and_description():
    """80 % of the negatives (0.0 ... 0.7) must fall below the threshold: the lowest score above 0.7
    is a positive's 0.75."""
    y, p, ids = _hand_case()
    cfg = OperatingPointConfig(policy="target_specificity", rule="point_estimate", target=0.8)
    op = choose_operating_point(y, p, cfg, ids)
    assert (op.threshold, op.validation_value, op.validation_cases, op.validation_patients) == (
        0.75,
        0.8,
        10,
        5,
    )
    assert (op.metric, op.target, op.confidence, op.rule, op.source) == (
        "specificity",
        0.8,
        0.95,
        "point_estimate",
        "validation",
    )
    assert op.lower_bound < 0.8 and op.guaranteed is False
    assert op.describe() == (
        "threshold 0.75 (validation: target_specificity, rule point_estimate); validation specificity 0.800 "
        f"on 10 scans from 5 patients, one-sided 95% lower bound {op.lower_bound:.3f} (below the target 0.8)"
    )
    reached = OperatingPoint.from_json({**op.to_json(), "lower_bound": 0.8, "confidence": 0.9})
    assert reached.describe().endswith("one-sided 90% lower bound 0.800 (reaches the target 0.8)")


def test_given_and_youden_descriptions_and_the_no_negative_fallback():
    assert OperatingPoint.given(1, "command line") == OperatingPoint(
        threshold=1.0, policy="given", source="command line"
    )
    assert OperatingPoint.given(0.25, "bundle").describe() == "threshold 0.25 (bundle)"
    y, p, ids = _hand_case()
    youden = choose_operating_point(y, p, OperatingPointConfig(policy="youden"), ids)
    assert youden.describe() == "threshold 0.55 (validation: youden)"
    cfg = OperatingPointConfig(policy="target_specificity", threshold=0.3)
    op = choose_operating_point(np.ones(4), np.linspace(0.1, 0.9, 4), cfg, None)
    reason = (
        "no negative validation case with a known label; fixed threshold 0.3 "
        "(evaluation.operating_point.threshold) used instead"
    )
    assert (op.threshold, op.fallback_reason, op.validation_cases) == (0.3, reason, None)
    assert (
        op.describe()
        == f"threshold 0.3 (validation: target_specificity, rule lower_bound); FALLBACK: {reason}"
    )


def test_unreachable_specificity_bound_says_why_and_takes_every_negative(caplog):
    y, p, ids = _hand_case()
    ids[:5] = "one-positive-patient"  # the patients counted are the negatives' (5), not the positives'
    cfg = OperatingPointConfig(policy="target_specificity", target=0.99)
    with caplog.at_level(logging.WARNING, logger="xraytriage.evaluation.thresholds"):
        op = choose_operating_point(y, p, cfg, ids)
    assert caplog.messages == [f"operating point: {op.fallback_reason}"] and op.validation_patients == 5
    assert (op.threshold, op.validation_value) == (0.95, 1.0)  # just above the highest negative (0.9)
    assert op.fallback and op.fallback_reason == (
        "the one-sided 95% lower bound on validation specificity cannot reach 0.99 with 10 negative scans "
        f"from 5 patients (best {op.lower_bound:.3f}, with every validation negative below the threshold); "
        "threshold just above the highest negative score used instead"
    )
    met = choose_operating_point(
        y, p, OperatingPointConfig(policy="target_specificity", rule="point_estimate"), ids
    )
    assert met.fallback_reason is None and not met.fallback


def test_a_threshold_never_splits_tied_positive_scores():
    """Half the positives must be flagged; the two tied at 0.5 go together, so 3 of 4 are."""
    cfg = OperatingPointConfig(policy="target_sensitivity", rule="point_estimate", target=0.5)
    op = choose_operating_point(np.ones(4), np.array([0.5, 0.9, 0.3, 0.5]), cfg, None)
    assert (op.threshold, op.validation_value) == (0.5, 0.75)


def test_a_lower_bound_exactly_at_the_target_reaches_it():
    codes = np.arange(12)
    prob = np.linspace(0.95, 0.4, 12)
    bounds = lower_bounds_in_order(codes, 0.95)
    cfg = OperatingPointConfig(policy="target_sensitivity", target=float(bounds[8]))
    op = choose_operating_point(np.ones(12), prob, cfg, None)
    assert op.threshold == prob[8] and op.lower_bound == bounds[8] and op.guaranteed
    assert op.fallback_reason is None and op.to_json()["fallback"] is False  # a target reached is no fallback
    above = OperatingPointConfig(policy="target_sensitivity", target=float(np.nextafter(bounds[8], 1.0)))
    assert choose_operating_point(np.ones(12), prob, above, None).threshold == prob[9]


def test_unreachable_sensitivity_bound_says_why_and_warns(caplog):
    cfg = OperatingPointConfig(policy="target_sensitivity", target=0.99)
    with caplog.at_level(logging.WARNING, logger="xraytriage.evaluation.thresholds"):
        op = choose_operating_point(
            np.ones(6), np.linspace(0.9, 0.4, 6), cfg, [f"p{i // 2}" for i in range(6)]
        )
    reason = (
        "the one-sided 95% lower bound on validation sensitivity cannot reach 0.99 with 6 positive scans "
        f"from 3 patients (best {op.lower_bound:.3f}, with every validation positive flagged); "
        "threshold at the lowest positive score used instead"
    )
    assert op.fallback_reason == reason and op.threshold == pytest.approx(0.4)
    assert caplog.messages == [f"operating point: {reason}"]


def test_policies_without_their_cases_fall_back_with_the_reason_and_a_warning(caplog):
    fixed = "; fixed threshold 0.5 (evaluation.operating_point.threshold) used instead"
    with caplog.at_level(logging.WARNING, logger="xraytriage.evaluation.thresholds"):
        youden = choose_operating_point(
            np.ones(3), np.array([0.2, 0.6, 0.9]), OperatingPointConfig(policy="youden"), None
        )
        sens = choose_operating_point(np.zeros(3), np.array([0.2, 0.6, 0.9]), OperatingPointConfig(), None)
    assert youden.fallback_reason == f"3 positive and 0 negative validation cases with known labels{fixed}"
    assert (youden.policy, youden.rule, youden.target, youden.threshold) == ("youden", None, None, 0.5)
    assert youden.confidence is None  # no bound without a target
    assert sens.fallback_reason == f"no positive validation case with a known label{fixed}"
    assert (sens.policy, sens.rule, sens.confidence) == ("target_sensitivity", "lower_bound", 0.95)
    assert caplog.messages[1] == (
        "operating point: no positive validation case with a known label; policy 'target_sensitivity' "
        "cannot be applied, using the fixed threshold 0.5 (evaluation.operating_point.threshold)"
    )


def test_fixed_policy_and_refused_inputs_say_what_is_wrong():
    fixed = choose_operating_point(
        np.ones(3), np.ones(3), OperatingPointConfig(policy="fixed", threshold=0.3), None
    )
    assert fixed == OperatingPoint(threshold=0.3, policy="fixed")
    with pytest.raises(ValueError, match=r"^y_true has 3 values but prob has 2$"):
        choose_operating_point(np.ones(3), np.ones(2), OperatingPointConfig(), None)
    with pytest.raises(ValueError, match=r"^y_true has 3 values but patient_ids has 2$"):
        choose_operating_point(np.ones(3), np.ones(3), OperatingPointConfig(), ["a", "b"])
    odd = OperatingPointConfig.model_construct(policy="best_guess")
    with pytest.raises(ValueError, match=r"^unknown operating-point policy 'best_guess'$"):
        choose_operating_point(np.ones(3), np.ones(3), odd, None)
