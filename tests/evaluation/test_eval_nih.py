"""Evaluation on the real NIH ChestX-ray14 sample (../shared/data/nih1000_64px) with its real sex, age,
view and patient columns. No model: a deterministic synthetic score correlated with the labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, true_positive_rate

from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.audit import audit_manifest
from xraytriage.evaluation.report import LeakageError, evaluate_predictions, subgroup_table


def nih_predictions(folder) -> pd.DataFrame:
    raw = pd.read_csv(folder / "nih1000_64px" / "labels_with_demographics.csv")
    finding = (raw["Finding Labels"] != "No Finding").astype(float)
    rng = np.random.default_rng(2024)
    logit = (
        1.6 * (2 * finding - 1)
        + rng.normal(0, 1.3, len(raw))
        - 0.5 * (raw["View Position"] == "AP") * finding
    )
    return pd.DataFrame(
        {
            "path": raw["path"],
            "patient_id": raw["Patient ID"].astype(str),
            "split": raw["split"].replace({"valid": "val"}),
            "sex": raw["Patient Gender"],
            "age": raw["Patient Age"].astype(float),
            "view": raw["View Position"],
            "finding": finding,
            "prob_finding": 1 / (1 + np.exp(-logit)),
        }
    )


def test_nih1000_report(shared_data, tmp_path):
    preds = nih_predictions(shared_data)
    test, val = preds[preds["split"] == "test"], preds[preds["split"] == "val"]
    cfg = EvaluationConfig(
        intersections=[["sex", "age_band"]],
        bootstrap_iterations=300,
        fairness={"max_worst_group_miss_rate": 0.5},
    )
    shared = set(test["patient_id"]) & set(val["patient_id"])
    assert len(shared) == 9  # the sample's own val/test folders share patients
    with pytest.raises(LeakageError, match="9 patient"):
        evaluate_predictions(test, ["finding"], {}, cfg, tmp_path, val_predictions=val)
    result = evaluate_predictions(
        test, ["finding"], {}, cfg, tmp_path, val_predictions=val, model_id="synthetic", allow_leakage=True
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["leakage"] == {
        "allowed": True,
        "patients": 9,
        "pairs": {"test/val": 9},
        "warning": result.leakage.warning,
    }
    block = m["classes"]["finding"]
    assert m["population"]["scans"] == 200 and m["population"]["patients"] == test["patient_id"].nunique()
    assert 0.75 < block["metrics"]["auroc"]["value"] < 1.0
    lo, hi = block["metrics"]["sensitivity"]["ci_low"], block["metrics"]["sensitivity"]["ci_high"]
    assert 0.05 < hi - lo < 0.3  # 100 positives: an interval of honest width
    table = subgroup_table(result)
    sexes = table[table["attribute"] == "sex"].set_index("group")
    assert sexes.loc["sex=F", "n"] == (test["sex"] == "F").sum()
    pred = (test["prob_finding"] >= block["threshold"]).astype(int)
    mf = MetricFrame(
        metrics=true_positive_rate,
        y_true=test["finding"].astype(int),
        y_pred=pred,
        sensitive_features=test["view"],
    )
    views = table[table["attribute"] == "view"].set_index("group")
    for view in ("AP", "PA"):
        assert views.loc[f"view={view}", "sensitivity"] == pytest.approx(mf.by_group[view])
    bands = set(table[table["attribute"] == "age_band"]["group"])
    assert bands <= {"age_band=0-40", "age_band=40-60", "age_band=60-80", "age_band=80+"} and len(bands) >= 3
    inter = table[table["attribute"] == "sex & age_band"]
    assert (inter["status"] != "ok").any()  # real small intersections are flagged, not dropped
    assert (tmp_path / "report.html").stat().st_size > 50_000


def test_nih1000_audit_finds_real_patient_leakage(shared_data):
    preds = nih_predictions(shared_data)
    result = audit_manifest(preds, ["finding"], EvaluationConfig())
    per_patient = preds.groupby("patient_id")["split"].nunique()
    assert len(result.leakage) == int((per_patient > 1).sum()) > 0
    assert result.splits.set_index("split").loc["all", "patients"] == preds["patient_id"].nunique()
