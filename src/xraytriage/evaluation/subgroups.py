"""Who does the model fail? Per-subgroup metrics with patient-bootstrap intervals.

Subgroups are any columns of the prediction table named in ``evaluation.subgroups`` (manifest
columns or DICOM attributes copied into it: ``sex``, ``view``, ``site``, ``manufacturer``, ...),
plus ``age_band`` derived from ``age`` with ``evaluation.age_bands`` edges, plus the intersections in
``evaluation.intersections`` (for example ``[sex, age_band]``). Missing values form their own group
``unknown``: shown in every table, but left out of gaps, the reference comparison and the gate unless
``evaluation.fairness.include_unknown``. A column that is not in the table is reported as
*unavailable* (not an error), and a group that is smaller than ``evaluation.min_group_size`` or has no
positive or no negative case is reported as *insufficient data* with its counts — never dropped, never
a bare 0 or NaN. In the full evaluation a group is also insufficient when its positive (or negative)
scans come from fewer than ``min_group_patients`` (default 2) patients.

The per-epoch fast path (:func:`subgroup_sensitivity`) uses fairlearn's ``MetricFrame``; the full
evaluation gives every rate a cluster-adjusted Wilson interval and AUROC its score interval
(:mod:`xraytriage.evaluation.rates`); fairlearn is the oracle they are tested against.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xraytriage.columns import prob_column
from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.identifiers import identifier_reason
from xraytriage.evaluation.metrics import known_mask
from xraytriage.evaluation.rates import auroc_estimate, rate_counts, rate_estimates
from xraytriage.evaluation.results import AttributeResult, GroupRow

UNKNOWN = "unknown"
OK = "ok"
INSUFFICIENT = "insufficient data"
UNAVAILABLE = "unavailable"
#: Metrics reported per group with an interval.
GROUP_METRICS = ("sensitivity", "miss_rate", "specificity", "fpr", "ppv", "auroc")


def _edge(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def age_band_labels(edges: list[float]) -> list[str]:
    """``[0, 40, 60, 80, 200]`` -> ``["0-40", "40-60", "60-80", "80+"]`` (last edge >= 120 shown as +)."""
    labels = [f"{_edge(a)}-{_edge(b)}" for a, b in itertools.pairwise(edges)]
    if edges[-1] >= 120:
        labels[-1] = f"{_edge(edges[-2])}+"
    return labels


def age_bands(age: pd.Series, edges: list[float]) -> pd.Series:
    """Age in years -> band label; bands are [low, high); missing or out-of-range age -> ``unknown``."""
    values = pd.to_numeric(age, errors="coerce").astype(float)
    cut = pd.cut(values, bins=list(edges), right=False, labels=age_band_labels(list(edges)))
    return cut.astype(object).where(cut.notna(), UNKNOWN).astype(str)


@dataclass
class SubgroupSpec:
    """One attribute (or intersection of attributes) and whether the table can support it."""

    name: str
    columns: list[str]
    available: bool
    reason: str = ""


def intersection_name(columns: list[str]) -> str:
    return " & ".join(columns)


def _attribute(frame: pd.DataFrame, name: str, cfg: EvaluationConfig) -> pd.Series | str:
    """The attribute's string values (missing -> ``unknown``), or why it is unavailable."""
    why = identifier_reason(frame, name)
    if why is not None:
        return f"{why}; identifier columns are never used as subgroups"
    if name == "age_band" and "age_band" not in frame.columns:
        if "age" not in frame.columns:
            return "no 'age' column to derive age bands from"
        return age_bands(frame["age"], list(cfg.age_bands))
    if name not in frame.columns:
        return f"column '{name}' is not in the predictions"
    col = frame[name].astype("string").str.strip()
    return col.where(col.notna() & (col != ""), UNKNOWN).astype(str)


def resolve_subgroups(frame: pd.DataFrame, cfg: EvaluationConfig) -> tuple[pd.DataFrame, list[SubgroupSpec]]:
    """String-valued attribute columns (``unknown`` for missing) and the spec of every requested one."""
    attrs = pd.DataFrame(index=frame.index)
    reasons: dict[str, str] = {}
    specs: list[SubgroupSpec] = []

    def ensure(name: str) -> bool:
        if name in attrs.columns:
            return True
        if name not in reasons:
            value = _attribute(frame, name, cfg)
            if isinstance(value, str):
                reasons[name] = value
            else:
                attrs[name] = value
                return True
        return False

    for name in dict.fromkeys(cfg.subgroups):
        available = ensure(name)
        specs.append(SubgroupSpec(name, [name], available, "" if available else reasons[name]))
    for combo in cfg.intersections:
        columns = list(dict.fromkeys(combo))
        name = intersection_name(columns)
        missing = [c for c in columns if not ensure(c)]
        if missing:
            why = "; ".join(f"{c}: {reasons[c]}" for c in missing)
            specs.append(SubgroupSpec(name, columns, False, f"needs unavailable attribute(s): {why}"))
        else:
            specs.append(SubgroupSpec(name, columns, True))
    return attrs, specs


def group_label(columns: list[str], values: tuple[str, ...]) -> str:
    """``sex=F`` or ``sex=F & age_band=60-80``."""
    return " & ".join(f"{c}={v}" for c, v in zip(columns, values))


def group_keys(attrs: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Vectorised :func:`group_label` for every row."""
    key = None
    for column in columns:
        part = f"{column}=" + attrs[column].astype(object).astype(str)
        key = part if key is None else key + " & " + part
    return np.asarray(key, dtype=object)


def _m_counts(y_true, y_pred) -> np.ndarray:
    """[n, positives, true positives, false positives] of one group (rates are derived from these)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = np.sum((y_true == 1) & (y_pred == 1))
    fp = np.sum((y_true == 0) & (y_pred == 1))
    return np.array([y_true.size, np.sum(y_true == 1), tp, fp], dtype=float)


def _m_auroc(y_true, y_pred, score) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        return math.nan
    return float(roc_auc_score(y_true, score))


def group_point_estimates(
    y: np.ndarray, prob: np.ndarray, threshold: float, attrs: pd.DataFrame, columns: list[str]
) -> pd.DataFrame:
    """fairlearn ``MetricFrame`` over known rows; index = group label, one column per metric."""
    from fairlearn.metrics import MetricFrame

    pred = (prob >= threshold).astype(int)
    columns_out = [
        "n",
        "positives",
        "negatives",
        "tp",
        "fp",
        "sensitivity",
        "miss_rate",
        "specificity",
        "fpr",
        "ppv",
        "auroc",
    ]
    if y.size == 0:
        return pd.DataFrame(columns=columns_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = MetricFrame(
            metrics={"counts": _m_counts, "auroc": _m_auroc},
            y_true=y.astype(int),
            y_pred=pred,
            sensitive_features={c: attrs[c].to_numpy(dtype=object) for c in columns},
            sample_params={"auroc": {"score": prob}},
        )
    by_group = mf.by_group
    present = by_group["counts"].map(lambda v: isinstance(v, np.ndarray))
    by_group = by_group[present]
    keys = by_group.index if isinstance(by_group.index, pd.MultiIndex) else [(k,) for k in by_group.index]
    counts = np.vstack(by_group["counts"].to_list()) if len(by_group) else np.zeros((0, 4))
    n, pos, tp, fp = counts.T
    neg = n - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        table = pd.DataFrame(
            {
                "n": n,
                "positives": pos,
                "negatives": neg,
                "tp": tp,
                "fp": fp,
                "sensitivity": np.where(pos > 0, tp / pos, np.nan),
                "miss_rate": np.where(pos > 0, (pos - tp) / pos, np.nan),
                "specificity": np.where(neg > 0, (neg - fp) / neg, np.nan),
                "fpr": np.where(neg > 0, fp / neg, np.nan),
                "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
                "auroc": by_group["auroc"].astype(float).to_numpy(),
            },
            index=[group_label(columns, tuple(map(str, k))) for k in keys],
        )
    table = table[table["n"] > 0]
    return table


def _status(n: int, positives: int, negatives: int, min_size: int) -> str:
    if n < min_size:
        return f"{INSUFFICIENT}: {n} scans with known label < min_group_size {min_size}"
    if positives == 0:
        return f"{INSUFFICIENT}: no positive case"
    if negatives == 0:
        return f"{INSUFFICIENT}: no negative case"
    return OK


def subgroup_sensitivity(
    frame: pd.DataFrame, label: str, threshold: float, cfg: EvaluationConfig
) -> dict[str, float | None]:
    """``{"sex=F": 0.81, "age_band=60-80": None, ...}`` — fast, no bootstrap (for per-epoch logging).

    ``None`` marks an insufficient group (too small, or no positive/negative case); unavailable
    attributes are left out.
    """
    attrs, specs = resolve_subgroups(frame, cfg)
    y = pd.to_numeric(frame[label], errors="coerce").to_numpy(float)
    prob = pd.to_numeric(frame[prob_column(label)], errors="coerce").to_numpy(float)
    keep = known_mask(y, prob)
    out: dict[str, float | None] = {}
    for spec in specs:
        if not spec.available:
            continue
        table = group_point_estimates(y[keep], prob[keep], threshold, attrs.loc[keep], spec.columns)
        for group in _present_groups(attrs, spec.columns):
            if group not in table.index:
                out[group] = None
                continue
            row = table.loc[group]
            status = _status(int(row["n"]), int(row["positives"]), int(row["negatives"]), cfg.min_group_size)
            out[group] = float(row["sensitivity"]) if status == OK else None
    return out


def _present_groups(attrs: pd.DataFrame, columns: list[str]) -> list[str]:
    return [label for label, _ in _present_group_values(attrs, columns)]


def _present_group_values(attrs: pd.DataFrame, columns: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    combos = attrs[columns].drop_duplicates().sort_values(columns)
    out = []
    for row in combos.itertuples(index=False):
        values = tuple(map(str, row))
        out.append((group_label(columns, values), values))
    return out


class _GroupBuilder:
    """The rows of one class: known labels, flags at the threshold and patient codes, shared by every
    attribute's groups."""

    def __init__(
        self, frame: pd.DataFrame, label: str, threshold: float, cfg: EvaluationConfig, codes: np.ndarray
    ):
        y = pd.to_numeric(frame[label], errors="coerce").to_numpy(float)
        self.prob = pd.to_numeric(frame[prob_column(label)], errors="coerce").to_numpy(float)
        self.known = known_mask(y, self.prob)
        self.positive = y == 1.0
        self.flagged = self.prob >= threshold
        self.codes = codes
        self.cfg = cfg

    def row(self, attribute: str, group: str, values: tuple[str, ...], members: np.ndarray) -> GroupRow:
        cfg = self.cfg
        rows = members[self.known[members]]
        positive, codes = self.positive[rows], self.codes[rows]
        n, pos = int(rows.size), int(positive.sum())
        status = _status(n, pos, n - pos, cfg.min_group_size)
        pos_patients = np.unique(codes[positive]).size
        neg_patients = np.unique(codes[~positive]).size
        if status == OK and min(pos_patients, neg_patients) < cfg.min_group_patients:
            which = "positive" if pos_patients < neg_patients else "negative"
            status = (
                f"{INSUFFICIENT}: {which} cases from {min(pos_patients, neg_patients)} patient(s) "
                f"< min_group_patients {cfg.min_group_patients}"
            )
        unknown = UNKNOWN in values
        result = GroupRow(
            attribute=attribute,
            group=group,
            status=status,
            n=n,
            patients=int(np.unique(codes).size),
            positives=pos,
            negatives=n - pos,
            unknown=unknown,
            compared=not unknown or cfg.fairness.include_unknown,
        )
        if status == OK:
            flagged = self.flagged[rows]
            rates = [m for m in GROUP_METRICS if m != "auroc"]
            result.metrics = rate_estimates(positive, flagged, codes, cfg.confidence, rates)
            result.metrics["auroc"] = auroc_estimate(positive, self.prob[rows], codes, cfg.confidence)
            result.miss = rate_counts("miss_rate", positive, flagged, codes)
        return result


def evaluate_subgroups(
    frame: pd.DataFrame,
    label: str,
    threshold: float,
    cfg: EvaluationConfig,
    *,
    codes: np.ndarray,
) -> list[AttributeResult]:
    """Per attribute, every present group with its counts and metrics (cluster-adjusted intervals).

    ``codes`` are patient codes aligned with ``frame`` rows. Gaps, the reference group and the gate
    are added by :mod:`xraytriage.evaluation.fairness`.
    """
    attrs, specs = resolve_subgroups(frame, cfg)
    builder = _GroupBuilder(frame, label, threshold, cfg, codes)
    results: list[AttributeResult] = []
    for spec in specs:
        if not spec.available:
            results.append(AttributeResult(spec.name, available=False, reason=spec.reason))
            continue
        keys = group_keys(attrs, spec.columns)
        members = pd.Series(np.arange(len(keys))).groupby(keys).indices
        groups = [
            builder.row(spec.name, name, values, np.asarray(members[name]))
            for name, values in _present_group_values(attrs, spec.columns)
        ]
        results.append(AttributeResult(spec.name, available=True, groups=groups))
    return results
