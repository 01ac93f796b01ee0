"""Interval formulas against independent oracles: scipy's Wilson and Clopper-Pearson intervals,
Newcombe's published example, a cluster-robust variance written with pandas, scikit-learn's AUROC and
the patient bootstrap's variance; exact values at the boundaries (all detected, none missed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from sklearn.metrics import roc_auc_score

from xraytriage.evaluation.bootstrap import BootstrapTask, bootstrap_metrics
from xraytriage.evaluation.intervals import (
    ClusteredProportion,
    auroc_interval,
    clustered_auroc,
    clustered_proportion,
    critical_value,
    difference_interval,
    lower_bound,
    lower_bounds_in_order,
    wilson_interval,
)
from xraytriage.evaluation.metrics import prepare

MANY = 10**9  # "infinitely many patients": the t critical value is the normal one


@pytest.mark.parametrize("x,n", [(81, 263), (15, 148), (0, 20), (1, 29), (29, 29), (5, 5), (0, 1), (1, 1)])
def test_wilson_equals_scipy_without_clustering(x, n):
    expected = stats.binomtest(x, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(ClusteredProportion(x, n, MANY, 1.0), 0.95)
    assert low == pytest.approx(expected.low, abs=1e-7)
    assert high == pytest.approx(expected.high, abs=1e-7)
    assert high > low  # never zero width


def _score_root_interval(x: int, n: float, crit: float) -> tuple[float, float]:
    """Wilson by root-finding of |p_hat - p| = crit * sqrt(p (1 - p) / n) (not the closed form)."""
    p_hat = x / n

    def f(p: float) -> float:
        return (p_hat - p) ** 2 - crit**2 * p * (1 - p) / n

    low = 0.0 if x == 0 else optimize.brentq(f, 1e-15, p_hat - 1e-15 if x == n else p_hat)
    high = 1.0 if x == n else optimize.brentq(f, p_hat + 1e-15 if x == 0 else p_hat, 1 - 1e-15)
    return low, high


@pytest.mark.parametrize("x,n", [(0, 12), (3, 12), (11, 40), (40, 40)])
def test_one_scan_per_patient_is_wilson_with_t_on_patients_minus_one(x, n):
    prop = clustered_proportion(np.arange(n) < x, np.arange(n))
    assert prop.design_effect == 1.0 and prop.clusters == n and prop.trials == n
    crit = stats.t.ppf(0.975, n - 1)
    assert wilson_interval(prop, 0.95) == pytest.approx(_score_root_interval(x, n, crit), abs=1e-9)


def test_design_effect_is_the_cluster_robust_variance_ratio():
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 5, 80)
    codes = np.repeat(np.arange(80), sizes)
    q = rng.beta(2, 1, 80)[codes]  # strongly clustered outcomes
    success = rng.random(codes.size) < q
    prop = clustered_proportion(success, codes + 7)  # codes need not start at 0
    frame = pd.DataFrame({"patient": codes, "x": success.astype(float)})
    n, p = len(frame), frame["x"].mean()
    per_patient = frame.groupby("patient")["x"].agg(["sum", "size"])
    m = len(per_patient)
    variance = m / (m - 1) * ((per_patient["sum"] - p * per_patient["size"]) ** 2).sum() / n**2
    worst = (per_patient["size"] ** 2).sum() / n
    expected = min(max(variance / (p * (1 - p) / n), 1.0), worst)
    assert prop.value == pytest.approx(p)
    assert prop.design_effect == pytest.approx(expected, rel=1e-12)
    assert 1.0 < prop.design_effect < worst  # the clustering is real and below its worst case
    assert prop.effective_n == pytest.approx(n / expected)
    low, high = wilson_interval(prop, 0.95)
    expected_low, expected_high = _score_root_interval(
        prop.value * prop.effective_n, prop.effective_n, stats.t.ppf(0.975, m - 1)
    )
    assert (low, high) == pytest.approx((expected_low, expected_high), abs=1e-9)


def test_all_detected_interval_counts_patients_and_is_never_zero_width():
    """30 of 30 detected (the issue's case): the bootstrap gave (1.0, 1.0); here the lower bound
    treats each patient as one observation, since their scans may be perfectly alike."""
    crit2 = stats.t.ppf(0.975, 29) ** 2
    one_scan = clustered_proportion(np.ones(30, bool), np.arange(30))
    two_scans = clustered_proportion(np.ones(60, bool), np.repeat(np.arange(30), 2))
    assert one_scan.design_effect == 1.0 and two_scans.design_effect == 2.0
    for prop in (one_scan, two_scans):
        low, high = wilson_interval(prop, 0.95)
        assert high == 1.0 and low == pytest.approx(30 / (30 + crit2), abs=1e-12)
    miss = clustered_proportion(np.zeros(60, bool), np.repeat(np.arange(30), 2))
    low, high = wilson_interval(miss, 0.95)
    assert low == 0.0 and high == pytest.approx(crit2 / (30 + crit2), abs=1e-12)
    assert wilson_interval(clustered_proportion(np.zeros(0, bool), np.zeros(0, int)), 0.95) == (None, None)


def test_one_patient_is_one_observation():
    prop = clustered_proportion(np.array([True, True, False, True]), np.zeros(4, int))
    assert prop.clusters == 1 and prop.design_effect == 4.0 and prop.effective_n == 1.0


def test_difference_matches_newcombe_1998_example():
    """Newcombe (1998), method 10, 56/70 - 48/80: 0.2000 (0.0524, 0.3339)."""
    d, low, high = difference_interval(
        ClusteredProportion(56, 70, MANY, 1.0), ClusteredProportion(48, 80, MANY, 1.0), 0.95
    )
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)


def test_difference_of_two_zero_rates_is_not_zero_width():
    zero = clustered_proportion(np.zeros(40, bool), np.repeat(np.arange(20), 2))
    d, low, high = difference_interval(zero, zero, 0.95)
    assert d == 0.0 and low < 0.0 < high and low == pytest.approx(-high)


@pytest.mark.parametrize("x,n", [(0, 15), (7, 30), (30, 30), (99, 100)])
def test_lower_bound_is_clopper_pearson_without_clustering(x, n):
    prop = clustered_proportion(np.arange(n) < x, np.arange(n))
    expected = stats.binomtest(x, n).proportion_ci(0.90, method="exact").low  # one-sided 95 %
    assert lower_bound(prop, 0.95) == pytest.approx(expected, abs=1e-10)


def test_lower_bounds_in_order_match_the_direct_computation():
    """The incremental design effect (one patient's count grows per step) against a fresh computation."""
    rng = np.random.default_rng(2)
    codes = np.repeat(np.arange(40), rng.integers(1, 4, 40))
    order = rng.permutation(codes.size)
    in_order = codes[order]
    bounds = lower_bounds_in_order(in_order, 0.95)
    for k in range(1, codes.size + 1):
        success = np.arange(codes.size) < k
        assert bounds[k - 1] == pytest.approx(
            lower_bound(clustered_proportion(success, in_order), 0.95), abs=1e-12
        )
    singles = lower_bounds_in_order(np.arange(25), 0.9)
    expected = [stats.binomtest(k, 25).proportion_ci(0.8, method="exact").low for k in range(1, 26)]
    np.testing.assert_allclose(singles, expected, atol=1e-10)


def test_auroc_value_matches_sklearn_and_interval_brackets_it():
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(120), rng.integers(1, 4, 120))
    y = rng.random(120)[codes] < 0.4
    prob = np.round(np.clip(0.3 * y + rng.random(codes.size) * 0.7, 0, 1), 2)  # ties
    est = auroc_interval(y, prob, codes, 0.95)
    assert est.value == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert est.ci_low < est.value < est.ci_high


def test_auroc_interval_bounds_solve_the_hanley_mcneil_score_equation():
    rng = np.random.default_rng(4)
    codes = np.arange(200)  # one scan per patient
    y = np.arange(200) < 80
    prob = rng.normal(1.0 * y, 1.0)
    est = auroc_interval(y, prob, codes, 0.95)
    m, n = 80 / est.design_effect, 120 / est.design_effect
    crit = stats.t.ppf(0.975, 79)

    def variance(t: float) -> float:  # Hanley & McNeil with Q1 = t/(2-t), Q2 = 2t^2/(1+t), N* symmetric
        q1, q2 = t / (2 - t), 2 * t * t / (1 + t)
        star = (m + n) / 2
        return (t * (1 - t) + (star - 1) * (q1 - t * t) + (star - 1) * (q2 - t * t)) / (m * n)

    for bound in (est.ci_low, est.ci_high):
        assert (est.value - bound) ** 2 == pytest.approx(crit**2 * variance(bound), rel=1e-6)


def test_perfect_separation_gives_a_real_interval():
    codes = np.repeat(np.arange(20), 2)
    y = codes < 10
    est = auroc_interval(y, np.where(y, 0.9, 0.1) + 0.001 * np.arange(40) / 40, codes, 0.95)
    assert est.value == 1.0 and est.ci_high == 1.0 and 0.5 < est.ci_low < 1.0
    assert est.design_effect == 2.0  # worst case: the variance cannot be estimated at 1
    assert auroc_interval(np.ones(5, bool), np.linspace(0, 1, 5), np.arange(5), 0.95).value is None


def test_clustered_auroc_variance_agrees_with_the_patient_bootstrap():
    """Obuchowski's variance against an independent estimate: the patient bootstrap's variance
    (the bootstrap engine is itself checked against scikit-learn)."""
    rng = np.random.default_rng(11)
    patients = 300
    codes = np.repeat(np.arange(patients), rng.integers(1, 4, patients))
    effect = rng.normal(0, 0.8, patients)[codes]
    y = rng.random(patients)[codes] < 0.35
    y[rng.random(codes.size) < 0.1] ^= True  # some patients with positive and negative scans
    prob = 1 / (1 + np.exp(-(1.2 * y + effect + rng.normal(0, 0.6, codes.size))))
    found = clustered_auroc(y, prob, codes)
    reps = bootstrap_metrics(
        [BootstrapTask(prepare(y.astype(float), prob, 0.5), codes)], patients, 3000, seed=1
    )
    boot_var = np.var(reps[0]["auroc"], ddof=1)
    assert found.variance == pytest.approx(boot_var, rel=0.15)
    naive = clustered_auroc(y, prob, np.arange(codes.size)).variance  # scans as if independent
    assert naive < 0.85 * found.variance  # clustering matters here, and the estimate sees it


# ------------------------------------------------------------------ rates: counts by hand


def test_every_rate_counts_its_own_successes_trials_and_patients():
    """Eight scans of four patients (two each); truth and flags as 0/1 integers, as a caller may pass."""
    from xraytriage.evaluation.rates import RATE_DEFINITIONS, rate_counts, rate_estimates

    positive = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    flagged = np.array([1, 0, 1, 1, 0, 0, 0, 0])
    codes = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    expected = {  # rate: (successes, trials, patients among the trials)
        "sensitivity": (2, 4, 3),
        "miss_rate": (2, 4, 3),
        "specificity": (3, 4, 3),
        "fpr": (1, 4, 3),
        "ppv": (2, 3, 2),
        "npv": (3, 5, 3),
        "accuracy": (5, 8, 4),
        "prevalence": (4, 8, 4),
    }
    assert set(RATE_DEFINITIONS) == set(expected)
    estimates = rate_estimates(positive, flagged, codes, 0.9, list(expected))
    for name, (k, n, patients) in expected.items():
        prop = rate_counts(name, positive.astype(bool), flagged.astype(bool), codes)
        assert (prop.successes, prop.trials, prop.clusters) == (k, n, patients), name
        est = estimates[name]
        assert est.value == pytest.approx(k / n) and est.method == "wilson_cluster", name
        assert (est.ci_low, est.ci_high) == pytest.approx(wilson_interval(prop, 0.9)), name
    assert list(rate_estimates(positive, flagged, codes, 0.9, ["fpr", "ppv"])) == ["fpr", "ppv"]


def test_auroc_estimate_is_the_clustered_auroc_with_its_method():
    from xraytriage.evaluation.rates import auroc_estimate

    y = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    prob = np.array([0.9, 0.4, 0.5, 0.1, 0.8, 0.3])
    codes = np.arange(6)
    est = auroc_estimate(y, prob, codes, 0.95)
    found = auroc_interval(y, prob, codes, 0.95)
    assert est.value == pytest.approx(roc_auc_score(y, prob)) == pytest.approx(8 / 9)
    assert (est.ci_low, est.ci_high) == (
        found.ci_low,
        found.ci_high,
    ) and est.method == "newcombe_auroc_cluster"
    assert auroc_estimate(np.ones(3, bool), prob[:3], codes[:3], 0.95).value is None


# ------------------------------------------------------------------ AUROC interval with clustering


def _hm_variance(t: float, m: float, n: float) -> float:
    """Hanley & McNeil (1982) with Q1 = t/(2-t), Q2 = 2t^2/(1+t) and Newcombe's N* = (m + n)/2."""
    star = max((m + n) / 2, 1.0)
    return (t * (1 - t) + (star - 1) * (t / (2 - t) - t * t) + (star - 1) * (2 * t * t / (1 + t) - t * t)) / (
        m * n
    )


def _score_bounds(theta: float, m: float, n: float, z: float) -> tuple[float, float]:
    def f(t: float) -> float:
        return (theta - t) ** 2 - z * z * _hm_variance(t, m, n)

    low = 0.0 if theta <= 0 else optimize.brentq(f, 0.0, min(theta, 1 - 1e-12))
    high = 1.0 if theta >= 1 else optimize.brentq(f, max(theta, 1e-12), 1.0)
    return low, high


def test_auroc_interval_uses_the_effective_sizes_of_clustered_scans():
    """Two or three correlated scans per patient: the design effect is Obuchowski's variance over
    Hanley-McNeil's at the scan counts (between 1 and its worst case), the score interval is solved at
    scans / design effect, with t on min(positive, negative patients) - 1 df."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(2, 4, 60)
    codes = np.repeat(np.arange(60), sizes)
    y = np.repeat(np.arange(60) < 25, sizes)
    prob = np.repeat(rng.normal(0, 1, 60), sizes) * 0.9 + rng.normal(0, 0.5, codes.size) + 1.0 * y
    est = auroc_interval(y, prob, codes, 0.95)
    n1, n0 = int(y.sum()), int((~y).sum())
    theta = roc_auc_score(y, prob)
    worst = max((sizes[:25] ** 2).sum() / n1, (sizes[25:] ** 2).sum() / n0)
    deff = clustered_auroc(y, prob, codes).variance / _hm_variance(theta, n1, n0)
    assert 1.0 < deff < worst  # the case where neither clip applies
    assert est.design_effect == pytest.approx(deff, rel=1e-9)
    z = stats.t.ppf(0.975, 25 - 1)
    assert (est.ci_low, est.ci_high) == pytest.approx(_score_bounds(theta, n1 / deff, n0 / deff, z), abs=1e-9)


def test_perfect_auroc_with_two_scans_per_patient_counts_patients():
    """AUROC 1: the variance cannot be estimated, so the worst case (every scan of a patient alike)
    holds: 20 + 20 patients with two scans each give the interval of 20 + 20 single scans."""
    codes = np.repeat(np.arange(40), 2)
    y = codes < 20
    prob = np.where(y, 0.9, 0.1)
    est = auroc_interval(y, prob, codes, 0.95)
    single = auroc_interval(y[::2], prob[::2], codes[::2], 0.95)
    z = stats.t.ppf(0.975, 19)
    assert est.design_effect == 2.0 and single.design_effect == 1.0
    assert (est.ci_low, est.ci_high) == pytest.approx((single.ci_low, single.ci_high), abs=1e-12)
    assert (est.ci_low, est.ci_high) == pytest.approx(_score_bounds(1.0, 20, 20, z), abs=1e-9)
    mixed = np.r_[codes[:40], np.repeat(np.arange(20, 40), 3)[:40]]  # negatives in 3-scan patients
    est3 = auroc_interval(y, prob, mixed, 0.95)
    assert est3.design_effect == pytest.approx(max(20 * 4 / 40, (13 * 9 + 1) / 40))
    zero = auroc_interval(~y, prob, codes, 0.95)
    assert (zero.value, zero.ci_low) == (0.0, 0.0) and zero.ci_high == pytest.approx(1 - est.ci_low, abs=1e-9)
    one_class = auroc_interval(np.ones(4, bool), prob[:4], codes[:4], 0.95)
    assert (one_class.value, one_class.ci_low, one_class.ci_high, one_class.design_effect) == (
        None,
        None,
        None,
        1.0,
    )


def test_difference_interval_edges():
    empty = ClusteredProportion(0.0, 0, 0, 1.0)
    five = ClusteredProportion(5.0, 5, 5, 1.0)
    none = ClusteredProportion(0.0, 5, 5, 1.0)
    one = ClusteredProportion(1.0, 1, 1, 1.0)
    assert difference_interval(empty, five, 0.95) == (None, None, None)
    assert difference_interval(five, empty, 0.95) == (None, None, None)
    d, lo, hi = difference_interval(none, five, 0.95)
    assert (d, lo) == (-1.0, -1.0) and -1.0 < hi < 0  # clamped at -1, never beyond
    d, lo, hi = difference_interval(five, none, 0.95)
    assert (d, hi) == (1.0, 1.0) and 0 < lo < 1.0
    d, lo, hi = difference_interval(one, five, 0.95)
    assert d == 0.0 and lo < 0 < hi  # a single trial is still a proportion
    d, lo, hi = difference_interval(five, one, 0.95)
    assert d == 0.0 and lo < 0 < hi


def test_hanley_mcneil_variance_with_fewer_than_four_scans_has_no_negative_term():
    """N* = (1 + 2) / 2 = 1.5: the (N* - 1) terms weigh 0.5 (by hand: 0.25 * (1 + 0.5 * 2/3) / 2)."""
    from xraytriage.evaluation.intervals import _hanley_mcneil_variance

    assert _hanley_mcneil_variance(0.5, 1, 2) == pytest.approx(0.25 * (1 + 0.5 * 2 / 3) / 2)
    assert _hanley_mcneil_variance(0.5, 1, 1) == pytest.approx(0.25)  # N* - 1 = 0
    assert _hanley_mcneil_variance(0.5, 1, 2) == pytest.approx(_hm_variance(0.5, 1, 2))


# ------------------------------------------- bounds, critical values and design effects by hand


def test_clustered_lower_bound_is_clopper_pearson_at_the_korn_graubard_effective_size():
    """n_eff = n / deff * (t_{n-1} / t_{patients-1})^2 at the one-sided level (Korn & Graubard 1998)."""
    for k, n, patients, deff in ((30, 40, 12, 1.7), (5, 6, 2, 1.5), (3, 3, 1, 3.0), (2, 3, 1, 3.0)):
        n_eff = n / deff
        if patients > 1:
            n_eff *= (stats.t.ppf(0.95, n - 1) / stats.t.ppf(0.95, patients - 1)) ** 2
        x = k / n * n_eff
        expected = stats.beta.ppf(0.05, x, n_eff - x + 1)
        assert lower_bound(ClusteredProportion(k, n, patients, deff), 0.95) == pytest.approx(
            expected, rel=1e-9
        )
    assert lower_bound(ClusteredProportion(0.0, 0, 0, 1.0), 0.95) is None
    assert lower_bound(ClusteredProportion(1.0, 1, 1, 1.0), 0.95) == pytest.approx(0.05)  # 1 of 1: 0.05^(1/1)
    assert lower_bounds_in_order(np.array([], dtype=int), 0.95).shape == (0,)
    np.testing.assert_allclose(lower_bounds_in_order(np.array([7]), 0.95), [0.05])


def test_critical_values_two_and_one_sided_on_patients_minus_one_df():
    assert critical_value(0.95, 10) == pytest.approx(stats.t.ppf(0.975, 9))
    assert critical_value(0.95, 10, two_sided=False) == pytest.approx(stats.t.ppf(0.95, 9))
    assert critical_value(0.9, 2) == pytest.approx(stats.t.ppf(0.95, 1))
    assert critical_value(0.9, 1) == critical_value(0.9, 0) == pytest.approx(stats.t.ppf(0.95, 1))


@pytest.mark.parametrize(
    "success,deff",
    [
        ([1, 0, 1, 1], 4 / 3),  # p 3/4: cluster variance 2 * 0.5 / 16 over binomial 3/64
        ([1, 0, 0, 0], 4 / 3),  # one success: still estimated (not the worst case)
        ([1, 0, 1, 0], 1.0),  # patients alike in their mix: no extra variance, clipped up to 1
        ([1, 1, 0, 0], 2.0),  # every scan of a patient alike: the worst case sum n_i^2 / n
    ],
)
def test_design_effect_of_two_patients_by_hand(success, deff):
    prop = clustered_proportion(np.array(success, dtype=bool), np.array([0, 0, 1, 1]))
    assert (prop.successes, prop.trials, prop.clusters) == (sum(success), 4, 2)
    assert prop.design_effect == pytest.approx(deff)


def test_empty_proportion_is_zero_of_zero_with_no_design_effect():
    assert clustered_proportion(np.array([], dtype=bool), np.array([], dtype=int)) == ClusteredProportion(
        0.0, 0, 0, 1.0
    )
    prop = clustered_proportion([True, False, True], [5, 5, 9])  # plain lists, sparse codes
    assert (prop.successes, prop.trials, prop.clusters) == (2.0, 3, 2)


def test_auroc_placements_with_ties_match_a_pairwise_count():
    """DeLong's placements (ties count one half), counted pair by pair, give the clustered variance
    with one scan per patient."""
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    prob = np.array([0.8, 0.5, 0.5, 0.5, 0.2, 0.5, 0.9, 0.3, 0.3])
    pos, neg = prob[y], prob[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    theta = psi.mean()
    c = y.size
    expected = (
        c / (c - 1) * (((v10 - theta) ** 2).sum() / pos.size**2 + ((v01 - theta) ** 2).sum() / neg.size**2)
    )
    found = clustered_auroc(y, prob, np.arange(c))
    assert found.value == pytest.approx(theta) and found.variance == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,z", [(10, 1.64), (5, 1.64), (5, 1.96), (13, 12.7)])
def test_wilson_bounds_are_exactly_0_and_1_at_the_ends_whatever_the_rounding(n, z):
    """At p = 0 (or 1) the formula gives 1e-17 above 0 (or 1e-16 off 1) for these n and z."""
    from xraytriage.evaluation.intervals import _wilson

    assert _wilson(0.0, n, z)[0] == 0.0 and _wilson(1.0, n, z)[1] == 1.0
    assert _wilson(0.0, n, z)[1] > 0.0 and _wilson(1.0, n, z)[0] < 1.0


def _obuchowski(y: np.ndarray, prob: np.ndarray, codes: np.ndarray) -> tuple[float, float]:
    """Obuchowski (1997) from pairwise placements: per patient, the sums of its positives' and its
    negatives' placements less their expectation; C / (C - 1) times the variance of the total."""
    pos, neg = prob[y], prob[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    theta = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    patients = np.unique(codes)
    r10 = np.array([(v10[codes[y] == c] - theta).sum() for c in patients])
    r01 = np.array([(v01[codes[~y] == c] - theta).sum() for c in patients])
    n1, n0, c = pos.size, neg.size, patients.size
    return theta, c / (c - 1) * (
        (r10**2).sum() / n1**2 + (r01**2).sum() / n0**2 + 2 * (r10 * r01).sum() / (n1 * n0)
    )


def test_clustered_auroc_variance_of_patients_with_both_classes_by_hand():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    prob = np.array([0.9, 0.4, 0.6, 0.4, 0.3, 0.7, 0.8, 0.8, 0.1])
    codes = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3])  # patients 0, 1, 2 have both
    theta, variance = _obuchowski(y, prob, codes)
    found = clustered_auroc(y, prob, codes)
    assert found.value == pytest.approx(theta) and found.variance == pytest.approx(variance, rel=1e-12)
    np.testing.assert_array_equal(found.positives, [1, 2, 1, 0])
    np.testing.assert_array_equal(found.negatives, [1, 1, 1, 2])
    two = clustered_auroc(y[:5], prob[:5], codes[:5])  # two patients: still estimated
    assert two.variance == pytest.approx(_obuchowski(y[:5], prob[:5], codes[:5])[1], rel=1e-12)
    one_positive = clustered_auroc(np.array([1, 0, 0], bool), np.array([0.5, 0.2, 0.6]), np.arange(3))
    assert one_positive.value == pytest.approx(0.5)


def test_clustered_auroc_of_one_patient_has_infinite_variance():
    found = clustered_auroc(np.array([1, 0, 1], bool), np.array([0.9, 0.2, 0.1]), np.array([4, 4, 4]))
    assert found.value == pytest.approx(0.5) and found.variance == float("inf")
    np.testing.assert_array_equal(found.positives, [2])
    np.testing.assert_array_equal(found.negatives, [1])


def test_auroc_critical_value_counts_the_smaller_class_of_patients():
    """30 positive and 10 negative patients, one scan each, perfectly separated: t on 10 - 1 df."""
    y = np.arange(40) < 30
    est = auroc_interval(y, np.where(y, 0.9, 0.1), np.arange(40), 0.95)
    assert (est.ci_low, est.ci_high) == pytest.approx(
        _score_bounds(1.0, 30, 10, stats.t.ppf(0.975, 9)), abs=1e-9
    )
    as_ints = clustered_auroc(y.astype(int), np.where(y, 0.9, 0.1), np.arange(40))
    assert as_ints.value == 1.0 and as_ints.positives.sum() == 30  # 0/1 integers read as classes
