"""When a difference is an alert, and how sure that is.

Hundreds of checks run at once (windows x groups x labels x measures), so a per-check 5 % level
would raise alerts on plain noise every night. Every check's p-value is adjusted with
Benjamini-Hochberg (``scipy.stats.false_discovery_control``) over the whole run; a check alerts only
when its adjusted q-value is at most ``monitor.false_alert_rate`` **and** its difference reaches the
configured limit (a real but clinically irrelevant shift in 50,000 scans is not an alert). When every
check is in fact unchanged (a fresh draw of the validation population), BH keeps the chance of any
alert at most ``false_alert_rate``; the limits make it smaller still.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from xraytriage.monitoring.results import ALERT, CANNOT_TELL, NO_SHIFT, SHIFT_BELOW_LIMIT, Check


def bh_q_values(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: q_(i) = min over j >= i of p_(j) m / j."""
    if len(p_values) == 0:
        return np.zeros(0)
    return np.asarray(stats.false_discovery_control(np.asarray(p_values, dtype=float), method="bh"))


def decide(checks: list[Check], false_alert_rate: float) -> int:
    """Fill q-value and verdict of every check in place; returns how many checks were tested."""
    tested = [c for c in checks if c.p_value is not None]
    for check, q in zip(tested, bh_q_values([c.p_value for c in tested])):
        check.q_value = float(q)
        real = q <= false_alert_rate
        big = check.effect is not None and check.limit is not None and check.effect >= check.limit
        sure = f"q={q:.2g} {'<=' if real else '>'} {false_alert_rate:g} (BH over {len(tested)} checks)"
        if real and big:
            check.verdict = ALERT
            check.why = f"difference {check.effect:.3f} >= limit {check.limit:g}; {sure}"
        elif real:
            check.verdict = SHIFT_BELOW_LIMIT
            check.why = f"real difference {check.effect:.3f} below limit {check.limit:g}; {sure}"
        else:
            check.verdict = NO_SHIFT
            check.why = f"difference {check.effect:.3f} within noise; {sure}"
    for check in checks:
        if check.p_value is None and check.verdict != CANNOT_TELL:
            check.verdict = CANNOT_TELL
    return len(tested)
