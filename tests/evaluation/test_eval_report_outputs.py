"""What evaluate_predictions hands a user besides the figures: the refusals and their wording, the
written files and their columns (an allow-list: never a name or a free-text column), the TensorBoard
scalars, figures and summary text, and the run's metadata. Small hand-built tables, no bootstrap:
milliseconds each, so the mutation run of report.py can afford them per mutant."""

from __future__ import annotations

import datetime as dt
import json
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.report import (
    SUBGROUP_COLUMNS,
    LeakageError,
    evaluate_predictions,
    predictions_output,
    subgroup_table,
    summary_text,
    write_outputs,
)
from xraytriage.evaluation.results import Estimate
from xraytriage.evaluation.thresholds import OperatingPoint

LABELS = ["finding", "Pleural Effusion"]
# TensorBoard tags, written out by hand: " & " becomes "_x_", any character other than a letter, a
# digit or one of - _ = . / + becomes "_"
LABEL_TAGS = {"finding": "finding", "Pleural Effusion": "Pleural_Effusion"}
GROUP_TAGS = {
    "sex=F": "sex=F",
    "sex=M": "sex=M",
    "site=Royal East": "site=Royal_East",
    "site=St. Mary's/North": "site=St._Mary_s/North",
    "view=PA": "view=PA",
    "age_band=0-40": "age_band=0-40",
    "age_band=40-60": "age_band=40-60",
    "age_band=60-80": "age_band=60-80",
    "age_band=80+": "age_band=80+",
    "sex=F & age_band=40-60": "sex=F_x_age_band=40-60",
    "sex=F & age_band=80+": "sex=F_x_age_band=80+",
    "sex=M & age_band=0-40": "sex=M_x_age_band=0-40",
    "sex=M & age_band=60-80": "sex=M_x_age_band=60-80",
}
# written to predictions.csv in this order: the allow-listed columns present, the subgroup columns in
# use, each label's truth and probability, then each label's prediction
WRITTEN_COLUMNS = [
    "path", "patient_id", "study_id", "split", "sex", "age", "view", "site", "department",
    "finding", "prob_finding", "Pleural Effusion", "prob_Pleural Effusion",
    "pred_finding", "pred_Pleural Effusion",
]  # fmt: skip
# a bundle's stored operating point for the second label: a target policy with its validation bound
STORED = OperatingPoint(
    threshold=0.4,
    policy="target_sensitivity",
    target=0.9,
    confidence=0.95,
    validation_value=0.93,
    lower_bound=0.82,
    validation_cases=40,
    validation_patients=20,
    source="bundle",
)


def _table(prefix: str, patients: int, seed: int) -> pd.DataFrame:
    """Two scans per patient, sex alternating by patient, two sites (one name with an apostrophe, a
    full stop and a slash), ages in every default band; plus what a hospital export carries and an
    output must never copy (a name, free text) and the ``level_0`` and ``index`` columns of a table
    that pandas reset twice."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "level_0": 2 * i + k,
            "index": 2 * i + k,
            "path": f"/d/{prefix}{i}_{k}.dcm",
            "patient_id": f"{prefix}{i:02d}",
            "study_id": f"S{prefix}{i}{k}",
            "split": "test",
            "sex": "F" if i % 2 else "M",
            "age": [35, 45, 65, 85][i % 4],
            "view": "PA",
            "site": "St. Mary's/North" if i < patients // 2 else "Royal East",
            "department": "ICU" if i % 3 == 0 else "ward",
            "patient_name": f"Doe^{prefix}{i}",
            "notes": f"seen by Dr {prefix}{i}",
        }
        for i in range(patients)
        for k in range(2)
    ]
    frame = pd.DataFrame(rows)
    for label, first in (("finding", [1, 0, 1, 0]), ("Pleural Effusion", [1, 0, 0, 1])):
        y = rng.integers(0, 2, len(frame)).astype(float)
        y[:4] = first
        frame[label] = y
        frame[f"prob_{label}"] = np.round(np.clip(0.35 * y + 0.65 * rng.random(len(frame)), 0, 1), 2)
    return frame


def _config(**extra: Any) -> EvaluationConfig:
    settings: dict[str, Any] = {
        "bootstrap_iterations": 0,
        "min_group_size": 2,
        "min_group_patients": 1,
        "subgroups": ["sex", "site", "view", "age_band"],
        "intersections": [["sex", "age_band"]],
        "fairness": {"max_miss_rate_gap": 0.1},
    }
    return EvaluationConfig(**{**settings, **extra})


@pytest.fixture
def evaluated():
    """12 test patients (a score exactly at the threshold 0.5, one missing), 8 validation patients.
    Computed per test (0.2 s): mutmut runs a mutant against the tests that reached the mutated
    function, and a module-scoped fixture would reach it in the first test only."""
    test, val = _table("T", 12, 1), _table("V", 8, 2)
    test.loc[0, "prob_finding"] = 0.5
    test.loc[1, "prob_finding"] = np.nan
    before = time.time()
    started = time.perf_counter()
    result = evaluate_predictions(
        test,
        LABELS,
        {"finding": 0.5, "Pleural Effusion": STORED},
        _config(),
        None,
        val_predictions=val,
        temperatures={"finding": 1.7},
    )
    elapsed = time.perf_counter() - started
    return SimpleNamespace(
        test=test, val=val, result=result, before=before, after=time.time(), elapsed=elapsed
    )


class RecordingWriter:
    """SummaryWriter's calls as evaluate_predictions makes them (same signatures), kept in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.calls.append(("scalar", tag, value, step))

    def add_pr_curve(self, tag: str, labels: np.ndarray, predictions: np.ndarray, step: int) -> None:
        self.calls.append(("pr_curve", tag, labels, predictions, step))

    def add_figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None:
        self.calls.append(("figure", tag, figure, step, close))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.calls.append(("text", tag, text, step))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def of(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


# ---------------------------------------------------------------- refusals a user reads


def test_missing_columns_are_named_with_what_is_expected():
    test, val = _table("T", 4, 1), _table("V", 4, 2)
    expected = "expected a truth column L and a probability column prob_L for every label L"
    with pytest.raises(ValueError) as caught:
        evaluate_predictions(test.drop(columns=["finding", "prob_finding"]), LABELS, {}, _config(), None)
    assert str(caught.value) == f"predictions lack column(s) finding, prob_finding; {expected}"
    with pytest.raises(ValueError) as caught:
        evaluate_predictions(
            test, LABELS, {}, _config(), None, val_predictions=val.drop(columns="prob_Pleural Effusion")
        )
    assert str(caught.value) == f"validation predictions lack column(s) prob_Pleural Effusion; {expected}"


def test_missing_patient_ids_are_refused_naming_the_table_and_the_fix():
    test, val = _table("T", 4, 1), _table("V", 4, 2)
    fix = (
        "have no patient_id column: intervals must resample patients, not scans; add one (a unique value "
        "per scan if every scan is a different patient)"
    )
    with pytest.raises(ValueError) as caught:
        evaluate_predictions(test.drop(columns="patient_id"), LABELS, {}, _config(), None)
    assert str(caught.value) == f"predictions {fix}"
    with pytest.raises(ValueError) as caught:
        evaluate_predictions(
            test, LABELS, {}, _config(), None, val_predictions=val.drop(columns="patient_id")
        )
    assert str(caught.value) == f"validation predictions {fix}"
    val.loc[[2, 5], "patient_id"] = " "
    with pytest.raises(ValueError) as caught:
        evaluate_predictions(test, LABELS, {}, _config(), None, val_predictions=val)
    assert str(caught.value).startswith(
        "validation predictions: patient_id is missing for 2 of 8 rows (rows 2, 5)"
    )


def test_leakage_is_refused_with_the_audit_finding_and_the_way_to_allow_it():
    """One patient in validation and test: refused, naming the audit's finding and the option; the
    audit table given explicitly is the one audited (here leaky although validation is not given)."""
    from xraytriage.evaluation.audit import audit_manifest

    test, val = _table("T", 4, 1), _table("V", 4, 2)
    val.loc[[0, 1], "patient_id"] = "T00"
    val["split"] = "val"
    both = pd.concat([val, test], ignore_index=True)
    finding = audit_manifest(both, LABELS, _config()).errors[0]
    assert "1 patient(s)" in finding
    refusal = (
        f"{finding}; evaluation refused because its figures would be optimistic (allow it with "
        "--allow-leakage / allow_leakage=True: every output is then marked)"
    )
    with pytest.raises(LeakageError) as caught:
        evaluate_predictions(test, LABELS, {"finding": 0.5}, _config(), None, val_predictions=val)
    assert str(caught.value) == refusal
    with pytest.raises(LeakageError) as caught:
        evaluate_predictions(test, LABELS, {"finding": 0.5}, _config(), None, audit_frame=both)
    assert str(caught.value) == refusal
    clean = evaluate_predictions(test, LABELS, {"finding": 0.5}, _config(), None, audit_frame=test)
    assert clean.leakage is None and not clean.audit.has_leakage


@pytest.fixture
def leaky():
    """Validation shares patient T00 with test; leakage allowed, so every output carries the mark."""
    test, val = _table("T", 4, 1), _table("V", 4, 2)
    val.loc[[0, 1], "patient_id"] = "T00"
    val["split"] = "val"
    result = evaluate_predictions(
        test,
        LABELS,
        {"finding": 0.5},
        _config(),
        None,
        val_predictions=val,
        allow_leakage=True,
        model_id="bundle 3f2a",
    )
    return test, result


def test_allowed_leakage_is_counted_and_marks_the_tables_and_the_summary(leaky):
    test, result = leaky
    assert (result.leakage.patients, result.leakage.pairs) == (1, {"test/val": 1})
    assert result.model_id == "bundle 3f2a"
    warning = (
        "PATIENT LEAKAGE ALLOWED (--allow-leakage): 1 patient(s) appear in more than one split "
        "(test/val: 1); every figure here may be optimistic"
    )
    assert result.leakage.warning == warning
    table = subgroup_table(result)
    assert list(table.columns) == [*SUBGROUP_COLUMNS, "leakage_warning"]
    assert (table["leakage_warning"] == warning).all()
    written = predictions_output(test, result, ["sex"])
    assert list(written.columns)[-1] == "leakage_warning" and (written["leakage_warning"] == warning).all()
    lines = summary_text(result).split("\n")
    assert lines[0] == warning and lines[1].startswith("finding: operating point threshold 0.5 (given)")


# ---------------------------------------------------------------- what the run records


def test_the_run_records_when_with_which_version_and_how_long(evaluated):
    import xraytriage

    result = evaluated.result
    assert result.model_id == "" and result.version == xraytriage.__version__
    created = dt.datetime.fromisoformat(result.created_utc)
    assert created.utcoffset() == dt.timedelta(0) and created.microsecond == 0
    assert int(evaluated.before) <= created.timestamp() <= evaluated.after
    assert len(result.created_utc) == len("2026-12-01T15:38:08+00:00")
    timing = result.timing_seconds
    assert set(timing) == {"metrics", "total"}
    assert 0 < timing["metrics"] <= timing["total"] <= evaluated.elapsed + 0.001  # in ms, not whole s
    assert all(v == round(v, 3) for v in timing.values())
    assert result.population.skipped_unreadable == 0 and result.population.validation_scans == 16
    assert result.files == {}  # nothing written without an output folder


def test_settings_say_how_every_interval_and_prediction_was_made(evaluated):
    cfg = _config()
    assert evaluated.result.settings == {
        "bootstrap": {
            "unit": "patient",
            "method": "percentile",
            "used_for": ["f1", "auprc", "brier", "ece"],
            "iterations": 0,
            "seed": 0,
            "confidence": 0.95,
        },
        "operating_point": json.loads(cfg.operating_point.model_dump_json()),
        "prediction_rule": "positive when prob >= threshold",
        "min_group_size": 2,
        "min_group_patients": 1,
    }


def test_each_class_carries_its_own_operating_point_checks_and_temperature(evaluated):
    """The stored target policy is checked against validation and test; a bare threshold has no
    target; temperatures default to 1 for a label without one; the confusion counts are counts."""
    from sklearn.metrics import recall_score

    val, result = evaluated.val, evaluated.result
    effusion, finding = result.classes["Pleural Effusion"], result.classes["finding"]
    assert effusion.operating_point == STORED and finding.operating_point.threshold == 0.5
    check = effusion.target_check
    val_sensitivity = recall_score(val["Pleural Effusion"], val["prob_Pleural Effusion"] >= 0.4)
    assert (check.metric, check.target, check.validation_lower_bound) == ("sensitivity", 0.9, 0.82)
    assert check.validation == pytest.approx(val_sensitivity, abs=1e-12)
    assert check.test == effusion.metrics["sensitivity"] and check.test.value is not None
    assert finding.target_check is None
    assert (finding.calibration.temperature, effusion.calibration.temperature) == (1.7, 1.0)
    for block in (finding, effusion):
        assert block.label in LABELS and result.classes[block.label] is block
        assert block.confusion == {
            k: Estimate(getattr(block.counts, k), None, None, "count") for k in ("tp", "fp", "tn", "fn")
        }
        assert list(block.attributes) == ["sex", "site", "view", "age_band", "sex & age_band"]


def test_the_audit_covers_the_evaluated_labels_and_the_configured_subgroups():
    """Only the labels evaluated (not every 0/1 column of the table) and the configured attributes,
    intersections included."""
    result = evaluate_predictions(_table("T", 4, 1), ["finding"], {"finding": 0.5}, _config(), None)
    assert result.audit.labels == ["finding"]
    assert list(result.audit.missing["attribute"]) == ["sex", "site", "view", "age_band", "sex & age_band"]


def test_age_bands_are_the_users_own_when_given_else_from_the_configured_edges():
    test = _table("T", 8, 1)
    own = test.assign(age_band=np.where(test["age"] < 50, "young", "old"))
    for frame in (own, own.drop(columns="age")):
        result = evaluate_predictions(frame, ["finding"], {"finding": 0.5}, _config(), None)
        groups = [g.group for g in result.classes["finding"].attributes["age_band"].groups]
        assert sorted(groups) == ["age_band=old", "age_band=young"]
    result = evaluate_predictions(test, ["finding"], {"finding": 0.5}, _config(age_bands=[0, 50, 120]), None)
    groups = [g.group for g in result.classes["finding"].attributes["age_band"].groups]
    assert sorted(groups) == ["age_band=0-50", "age_band=50+"]


# ---------------------------------------------------------------- the written files


def test_written_files_hold_the_result_and_only_allow_listed_columns(evaluated, tmp_path):
    """metrics.json is the result as indented JSON; subgroups.csv and predictions.csv have their
    fixed columns and no index; a subgroup column in use is written although not allow-listed, the
    name and the free text of the input never; a
    prediction is 1 at a score equal to the threshold and empty where the score is missing. The
    folder is created with its parents and may already exist."""
    test, result = evaluated.test, evaluated.result
    out = tmp_path / "a" / "b"
    for _ in range(2):
        files = write_outputs(out, result, test, None, ["sex", "department", "age_band", "patient_name"])
    assert files == {
        name: out / name for name in ("metrics.json", "subgroups.csv", "predictions.csv", "report.html")
    }
    text = (out / "metrics.json").read_text()
    assert text == json.dumps(json.loads(json.dumps(result.to_json())), indent=2) + "\n"
    subgroups = pd.read_csv(out / "subgroups.csv")
    assert list(subgroups.columns) == SUBGROUP_COLUMNS and len(subgroups) == len(subgroup_table(result))
    written = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert list(written.columns) == WRITTEN_COLUMNS
    assert list(written["patient_id"]) == list(test["patient_id"])
    for label in LABELS:
        threshold = result.classes[label].threshold
        prob = test[f"prob_{label}"]
        expected = np.where(prob.isna(), np.nan, (prob >= threshold).astype(float))
        np.testing.assert_array_equal(written[f"pred_{label}"].to_numpy(), expected)
    assert written.loc[0, "pred_finding"] == 1.0 and np.isnan(written.loc[1, "pred_finding"])
    html = (out / "report.html").read_text()
    assert "Doe^" not in html + text + (out / "predictions.csv").read_text() and "seen by Dr" not in html
    assert "Pleural Effusion" in html and "data:image/png" not in html  # no figures were given


def test_metrics_json_is_strict_json_or_not_written(tmp_path):
    """A non-finite number (here a NaN temperature handed in) is refused rather than written as
    ``NaN``, which strict JSON readers reject; the file is then not there at all."""
    test = _table("T", 4, 1)
    result = evaluate_predictions(
        test, ["finding"], {"finding": 0.5}, _config(), None, temperatures={"finding": float("nan")}
    )
    with pytest.raises(ValueError, match="JSON compliant"):
        write_outputs(tmp_path, result, test, None)
    assert not (tmp_path / "metrics.json").exists()


def test_predictions_file_carries_the_configured_subgroup_columns_and_no_other(tmp_path):
    """Through evaluate_predictions: a subgroup column of the configuration (as an attribute or only
    in an intersection) is written to predictions.csv although not allow-listed; free text never."""
    test = _table("T", 8, 1).drop(columns=["Pleural Effusion", "prob_Pleural Effusion"])
    test["ward_type"] = np.where(test.index % 4 < 2, "acute", "chronic")
    cfg = _config(subgroups=["sex", "department"], intersections=[["sex", "ward_type"]])
    result = evaluate_predictions(test, ["finding"], {"finding": 0.5}, cfg, tmp_path)
    written = pd.read_csv(result.files["predictions.csv"])
    assert list(written.columns) == [
        "path", "patient_id", "study_id", "split", "sex", "age", "age_band", "view", "site", "department",
        "ward_type", "finding", "prob_finding", "pred_finding",
    ]  # fmt: skip


def test_subgroup_table_keeps_an_unavailable_attribute_as_one_row_with_empty_figures():
    test = _table("T", 8, 1).drop(columns="site")
    result = evaluate_predictions(test, ["finding"], {"finding": 0.5}, _config(), None)
    table = subgroup_table(result)
    assert list(table.columns) == SUBGROUP_COLUMNS
    site = table[table["attribute"] == "site"]
    assert len(site) == 1 and site["status"].iloc[0] == "unavailable: column 'site' is not in the predictions"
    figures = [c for c in SUBGROUP_COLUMNS if c not in ("label", "attribute", "group", "status")]
    assert site[figures].isna().all(axis=None)


def test_subgroup_table_has_every_column_empty_when_no_attribute_is_available():
    """No subgroup column in the predictions: one 'unavailable' row per attribute, and every figure
    column still there, holding nothing (missing, not an empty string)."""
    test = _table("T", 4, 1).drop(columns=["sex", "site", "view", "age"])
    result = evaluate_predictions(test, ["finding"], {"finding": 0.5}, _config(), None)
    table = subgroup_table(result)
    assert list(table.columns) == SUBGROUP_COLUMNS
    assert list(table["attribute"]) == ["sex", "site", "view", "age_band", "sex & age_band"]
    assert table["status"].str.startswith("unavailable: ").all()
    figures = [c for c in SUBGROUP_COLUMNS if c not in ("label", "attribute", "group", "status")]
    assert table[figures].isna().all(axis=None)


# ---------------------------------------------------------------- TensorBoard


def _expected_scalars(result) -> dict[str, float]:
    """Every figure of metrics.json and subgroups.csv that TensorBoard should show, under its tag."""
    metrics = json.loads(json.dumps(result.to_json()))["classes"]
    out: dict[str, float] = {}
    for label, block in metrics.items():
        base = f"eval/{LABEL_TAGS[label]}"
        out[f"{base}/threshold"] = block["threshold"]
        if block["operating_point"]["lower_bound"] is not None:
            out[f"{base}/validation_lower_bound"] = block["operating_point"]["lower_bound"]
        for name, est in block["metrics"].items():
            for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                if est[key] is not None:
                    out[f"{base}/{name}{suffix}"] = est[key]
        if block["validation"] is not None:
            for name in ("sensitivity", "miss_rate"):
                out[f"{base}/validation_{name}"] = block["validation"][name]["value"]
    for row in subgroup_table(result).itertuples():
        label, group = LABEL_TAGS[row.label], GROUP_TAGS[row.group]
        for name in ("sensitivity", "miss_rate", "auroc"):
            if pd.notna(getattr(row, name)):
                out[f"eval_subgroups/{label}/{group}/{name}"] = getattr(row, name)
        if pd.notna(row.miss_rate_diff_vs_reference):
            out[f"eval_fairness/{label}/{group}/miss_rate_diff_vs_reference"] = (
                row.miss_rate_diff_vs_reference
            )
    return out


def test_tensorboard_gets_every_figure_once_the_pr_curves_and_the_summary(evaluated):
    from xraytriage.evaluation.report import log_tensorboard

    test, result = evaluated.test, evaluated.result
    writer = RecordingWriter()
    log_tensorboard(writer, result, test, None)
    scalars = {tag: value for _, tag, value, _ in writer.of("scalar")}
    assert len(scalars) == len(writer.of("scalar"))  # no tag written twice
    expected = _expected_scalars(result)
    assert "eval/Pleural_Effusion/validation_lower_bound" in expected
    assert "eval/finding/validation_lower_bound" not in expected  # a bare threshold has no bound
    assert "eval/finding/f1_ci_low" not in expected  # no bootstrap: no interval to show
    assert "eval_fairness/finding/sex=F_x_age_band=80+/miss_rate_diff_vs_reference" in expected
    assert scalars == pytest.approx(expected, abs=1e-12)
    assert {c[-1] for c in writer.calls if c[0] != "flush"} == {0}  # step 0
    curves = writer.of("pr_curve")
    assert [c[1] for c in curves] == ["eval/finding/pr_curve", "eval/Pleural_Effusion/pr_curve"]
    for (_, _, labels, probs, _), label in zip(curves, LABELS):
        known = test[test[f"prob_{label}"].notna()]
        assert labels.dtype.kind == "i"
        np.testing.assert_array_equal(labels, known[label].to_numpy(int))
        np.testing.assert_array_equal(probs, known[f"prob_{label}"].to_numpy(float))
    assert writer.of("figure") == []
    assert writer.calls[-2:] == [("text", "eval/summary", summary_text(result), 0), ("flush",)]
    again = RecordingWriter()
    log_tensorboard(again, result, test, None, step=7)
    assert {c[-1] for c in again.calls if c[0] != "flush"} == {7}


def test_tensorboard_scalars_read_back_as_written(evaluated, tmp_path):
    """Through a real SummaryWriter: tensorboard's EventAccumulator reads every scalar back at step 0."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from xraytriage.evaluation.report import log_tensorboard

    writer = SummaryWriter(log_dir=str(tmp_path))
    log_tensorboard(writer, evaluated.result, evaluated.test, None)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    expected = _expected_scalars(evaluated.result)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, value in expected.items():
        (event,) = acc.Scalars(tag)
        assert (event.step, event.value) == (0, pytest.approx(value, abs=1e-6)), tag


def test_summary_text_gives_each_operating_point_and_the_gate_with_its_reasons(evaluated):
    result = evaluated.result
    gate = result.gate
    assert gate.verdict == "cannot certify" and gate.uncertain and gate.unchecked and not gate.failures
    assert summary_text(result) == "\n".join(
        [
            "finding: operating point threshold 0.5 (given)",
            f"Pleural Effusion: operating point {STORED.describe()}",
            "fairness gate: CANNOT CERTIFY",
            *[f"* {line}" for line in gate.uncertain],
            "* could not be checked: finding / view: only view=PA has sufficient data: no difference can be "
            "checked",
            "* could not be checked: Pleural Effusion / view: only view=PA has sufficient data: no "
            "difference can be checked",
        ]
    )


def test_tensorboard_only_still_gets_the_figures_of_each_class():
    """A TensorBoard writer without an output folder: the ROC/PR, calibration and subgroup figures
    are drawn for the class (ROC curve as scikit-learn computes it on the known scans, titles naming
    the class and its ECE, the overall sensitivity and the threshold marked) and logged unclosed."""
    from sklearn.metrics import roc_curve

    test = _table("T", 8, 1).drop(columns=["Pleural Effusion", "prob_Pleural Effusion"])
    test.loc[1, "prob_finding"] = np.nan
    writer = RecordingWriter()
    result = evaluate_predictions(
        test, ["finding"], {"finding": 0.5}, _config(calibration_bins=4), None, tb_writer=writer
    )
    figures = writer.of("figure")
    assert [(tag, step, close) for _, tag, _, step, close in figures] == [
        ("eval/finding/roc_pr", 0, False),
        ("eval/finding/calibration", 0, False),
        ("eval/finding/subgroups", 0, False),
    ]
    roc_pr, calibration, subgroups = (f[2] for f in figures)
    block = result.classes["finding"]
    known = test[test["prob_finding"].notna()]
    fpr, tpr, _ = roc_curve(known["finding"], known["prob_finding"])
    ax_roc, ax_pr = roc_pr.axes
    np.testing.assert_array_equal(ax_roc.lines[0].get_xdata(), fpr)
    np.testing.assert_array_equal(ax_roc.lines[0].get_ydata(), tpr)
    assert ax_roc.get_title() == "ROC — finding" and ax_pr.get_title() == "Precision-recall — finding"
    marker = ax_roc.lines[1]
    assert marker.get_label() == "threshold 0.500"
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (
        block.metrics["fpr"].value,
        block.metrics["sensitivity"].value,
    )
    assert calibration.axes[0].get_title() == f"Calibration — finding (ECE {block.calibration.ece:.3f})"
    counts = [int(t.get_text()) for t in calibration.axes[0].texts]  # the configured 4 bins
    assert counts == [b.count for b in block.calibration.reliability if b.count > 0]
    assert sum(counts) == block.counts.n and len(block.calibration.reliability) == 4
    ax = subgroups.axes[0]
    assert ax.get_title() == "Sensitivity by subgroup — finding"
    assert ax.get_xlabel() == "sensitivity at threshold 0.500 (bar: interval)"
    overall = block.metrics["sensitivity"].value
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"overall {overall:.3f}"]
    assert len(ax.get_yticklabels()) == len(subgroup_table(result).query("group != ''"))
    assert writer.of("text") and result.files == {}


@pytest.mark.parametrize(
    ("policy", "metric"),
    [("target_sensitivity", "sensitivity"), ("target_specificity", "specificity"), ("youden", None)],
)
def test_without_threshold_or_validation_a_target_policy_keeps_its_target_for_the_test_check(policy, metric):
    """Was: the default policy (target_sensitivity) with neither a stored threshold nor validation
    predictions raised TypeError (the configured fallback recorded no target to check)."""
    from sklearn.metrics import recall_score

    test = _table("T", 8, 1)
    op_cfg = {"policy": policy, "target": 0.8, "confidence": 0.9, "rule": "point_estimate", "threshold": 0.45}
    result = evaluate_predictions(test, ["finding"], {}, _config(operating_point=op_cfg), None)
    block = result.classes["finding"]
    op = block.operating_point
    assert (op.threshold, op.policy, op.source, op.lower_bound) == (0.45, policy, "config", None)
    assert op.fallback_reason.startswith("no stored threshold and no validation predictions")
    if metric is None:
        assert (op.rule, op.target, op.confidence, block.target_check) == (None, None, None, None)
        return
    assert (op.rule, op.target, op.confidence) == ("point_estimate", 0.8, 0.9)
    check = block.target_check
    assert (check.metric, check.target, check.validation, check.validation_lower_bound) == (
        metric,
        0.8,
        None,
        None,
    )
    positive = 1 if metric == "sensitivity" else 0
    expected = recall_score(test["finding"], test["prob_finding"] >= 0.45, pos_label=positive)
    assert check.test.value == pytest.approx(expected, abs=1e-12)
