"""Distribution shift of a score (a class probability, the OOD score) against its validation values.

PSI (population stability index) measures how much; the two-sample Kolmogorov-Smirnov test
(``scipy.stats.ks_2samp``) says whether the difference is more than sampling noise. PSI alone cannot:
over ``B`` bins and ``n`` deployed scans it is about ``(B - 1) / n`` on pure noise, 0.3 for 30 scans.

Binning: ``bins`` equal-count bins of the validation values (edges at its k/B quantiles, repeated edges
merged), open-ended at both sides so every deployed value falls in one. Shares add half a scan to every
bin on both sides (so an empty bin gives a finite PSI): share = (count + 0.5) / (n + 0.5 B).
PSI = sum over bins of (deployed share - validation share) * ln(deployed share / validation share).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

PSEUDO_COUNT = 0.5
EXACT_KS_MAX_PAIRS = 10_000  # larger samples use the asymptotic distribution (exact is slow and unneeded)


def psi_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges: the validation's k/bins quantiles, repeated values merged."""
    return np.unique(np.quantile(reference, np.arange(1, bins) / bins))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Smoothed share of ``values`` per bin; bin i holds edges[i-1] <= v < edges[i]."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return (counts + PSEUDO_COUNT) / (len(values) + PSEUDO_COUNT * len(counts))


def psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    edges = psi_edges(reference, bins)
    expected, actual = bin_shares(reference, edges), bin_shares(current, edges)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class Shift:
    psi: float
    ks_statistic: float
    p_value: float


def shift(
    reference: np.ndarray,
    current: np.ndarray,
    bins: int,
    alternative: Literal["two-sided", "higher"] = "two-sided",
) -> Shift:
    """PSI and the KS test; ``higher`` tests only for deployed values above validation's (OOD scores:
    lower is never a problem)."""
    # ks_2samp's 'less': the first sample's CDF lies below the second's, i.e. its values are larger
    method = "exact" if len(current) * len(reference) <= EXACT_KS_MAX_PAIRS else "asymp"
    with warnings.catch_warnings():  # an exact calculation that fails falls back to asymp: fine
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = stats.ks_2samp(
            current, reference, alternative="less" if alternative == "higher" else "two-sided", method=method
        )
    return Shift(psi(reference, current, bins), float(ks.statistic), float(ks.pvalue))
