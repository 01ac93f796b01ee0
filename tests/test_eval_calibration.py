"""Temperature scaling recovers a known temperature; ECE and the reliability curve agree."""

from __future__ import annotations

import numpy as np
import pytest

from xraytriage.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = (rng.random(true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(float)
    overconfident = 1 / (1 + np.exp(-true_logit * 2.5))  # what an overconfident model outputs
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.06)
    assert fit_temperature(true_logit * 2.5, y, kind="logits") == pytest.approx(t, rel=1e-3)
    fixed = apply_temperature(overconfident, t)
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, overconfident) / 3


def test_fit_temperature_single_class_keeps_one():
    assert fit_temperature(np.array([0.2, 0.9]), np.array([1.0, 1.0])) == 1.0
    assert fit_temperature(np.array([0.2, 0.9]), np.array([np.nan, -1.0])) == 1.0


def test_reliability_curve_counts_and_ece():
    y = np.array([0, 0, 1, 1, 1.0])
    p = np.array([0.05, 0.15, 0.95, 0.92, 0.5])
    curve = reliability_curve(y, p, n_bins=10)
    assert curve["count"].sum() == 5 and curve.loc[9, "count"] == 2
    expected = (abs(0 - 0.05) + abs(0 - 0.15) + abs(1 - 0.5) + 2 * abs(1 - 0.935)) / 5
    assert expected_calibration_error(y, p, 10) == pytest.approx(expected)
