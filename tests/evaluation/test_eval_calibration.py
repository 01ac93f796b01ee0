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


# --- hand-computed values and every edge ---------------------------------------------------------------


def test_temperature_divides_the_logit_and_extremes_are_clipped_not_infinite():
    from xraytriage.evaluation.calibration import logit

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert apply_temperature(np.array([0.5]), 3.0)[0] == pytest.approx(0.5)
    np.testing.assert_allclose(apply_temperature(sig(np.array([2.0, -4.0])), 2.0), sig(np.array([1.0, -2.0])))
    np.testing.assert_allclose(apply_temperature(sig(np.array([1.0])), 0.5), sig(np.array([2.0])))
    edge = np.log(1e-7) - np.log1p(-1e-7)
    np.testing.assert_allclose(logit(np.array([0.0, 1.0, 0.25])), [edge, -edge, np.log(1 / 3)], rtol=1e-9)


def test_the_reliability_curve_by_hand():
    y = np.array([0, 1, 1, 0, 1, -1, np.nan, 1.0])
    p = np.array([0.0, 0.1, 0.19, 0.55, 1.0, 0.5, 0.5, np.inf])  # 0.1 opens bin 1; 1.0 is in the last bin
    curve = reliability_curve(y, p, n_bins=5)
    np.testing.assert_allclose(curve["bin_low"], [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(curve["bin_high"], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve["count"].tolist() == [3, 0, 1, 0, 1]
    np.testing.assert_allclose(curve["mean_prob"], [0.29 / 3, np.nan, 0.55, np.nan, 1.0])
    np.testing.assert_allclose(curve["observed_rate"], [2 / 3, np.nan, 0.0, np.nan, 1.0])
    ten = reliability_curve(y, p)  # default: 10 bins
    assert len(ten) == 10 and ten["count"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 1]
    # ECE: shares 3/5, 1/5, 1/5 of |2/3 - 0.29/3|, |0 - 0.55|, |1 - 1|
    expected = (3 * abs(2 / 3 - 0.29 / 3) + 0.55) / 5
    assert expected_calibration_error(y, p, 5) == pytest.approx(expected, rel=1e-12)
    assert expected_calibration_error(np.array([-1.0, np.nan]), np.array([0.2, 0.3])) is None


def test_the_fitted_temperature_minimises_the_log_loss():
    z = np.array([-3.0, -1.0, -0.5, 0.2, 0.5, 1.5, 2.0, 3.0])
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1.0])
    grid = np.linspace(0.3, 5.0, 47001)
    p = 1 / (1 + np.exp(-z[None, :] / grid[:, None]))  # the log loss on a fine grid of temperatures
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    best = grid[int(np.argmin(losses))]
    assert fit_temperature(z, y, kind="logits") == pytest.approx(best, abs=2e-4)
    assert fit_temperature(z, y) == pytest.approx(best, abs=2e-4)  # values outside [0, 1]: logits
    probs = 1 / (1 + np.exp(-z))
    assert fit_temperature(probs, y) == pytest.approx(best, abs=2e-4)  # all in [0, 1]: probabilities
    assert fit_temperature(probs, y, kind="logits") != pytest.approx(best, abs=0.1)


def test_a_separable_set_runs_to_the_bounds():
    z, y = np.array([-1.0, 1.0]), np.array([0.0, 1.0])
    assert fit_temperature(z, y, kind="logits") == pytest.approx(0.05, rel=1e-4)
    assert fit_temperature(-z, y, kind="logits") == pytest.approx(20.0, rel=1e-4)
    assert fit_temperature(z, y, kind="logits", bounds=(0.5, 2.0)) == pytest.approx(0.5, rel=1e-4)
    # 0 and 1 are probabilities (auto): logit(0) and logit(1) are finite, the fit is at the lower bound
    assert fit_temperature(np.array([0.0, 1.0]), y) == pytest.approx(0.05, rel=1e-4)


def test_bad_shapes_and_single_class_labels(caplog):
    with pytest.raises(ValueError, match=r"^3 scores but 2 labels$"):
        fit_temperature(np.array([0.1, 0.2, 0.3]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^logits of shape \(3,\) but truth of shape \(3,\)$"):
        fit_temperatures(np.zeros(3), np.zeros(3))
    with caplog.at_level("WARNING", logger="xraytriage.evaluation.calibration"):
        assert fit_temperature(np.array([0.3, 0.7]), np.array([0.0, 0.0])) == 1.0
        assert fit_temperature(np.array([]), np.array([])) == 1.0
    assert (
        caplog.messages
        == ["temperature scaling needs both classes in the validation labels; keeping T=1"] * 2
    )


def test_integer_inputs_and_counts():
    from xraytriage.evaluation.calibration import logit

    edge = np.log(1e-7) - np.log1p(-1e-7)
    np.testing.assert_allclose(logit(np.array([0, 1])), [edge, -edge], rtol=1e-9)  # 0/1 as integers
    curve = reliability_curve(np.array([0, 1, 1]), np.array([-0.5, 0.3, 1.5]), n_bins=2)
    assert curve["count"].dtype.kind == "i" and curve["count"].tolist() == [2, 1]  # out of range: clipped
    y, p = np.array([0, 1, 1, 0, 1.0]), np.array([0.0, 0.1, 0.19, 0.55, 1.0])
    assert expected_calibration_error(y, p, 1) == pytest.approx(abs(0.6 - 1.84 / 5), rel=1e-12)


def test_auto_reads_zero_and_one_as_probabilities_and_anything_beyond_as_logits():
    z = np.array([-3.0, -1.0, -0.5, 0.2, 0.5, 1.5, 2.0, 3.0])
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1.0])
    probs = 1 / (1 + np.exp(-z))
    for edge in (0, -1):
        p = probs.copy()
        p[edge] = float(edge == -1)  # an exact 0 first, an exact 1 last
        assert (
            fit_temperature(p, y)
            == fit_temperature(p, y, kind="probs")
            != fit_temperature(p, y, kind="logits")
        )
    inside = np.array([0.1, 0.3, 0.4, 0.9, 1.2, 1.5, 0.2, 1.9])  # all in [0, 2], some above 1: logits
    auto = fit_temperature(inside, y)
    assert auto == fit_temperature(inside, y, kind="logits") != fit_temperature(inside, y, kind="probs")
    # fit_temperatures always reads logits, even ones that all lie in [0, 1]
    low = np.array([0.1, 0.3, 0.4, 0.9, 0.2, 0.5, 0.0, 1.0])
    assert fit_temperatures(low[:, None], y[:, None]) == [fit_temperature(low, y, kind="logits")]
    assert fit_temperature(low, y, kind="logits") != fit_temperature(low, y)


def test_the_fitted_temperature_is_where_the_log_loss_gradient_vanishes():
    from scipy.optimize import brentq

    z = np.array([-3.0, -1.0, -0.5, 0.2, 0.5, 1.5, 2.0, 3.0])
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1.0])
    # d(mean log loss)/d(1/T) = mean((sigmoid(z / T) - y) * z) = 0 at the optimum
    beta = brentq(lambda b: np.mean((1 / (1 + np.exp(-z * b)) - y) * z), 0.01, 10.0, xtol=1e-15)
    assert fit_temperature(z, y, kind="logits") == pytest.approx(1 / beta, rel=3e-6)
