"""Data audit: counts, prevalence, missing attributes and patient leakage (exit code 4)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from xraytriage.commands import audit as audit_cmd
from xraytriage.config import EvaluationConfig
from xraytriage.evaluation.audit import audit_manifest


def _manifest(leak: bool) -> pd.DataFrame:
    rows = []
    for i in range(30):
        split = ["train", "val", "test"][i % 3]
        for k in range(2):
            rows.append(
                {
                    "path": f"s{i}_{k}.png",
                    "patient_id": f"PID-{i:04d}-X",
                    "split": split,
                    "sex": "F" if i % 2 else "M",
                    "age": 30 + i,
                    "finding": float((i + k) % 3 == 0),
                }
            )
    df = pd.DataFrame(rows)
    df.loc[0, "finding"] = -1.0
    df.loc[1, "finding"] = np.nan
    if leak:
        df.loc[len(df)] = {
            "path": "leak.png",
            "patient_id": "PID-0000-X",
            "split": "test",
            "sex": "M",
            "age": 30,
            "finding": 0.0,
        }
    return df


def test_counts_prevalence_and_missing():
    df = _manifest(leak=False)
    result = audit_manifest(df, ["finding"], EvaluationConfig(subgroups=["sex", "age_band", "site"]))
    assert not result.has_leakage and result.errors == []
    splits = result.splits.set_index("split")
    train = df[df["split"] == "train"]
    assert splits.loc["train", "n"] == len(train)
    assert splits.loc["train", "patients"] == train["patient_id"].nunique()
    assert splits.loc["train", "finding_uncertain"] == 1 and splits.loc["train", "finding_unknown"] == 1
    known = train["finding"].isin([0, 1])
    assert splits.loc["train", "finding_prevalence"] == (train["finding"][known] == 1).mean()
    assert splits.loc["all", "n"] == len(df)
    sub = result.subgroups
    f_test = sub[(sub["split"] == "test") & (sub["group"] == "sex=F")]
    assert f_test["n"].iloc[0] == ((df["split"] == "test") & (df["sex"] == "F")).sum()
    missing = result.missing.set_index("attribute")
    assert not missing.loc["site", "present"] and missing.loc["sex", "present"]


def test_leakage_is_an_error_without_ids_in_summary():
    result = audit_manifest(_manifest(leak=True), ["finding"], EvaluationConfig())
    assert result.has_leakage and result.leakage == {"PID-0000-X": ["test", "train"]}
    assert "1 patient(s)" in result.errors[0] and "test/train: 1" in result.errors[0]
    text = json.dumps(result.to_dict()) + "\n".join(result.summary_lines())
    assert "PID-" not in text


def _args(tmp_path, manifest, **kw):
    ns = dict(manifest=manifest, labels="finding", out=tmp_path / "audit", config=None, overrides=[])
    ns.update(kw)
    return argparse.Namespace(**ns)


def test_cli_exit_codes_and_files(tmp_path, capsys):
    leaky = tmp_path / "leaky.csv"
    _manifest(leak=True).to_csv(leaky, index=False)
    assert audit_cmd.run(_args(tmp_path, leaky)) == audit_cmd.EXIT_LEAKAGE
    out = capsys.readouterr().out
    assert "patient leakage" in out and "PID-" not in out
    leaks = pd.read_csv(tmp_path / "audit" / "leaking_patients.csv", dtype=str)
    assert list(leaks["patient_id"]) == ["PID-0000-X"]
    for name in ("audit.json", "audit_splits.csv", "audit_subgroups.csv", "audit_missing.csv"):
        assert (tmp_path / "audit" / name).is_file()

    clean = tmp_path / "clean.csv"
    _manifest(leak=False).to_csv(clean, index=False)
    assert audit_cmd.run(_args(tmp_path, clean)) == 0
    assert not (tmp_path / "audit" / "leaking_patients.csv").exists()  # stale list removed
    assert audit_cmd.run(_args(tmp_path, clean, labels=None, out=None)) == 0  # labels inferred


def test_parser_help_mentions_exit_code():
    parser = argparse.ArgumentParser()
    audit_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["audit", "--manifest", "m.csv", "--labels", "a,b"])
    assert args.handler is audit_cmd.run and args.labels == "a,b"
    assert "exit code 4" in audit_cmd.HELP
