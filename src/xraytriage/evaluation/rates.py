"""Rates at an operating point and AUROC, each with its cluster-adjusted interval, as typed estimates.

A rate is a ratio of scan counts (sensitivity = TP / positives, ...); its interval is the Wilson
interval on the effective sample size of :func:`xraytriage.evaluation.intervals.wilson_interval`, so
it never has zero width and accounts for several scans per patient. Sensitivity and miss rate share
one design effect, so their intervals mirror each other exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from xraytriage.evaluation.intervals import (
    ClusteredProportion,
    auroc_interval,
    clustered_proportion,
    wilson_interval,
)
from xraytriage.evaluation.results import Estimate

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]

#: rate -> (success, trials) as functions of (truth positive, flagged)
RATE_DEFINITIONS: dict[str, tuple[Mask, Mask]] = {
    "sensitivity": (lambda y, f: y & f, lambda y, f: y),
    "miss_rate": (lambda y, f: y & ~f, lambda y, f: y),
    "specificity": (lambda y, f: ~y & ~f, lambda y, f: ~y),
    "fpr": (lambda y, f: ~y & f, lambda y, f: ~y),
    "ppv": (lambda y, f: y & f, lambda y, f: f),
    "npv": (lambda y, f: ~y & ~f, lambda y, f: ~f),
    "accuracy": (lambda y, f: y == f, lambda y, f: np.ones_like(y)),
    "prevalence": (lambda y, f: y, lambda y, f: np.ones_like(y)),
}


def rate_counts(
    name: str, positive: np.ndarray, flagged: np.ndarray, codes: np.ndarray
) -> ClusteredProportion:
    """Success and trial counts of one rate, with the patient design effect."""
    success, trials = RATE_DEFINITIONS[name]
    den = trials(positive, flagged)
    return clustered_proportion(success(positive, flagged)[den], codes[den])


def proportion_estimate(prop: ClusteredProportion, confidence: float) -> Estimate:
    lo, hi = wilson_interval(prop, confidence)
    return Estimate.of(prop.value, lo, hi, method="wilson_cluster")


def rate_estimates(
    positive: np.ndarray, flagged: np.ndarray, codes: np.ndarray, confidence: float, names: Iterable[str]
) -> dict[str, Estimate]:
    """``{rate: Estimate}`` for the known rows given (truth positive and flagged as bool arrays)."""
    positive = np.asarray(positive, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    return {
        name: proportion_estimate(rate_counts(name, positive, flagged, codes), confidence) for name in names
    }


def auroc_estimate(positive: np.ndarray, prob: np.ndarray, codes: np.ndarray, confidence: float) -> Estimate:
    result = auroc_interval(positive, prob, codes, confidence)
    return Estimate.of(result.value, result.ci_low, result.ci_high, method="newcombe_auroc_cluster")
