"""The monitor's one step: every window x group of the deployed scores against the validation reference.

Class measures (probability shift, flagged rate, expected miss rate) use the in-scope scans when
``in_scope`` is known (the reference describes in-scope validation scans; out-of-scope ones are counted
by their own measure); the OOD shift uses every scan.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from xraytriage.columns import IN_SCOPE, OOD_SCORE, prob_column
from xraytriage.config import MonitorConfig
from xraytriage.monitoring import drift
from xraytriage.monitoring.alerts import decide
from xraytriage.monitoring.deployed import DeployedScores
from xraytriage.monitoring.performance import ExpectedMissRate, expected_miss_rate, wilson_counts
from xraytriage.monitoring.reference import ValidationReference
from xraytriage.monitoring.results import CANNOT_TELL, Check, MonitorResult
from xraytriage.monitoring.windows import Cell, cells

ASSUMPTIONS = [
    "expected miss rate (CBPE) assumes the probabilities stay calibrated on the deployed scans; "
    "a shift that breaks calibration (a new scanner) is caught by the probability and OOD shift checks",
    "checks compare independent scans: repeated images of one patient make intervals a little narrow",
    "flagged-rate and out-of-scope tests compare with validation's own counts (Fisher's exact test), "
    "so the validation sample's uncertainty is included",
]


class CellChecks:
    """The checks of one cell; one method per measure."""

    def __init__(
        self,
        cell: Cell,
        ref: ValidationReference,
        cfg: MonitorConfig,
        rng: np.random.Generator,
        ref_miss: dict[str, ExpectedMissRate | None],
    ):
        self.cell, self.ref, self.cfg, self.rng, self.ref_miss = cell, ref, cfg, rng, ref_miss

    def _check(self, label: str, measure: str, n: int) -> Check:
        return Check(self.cell.window, self.cell.attribute, self.cell.group, label, measure, n)

    def _enough(self, check: Check, n: int) -> bool:
        if n < self.cfg.min_scans:
            check.verdict, check.why = (
                CANNOT_TELL,
                f"{n} scans, fewer than monitor.min_scans={self.cfg.min_scans}",
            )
            return False
        return True

    def probability_shift(self, label: str, probs: np.ndarray) -> Check:
        check = self._check(label, "probability_shift", len(probs))
        check.reference, check.limit = 0.0, self.cfg.psi_limit
        if self._enough(check, len(probs)):
            result = drift.shift(self.ref.probabilities[label], probs, self.cfg.psi_bins)
            check.value = check.effect = result.psi
            check.p_value = result.p_value
            check.ks_statistic = result.ks_statistic
        return check

    def flagged_rate(self, label: str, probs: np.ndarray) -> Check:
        n, k = len(probs), int((probs >= self.ref.thresholds[label]).sum())
        n0, k0 = len(self.ref.probabilities[label]), self.ref.flagged(label)
        check = self._rates(self._check(label, "flagged_rate", n), k, n, k0, n0, self.cfg.flag_rate_limit)
        if self._enough(check, n):
            check.effect = abs(k / n - k0 / n0)
            check.p_value = float(stats.fisher_exact([[k, n - k], [k0, n0 - k0]]).pvalue)
        return check

    def _rates(self, check: Check, k: int, n: int, k0: int, n0: int, limit: float) -> Check:
        """Deployed k of n against validation's k0 of n0, each with its Wilson interval."""
        check.reference = k0 / n0
        check.reference_low, check.reference_high = wilson_counts(k0, n0, self.cfg.confidence)
        check.limit = limit
        if n:
            check.value = k / n
            check.value_low, check.value_high = wilson_counts(k, n, self.cfg.confidence)
        return check

    def expected_miss(self, label: str, probs: np.ndarray) -> Check:
        check = self._check(label, "expected_miss_rate", len(probs))
        ref = self.ref_miss[label]
        check.limit = self.cfg.miss_rate_margin
        if ref is not None:
            check.reference, check.reference_low, check.reference_high = (
                ref.miss_rate,
                ref.miss_rate_low,
                ref.miss_rate_high,
            )
        if not self._enough(check, len(probs)):
            return check
        est = expected_miss_rate(
            probs, self.ref.thresholds[label], self.cfg.simulations, self.cfg.confidence, self.rng
        )
        if est is None or ref is None:
            check.why = "no positive expected: miss rate undefined"
            return check
        check.value, check.value_low, check.value_high = est.miss_rate, est.miss_rate_low, est.miss_rate_high
        check.effect = est.miss_rate - ref.miss_rate
        check.p_value = est.chance_at_most(ref.miss_rate + self.cfg.miss_rate_margin)
        return check

    def out_of_scope(self, in_scope: np.ndarray) -> Check:
        known = in_scope[~np.isnan(in_scope)]
        n, k = len(known), int((known == 0).sum())
        n0 = max(self.ref.n_scans, 1)
        k0 = round(self.ref.out_of_scope_rate * n0)
        check = self._check("", "out_of_scope_rate", n)
        check = self._rates(check, k, n, k0, n0, self.cfg.out_of_scope_limit)
        if self._enough(check, n):
            check.effect = k / n - k0 / n0
            check.p_value = float(
                stats.fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater").pvalue
            )
        return check

    def ood(self, scores: np.ndarray) -> Check:
        scores = scores[~np.isnan(scores)]
        check = self._check("", "ood_shift", len(scores))
        check.reference, check.limit = 0.0, self.cfg.psi_limit
        if self._enough(check, len(scores)):
            result = drift.shift(self.ref.ood_scores, scores, self.cfg.psi_bins, alternative="higher")
            check.value = check.effect = result.psi
            check.p_value = result.p_value
            check.ks_statistic = result.ks_statistic
        return check


def _cell_checks(cell: Cell, deployed: DeployedScores, checker: CellChecks) -> list[Check]:
    rows = deployed.table.iloc[cell.rows]
    in_scope = rows[IN_SCOPE].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    scored = rows[in_scope != 0] if deployed.has_in_scope else rows  # unknown scope counts as in scope
    ref = checker.ref
    out: list[Check] = []
    for label in ref.labels:
        probs = scored[prob_column(label)].to_numpy(dtype=float)
        out += [
            checker.probability_shift(label, probs),
            checker.flagged_rate(label, probs),
            checker.expected_miss(label, probs),
        ]
    if deployed.has_in_scope:
        out.append(checker.out_of_scope(in_scope))
    if deployed.has_ood and ref.ood_scores.size:
        out.append(checker.ood(rows[OOD_SCORE].to_numpy(dtype=float)))
    return out


def monitor_scores(
    deployed: DeployedScores,
    ref: ValidationReference,
    cfg: MonitorConfig,
    on_cell: Callable[[Cell], None] | None = None,
) -> MonitorResult:
    """Every check of every cell, then the alert decision over all of them together."""
    rng = np.random.default_rng(cfg.seed)
    ref_miss = {
        label: expected_miss_rate(
            ref.probabilities[label], ref.thresholds[label], cfg.simulations, cfg.confidence, rng
        )
        for label in ref.labels
    }
    checks: list[Check] = []
    for cell in cells(deployed.table, cfg.window, cfg.by):
        checks += _cell_checks(cell, deployed, CellChecks(cell, ref, cfg, rng, ref_miss))
        if on_cell is not None:
            on_cell(cell)
    warnings = list(deployed.warnings)
    if deployed.has_ood and not ref.ood_scores.size:
        warnings.append("the bundle's validation reference has no OOD scores: OOD shift not checked")
    tests = decide(checks, cfg.false_alert_rate)
    return MonitorResult(
        model_id=ref.model_id,
        window=cfg.window,
        by=list(cfg.by),
        files=deployed.files,
        rows_read=deployed.rows_read,
        duplicates_dropped=deployed.duplicates_dropped,
        scans=len(deployed.table),
        reference_scans=ref.n_scans,
        false_alert_rate=cfg.false_alert_rate,
        tests=tests,
        checks=checks,
        warnings=warnings,
        assumptions=ASSUMPTIONS,
        settings=cfg.model_dump(mode="json"),
    )
