"""In-scope and out-of-scope scans reported apart: the model's figures hold for its validated scope.

When the predictions carry ``in_scope`` (from ``score`` or from ``evaluate`` on a bundle with a
validated scope) and both values occur, a ``scope`` attribute with the groups ``in_scope`` and
``out_of_scope`` joins the subgroup tables, with the same counts, metrics and intervals. It is
reported, never gated: out-of-scope scans lie outside the population the fairness limits speak for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xraytriage.columns import IN_SCOPE
from xraytriage.config import EvaluationConfig

SCOPE_ATTRIBUTE = "scope"
IN_SCOPE_GROUP = IN_SCOPE
OUT_OF_SCOPE_GROUP = "out_of_scope"


def add_scope_group(frame: pd.DataFrame, cfg: EvaluationConfig) -> tuple[pd.DataFrame, EvaluationConfig]:
    """``frame`` with a ``scope`` column and ``cfg`` with it among the subgroups, when both in- and
    out-of-scope scans are present; otherwise both unchanged."""
    if IN_SCOPE not in frame.columns:
        return frame, cfg
    values = pd.to_numeric(frame[IN_SCOPE], errors="coerce")
    if set(values.dropna().unique()) != {0, 1}:  # a 0/1 flag, both values present (0.5 is neither)
        return frame, cfg
    out = frame.copy()
    out[SCOPE_ATTRIBUTE] = np.where(
        values == 1, IN_SCOPE_GROUP, np.where(values == 0, OUT_OF_SCOPE_GROUP, "unknown")
    )
    if SCOPE_ATTRIBUTE in cfg.subgroups:
        return out, cfg
    return out, cfg.model_copy(update={"subgroups": [*cfg.subgroups, SCOPE_ATTRIBUTE]})
