"""Seeded clustered data with a known truth: how often do the intervals cover it, how often does the
gate raise a false alarm, how often does the guaranteed operating point keep its promise?

Each patient has 1-3 scans (equally likely). A scan's latent score is a patient effect plus scan
noise, with correlation ``rho`` between scans of one patient (variance 1 in total). Positives score
``mu + effect + noise`` with ``mu = Phi^-1(sensitivity)``, so at threshold 0 (probability 0.5) the true
sensitivity is exactly ``sensitivity``; sensitivity 1.0 uses ``|effect + noise|`` (never missed).
Negatives score ``-1 + effect + noise`` (true specificity ``Phi(1)``). Probabilities are
``sigmoid(score)``. Used by ``scripts/bench_statistics.py`` (the full tables) and by
tests/evaluation/test_eval_statistics.py (a small, fast version that guards the guarantees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import integrate, stats

from xraytriage.columns import prob_column
from xraytriage.evaluation.intervals import (
    auroc_interval,
    clustered_proportion,
    difference_interval,
    wilson_interval,
)

NEGATIVE_MEAN = -1.0
TRUE_SPECIFICITY = float(stats.norm.cdf(-NEGATIVE_MEAN))


@dataclass(frozen=True)
class Sample:
    """One simulated evaluation set of one class: truth, probability and patient code per scan."""

    positive: np.ndarray
    prob: np.ndarray
    codes: np.ndarray


def _clustered(rng: np.random.Generator, patients: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal latent scores of 1-3 scans per patient, correlation ``rho`` within a patient."""
    sizes = rng.integers(1, 4, patients)
    codes = np.repeat(np.arange(patients), sizes)
    latent = rng.normal(0.0, np.sqrt(rho), patients)[codes] + rng.normal(0.0, np.sqrt(1.0 - rho), codes.size)
    return latent, codes


def positive_scores(rng: np.random.Generator, patients: int, sensitivity: float, rho: float):
    latent, codes = _clustered(rng, patients, rho)
    scores = np.abs(latent) if sensitivity >= 1.0 else stats.norm.ppf(sensitivity) + latent
    return scores, codes


def simulate(
    rng: np.random.Generator,
    positive_patients: int,
    negative_patients: int,
    sensitivity: float,
    rho: float = 0.5,
) -> Sample:
    pos, pos_codes = positive_scores(rng, positive_patients, sensitivity, rho)
    neg, neg_codes = _clustered(rng, negative_patients, rho)
    scores = np.r_[pos, NEGATIVE_MEAN + neg]
    return Sample(
        positive=np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)],
        prob=1.0 / (1.0 + np.exp(-scores)),
        codes=np.r_[pos_codes, positive_patients + neg_codes],
    )


def true_sensitivity(threshold: float, sensitivity: float) -> float:
    """True sensitivity at probability threshold ``threshold`` for positives of the given design."""
    score = np.log(threshold) - np.log1p(-threshold)
    if sensitivity >= 1.0:
        return float(min(1.0, 2.0 * stats.norm.sf(score))) if score > 0 else 1.0
    return float(stats.norm.sf(score - stats.norm.ppf(sensitivity)))


def true_auroc(sensitivity: float) -> float:
    """P(positive score > negative score) for scans of different patients."""
    if sensitivity >= 1.0:
        density = lambda z: 2.0 * stats.norm.pdf(z) * stats.norm.cdf(z - NEGATIVE_MEAN)  # noqa: E731
        return float(integrate.quad(density, 0.0, np.inf)[0])
    return float(stats.norm.cdf((stats.norm.ppf(sensitivity) - NEGATIVE_MEAN) / np.sqrt(2.0)))


@dataclass
class Coverage:
    """Share of simulations whose interval contained the truth, and how many had zero width."""

    hits: int = 0
    runs: int = 0
    zero_width: int = 0

    def add(self, low: float | None, high: float | None, truth: float) -> None:
        self.runs += 1
        if low is None or high is None:
            return
        self.hits += bool(low <= truth <= high)
        self.zero_width += bool(high <= low)

    @property
    def rate(self) -> float:
        return self.hits / self.runs if self.runs else float("nan")


def coverage_cell(
    positive_patients: int,
    sensitivity: float,
    sims: int,
    seed: int,
    confidence: float = 0.95,
    rho: float = 0.5,
) -> dict[str, Coverage]:
    """Coverage of the sensitivity, miss-rate, specificity, AUROC and group-difference intervals.

    The difference is between two groups with the same sensitivity (true difference 0), each with
    ``positive_patients`` positive patients.
    """
    rng = np.random.default_rng(seed)
    out = {k: Coverage() for k in ("sensitivity", "miss_rate", "specificity", "auroc", "difference")}
    auroc_truth = true_auroc(sensitivity)
    threshold = 0.5
    for _ in range(sims):
        s = simulate(rng, positive_patients, positive_patients, sensitivity, rho)
        flagged = s.prob >= threshold
        sens = clustered_proportion(flagged[s.positive], s.codes[s.positive])
        miss = clustered_proportion(~flagged[s.positive], s.codes[s.positive])
        spec = clustered_proportion(~flagged[~s.positive], s.codes[~s.positive])
        out["sensitivity"].add(*wilson_interval(sens, confidence), sensitivity)
        out["miss_rate"].add(*wilson_interval(miss, confidence), 1.0 - sensitivity)
        out["specificity"].add(*wilson_interval(spec, confidence), TRUE_SPECIFICITY)
        auc = auroc_interval(s.positive, s.prob, s.codes, confidence)
        out["auroc"].add(auc.ci_low, auc.ci_high, auroc_truth)
        other_scores, other_codes = positive_scores(rng, positive_patients, sensitivity, rho)
        other = clustered_proportion(other_scores < 0.0, other_codes)
        _, lo, hi = difference_interval(miss, other, confidence)
        out["difference"].add(lo, hi, 0.0)
    return out


def _group_frame(
    rng: np.random.Generator, sizes: dict[str, int], sensitivities: dict[str, float], rho: float
):
    parts = []
    offset = 0
    for group, patients in sizes.items():
        s = simulate(rng, patients, patients, sensitivities[group], rho)
        parts.append(
            pd.DataFrame(
                {
                    "patient_id": (s.codes + offset).astype(str),
                    "site": group,
                    "finding": s.positive.astype(float),
                    prob_column("finding"): s.prob,
                }
            )
        )
        offset += 2 * patients
    return pd.concat(parts, ignore_index=True)


def gate_verdicts(
    sizes: dict[str, int],
    sensitivities: dict[str, float],
    limit: float,
    sims: int,
    seed: int,
    rho: float = 0.5,
) -> dict[str, float]:
    """Share of simulations the gate (``max_miss_rate_gap`` = ``limit``) fails / cannot certify / passes,
    through the same code as ``evaluate`` (subgroups, reference comparison, gate)."""
    from xraytriage.config import EvaluationConfig
    from xraytriage.evaluation.bootstrap import patient_codes
    from xraytriage.evaluation.fairness import check_gate, summarise_attribute
    from xraytriage.evaluation.rates import rate_estimates
    from xraytriage.evaluation.results import Calibration, ClassResult, Counts
    from xraytriage.evaluation.subgroups import evaluate_subgroups
    from xraytriage.evaluation.thresholds import OperatingPoint

    cfg = EvaluationConfig(subgroups=["site"], bootstrap_iterations=0, fairness={"max_miss_rate_gap": limit})
    rng = np.random.default_rng(seed)
    tally = {"fail": 0, "cannot certify": 0, "pass": 0}
    for _ in range(sims):
        frame = _group_frame(rng, sizes, sensitivities, rho)
        codes, _ = patient_codes(frame["patient_id"])
        positive = frame["finding"].to_numpy() == 1.0
        flagged = frame[prob_column("finding")].to_numpy() >= 0.5
        overall = rate_estimates(positive, flagged, codes, cfg.confidence, ["sensitivity", "miss_rate"])
        attributes = evaluate_subgroups(frame, "finding", 0.5, cfg, codes=codes)
        for attr in attributes:
            summarise_attribute(attr, overall, cfg)
        block = ClassResult(
            "finding",
            OperatingPoint.given(0.5, "simulation"),
            Counts(0, 0, 0, 0, 0, 0, 0, 0),
            overall,
            {},
            Calibration(None, 10, 1.0, []),
            attributes={a.name: a for a in attributes},
        )
        tally[check_gate({"finding": block}, cfg).verdict] += 1
    return {k: v / sims for k, v in tally.items()}


def policy_success(
    positive_patients: int,
    target: float,
    rule: str,
    sims: int,
    seed: int,
    sensitivity: float = 0.9,
    rho: float = 0.5,
) -> dict[str, float]:
    """Share of validation draws in which the chosen threshold's *true* sensitivity reaches ``target``
    (and the share that ended in a recorded fallback)."""
    from xraytriage.config import OperatingPointConfig
    from xraytriage.evaluation.thresholds import choose_operating_point

    cfg = OperatingPointConfig(policy="target_sensitivity", target=target, rule=rule)
    rng = np.random.default_rng(seed)
    reached = fallback = 0
    for _ in range(sims):
        scores, codes = positive_scores(rng, positive_patients, sensitivity, rho)
        prob = 1.0 / (1.0 + np.exp(-scores))
        op = choose_operating_point(np.ones(prob.size), prob, cfg, codes)
        reached += true_sensitivity(op.threshold, sensitivity) >= target
        fallback += op.fallback
    return {"reached": reached / sims, "fallback": fallback / sims}
