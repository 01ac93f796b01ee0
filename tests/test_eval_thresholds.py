"""Operating-point policies: exact definitions, degenerate inputs never crash."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xraytriage.config import OperatingPointConfig
from xraytriage.evaluation.metrics import binary_metrics
from xraytriage.evaluation.thresholds import choose_threshold

probs = st.integers(0, 20).map(lambda k: k / 20)
rows = st.lists(st.tuples(st.sampled_from([0.0, 1.0, -1.0, np.nan]), probs), min_size=1, max_size=50)


@settings(max_examples=150, deadline=None)
@given(rows, st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]))
def test_target_sensitivity_is_the_highest_threshold_reaching_the_target(data, target):
    y = np.array([r[0] for r in data])
    p = np.array([r[1] for r in data])
    cfg = OperatingPointConfig(policy="target_sensitivity", target=target, threshold=0.37)
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
    cfg = OperatingPointConfig(policy="target_specificity", target=target, threshold=0.37)
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
        t = choose_threshold(np.array([0.0, 0.0]), np.array([0.1, 0.2]), OperatingPointConfig(threshold=0.6))
    assert t == 0.6 and "no positive" in caplog.text


def test_target_sensitivity_example():
    # 10 positives; 0.9 needs 9 of them at or above the threshold -> the 9th highest positive score
    pos = np.linspace(0.1, 1.0, 10)
    neg = np.array([0.05, 0.15, 0.5])
    y = np.r_[np.ones(10), np.zeros(3)]
    t = choose_threshold(y, np.r_[pos, neg], OperatingPointConfig(target=0.9))
    assert t == pytest.approx(0.2)
