"""Temperature scaling recovers a known temperature; ECE and the reliability curve agree."""

from __future__ import annotations

import numpy as np
import pytest

from xraytriage.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
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


def test_one_temperature_per_label_fitted_on_logits():
    """Was: one T fitted on the first label and applied to every label (label 2's ECE 0.057 -> 0.170)."""
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, (20000, 2))
    y = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(float)
    y[rng.random(y.shape) < 0.05] = np.nan  # unknown labels are ignored
    logits = true_logits * np.array([2.5, 0.7])  # over-confident label 1, under-confident label 2
    temps = fit_temperatures(logits, y)
    assert temps[0] == pytest.approx(2.5, rel=0.05) and temps[1] == pytest.approx(0.7, rel=0.05)
    for j in range(2):
        known = ~np.isnan(y[:, j])
        calibrated = 1 / (1 + np.exp(-logits[known, j] / temps[j]))
        assert expected_calibration_error(y[known, j], calibrated) < 0.02


def test_temperature_from_logits_is_not_clipped_by_saturated_probabilities():
    """Was: T fitted on float32 probabilities, where saturated values are clipped (true 6 -> 5.69)."""
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 3, 50000)
    y = (rng.random(true_logits.size) < 1 / (1 + np.exp(-true_logits))).astype(float)
    logits = (6.0 * true_logits).astype(np.float32)
    saturated = 1 / (1 + np.exp(-logits))  # what a float32 prediction table holds
    assert (saturated == 1.0).mean() > 0.05
    assert fit_temperature(logits, y, kind="logits") == pytest.approx(6.0, rel=0.02)
    assert abs(fit_temperature(saturated, y, kind="probs") - 6.0) > 0.15  # why training uses the logits
    assert fit_temperatures(logits[:, None], y[:, None]) == [fit_temperature(logits, y, kind="logits")]
    with pytest.raises(ValueError, match="shape"):
        fit_temperatures(logits[:, None], y[:10, None])
