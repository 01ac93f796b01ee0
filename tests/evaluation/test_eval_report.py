"""evaluate_predictions and ``xraytriage evaluate``: the four outputs rendered from one typed result,
TensorBoard entries, no patient IDs in metrics.json, a self-contained report, validation vs test,
intervals never of zero width, recorded fallbacks, leakage refused, missing patient IDs refused,
``--predictions`` for any model's outputs, and the exit codes 0 / 2 / 3 / 4."""

from __future__ import annotations

import argparse
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xraytriage.config import EvaluationConfig
from xraytriage.data.dataset import ScanFailure
from xraytriage.evaluation.report import (
    OUTPUT_FILES,
    SUBGROUP_COLUMNS,
    LeakageError,
    evaluate_predictions,
    subgroup_table,
)
from xraytriage.evaluation.thresholds import OperatingPoint


def _predictions(n: int, split: str, seed: int, weaker_in_women: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    y = (rng.random(n) < 0.4).astype(float)
    y[rng.random(n) < 0.05] = -1.0
    score = 0.45 * (y == 1) + rng.random(n) * 0.55 - weaker_in_women * ((sex == "F") & (y == 1))
    return pd.DataFrame(
        {
            "path": [f"/data/{split}/{i}.png" for i in range(n)],
            "patient_id": [f"ZQ{seed}{i // 2:05d}ID" for i in range(n)],
            "split": split,
            "sex": sex,
            "age": rng.uniform(20, 90, n),
            "view": rng.choice(["PA", "AP"], n),
            "finding": y,
            "prob_finding": np.clip(score, 0, 1),
        }
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path_factory.mktemp("eval")
    test, val = _predictions(400, "test", 1), _predictions(300, "val", 2)
    cfg = EvaluationConfig(bootstrap_iterations=200, intersections=[["sex", "age_band"]])
    writer = SummaryWriter(log_dir=str(out / "tb"))
    result = evaluate_predictions(
        test,
        ["finding"],
        {},
        cfg,
        out,
        val_predictions=val,
        tb_writer=writer,
        model_id="abc123",
        temperatures={"finding": 1.3},
    )
    writer.close()
    return out, result, test, val


def test_four_outputs_and_schema(evaluated):
    out, result, test, _ = evaluated
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    rendered = json.loads(json.dumps(result.to_json()))
    assert metrics.pop("timing_seconds")["metrics"] == rendered.pop("timing_seconds")["metrics"]
    assert metrics == rendered  # the file is the typed result, rendered
    assert metrics["schema"] == "xraytriage.metrics" and metrics["schema_version"] == 2
    block = metrics["classes"]["finding"]
    assert block["threshold_source"] == "validation (target_sensitivity, lower_bound)"
    op = block["operating_point"]
    assert op["threshold"] == block["threshold"] and op["guaranteed"] is True and op["fallback"] is False
    assert op["lower_bound"] >= 0.9 and op["confidence"] == 0.95
    sens = block["metrics"]["sensitivity"]
    assert sens["ci_low"] < sens["value"] < sens["ci_high"] and sens["method"] == "wilson_cluster"
    assert block["metrics"]["auroc"]["method"] == "newcombe_auroc_cluster"
    assert block["metrics"]["auprc"]["method"] == "bootstrap_percentile"
    assert set(metrics["interval_methods"]) >= {"wilson_cluster", "bootstrap_percentile"}
    assert block["counts"]["excluded"] == int((test["finding"] == -1).sum())
    assert block["validation"]["sensitivity"]["value"] == op["validation_value"]
    assert block["target_check"]["target"] == 0.9
    assert block["target_check"]["validation_lower_bound"] == op["lower_bound"]
    assert metrics["population"]["patients"] == test["patient_id"].nunique()
    assert metrics["temperatures"] == {"finding": 1.3} and block["calibration"]["temperature"] == 1.3
    assert metrics["fairness_gate"]["verdict"] == "no limits" and metrics["fairness_gate"]["passed"]
    assert set(block["subgroups"]) == {"sex", "age_band", "view", "site", "sex & age_band"}
    assert block["subgroups"]["site"] == {
        "available": False,
        "reason": "column 'site' is not in the predictions",
    }
    sex = block["subgroups"]["sex"]
    assert sex["reference_group"] in ("sex=F", "sex=M") and len(sex["comparisons"]) == 1
    assert "biased upward" in sex["miss_rate_gap"]["note"]
    subgroups = pd.read_csv(out / "subgroups.csv")
    assert list(subgroups.columns) == SUBGROUP_COLUMNS
    assert {"sex=F", "sex=M"} <= set(subgroups["group"])
    preds = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert list(preds["patient_id"]) == list(test["patient_id"])  # the user's own key, unchanged
    expected = (test["prob_finding"] >= block["threshold"]).astype(float)
    assert (preds["pred_finding"] == expected).all() and "age_band" in preds
    assert "leakage_warning" not in preds and metrics["leakage"] is None


def test_no_patient_ids_in_metrics_or_report(evaluated):
    out, _, test, val = evaluated
    text = (out / "metrics.json").read_text() + (out / "report.html").read_text()
    ids = set(test["patient_id"]) | set(val["patient_id"])
    assert not any(pid in text for pid in ids)
    assert re.search(r"ZQ\d+ID", text) is None


def test_report_is_self_contained_and_says_how_sure_it_is(evaluated):
    html = (evaluated[0] / "report.html").read_text()
    assert "<script" not in html and not re.search(r"(src|href)=['\"]?(https?:)?//", html)
    assert html.count("data:image/png;base64,") >= 3  # ROC/PR, calibration, subgroups
    for needle in (
        "Validation vs test",
        "Calibration",
        "Data audit",
        "sex=F",
        "Miss rate",
        "insufficient data",
        "wilson_cluster",
        "Operating-point guarantee",
        "one-sided 95% lower bound",
        "(reference)",
        "biased upward",
    ):
        assert needle in html, needle


def test_tensorboard_entries(evaluated):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(evaluated[0] / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {
        "eval/finding/sensitivity",
        "eval/finding/miss_rate_ci_high",
        "eval/finding/validation_sensitivity",
        "eval/finding/validation_lower_bound",
    } <= scalars
    assert any(t.startswith("eval_subgroups/finding/sex=F") for t in scalars)
    assert any(t.startswith("eval_fairness/finding/") for t in scalars)
    assert "eval/finding/roc_pr" in acc.Tags()["images"]
    assert any("pr_curve" in t for t in acc.Tags()["tensors"])


def test_perfect_model_gets_intervals_that_are_not_zero_width(tmp_path):
    """Was: 30 of 30 detected gave sensitivity CI (1.0, 1.0) and miss-rate CI (0.0, 0.0)."""
    frame = _predictions(300, "test", 4)
    frame["prob_finding"] = (frame["finding"] == 1).astype(float) * 0.8 + 0.1
    result = evaluate_predictions(
        frame, ["finding"], {"finding": 0.5}, EvaluationConfig(bootstrap_iterations=50), tmp_path
    )
    block = result.classes["finding"]
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        est = block.metrics[name]
        assert est.value == 1.0 and est.ci_high == 1.0 and est.ci_low < 0.99, name
    miss = block.metrics["miss_rate"]
    assert miss.value == 0.0 and miss.ci_low == 0.0 and 0.01 < miss.ci_high < 0.1
    assert block.metrics["auroc"].ci_low < 1.0 == block.metrics["auroc"].ci_high
    f1 = block.metrics["f1"]  # every bootstrap replicate is 1: no interval rather than (1, 1)
    assert f1.value == 1.0 and f1.ci_low is None and "every replicate" in f1.note
    for attr in block.attributes.values():
        for row in attr.groups if attr.available else []:
            for est in row.metrics.values():
                assert est.ci_low < est.ci_high
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["classes"]["finding"]["metrics"]["f1"]["note"].startswith("no interval")
    # an output folder without TensorBoard: the report still holds its three figures
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3


def test_gate_failure_named_in_result_and_report(tmp_path):
    test = _predictions(1200, "test", 3, weaker_in_women=0.35)
    cfg = EvaluationConfig(bootstrap_iterations=50, subgroups=["sex"], fairness={"max_miss_rate_gap": 0.05})
    result = evaluate_predictions(test, ["finding"], {"finding": 0.5}, cfg, tmp_path)
    assert result.gate.verdict == "fail" and len(result.gate_failures) == 1
    assert "sex=F" in result.gate_failures[0] and "sex=M" in result.gate_failures[0]
    assert result.classes["finding"].threshold_source == "given"
    html = (tmp_path / "report.html").read_text()
    assert "Fairness gate FAILED" in html and "simultaneous 95% interval" in html
    table = subgroup_table(result).set_index("group")
    reference = result.classes["finding"].attributes["sex"].reference_group
    other = ({"sex=F", "sex=M"} - {reference}).pop()
    assert table.loc[other, "verdict"] == "fail" and table.loc[reference, "is_reference"]
    assert table.loc[reference, "verdict_reason"].startswith("reference group (largest (most patients))")


def test_fallback_is_recorded_as_a_fallback_everywhere(tmp_path):
    """Was: validation without positives gave threshold 0.5 labelled 'validation (target_sensitivity)',
    and a fallback stored at training time showed later only as 'bundle'."""
    from torch.utils.tensorboard import SummaryWriter

    test, val = _predictions(200, "test", 5), _predictions(200, "val", 6)
    val["finding"] = 0.0
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    result = evaluate_predictions(
        test,
        ["finding"],
        {},
        EvaluationConfig(bootstrap_iterations=0),
        tmp_path,
        val_predictions=val,
        tb_writer=writer,
    )
    writer.close()
    assert "FALLBACK: no positive validation case" in _tensorboard_summary(tmp_path / "tb")
    op = result.classes["finding"].operating_point
    assert op.fallback and op.threshold == 0.5 and "no positive validation case" in op.fallback_reason
    block = json.loads((tmp_path / "metrics.json").read_text())["classes"]["finding"]
    assert "FALLBACK: no positive validation case" in block["threshold_source"]
    assert block["operating_point"]["fallback"] is True
    assert "Fallback threshold" in (tmp_path / "report.html").read_text()
    stored = op.with_source("bundle")
    again = evaluate_predictions(
        test, ["finding"], {"finding": stored}, EvaluationConfig(bootstrap_iterations=0), None
    )
    assert again.classes["finding"].threshold_source.startswith(
        "bundle (target_sensitivity, lower_bound); FALLBACK"
    )


def test_leakage_is_refused_unless_allowed_and_then_marked_everywhere(tmp_path):
    """Was: 200 of 200 patients in both validation and test passed with only an audit note."""
    from torch.utils.tensorboard import SummaryWriter

    test = _predictions(400, "test", 7)
    val = test.copy()
    val["split"] = "val"
    cfg = EvaluationConfig(bootstrap_iterations=0)
    with pytest.raises(LeakageError, match="200 patient"):
        evaluate_predictions(test, ["finding"], {}, cfg, tmp_path / "no", val_predictions=val)
    assert not (tmp_path / "no").exists()
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    result = evaluate_predictions(
        test,
        ["finding"],
        {},
        cfg,
        tmp_path / "yes",
        val_predictions=val,
        allow_leakage=True,
        tb_writer=writer,
    )
    writer.close()
    assert result.leakage.patients == 200 and result.leakage.pairs == {"test/val": 200}
    out = tmp_path / "yes"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["leakage"]["allowed"] is True and "PATIENT LEAKAGE" in metrics["leakage"]["warning"]
    assert "PATIENT LEAKAGE ALLOWED" in (out / "report.html").read_text()
    for name in ("subgroups.csv", "predictions.csv"):
        column = pd.read_csv(out / name)["leakage_warning"]
        assert column.notna().all() and column.str.contains("PATIENT LEAKAGE").all()
    assert "PATIENT LEAKAGE" in _tensorboard_summary(tmp_path / "tb")


def _tensorboard_summary(folder) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return acc.Tensors("eval/summary/text_summary")[0].tensor_proto.string_val[0].decode()


def test_missing_patient_ids_are_refused():
    """Was: missing patient IDs merged into one bootstrap cluster."""
    frame = _predictions(50, "test", 8)
    frame.loc[[3, 9], "patient_id"] = None
    with pytest.raises(ValueError, match="patient_id is missing for 2 of 50"):
        evaluate_predictions(frame, ["finding"], {"finding": 0.5}, EvaluationConfig(), None)
    with pytest.raises(ValueError, match="no patient_id column"):
        evaluate_predictions(
            frame.drop(columns="patient_id"), ["finding"], {"finding": 0.5}, EvaluationConfig(), None
        )


def test_missing_probability_column_is_a_clear_error():
    with pytest.raises(ValueError, match="prob_finding"):
        evaluate_predictions(pd.DataFrame({"finding": [1.0]}), ["finding"], {}, EvaluationConfig(), None)


# ---- the CLI, with a stand-in bundle and predictor (the real model path is covered by the demo test) ----


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    import xraytriage.models
    from xraytriage import inference

    frames = [_predictions(200, s, i, weaker_in_women=0.35) for i, s in enumerate(["train", "val", "test"])]
    manifest = pd.concat(frames, ignore_index=True).drop(columns=["prob_finding"])
    manifest["path"] = [f"img{i}.png" for i in range(len(manifest))]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    bundle = SimpleNamespace(
        labels=["finding"],
        thresholds={"finding": 0.5},
        model_id="m1",
        temperatures={"finding": 1.0},
        operating_points={},
        scope={},  # a bundle from before validated scopes
    )
    monkeypatch.setattr(xraytriage.models, "load_bundle", lambda path: bundle)
    (tmp_path / "model.pt").write_bytes(b"stand-in")
    calls = []

    def fake_predict(b, df, batch_size, num_workers, device, scope):
        assert scope is not None and not scope.ood_available  # nothing recorded: only the input rules
        assert [rule.name for rule in scope.rules] == ["for_processing", "derived_image", "burned_in_text"]
        calls.append(set(df["split"]))
        out = df.iloc[1:].copy()  # first row "unreadable"
        rng = np.random.default_rng(len(df))
        weak = 0.35 * ((out["sex"] == "F") & (out["finding"] == 1)).to_numpy()
        out["prob_finding"] = np.clip(0.45 * (out["finding"] == 1) + rng.random(len(out)) * 0.55 - weak, 0, 1)
        out.attrs["failed"] = [
            ScanFailure(df["path"].iloc[0], "corrupt_header", "the header cannot be parsed")
        ]
        return out.reset_index(drop=True)

    monkeypatch.setattr(inference, "predict_manifest", fake_predict)
    return tmp_path, calls, bundle


def _parse(argv):
    from xraytriage.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers())
    return parser.parse_args(["evaluate", *argv])


def test_cli_writes_outputs_and_exit_codes(cli_env, capsys):
    tmp, calls, _ = cli_env
    base = ["--model", str(tmp / "model.pt"), "--manifest", str(tmp / "manifest.csv")]
    args = _parse([*base, "--out", str(tmp / "ev"), "evaluation.bootstrap_iterations=100"])
    assert args.handler(args) == 0
    assert calls == [{"test"}, {"val"}]  # test evaluated, val used for the side-by-side
    out = capsys.readouterr().out
    assert "1 scan(s) could not be read" in out and "sensitivity" in out and "worst subgroup: sex=F" in out
    assert "no limits set" in out and "bundle (no record of its choice)" in out
    for name in OUTPUT_FILES:
        assert (tmp / "ev" / name).is_file()
    assert list((tmp / "ev" / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert metrics["population"]["skipped_unreadable"] == 1 and metrics["model_id"] == "m1"

    fail = ["--no-tensorboard", "evaluation.bootstrap_iterations=0", "evaluation.subgroups=[sex]"]
    args = _parse([*base, "--out", str(tmp / "ev2"), *fail, "evaluation.fairness.max_miss_rate_gap=0.02"])
    assert args.handler(args) == 3
    assert "FAIRNESS GATE FAILED" in capsys.readouterr().out

    args = _parse([*base, "--out", str(tmp / "ev3"), *fail[:2], "evaluation.fairness.max_miss_rate_gap=0.9"])
    assert args.handler(args) == 4  # default subgroups include view/site, absent here: cannot certify
    out = capsys.readouterr().out
    assert "CANNOT CERTIFY" in out and "could not be checked: finding / site: unavailable" in out


def test_cli_uses_the_bundles_operating_point_record(cli_env, capsys):
    tmp, _, bundle = cli_env
    bundle.operating_points = {
        "finding": OperatingPoint(
            0.5,
            "target_sensitivity",
            "lower_bound",
            0.9,
            0.95,
            0.91,
            0.87,
            80,
            60,
            "lower bound too low",
            "validation",
        ).to_json()
    }
    args = _parse(
        [
            "--model",
            str(tmp / "model.pt"),
            "--manifest",
            str(tmp / "manifest.csv"),
            "--out",
            str(tmp / "e"),
            "--no-tensorboard",
            "evaluation.bootstrap_iterations=0",
        ]
    )
    assert args.handler(args) == 0
    assert "FALLBACK: lower bound too low" in capsys.readouterr().out
    block = json.loads((tmp / "e" / "metrics.json").read_text())["classes"]["finding"]
    assert block["operating_point"]["source"] == "bundle" and block["operating_point"]["fallback"]
    args = _parse(
        [
            "--model",
            str(tmp / "model.pt"),
            "--manifest",
            str(tmp / "manifest.csv"),
            "--out",
            str(tmp / "f"),
            "--no-tensorboard",
            "--threshold",
            "finding=0.3",
        ]
    )
    assert args.handler(args) == 0
    assert json.loads((tmp / "f" / "metrics.json").read_text())["classes"]["finding"]["threshold"] == 0.3


def test_cli_usage_errors_exit_2(cli_env, capsys):
    from xraytriage.config import ConfigError

    tmp, _, _ = cli_env
    base = [
        "--model",
        str(tmp / "model.pt"),
        "--manifest",
        str(tmp / "manifest.csv"),
        "--out",
        str(tmp / "e"),
    ]
    args = _parse([*base, "evaluation.bootstrap_iterations=-1"])
    with pytest.raises(ConfigError):  # the top-level CLI prints it and exits 2
        args.handler(args)
    args = _parse([*base, "--split", "external"])
    assert args.handler(args) == 1
    for extra in (
        ["--threshold", "nodule=0.3"],
        ["--threshold", "finding=high"],
        ["--predictions", str(tmp / "p.csv")],
    ):
        args = _parse([*base, *extra])
        assert args.handler(args) == 2
    assert "--threshold 'nodule=0.3'" in capsys.readouterr().err
    args = _parse(["--out", str(tmp / "e")])
    assert args.handler(args) == 2


def test_cli_refuses_leakage_unless_allowed(cli_env, capsys):
    tmp, calls, _ = cli_env
    manifest = pd.read_csv(tmp / "manifest.csv")
    manifest.loc[manifest["split"] == "train", "patient_id"] = manifest.loc[
        manifest["split"] == "test", "patient_id"
    ].to_numpy()
    manifest.to_csv(tmp / "leaky.csv", index=False)
    base = ["--model", str(tmp / "model.pt"), "--manifest", str(tmp / "leaky.csv"), "--no-tensorboard"]
    args = _parse([*base, "--out", str(tmp / "e"), "evaluation.bootstrap_iterations=0"])
    assert args.handler(args) == 2
    assert (
        "patient(s) appear in more than one split" in capsys.readouterr().err and calls == []
    )  # before inference
    args = _parse([*base, "--out", str(tmp / "a"), "--allow-leakage", "evaluation.bootstrap_iterations=0"])
    assert args.handler(args) == 0
    assert "PATIENT LEAKAGE ALLOWED" in capsys.readouterr().out
    metrics = json.loads((tmp / "a" / "metrics.json").read_text())
    assert metrics["leakage"]["pairs"] == {"test/train": 100}  # found in the whole manifest, train included


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_evaluates_a_predictions_file(tmp_path, capsys, suffix):
    """Any model's outputs: thresholds chosen on the val rows, applied to the test rows."""
    table = pd.concat(
        [
            _predictions(300, "val", 11),
            _predictions(400, "test", 12, weaker_in_women=0.3),
            _predictions(20, "train", 13),
        ],
        ignore_index=True,
    ).drop(columns=["path"])
    path = tmp_path / f"pred{suffix}"
    table.to_parquet(path) if suffix == ".parquet" else table.to_csv(path, index=False)
    args = _parse(
        [
            "--predictions",
            str(path),
            "--out",
            str(tmp_path / "e"),
            "--no-tensorboard",
            "evaluation.bootstrap_iterations=0",
            "evaluation.subgroups=[sex]",
        ]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "20 row(s)" in out and "left out" in out  # the train rows
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    block = metrics["classes"]["finding"]
    assert metrics["population"]["scans"] == 400 and metrics["population"]["validation_scans"] == 300
    assert block["threshold_source"] == "validation (target_sensitivity, lower_bound)"
    val = table[table["split"] == "val"]
    expected = OperatingPoint.from_json(block["operating_point"])
    from xraytriage.config import OperatingPointConfig
    from xraytriage.evaluation.thresholds import choose_operating_point

    chosen = choose_operating_point(
        val["finding"], val["prob_finding"], OperatingPointConfig(), val["patient_id"].to_numpy()
    )
    assert expected == chosen
    args = _parse(
        [
            "--predictions",
            str(path),
            "--out",
            str(tmp_path / "g"),
            "--no-tensorboard",
            "--threshold",
            "finding=0.42",
            "evaluation.bootstrap_iterations=0",
            "evaluation.subgroups=[sex]",
            "evaluation.fairness.max_miss_rate_gap=0.01",
        ]
    )
    assert args.handler(args) == 3
    block = json.loads((tmp_path / "g" / "metrics.json").read_text())["classes"]["finding"]
    assert block["threshold"] == 0.42 and block["threshold_source"] == "command line (--threshold)"


def test_cli_predictions_file_problems_exit_2(tmp_path, capsys):
    table = _predictions(60, "test", 14)
    cases = {
        "noprob.csv": table.drop(columns=["prob_finding"]),
        "notruth.csv": table.drop(columns=["finding"]),
        "noid.csv": table.drop(columns=["patient_id"]),
        "blankid.csv": table.assign(patient_id=[None, *table["patient_id"][1:]]),
        "notest.csv": table.assign(split="val"),
    }
    expected = {
        "noprob.csv": "no probability column",
        "notruth.csv": "have no truth column finding",
        "noid.csv": "no patient_id column",
        "blankid.csv": "patient_id is empty in 1 row(s)",
        "notest.csv": "no rows with split 'test'",
    }
    for name, frame in cases.items():
        frame.to_csv(tmp_path / name, index=False)
        args = _parse(["--predictions", str(tmp_path / name), "--out", str(tmp_path / "e")])
        assert args.handler(args) == 2, name
        assert expected[name] in capsys.readouterr().err, name
    leaky = pd.concat([table, table.assign(split="val")], ignore_index=True)
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    args = _parse(["--predictions", str(tmp_path / "leaky.csv"), "--out", str(tmp_path / "e")])
    assert args.handler(args) == 2 and "more than one split" in capsys.readouterr().err


def test_zero_bootstrap_iterations_and_a_handful_of_patients(tmp_path):
    """bootstrap_iterations: 0 gives F1/AUPRC/Brier/ECE without an interval (never a fake one) and
    leaves every closed-form interval in place; five patients with two scans each are enough to run."""
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score

    y = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=float)
    prob = np.array([0.9, 0.4, 0.2, 0.6, 0.8, 0.1, 0.7, 0.3, 0.45, 0.05])
    frame = pd.DataFrame(
        {
            "path": [f"/d/{i}.png" for i in range(10)],
            "patient_id": [f"P{i // 2}" for i in range(10)],
            "split": "test",
            "sex": ["F", "F", "M", "M", "F", "F", "M", "M", "F", "F"],
            "finding": y,
            "prob_finding": prob,
        }
    )
    cfg = EvaluationConfig(bootstrap_iterations=0, min_group_size=2)
    result = evaluate_predictions(frame, ["finding"], {"finding": 0.5}, cfg, tmp_path)
    metrics = result.classes["finding"].metrics
    flagged = (prob >= 0.5).astype(int)
    for name, expected in (
        ("f1", f1_score(y, flagged)),
        ("auprc", average_precision_score(y, prob)),
        ("brier", brier_score_loss(y, prob)),
    ):
        est = metrics[name]
        assert est.value == pytest.approx(expected) and (est.ci_low, est.ci_high) == (None, None), name
        assert est.method == "bootstrap_percentile"
    sens = metrics["sensitivity"]
    assert sens.value == pytest.approx(3 / 5) and sens.ci_low < 0.6 < sens.ci_high
    assert sens.method == "wilson_cluster"
    assert result.population.patients == 5 and result.population.scans == 10
    assert json.loads((tmp_path / "metrics.json").read_text())["bootstrap"]["iterations"] == 0


def _hand_built(rows: list[tuple[str, float, float]], split: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/d/{split}/{i}.png" for i in range(len(rows))],
            "patient_id": [r[0] for r in rows],
            "split": split,
            "finding": [r[1] for r in rows],
            "prob_finding": [r[2] for r in rows],
        }
    )


RATE_NAMES = ("sensitivity", "miss_rate", "specificity", "fpr", "ppv", "npv", "accuracy", "prevalence")
# (patient, truth, probability): two scans per patient, a score exactly at the threshold 0.5 for a
# positive and for a negative, one uncertain truth (-1) and one missing probability (both left out)
TEST_ROWS = [
    ("A", 1, 0.9), ("A", 1, 0.5), ("B", 0, 0.5), ("B", 0, 0.2), ("C", 1, 0.3), ("C", 0, 0.4),
    ("D", -1, 0.8), ("D", 1, 0.6), ("E", 0, np.nan), ("E", 0, 0.1), ("F", 1, 0.65), ("F", 0, 0.05),
    ("G", 0, 0.15), ("G", 1, 0.35), ("H", 0, 0.25), ("H", 0, 0.3),
]  # fmt: skip
VAL_ROWS = [
    ("V1", 1, 0.8), ("V1", 1, 0.55), ("V2", 0, 0.6), ("V2", 1, 0.3), ("V3", 0, 0.1), ("V3", 0, 0.5),
    ("V4", 1, 0.95), ("V4", 0, 0.2), ("V5", 0, 0.05), ("V5", 0, 0.15),
]  # fmt: skip


def _sklearn_rates(frame: pd.DataFrame, threshold: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

    known = frame[frame["finding"].isin([0, 1]) & frame["prob_finding"].notna()]
    y, p = known["finding"].to_numpy(int), known["prob_finding"].to_numpy(float)
    tn, fp, fn, tp = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1]).ravel()
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(y), "positives": tp + fn, "negatives": tn + fp,
        "sensitivity": tp / (tp + fn), "miss_rate": fn / (tp + fn), "specificity": tn / (tn + fp),
        "fpr": fp / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
        "accuracy": accuracy_score(y, p >= threshold), "prevalence": (tp + fn) / len(y),
        "auroc": roc_auc_score(y, p),
    }  # fmt: skip


def _cluster_intervals(frame: pd.DataFrame, threshold: float, confidence: float, names) -> dict:
    """The interval functions (tested against their own oracles in test_eval_intervals.py), called on
    the known scans with the patients as clusters: what evaluate_predictions must report."""
    from xraytriage.evaluation.rates import auroc_estimate, rate_estimates

    known = frame[frame["finding"].isin([0, 1]) & frame["prob_finding"].notna()]
    positive = known["finding"].to_numpy(int) == 1
    prob = known["prob_finding"].to_numpy(float)
    codes = pd.factorize(known["patient_id"])[0]
    found = rate_estimates(positive, prob >= threshold, codes, confidence, [n for n in names if n != "auroc"])
    found["auroc"] = auroc_estimate(positive, prob, codes, confidence)
    return found


def test_every_test_and_validation_figure_is_the_hand_checked_one(tmp_path):
    """Counts and rates against scikit-learn on a hand-built table (the threshold is inclusive, unknown
    rows are left out), intervals as the interval functions give them with the patients as clusters at
    the configured confidence, on test and on validation; population, calibration and settings."""
    test, val = _hand_built(TEST_ROWS, "test"), _hand_built(VAL_ROWS, "val")
    test.loc[15, "split"] = None
    test["finding"] = test["finding"].astype("Int64")  # a nullable column, as pandas reads a sparse one
    test.loc[8, "finding"] = pd.NA  # patient E's scan with no probability has no truth either
    test["prob_finding"] = test["prob_finding"].astype(object)
    test.loc[8, "prob_finding"] = "n/a"  # text in a number column: unknown, left out
    cfg = EvaluationConfig(
        bootstrap_iterations=0, bootstrap_seed=7, confidence=0.8, calibration_bins=4, min_group_size=3
    )
    result = evaluate_predictions(
        test, ["finding"], {"finding": 0.5}, cfg, None, val_predictions=val, skipped_unreadable=3,
        temperatures={"finding": 1.7}, audit_frame=test,
    )  # fmt: skip
    block = result.classes["finding"]
    expected = _sklearn_rates(test, 0.5)
    assert (expected["tp"], expected["fp"], expected["tn"], expected["fn"]) == (4, 1, 7, 2)  # by hand
    assert block.counts.to_json() == {
        "n": 14, "positives": 6, "negatives": 8, "tp": 4, "fp": 1, "tn": 7, "fn": 2, "excluded": 2
    }  # fmt: skip
    assert {k: block.confusion[k].value for k in ("tp", "fp", "tn", "fn")} == {
        "tp": 4,
        "fp": 1,
        "tn": 7,
        "fn": 2,
    }
    assert block.metrics["sensitivity"].value == pytest.approx(4 / 6)
    assert block.metrics["miss_rate"].value == pytest.approx(2 / 6)
    intervals = _cluster_intervals(test, 0.5, 0.8, [*RATE_NAMES, "auroc"])
    for name in (*RATE_NAMES, "auroc"):
        est = block.metrics[name]
        assert est.value == pytest.approx(expected[name], abs=1e-12), name
        assert (est.ci_low, est.ci_high, est.method) == (
            intervals[name].ci_low, intervals[name].ci_high, intervals[name].method
        ), name  # fmt: skip
    v = block.validation
    val_expected = _sklearn_rates(val, 0.5)
    assert (v.n, v.positives) == (10, 4) and v.metrics["sensitivity"].value == 0.75
    val_intervals = _cluster_intervals(
        val, 0.5, 0.8, ["sensitivity", "miss_rate", "specificity", "ppv", "auroc"]
    )
    assert set(v.metrics) == {"sensitivity", "miss_rate", "specificity", "ppv", "auroc"}
    for name, est in v.metrics.items():
        assert est.value == pytest.approx(val_expected[name], abs=1e-12), name
        assert (est.ci_low, est.ci_high) == (val_intervals[name].ci_low, val_intervals[name].ci_high), name
    assert result.population.to_json() == {
        "scans": 16, "patients": 8, "splits": {"test": 15, "unassigned": 1}, "validation_scans": 10,
        "skipped_unreadable": 3,
    }  # fmt: skip
    calib = block.calibration
    assert (calib.bins, calib.temperature) == (4, 1.7)
    known = test[test["finding"].isin([0, 1]) & test["prob_finding"].notna()]
    y_known, p_known = known["finding"].to_numpy(float), known["prob_finding"].to_numpy(float)
    # by hand, 4 bins of width 0.25 over the 14 known scans
    assert [(b.bin_low, b.bin_high, b.count) for b in calib.reliability] == [
        (0.0, 0.25, 4), (0.25, 0.5, 5), (0.5, 0.75, 4), (0.75, 1.0, 1)
    ]  # fmt: skip
    from xraytriage.evaluation.calibration import expected_calibration_error, reliability_curve

    curve = reliability_curve(y_known, p_known, 4)
    assert [(b.bin_low, b.bin_high, b.count, b.mean_prob, b.observed_rate) for b in calib.reliability] == [
        tuple(r) for r in curve.itertuples(index=False)
    ]
    assert calib.ece == pytest.approx(expected_calibration_error(y_known, p_known, 4))
    assert result.settings["bootstrap"] == {
        "unit": "patient", "method": "percentile", "used_for": ["f1", "auprc", "brier", "ece"],
        "iterations": 0, "seed": 7, "confidence": 0.8,
    }  # fmt: skip
    assert (result.settings["min_group_size"], result.settings["min_group_patients"]) == (
        3,
        cfg.min_group_patients,
    )
    assert result.settings["prediction_rule"] == "positive when prob >= threshold"


def test_bootstrap_intervals_are_percentiles_of_patient_resampled_sklearn_figures():
    """F1, AUPRC, Brier and ECE intervals: draw the patients with replacement (seeded numpy generator,
    as docs/evaluation.md says), recompute each figure with scikit-learn (ECE by hand, 4 bins) with the
    scans weighted by their patient's draws, and take the percentiles at the configured confidence."""
    from sklearn.metrics import average_precision_score, brier_score_loss, f1_score

    test = _hand_built(TEST_ROWS, "test")
    cfg = EvaluationConfig(bootstrap_iterations=60, bootstrap_seed=11, confidence=0.8, calibration_bins=4)
    metrics = evaluate_predictions(test, ["finding"], {"finding": 0.5}, cfg, None).classes["finding"].metrics
    known = test[test["finding"].isin([0, 1]) & test["prob_finding"].notna()]
    y, p = known["finding"].to_numpy(int), known["prob_finding"].to_numpy()
    patient = pd.factorize(test["patient_id"])[0][known.index]  # 8 patients, 14 known scans
    draws = np.random.default_rng(11).integers(0, 8, size=(60, 8))
    bins = np.minimum((p * 4).astype(int), 3)
    replicates: dict[str, list[float]] = {"f1": [], "auprc": [], "brier": [], "ece": []}
    for drawn in draws:
        w = np.bincount(drawn, minlength=8)[patient].astype(float)
        pred = (p >= 0.5).astype(int)
        has_pos, has_flag = (w * y).sum() > 0, (w * (y | pred)).sum() > 0
        replicates["f1"].append(f1_score(y, pred, sample_weight=w) if has_flag else np.nan)
        replicates["auprc"].append(average_precision_score(y, p, sample_weight=w) if has_pos else np.nan)
        replicates["brier"].append(brier_score_loss(y, p, sample_weight=w))
        gaps = [abs((w * (y - p))[bins == b].sum()) for b in range(4)]
        replicates["ece"].append(sum(gaps) / w.sum())
    for name, values in replicates.items():
        finite = np.array(values)[np.isfinite(values)]
        assert finite.size >= 30, name  # at least half usable: an interval is given
        low, high = np.quantile(finite, [0.1, 0.9])
        est = metrics[name]
        assert (est.ci_low, est.ci_high) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6)), (
            name
        )
        assert est.ci_low < est.ci_high and est.method == "bootstrap_percentile"


def test_without_threshold_or_validation_the_configured_threshold_is_used_and_marked_a_fallback():
    test = _hand_built(TEST_ROWS, "test").drop(columns="split")  # no split column: no split counts
    cfg = EvaluationConfig(bootstrap_iterations=0, operating_point={"policy": "youden", "threshold": 0.35})
    result = evaluate_predictions(test, ["finding"], {}, cfg, None)
    assert result.population.splits == {} and result.population.validation_scans is None
    block = result.classes["finding"]
    op = block.operating_point
    assert (op.threshold, op.policy, op.source) == (0.35, "youden", "config")
    assert op.fallback_reason == (
        "no stored threshold and no validation predictions to choose one on; fixed threshold 0.35 "
        "(evaluation.operating_point.threshold) used"
    )
    # at 0.35 the positives at 0.35, 0.5, 0.6, 0.65, 0.9 are flagged, the one at 0.3 is missed
    assert (block.counts.tp, block.counts.fn, block.counts.fp) == (5, 1, 2)
    given = evaluate_predictions(test, ["finding"], {"finding": 0.35}, cfg, None).classes["finding"]
    assert (given.operating_point.source, given.operating_point.policy, given.threshold) == (
        "given",
        "given",
        0.35,
    )


def test_the_threshold_chosen_on_validation_counts_its_patients_as_clusters():
    """Ten scans per validation patient: the lower bound that picks the threshold is the clustered one
    (choose_operating_point with the patient IDs), which here gives another threshold than treating
    every scan as its own patient."""
    from xraytriage.config import OperatingPointConfig
    from xraytriage.evaluation.thresholds import choose_operating_point

    val = _predictions(300, "val", 2)
    val["patient_id"] = [f"P{i // 10}" for i in range(300)]
    cfg = OperatingPointConfig()
    clustered = choose_operating_point(val["finding"], val["prob_finding"], cfg, val["patient_id"].to_numpy())
    per_scan = choose_operating_point(val["finding"], val["prob_finding"], cfg, None)
    assert clustered.threshold != per_scan.threshold
    test = _hand_built(TEST_ROWS, "test")
    result = evaluate_predictions(
        test, ["finding"], {}, EvaluationConfig(bootstrap_iterations=0), None, val_predictions=val
    )
    assert result.classes["finding"].operating_point == clustered
