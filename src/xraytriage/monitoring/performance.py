"""Expected sensitivity and miss rate without labels: confidence-based performance estimation (CBPE,
as NannyML does it).

Assumption, stated wherever the figure appears: the probabilities are **calibrated** on the deployed
population, i.e. among scans given probability p, a share p is truly positive. Then each scan is
positive with its own probability, the number of true positives among flagged scans is a sum of
independent Bernoulli draws (Poisson-binomial), and

    expected sensitivity = sum of p over flagged scans / sum of p over all scans

(NannyML's ratio of expected confusion-matrix counts). Its interval comes from simulating the labels
``simulations`` times (each scan positive with its own p): the spread of sensitivity a labelled sample
of these very scans would show (where the simulation leaves no spread, e.g. no scan flagged, the
Wilson interval of the expected counts stands in, so no interval has zero width). When calibration
fails (a new scanner changes what a probability means) the estimate is wrong in a way no label-free
method can see: CBPE watches the case mix, the probability shift and OOD tests watch the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BLOCK_VALUES = 4_000_000  # random numbers per simulation block (32 MB of float64)


@dataclass(frozen=True)
class ExpectedMissRate:
    expected_positives: float
    sensitivity: float
    miss_rate: float
    miss_rate_low: float
    miss_rate_high: float
    draws: np.ndarray  # simulated miss rates (draws without any simulated positive are left out)

    def chance_at_most(self, limit: float) -> float:
        """Monte-Carlo p-value of 'the miss rate is at most ``limit``': (1 + draws <= limit) / (1 + draws)."""
        return float((1 + np.sum(self.draws <= limit)) / (1 + len(self.draws)))


def simulate_miss_rates(
    probabilities: np.ndarray, flagged: np.ndarray, simulations: int, rng: np.random.Generator
) -> np.ndarray:
    """Miss rate (missed positives / positives) of ``simulations`` label draws, y_i ~ Bernoulli(p_i)."""
    out: list[np.ndarray] = []
    block = max(1, _BLOCK_VALUES // max(1, len(probabilities)))
    for start in range(0, simulations, block):
        labels = rng.random((min(block, simulations - start), len(probabilities))) < probabilities
        positives = labels.sum(axis=1)
        missed = (labels & ~flagged).sum(axis=1)
        keep = positives > 0
        out.append(missed[keep] / positives[keep])
    return np.concatenate(out) if out else np.zeros(0)


def expected_miss_rate(
    probabilities: np.ndarray,
    threshold: float,
    simulations: int,
    confidence: float,
    rng: np.random.Generator,
) -> ExpectedMissRate | None:
    """CBPE at ``threshold``; None when the probabilities expect no positive at all."""
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    flagged = p >= threshold
    total = float(p.sum())
    if total <= 0.0:
        return None
    sensitivity = float(p[flagged].sum()) / total
    draws = simulate_miss_rates(p, flagged, simulations, rng)
    if draws.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    miss = 1.0 - sensitivity
    if low == high:  # no spread left (no scan flagged, or every p is 0 or 1): never a zero-width answer
        low, high = wilson_counts(total * miss, total, confidence)
    return ExpectedMissRate(total, sensitivity, miss, float(min(low, miss)), float(max(high, miss)), draws)


def wilson_counts(k: float, n: float, confidence: float) -> tuple[float, float]:
    """Wilson interval of k successes in n (counts rounded to whole scans, n at least one): never zero
    width, sensible at 0 and n. The monitor's one interval for a share."""
    from scipy import stats

    n = max(1, round(n))
    ci = stats.binomtest(min(n, round(k)), n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
