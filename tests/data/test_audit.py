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
    ns = dict(
        manifest=manifest, labels="finding", out=tmp_path / "audit", config=None, overrides=[], json=False
    )
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


def test_tables_give_counts_and_prevalence_per_label_and_split():
    df = _manifest(leak=False)
    df["effusion"] = [float(i % 4 == 0) for i in range(len(df))]
    df.loc[2, "sex"] = None
    result = audit_manifest(df, ["finding", "effusion"], EvaluationConfig(subgroups=["sex", "site"]))
    table = result.prevalence_table().set_index("label")
    assert list(table.columns) == ["train", "val", "test", "all"]
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        for label in ("finding", "effusion"):
            known = part[label].isin([0, 1])
            pos, n = int((part[label] == 1).sum()), int(known.sum())
            assert table.loc[label, split] == f"{pos}/{n} ({pos / n:.1%})"
    unknown = result.unknown_table().set_index("attribute")
    assert unknown.loc["sex", "unknown"] == 1 and unknown.loc["sex", "share"] == f"{1 / len(df):.1%}"
    assert unknown.loc["site", "unknown"] == "all" and unknown.loc["site", "note"]
    splits = result.split_table().set_index("split")
    assert splits.loc["train", "scans"] == 20 and splits.loc["train", "patients"] == 10


def test_cli_prints_one_row_per_label_and_json_on_request(tmp_path, capsys):
    labels = [f"finding_{k:02d}" for k in range(18)]  # covid-chestxray has 18
    df = _manifest(leak=False).drop(columns=["finding"])
    for k, label in enumerate(labels):
        df[label] = [float((i + k) % 5 == 0) for i in range(len(df))]
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    assert audit_cmd.run(_args(tmp_path, path, labels=",".join(labels), out=None)) == 0
    lines = capsys.readouterr().out.splitlines()
    for label in labels:
        rows = [line for line in lines if line.split()[:1] == [label]]
        assert len(rows) == 1 and len(rows[0].split()) == 1 + 2 * 4  # label, then count + share x 4 splits
    assert max(len(line) for line in lines) < 120

    assert audit_cmd.run(_args(tmp_path, path, labels=",".join(labels), out=None, json=True)) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout is the JSON document and nothing else
    assert document == audit_manifest(df, labels, EvaluationConfig()).to_dict()
    assert document["labels"] == labels
