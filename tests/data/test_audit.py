"""Data audit: counts, prevalence, missing attributes and patient leakage (exit code 4)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

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


def _small() -> pd.DataFrame:
    """Eight scans, hand-counted: A in three splits and B in two (leakage), C in a split of its own
    name, D without a split; uncertain (-1) and blank labels are not labelled."""
    return pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B", "B", "C", "D", "E"],
            "split": ["train", "val", "test", "train", "val", "extra", None, "train"],
            "sex": ["F", "F", "F", "M", "M", "F", None, "M"],
            "finding": [1, 0, -1, 1, np.nan, -1, 0, 0],
        }
    )


def test_summary_lines_give_hand_counted_tables_in_reading_order():
    result = audit_manifest(_small(), ["finding"], EvaluationConfig(subgroups=["sex", "site"]))
    assert result.summary_lines() == [
        "scans and patients per split:",
        "  split       scans  patients",
        "  train           3         3",
        "  val             2         2",
        "  test            1         1",
        "  extra           1         1",
        "  unassigned      1         1",
        "  all             8         5",
        "positives / labelled scans (prevalence) per label and split:",
        "  label          train         val  test  extra  unassigned          all",
        "  finding  2/3 (66.7%)  0/1 (0.0%)  n/a   n/a    0/1 (0.0%)  2/5 (40.0%)",
        "scans with an unknown subgroup attribute:",
        "  attribute  unknown  share  note",
        "  sex              1  12.5%",
        "  site           all   100%  column 'site' is not in the predictions",
        "ERROR: patient leakage: 2 patient(s) have scans in more than one split (test/train: 1, "
        "test/val: 1, train/val: 2); assign every patient to exactly one split",
    ]


def test_counts_per_split_and_group_are_plain_json_numbers():
    result = audit_manifest(_small(), ["finding"], EvaluationConfig(subgroups=["sex"]))
    doc = result.to_dict()
    assert json.loads(json.dumps(doc)) == doc  # JSON-safe: no numpy numbers, no NaN
    val = next(r for r in doc["splits"] if r["split"] == "val")
    assert val == {
        "split": "val",
        "n": 2,
        "patients": 2,
        "finding_positives": 0,
        "finding_negatives": 1,
        "finding_uncertain": 0,
        "finding_unknown": 1,
        "finding_prevalence": 0.0,
    }
    test = next(r for r in doc["splits"] if r["split"] == "test")
    assert test["finding_uncertain"] == 1 and test["finding_prevalence"] is None  # nothing labelled
    groups = {(r["split"], r["group"]): r["n"] for r in doc["subgroups"]}
    assert groups == {
        ("extra", "sex=F"): 1,
        ("test", "sex=F"): 1,
        ("train", "sex=F"): 1,
        ("train", "sex=M"): 2,
        ("unassigned", "sex=unknown"): 1,
        ("val", "sex=F"): 1,
        ("val", "sex=M"): 1,
        ("all", "sex=F"): 4,
        ("all", "sex=M"): 3,
        ("all", "sex=unknown"): 1,
    }
    assert doc["missing_attributes"] == [
        {"attribute": "sex", "present": True, "unknown": 1, "unknown_fraction": 0.125, "note": ""}
    ]
    assert doc["leakage"] == {"patients": 2, "pairs": {"test/train": 1, "test/val": 1, "train/val": 2}}
    assert doc["errors"] == result.errors and len(doc["errors"]) == 1
    assert type(doc["splits"][0]["n"]) is int and type(doc["subgroups"][0]["finding_positives"]) is int


def test_one_split_or_none_has_no_all_row_and_no_leakage_check():
    one = _small().assign(split="test")
    result = audit_manifest(one, ["finding"], EvaluationConfig(subgroups=["sex"]))
    assert list(result.splits["split"]) == ["test"] and not result.has_leakage
    assert set(result.subgroups["split"]) == {"test"}
    result = audit_manifest(_small().drop(columns=["split", "patient_id"]), ["finding"], EvaluationConfig())
    assert result.split_table().to_dict("records") == [{"split": "all", "scans": 8, "patients": "n/a"}]
    assert result.leakage == {} and result.errors == []


def test_labels_are_inferred_from_columns_of_0_1_minus_1_and_blank_only():
    df = pd.DataFrame(
        {
            **{name: [1, 0, 1] for name in ("path", "patient_id", "study_id", "split", "sex", "age")},
            **{name: [0, 1, 0] for name in ("view", "site", "manufacturer")},
            "prob_effusion": [1.0, 0.0, 1.0],
            "effusion": [1, -1, np.nan],
            "mass": ["1", "0", "0"],
            "empty": [np.nan, np.nan, np.nan],
            "grade": [0, 1, 2],
            "note": ["yes", "0", "1"],
        }
    )
    assert audit_manifest(df, None).labels == ["effusion", "mass"]


def test_a_label_not_in_the_manifest_is_named():
    with pytest.raises(ValueError, match=r"^label column\(s\) mass, nodule not in the manifest$"):
        audit_manifest(_small(), ["finding", "mass", "nodule"])


def test_tables_stay_aligned_when_split_names_are_numbers_and_no_label_is_found():
    df = pd.DataFrame({"split": ["2023", "2024", "2024"], "sex": ["F", "M", None]})
    lines = audit_manifest(df, None, EvaluationConfig(subgroups=["sex"])).summary_lines()
    assert lines == [
        "scans and patients per split:",
        "  split  scans  patients",
        "   2023      1  n/a",  # year-named splits are numbers: right-aligned like the counts
        "   2024      2  n/a",
        "    all      3  n/a",
        "scans with an unknown subgroup attribute:",  # no label: the prevalence table is left out
        "  attribute  unknown  share  note",
        "  sex              1  33.3%",
    ]


def test_an_empty_manifest_gives_empty_tables_with_their_headers():
    empty = pd.DataFrame({"split": pd.Series([], dtype=str), "sex": pd.Series([], dtype=str)})
    empty["finding"] = pd.Series([], dtype=float)
    result = audit_manifest(empty, ["finding"], EvaluationConfig(subgroups=["sex"]))
    assert list(result.split_table().columns) == ["split", "scans", "patients"] and result.split_table().empty
    assert result.unknown_table().to_dict("records") == [
        {"attribute": "sex", "unknown": 0, "share": "n/a", "note": ""}  # no scan: no share
    ]
    no_labels = audit_manifest(_small().drop(columns=["finding"]), None, EvaluationConfig(subgroups=[]))
    prevalence = no_labels.prevalence_table()
    assert prevalence.empty and list(prevalence.columns) == [
        "label",
        "train",
        "val",
        "test",
        "extra",
        "unassigned",
        "all",
    ]
    unknown = no_labels.unknown_table()
    assert unknown.empty and list(unknown.columns) == ["attribute", "unknown", "share", "note"]


def test_groups_are_counted_per_split_whatever_the_index_and_attribute_order():
    """Two splits already get an "all" row; an unavailable attribute listed first does not stop the
    next; a manifest filtered elsewhere (index 10, 12, ...) is counted by position, not by label."""
    df = _small().iloc[:5].set_axis(range(10, 20, 2))  # A in train, val, test; B in train, val
    df["finding"] = ["1", "maybe", "0", "1", "0"]  # text that is not a label value: unknown
    df = df[df["split"] != "test"]
    result = audit_manifest(df, ["finding"], EvaluationConfig(subgroups=["site", "sex"]))
    rows = result.subgroups.set_index(["split", "attribute", "group"])["n"].to_dict()
    assert rows == {
        ("train", "sex", "sex=F"): 1,
        ("train", "sex", "sex=M"): 1,
        ("val", "sex", "sex=F"): 1,
        ("val", "sex", "sex=M"): 1,
        ("all", "sex", "sex=F"): 2,
        ("all", "sex", "sex=M"): 2,
    }
    splits = result.splits.set_index("split")
    assert splits.loc["all", "finding_positives"] == 2 and splits.loc["all", "finding_negatives"] == 1
    assert splits.loc["all", "finding_unknown"] == 1
    assert list(audit_manifest(df, ["finding"], EvaluationConfig(subgroups=[])).missing.columns) == [
        "attribute",
        "present",
        "unknown",
        "unknown_fraction",
        "note",
    ]
