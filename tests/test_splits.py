"""Patient-level splits on real NIH rows: disjoint, seeded, stratified; k folds; the split command."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.data.adapters.nih import finding_labels
from xraytriage.data.manifest import patient_leakage, read_manifest
from xraytriage.data.splits import SplitError, assign_folds, assign_splits


@pytest.fixture(scope="module")
def nih(shared_data: Path) -> pd.DataFrame:
    """6,000 real ChestX-ray14 rows (about 1,300 patients, many with dozens of follow-up scans)."""
    raw = pd.read_csv(shared_data / "public_metadata" / "Data_Entry_2017_v2020.csv.gz", nrows=6000)
    labels, _ = finding_labels(raw["Finding Labels"])
    df = pd.concat(
        [pd.DataFrame({"path": raw["Image Index"], "patient_id": raw["Patient ID"].astype(str)}), labels],
        axis=1,
    )
    return df


LABELS = ["atelectasis", "effusion", "infiltration", "pneumothorax", "hernia", "finding"]


def test_resplit_is_patient_disjoint_and_close_to_the_fractions(nih: pd.DataFrame) -> None:
    out = assign_splits(nih, LABELS, val=0.1, test=0.2, seed=0)
    assert patient_leakage(out) == {}
    share = out["split"].value_counts(normalize=True)
    assert abs(share["test"] - 0.2) < 0.04 and abs(share["val"] - 0.1) < 0.03
    # stratified: the positive rate of each label is similar in every split
    for label in ("finding", "infiltration", "effusion"):
        rates = out.groupby("split")[label].mean()
        assert rates.max() - rates.min() < 0.05, (label, rates.to_dict())


def test_seed_reproduces_and_changes_the_split(nih: pd.DataFrame) -> None:
    a = assign_splits(nih, LABELS, seed=3)["split"]
    b = assign_splits(nih, LABELS, seed=3)["split"]
    c = assign_splits(nih, LABELS, seed=4)["split"]
    assert a.equals(b)
    assert (a != c).mean() > 0.1


def test_rare_label_reaches_every_split_when_stratified(nih: pd.DataFrame) -> None:
    out = assign_splits(nih, LABELS, seed=0)
    positives = out.groupby("split")["pneumothorax"].sum()
    assert (positives > 0).all(), positives.to_dict()


def test_unstratified_split_is_still_patient_disjoint(nih: pd.DataFrame) -> None:
    out = assign_splits(nih, [], val=0.15, test=0.15, seed=1, stratify=False)
    assert patient_leakage(out) == {} and set(out["split"]) == {"train", "val", "test"}


def test_k_folds_are_patient_disjoint_and_exclude_test(nih: pd.DataFrame) -> None:
    out = assign_folds(assign_splits(nih, LABELS, seed=0), LABELS, k=5, seed=0, val_fold=2)
    test = out["split"] == "test"
    assert out.loc[test, "fold"].isna().all()
    assert sorted(out.loc[~test, "fold"].unique()) == [0, 1, 2, 3, 4]
    assert patient_leakage(out, "fold") == {} and patient_leakage(out) == {}
    assert (out.loc[out["fold"] == 2, "split"] == "val").all()
    assert (out.loc[(out["fold"] != 2) & ~test, "split"] == "train").all()
    sizes = out.loc[~test].groupby("fold").size()
    assert sizes.min() > 0.7 * sizes.max()


def test_impossible_requests_say_what_to_change() -> None:
    tiny = pd.DataFrame({"path": list("abc"), "patient_id": ["1", "1", "2"], "finding": [1, 0, 1]})
    with pytest.raises(SplitError, match="sum to less than 1"):
        assign_splits(tiny, ["finding"], val=0.5, test=0.5)
    with pytest.raises(SplitError, match="2 patient\\(s\\) cannot be divided"):
        assign_splits(tiny, ["finding"], val=0.1, test=0.2)


def _split_cmd(**kwargs: object) -> int:
    from xraytriage.commands import split

    defaults = dict(
        out=None,
        check=False,
        labels=None,
        root=None,
        val=0.1,
        test=0.2,
        seed=0,
        folds=0,
        val_fold=0,
        no_stratify=False,
    )
    defaults.update(kwargs)
    return split.run(argparse.Namespace(**defaults))


def test_split_command_detects_the_nih1000_leak_and_fixes_it(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared_data / "nih1000_64px"
    table = pd.read_csv(src / "labels_with_demographics.csv")
    manifest = tmp_path / "published.csv"
    pd.DataFrame(
        {
            "path": [str(src / p) for p in table["path"]],
            "patient_id": table["Patient ID"],
            "finding": (table["Finding Labels"] != "No Finding").astype(int),
            "split": table["split"].replace({"valid": "val"}),
        }
    ).to_csv(manifest, index=False)
    assert _split_cmd(manifest=manifest, check=True) == 1
    assert "30 patient(s) appear in more than one split" in capsys.readouterr().err
    fixed = tmp_path / "resplit.csv"
    assert _split_cmd(manifest=manifest, out=fixed, seed=7, folds=4) == 0
    assert _split_cmd(manifest=fixed, check=True) == 0
    df = read_manifest(fixed, labels=["finding"], check_files=True)
    assert patient_leakage(df) == {} and df["fold"].notna().sum() == (df["split"] != "test").sum()
    assert np.isclose((df["split"] == "test").mean(), 0.2, atol=0.05)
