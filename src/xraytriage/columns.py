"""Column names of the tables every stage shares: scores.csv, predictions.csv and the frames between.

One home for the convention (``prob_<label>``, ``flag_<label>``, the scope columns), so training,
evaluation, scoring and monitoring cannot drift apart. Imports nothing from the package, so any layer
can use it.
"""

from __future__ import annotations

from collections.abc import Iterable

# scope columns of scores.csv, in order, right after the flags (docs/scoring.md#validated-scope)
IN_SCOPE = "in_scope"  # 1/0
SCOPE_REASONS = "scope_reasons"  # "" when in scope; see xraytriage.scope.check for the format
OOD_SCORE = "ood_score"  # Mahalanobis distance; "" when the bundle has no image reference
STUDY_DATE = "study_date"  # ISO YYYY-MM-DD from StudyDate, "" when absent
VIEW = "view"
MANUFACTURER = "manufacturer"
SITE = "site"  # InstitutionName, as prepare records sites
SCOPE_COLUMNS = [IN_SCOPE, SCOPE_REASONS, OOD_SCORE, STUDY_DATE, VIEW, MANUFACTURER, SITE]
# per-label columns of scores.csv and of every predictions table (training, evaluation, monitoring)
PROB_PREFIX = "prob_"  # calibrated probability of the label
FLAG_PREFIX = "flag_"  # 1 when the probability reaches the label's operating threshold


def prob_column(label: str) -> str:
    """``prob_<label>``: the column holding a label's probability."""
    return f"{PROB_PREFIX}{label}"


def flag_column(label: str) -> str:
    """``flag_<label>``: the column holding a label's 0/1 decision at its operating threshold."""
    return f"{FLAG_PREFIX}{label}"


def prob_labels(columns: Iterable[object]) -> list[str]:
    """The labels that have a probability column, in column order."""
    return [str(c)[len(PROB_PREFIX) :] for c in columns if str(c).startswith(PROB_PREFIX)]
