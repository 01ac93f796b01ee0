"""Typed results of ``monitor``: one :class:`Check` per window x group x label x measure, and the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_NAME = "xraytriage.monitor"
SCHEMA_VERSION = 1

ALERT = "alert"
SHIFT_BELOW_LIMIT = "shift below limit"
NO_SHIFT = "no shift seen"
CANNOT_TELL = "cannot tell"

# measure -> (what it is, what the value means)
MEASURES = {
    "probability_shift": "PSI of the class probability against validation (KS test)",
    "flagged_rate": "share of scans flagged at the operating point, against validation's",
    "expected_miss_rate": "expected miss rate from calibrated probabilities (CBPE), against validation's",
    "out_of_scope_rate": "share of scans out of the validated scope, against validation's",
    "ood_shift": "PSI of the OOD score against validation (one-sided KS test: higher scores)",
}


@dataclass
class Check:
    window: str
    attribute: str
    group: str
    label: str  # '' for measures of the scan, not of a class
    measure: str
    n: int
    value: float | None = None
    value_low: float | None = None
    value_high: float | None = None
    reference: float | None = None
    reference_low: float | None = None
    reference_high: float | None = None
    effect: float | None = None  # what the limit is compared with
    limit: float | None = None
    ks_statistic: float | None = None  # shift measures: the KS test's D
    p_value: float | None = None
    q_value: float | None = None  # Benjamini-Hochberg adjusted over every check of the run
    verdict: str = CANNOT_TELL
    why: str = ""

    @property
    def where(self) -> str:
        group = "all scans" if self.attribute == "all" else f"{self.attribute}={self.group}"
        return f"{group}, window {self.window}"

    @property
    def what(self) -> str:
        return f"{self.measure.replace('_', ' ')}" + (f" of {self.label}" if self.label else "")


@dataclass
class MonitorResult:
    model_id: str
    window: str
    by: list[str]
    files: list[str]
    rows_read: int
    duplicates_dropped: int
    scans: int
    reference_scans: int
    false_alert_rate: float
    tests: int
    checks: list[Check]
    warnings: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def alerts(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == ALERT]

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["alerts"] = [dataclasses.asdict(c) for c in self.alerts]
        return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "measures": MEASURES, **body}
