"""Confidence intervals that keep their coverage when a patient has several scans, and never have
zero width.

* Proportions (sensitivity, miss rate, specificity, PPV, ...): **Wilson score interval** on the
  *effective* sample size ``n / deff``, where the design effect ``deff`` comes from the
  patient-level (cluster) variance of the ratio estimator, with a Student-t critical value on
  ``patients - 1`` degrees of freedom (Kish 1965; Korn & Graubard 1998). When every scan is a success
  or every scan a failure the within-patient correlation cannot be estimated, so the worst case
  (all scans of a patient alike) is assumed: the interval then has as many "observations" as there
  are patients, and is still never of zero width.
* Differences of two proportions: Newcombe's hybrid score (MOVER) interval built from the two
  Wilson intervals above (Newcombe 1998, method 10).
* AUROC: Newcombe's score interval on the Hanley-McNeil variance (Newcombe 2006, method 5) with the
  design effect from Obuchowski's (1997) clustered variance.
* The operating point's guarantee: a one-sided Clopper-Pearson bound on the effective sample size,
  with Korn & Graubard's degrees-of-freedom correction (conservative by construction).

References are listed in docs/evaluation.md; the coverage of each interval is measured by
``scripts/bench_statistics.py`` and, in a small version, by tests/evaluation/test_eval_statistics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

#: Method names as they appear in metrics.json (``method``), with a one-line description.
INTERVAL_METHODS = {
    "wilson_cluster": "Wilson score interval on the effective sample size (patient design effect, "
    "t critical value on patients - 1 df); Wilson 1927, Kish 1965, Korn & Graubard 1998",
    "newcombe_auroc_cluster": "score interval on the Hanley-McNeil variance (Newcombe 2006, method 5) "
    "with the design effect of Obuchowski's 1997 clustered variance",
    "newcombe_difference_cluster": "hybrid score (MOVER) interval for a difference of two proportions "
    "from their cluster-adjusted Wilson intervals; Newcombe 1998, method 10",
    "clopper_pearson_cluster_lower": "one-sided Clopper-Pearson bound on the effective sample size with "
    "Korn & Graubard's 1998 degrees-of-freedom correction",
    "bootstrap_percentile": "percentile interval of a bootstrap over patients (Efron & Tibshirani 1993; "
    "Field & Welsh 2007)",
    "count": "an observed count: no interval",
}


@dataclass(frozen=True)
class ClusteredProportion:
    """``successes / trials`` where the trials are scans grouped in ``clusters`` patients.

    ``design_effect`` is the variance of the proportion relative to ``trials`` independent scans,
    between 1 and its worst case (every scan of a patient alike).
    """

    successes: float
    trials: int
    clusters: int
    design_effect: float

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    @property
    def effective_n(self) -> float:
        return self.trials / self.design_effect if self.trials else 0.0


def _design_effects(
    k: np.ndarray, n: float, sum_x2: np.ndarray, sum_xn: np.ndarray, sum_n2: float, m: int
) -> np.ndarray:
    """Design effect of ``k / n`` from patient sums: ``sum_x2 = sum x_i^2``, ``sum_xn = sum x_i n_i``.

    Cluster variance of the ratio estimator: ``m/(m-1) * sum (x_i - p n_i)^2 / n^2``; it is divided
    by the binomial variance ``p (1 - p) / n`` and clipped to ``[1, sum n_i^2 / n]``. At ``p`` 0 or 1,
    or with a single patient, the worst case ``sum n_i^2 / n`` is returned.
    """
    k = np.asarray(k, dtype=float)
    p = k / n
    worst = sum_n2 / n
    if m < 2:
        return np.full(k.shape, worst)
    resid = sum_x2 - 2.0 * p * sum_xn + p * p * sum_n2
    binomial = p * (1.0 - p) / n
    inside = (k > 0) & (k < n)
    deff = np.full(k.shape, worst)
    cluster = m / (m - 1.0) * np.maximum(resid[inside], 0.0) / (n * n)
    deff[inside] = np.clip(cluster / binomial[inside], 1.0, worst)
    return deff


def clustered_proportion(success: np.ndarray, codes: np.ndarray) -> ClusteredProportion:
    """The proportion of ``success`` (one bool per scan) with its patient design effect.

    ``codes`` are non-negative integer patient codes aligned with ``success``.
    """
    success = np.asarray(success, dtype=bool)
    codes = np.asarray(codes, dtype=np.int64)
    if success.size == 0:
        return ClusteredProportion(0.0, 0, 0, 1.0)
    x = np.bincount(codes, weights=success.astype(float))
    sizes = np.bincount(codes).astype(float)
    present = sizes > 0
    x, sizes = x[present], sizes[present]
    n = float(sizes.sum())
    deff = _design_effects(
        np.array([x.sum()]),
        n,
        np.array([(x * x).sum()]),
        np.array([(x * sizes).sum()]),
        float((sizes**2).sum()),
        int(sizes.size),
    )[0]
    return ClusteredProportion(float(x.sum()), int(n), int(sizes.size), float(deff))


def critical_value(confidence: float, clusters: int, two_sided: bool = True) -> float:
    """Student-t quantile on ``clusters - 1`` degrees of freedom (at least 1)."""
    tail = (1.0 - confidence) / 2.0 if two_sided else 1.0 - confidence
    return float(stats.t.ppf(1.0 - tail, max(clusters - 1, 1)))


def _wilson(p: float, n_eff: float, z: float) -> tuple[float, float]:
    z2 = z * z
    centre = (p + z2 / (2.0 * n_eff)) / (1.0 + z2 / n_eff)
    half = z / (1.0 + z2 / n_eff) * np.sqrt(p * (1.0 - p) / n_eff + z2 / (4.0 * n_eff * n_eff))
    low = 0.0 if p <= 0.0 else max(0.0, centre - half)  # exact at the boundary, whatever the rounding
    high = 1.0 if p >= 1.0 else min(1.0, centre + half)
    return float(low), float(high)


def wilson_interval(prop: ClusteredProportion, confidence: float) -> tuple[float | None, float | None]:
    """Two-sided cluster-adjusted Wilson interval; ``(None, None)`` without trials."""
    if prop.trials == 0:
        return None, None
    return _wilson(float(prop.value), prop.effective_n, critical_value(confidence, prop.clusters))


def difference_interval(
    a: ClusteredProportion, b: ClusteredProportion, confidence: float
) -> tuple[float | None, float | None, float | None]:
    """``a - b`` with Newcombe's hybrid score interval (each side from the Wilson intervals)."""
    if a.trials == 0 or b.trials == 0:
        return None, None, None
    pa, pb = float(a.value), float(b.value)
    la, ua = wilson_interval(a, confidence)
    lb, ub = wilson_interval(b, confidence)
    d = pa - pb
    low = d - np.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = d + np.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, float(max(-1.0, low)), float(min(1.0, high))


def _clopper_pearson_lower(
    p: np.ndarray, trials: float, deff: np.ndarray, clusters: int, confidence: float
) -> np.ndarray:
    n_eff = trials / deff
    if trials > 1 and clusters > 1:
        # Korn & Graubard: shrink the effective size by (t_{n-1} / t_{df})^2, df = patients - 1
        ratio = stats.t.ppf(confidence, trials - 1) / stats.t.ppf(confidence, clusters - 1)
        n_eff = n_eff * ratio**2
    x = p * n_eff
    out = np.zeros_like(x, dtype=float)
    some = x > 0
    out[some] = stats.beta.ppf(1.0 - confidence, x[some], n_eff[some] - x[some] + 1.0)
    return out


def lower_bound(prop: ClusteredProportion, confidence: float) -> float | None:
    """One-sided lower confidence bound of the proportion (Clopper-Pearson, effective size)."""
    if prop.trials == 0:
        return None
    return float(
        _clopper_pearson_lower(
            np.array([prop.value]), prop.trials, np.array([prop.design_effect]), prop.clusters, confidence
        )[0]
    )


def lower_bounds_in_order(codes_in_order: np.ndarray, confidence: float) -> np.ndarray:
    """Lower bound of ``k / n`` for k = 1..n successes taken in the given order of scans.

    Used by the operating point: positives sorted by descending score become detected one at a time
    as the threshold falls, so entry ``k - 1`` is the bound on sensitivity when the top ``k`` are
    flagged. The design effect is updated incrementally (one patient's count grows by one per step).
    """
    codes = np.asarray(codes_in_order, dtype=np.int64)
    n = codes.size
    if n == 0:
        return np.zeros(0)
    _, codes = np.unique(codes, return_inverse=True)
    sizes = np.bincount(codes).astype(float)
    order = np.argsort(codes, kind="stable")
    before = np.empty(n)
    starts = np.r_[0, np.cumsum(np.bincount(codes))[:-1]]
    before[order] = np.arange(n) - np.repeat(starts, np.bincount(codes))  # earlier scans, same patient
    sum_x2 = np.cumsum(2.0 * before + 1.0)
    sum_xn = np.cumsum(sizes[codes])
    k = np.arange(1, n + 1, dtype=float)
    deff = _design_effects(k, float(n), sum_x2, sum_xn, float((sizes**2).sum()), int(sizes.size))
    return _clopper_pearson_lower(k / n, float(n), deff, int(sizes.size), confidence)


# ---------------------------------------------------------------- AUROC


def _hanley_mcneil_variance(theta: float, m: float, n: float) -> float:
    """Hanley & McNeil's AUROC variance with Newcombe's symmetric N* = (m + n) / 2."""
    extra = max((m + n) / 2.0 - 1.0, 0.0)
    return (
        theta
        * (1.0 - theta)
        * (1.0 + extra * ((1.0 - theta) / (2.0 - theta) + theta / (1.0 + theta)))
        / (m * n)
    )


@dataclass(frozen=True)
class AurocEstimate:
    value: float | None
    ci_low: float | None
    ci_high: float | None
    design_effect: float


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per positive: share of negatives scored lower (ties 1/2); per negative: share of positives higher."""
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, side="left")
    tied = np.searchsorted(neg_sorted, pos, side="right") - below
    v10 = (below + 0.5 * tied) / neg.size
    above = pos.size - np.searchsorted(pos_sorted, neg, side="right")
    tied_p = np.searchsorted(pos_sorted, neg, side="right") - np.searchsorted(pos_sorted, neg, side="left")
    v01 = (above + 0.5 * tied_p) / pos.size
    return v10, v01


@dataclass(frozen=True)
class ClusteredAuroc:
    """AUROC (Mann-Whitney, ties one half) with Obuchowski's (1997) clustered variance."""

    value: float
    variance: float
    positives: np.ndarray  # positive scans per patient (patients with none included)
    negatives: np.ndarray  # negative scans per patient


def clustered_auroc(y: np.ndarray, prob: np.ndarray, codes: np.ndarray) -> ClusteredAuroc | None:
    """AUROC and its variance when scans are clustered in patients; None with a single class.

    A patient may have positive and negative scans (the covariance term is included).
    """
    y = np.asarray(y, dtype=bool)
    prob = np.asarray(prob, dtype=float)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    v10, v01 = _placements(prob[y], prob[~y])
    theta = float(v10.mean())
    _, inv = np.unique(np.asarray(codes, dtype=np.int64), return_inverse=True)
    clusters = int(inv.max()) + 1
    m1 = np.bincount(inv[y], minlength=clusters).astype(float)
    m0 = np.bincount(inv[~y], minlength=clusters).astype(float)
    r10 = np.bincount(inv[y], weights=v10, minlength=clusters) - m1 * theta
    r01 = np.bincount(inv[~y], weights=v01, minlength=clusters) - m0 * theta
    if clusters < 2:
        return ClusteredAuroc(theta, float("inf"), m1, m0)
    scale = clusters / (clusters - 1.0)
    variance = scale * ((r10**2).sum() / n1**2 + (r01**2).sum() / n0**2 + 2.0 * (r10 * r01).sum() / (n1 * n0))
    return ClusteredAuroc(theta, float(variance), m1, m0)


def auroc_interval(y: np.ndarray, prob: np.ndarray, codes: np.ndarray, confidence: float) -> AurocEstimate:
    """AUROC with Newcombe's score interval on the Hanley-McNeil variance at the effective sample
    sizes (scans / design effect); undefined with one class, never of zero width otherwise."""
    found = clustered_auroc(y, prob, codes)
    if found is None:
        return AurocEstimate(None, None, None, 1.0)
    theta, m1, m0 = found.value, found.positives, found.negatives
    n1, n0 = m1.sum(), m0.sum()
    worst = max((m1**2).sum() / n1, (m0**2).sum() / n0)
    reference = _hanley_mcneil_variance(theta, n1, n0)
    if 0.0 < theta < 1.0 and np.isfinite(found.variance) and found.variance > 0:
        deff = float(np.clip(found.variance / reference, 1.0, worst))
    else:  # the variance cannot be estimated (AUROC 0 or 1, one patient): assume the worst case
        deff = float(worst)
    m_eff, n_eff = n1 / deff, n0 / deff
    z = critical_value(confidence, int(min((m1 > 0).sum(), (m0 > 0).sum())))

    def score(t: float) -> float:
        return (theta - t) ** 2 - z * z * _hanley_mcneil_variance(t, m_eff, n_eff)

    low = 0.0 if theta <= 0.0 else optimize.brentq(score, 0.0, theta if theta < 1.0 else 1.0 - 1e-12)
    high = 1.0 if theta >= 1.0 else optimize.brentq(score, theta if theta > 0.0 else 1e-12, 1.0)
    return AurocEstimate(theta, float(low), float(high), deff)
