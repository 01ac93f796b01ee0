"""evaluate_predictions and ``xraytriage evaluate``: the four outputs, TensorBoard entries, no patient IDs
in metrics.json, a self-contained report, validation vs test, and exit code 3 on a failed gate."""

from __future__ import annotations

import argparse
import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.report import OUTPUT_FILES, evaluate_predictions


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
        temperature=1.3,
    )
    writer.close()
    return out, result, test, val


def test_four_outputs_and_schema(evaluated):
    out, _, test, _ = evaluated
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema"] == "xraytriage.metrics" and metrics["schema_version"] == 1
    block = metrics["classes"]["finding"]
    assert block["threshold_source"].startswith("validation (target_sensitivity)")
    sens = block["metrics"]["sensitivity"]
    assert sens["ci_low"] <= sens["value"] <= sens["ci_high"]
    assert block["counts"]["excluded"] == int((test["finding"] == -1).sum())
    assert block["validation"]["sensitivity"]["value"] >= 0.9  # the threshold was chosen for 0.9 on val
    assert block["target_check"]["target"] == 0.9
    assert metrics["population"]["patients"] == test["patient_id"].nunique()
    assert metrics["temperature"] == 1.3 and metrics["fairness_gate"]["passed"]
    assert set(block["subgroups"]) == {"sex", "age_band", "view", "site", "sex & age_band"}
    assert block["subgroups"]["site"] == {
        "available": False,
        "reason": "column 'site' is not in the predictions",
    }
    subgroups = pd.read_csv(out / "subgroups.csv")
    assert {"sex=F", "sex=M"} <= set(subgroups["group"])
    preds = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert list(preds["patient_id"]) == list(test["patient_id"])  # the user's own key, unchanged
    expected = (test["prob_finding"] >= block["threshold"]).astype(float)
    assert (preds["pred_finding"] == expected).all() and "age_band" in preds


def test_no_patient_ids_in_metrics_or_report(evaluated):
    out, _, test, val = evaluated
    text = (out / "metrics.json").read_text() + (out / "report.html").read_text()
    ids = set(test["patient_id"]) | set(val["patient_id"])
    assert not any(pid in text for pid in ids)
    assert re.search(r"ZQ\d+ID", text) is None


def test_report_is_self_contained(evaluated):
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
    ):
        assert needle in html


def test_tensorboard_entries(evaluated):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(evaluated[0] / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {
        "eval/finding/sensitivity",
        "eval/finding/miss_rate_ci_high",
        "eval/finding/validation_sensitivity",
    } <= scalars
    assert any(t.startswith("eval_subgroups/finding/sex=F") for t in scalars)
    assert "eval/finding/roc_pr" in acc.Tags()["images"]
    assert any("pr_curve" in t for t in acc.Tags()["tensors"])


def test_gate_failure_named_in_result_and_report(tmp_path):
    test = _predictions(600, "test", 3, weaker_in_women=0.3)
    cfg = EvaluationConfig(bootstrap_iterations=50, subgroups=["sex"], fairness={"max_miss_rate_gap": 0.05})
    result = evaluate_predictions(test, ["finding"], {"finding": 0.5}, cfg, tmp_path)
    assert result.gate_failures and "sex=F" in result.gate_failures[0]
    assert result.metrics["classes"]["finding"]["threshold_source"] == "bundle"
    assert "Fairness gate FAILED" in (tmp_path / "report.html").read_text()


def test_missing_probability_column_is_a_clear_error():
    with pytest.raises(ValueError, match="prob_finding"):
        evaluate_predictions(pd.DataFrame({"finding": [1.0]}), ["finding"], {}, EvaluationConfig(), None)


# ---- the CLI, with a stand-in bundle and predictor (the real model path is covered by the demo test) ----


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    import xraytriage.models
    import xraytriage.training.predict as predict_mod

    frames = [_predictions(200, s, i, weaker_in_women=0.35) for i, s in enumerate(["train", "val", "test"])]
    manifest = pd.concat(frames, ignore_index=True).drop(columns=["prob_finding"])
    manifest["path"] = [f"img{i}.png" for i in range(len(manifest))]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    bundle = SimpleNamespace(labels=["finding"], thresholds={"finding": 0.5}, model_id="m1", temperature=1.0)
    monkeypatch.setattr(xraytriage.models, "load_bundle", lambda path: bundle)
    (tmp_path / "model.pt").write_bytes(b"stand-in")
    calls = []

    def fake_predict(b, df, batch_size, num_workers, device):
        calls.append(set(df["split"]))
        out = df.iloc[1:].copy()  # first row "unreadable"
        rng = np.random.default_rng(len(df))
        weak = 0.35 * ((out["sex"] == "F") & (out["finding"] == 1)).to_numpy()
        out["prob_finding"] = np.clip(0.45 * (out["finding"] == 1) + rng.random(len(out)) * 0.55 - weak, 0, 1)
        out.attrs["failed"] = [(df["path"].iloc[0], "unreadable")]
        return out.reset_index(drop=True)

    monkeypatch.setattr(predict_mod, "predict_manifest", fake_predict)
    return tmp_path, calls


def _parse(argv):
    from xraytriage.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers())
    return parser.parse_args(["evaluate", *argv])


def test_cli_writes_outputs_and_exit_codes(cli_env, capsys):
    tmp, calls = cli_env
    base = ["--model", str(tmp / "model.pt"), "--manifest", str(tmp / "manifest.csv")]
    args = _parse([*base, "--out", str(tmp / "ev"), "evaluation.bootstrap_iterations=100"])
    assert args.handler(args) == 0
    assert calls == [{"test"}, {"val"}]  # test evaluated, val used for the side-by-side
    out = capsys.readouterr().out
    assert "1 scan(s) could not be read" in out and "sensitivity" in out and "worst subgroup: sex=F" in out
    for name in OUTPUT_FILES:
        assert (tmp / "ev" / name).is_file()
    assert list((tmp / "ev" / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert metrics["population"]["skipped_unreadable"] == 1 and metrics["model_id"] == "m1"

    args = _parse(
        [
            *base,
            "--out",
            str(tmp / "ev2"),
            "--no-tensorboard",
            "evaluation.bootstrap_iterations=50",
            "evaluation.fairness.max_miss_rate_gap=0.02",
        ]
    )
    assert args.handler(args) == 3
    assert "FAIRNESS GATE FAILED" in capsys.readouterr().out


def test_cli_config_error_and_missing_split(cli_env):
    from xraytriage.config import ConfigError

    tmp, _ = cli_env
    base = [
        "--model",
        str(tmp / "model.pt"),
        "--manifest",
        str(tmp / "manifest.csv"),
        "--out",
        str(tmp / "e"),
    ]
    args = _parse([*base, "evaluation.bootstrap_iterations=-1"])
    with pytest.raises(ConfigError):
        args.handler(args)
    args = _parse([*base, "--split", "external"])
    assert args.handler(args) == 1
