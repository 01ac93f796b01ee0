"""Subgroup metrics and gaps agree with fairlearn; small or one-class groups are flagged, never dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    equalized_odds_difference,
    false_negative_rate_difference,
    true_positive_rate,
)
from sklearn.metrics import recall_score, roc_auc_score

from xraytriage.config import EvaluationConfig, FairnessGateConfig
from xraytriage.evaluation.bootstrap import patient_codes
from xraytriage.evaluation.fairness import check_gate
from xraytriage.evaluation.metrics import binary_metrics
from xraytriage.evaluation.subgroups import (
    age_band_labels,
    age_bands,
    evaluate_subgroups,
    subgroup_sensitivity,
)


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    site = rng.choice(["A", "B", "C", "D", "E"], n, p=[0.4, 0.3, 0.2, 0.07, 0.03])
    y = (rng.random(n) < 0.35).astype(float)
    y[site == "D"] = 1.0  # a group with no negative case
    prob = np.round(np.clip(0.35 * y + rng.random(n) * 0.65 + 0.1 * (site == "B"), 0, 1), 2)  # ties
    return pd.DataFrame(
        {
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
            "site": site,
            "age": rng.uniform(18, 95, n),
            "finding": y,
            "prob_finding": prob,
        }
    )


def _run(frame: pd.DataFrame, cfg: EvaluationConfig, threshold: float = 0.5):
    codes, n = patient_codes(frame["patient_id"])
    overall = binary_metrics(frame["finding"], frame["prob_finding"], threshold)
    return evaluate_subgroups(frame, "finding", threshold, cfg, codes=codes, n_patients=n, overall=overall)


@pytest.mark.parametrize("seed", range(6))
def test_group_metrics_and_gaps_match_fairlearn(seed):
    rng = np.random.default_rng(seed)
    frame = _frame(rng, int(rng.integers(80, 400)))
    cfg = EvaluationConfig(subgroups=["site", "sex"], min_group_size=8, bootstrap_iterations=50)
    result = _run(frame, cfg)
    table = result.table
    y = frame["finding"].to_numpy().astype(int)
    pred = (frame["prob_finding"].to_numpy() >= 0.5).astype(int)
    mf = MetricFrame(
        metrics={
            "tpr": true_positive_rate,
            "tnr": lambda a, b: recall_score(a, b, pos_label=0, zero_division=np.nan),
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=frame["site"],
    )
    ok_sites = []
    for _, row in table[table["attribute"] == "site"].iterrows():
        site = row["group"].split("=", 1)[1]
        members = frame["site"] == site
        assert row["n"] == members.sum()  # every present group is listed
        if row["status"] == "ok":
            ok_sites.append(site)
            assert row["sensitivity"] == pytest.approx(mf.by_group.loc[site, "tpr"])
            assert row["specificity"] == pytest.approx(mf.by_group.loc[site, "tnr"])
            assert row["auroc"] == pytest.approx(roc_auc_score(y[members], frame["prob_finding"][members]))
            assert row["sensitivity_ci_low"] <= row["sensitivity"] <= row["sensitivity_ci_high"]
        else:
            assert row["status"].startswith("insufficient data")
            assert row["sensitivity"] is None or pd.isna(row["sensitivity"])
    d_rows = table[(table["attribute"] == "site") & (table["group"] == "site=D")]
    assert d_rows["status"].iloc[0] in ("insufficient data: no negative case",) or d_rows["n"].iloc[0] < 8
    summary = result.summaries["site"]
    if len(ok_sites) >= 2:
        keep = frame["site"].isin(ok_sites).to_numpy()
        sf = frame["site"][keep]
        assert summary["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y[keep], pred[keep], sensitive_features=sf)
        )
        assert summary["miss_rate_gap"]["value"] == pytest.approx(
            false_negative_rate_difference(y[keep], pred[keep], sensitive_features=sf)
        )
        worst = table[(table["attribute"] == "site") & (table["is_worst"] == True)]  # noqa: E712
        assert worst["miss_rate"].iloc[0] == pytest.approx(summary["worst_group_miss_rate"]["value"])
        lo, hi = summary["miss_rate_gap"]["ci_low"], summary["miss_rate_gap"]["ci_high"]
        assert lo is None or lo <= hi


def test_unavailable_attribute_and_tiny_groups_are_reported():
    rng = np.random.default_rng(1)
    frame = _frame(rng, 120)
    frame["scanner_serial"] = [f"SN{i:04d}" for i in range(len(frame))]  # one value per scan
    cfg = EvaluationConfig(
        subgroups=["sex", "manufacturer", "scanner_serial"],
        intersections=[["sex", "site"]],
        min_group_size=15,
        bootstrap_iterations=20,
    )
    table = _run(frame, cfg).table
    status = dict(zip(table["attribute"] + "|" + table["group"], table["status"]))
    assert status["manufacturer|"].startswith("unavailable: column 'manufacturer'")
    assert status["scanner_serial|"].startswith(
        "unavailable: has 120 different values"
    )  # never a group per scan
    assert not table["group"].str.contains("SN0").any()
    with pytest.raises(ValueError, match="'patient_id' is an identifier column"):
        EvaluationConfig(subgroups=["sex", "patient_id"])  # refused by name before any work
    inter = table[table["attribute"] == "sex & site"]
    assert len(inter) == frame.groupby(["sex", "site"]).ngroups
    assert inter["group"].str.match(r"sex=[FM] & site=[A-E]").all()
    tiny = inter[inter["n"] < 15]
    assert len(tiny) and tiny["status"].str.startswith("insufficient data").all()
    assert tiny["sensitivity"].isna().all()  # no bare number for an insufficient group


def test_subgroup_sensitivity_fast_path():
    rng = np.random.default_rng(2)
    frame = _frame(rng, 300)
    cfg = EvaluationConfig(subgroups=["sex", "site", "age_band", "view"], min_group_size=10)
    values = subgroup_sensitivity(frame, "finding", 0.5, cfg)
    for sex in ("F", "M"):
        part = frame[frame["sex"] == sex]
        expected = recall_score(part["finding"].astype(int), (part["prob_finding"] >= 0.5).astype(int))
        assert values[f"sex={sex}"] == pytest.approx(expected)
    assert values["site=D"] is None  # no negative case
    assert not any(k.startswith("view=") for k in values)  # unavailable attribute: left out
    assert any(k.startswith("age_band=") for k in values)


def test_age_bands():
    assert age_band_labels([0, 40, 60, 80, 200]) == ["0-40", "40-60", "60-80", "80+"]
    bands = age_bands(pd.Series([39.9, 40, 79, 80, None, 250, -1]), [0, 40, 60, 80, 200])
    assert list(bands) == ["0-40", "40-60", "60-80", "80+", "unknown", "unknown", "unknown"]
    assert age_band_labels([18, 50.5, 90]) == ["18-50.5", "50.5-90"]


def test_gate_names_group_metric_and_limit():
    rng = np.random.default_rng(3)
    frame = _frame(rng, 400)
    frame.loc[frame["sex"] == "F", "prob_finding"] *= 0.6  # the model misses more findings in women
    cfg = EvaluationConfig(subgroups=["sex"], bootstrap_iterations=20)
    result = _run(frame, cfg)
    gate = FairnessGateConfig(max_miss_rate_gap=0.05, max_worst_group_miss_rate=0.1)
    failures, unchecked = check_gate({"finding": result.summaries}, gate)
    assert unchecked == []
    assert any("sex=F" in f and "miss-rate gap" in f and "max_miss_rate_gap" in f for f in failures)
    assert any("worst-group miss rate" in f and "sex=F" in f for f in failures)
    assert check_gate({"finding": result.summaries}, FairnessGateConfig(max_miss_rate_gap=0.99)) == ([], [])
