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


# --- small hand-computed cases: every rule of the split at its edge -----------------------------------


def _patients(images: dict[str, int], **labels: dict[str, object]) -> pd.DataFrame:
    """One row per image; ``labels[name][patient]`` is that patient's value on every row."""
    ids = [p for p, n in images.items() for _ in range(n)]
    df = pd.DataFrame({"path": [f"{p}_{i}.png" for i, p in enumerate(ids)], "patient_id": ids})
    for name, values in labels.items():
        df[name] = [values.get(p) for p in ids]
    return df


def test_a_patients_stratum_is_its_rarest_positive_label_else_negative_or_unlabelled() -> None:
    from xraytriage.data.splits import patient_strata

    df = _patients(
        {"both": 1, "common": 2, "neg": 1, "unknown": 1, "half": 1, "tie": 1},
        a={"both": 1, "common": "1", "neg": "uncertain", "half": None, "tie": 0},
        b={"both": 1, "common": 0, "neg": 0, "half": 0, "tie": 1},
        c={"tie": 1, "neg": 0},
    )
    # positive patients per label: a 2 (both, common), b 2 (both, tie), c 1 (tie); a before b on the tie
    keys = patient_strata(df, ["a", "b", "c", "not_a_column"])
    assert keys.to_dict() == {
        "both": "a",
        "common": "a",
        "half": "negative",
        "neg": "negative",
        "tie": "c",
        "unknown": "unlabelled",
    }
    assert patient_strata(df, ["b", "a"])["both"] == "b"  # equal counts: the first listed wins
    alone = patient_strata(df, ["not_a_column"])
    assert alone.to_dict() == dict.fromkeys(["both", "common", "neg", "unknown", "half", "tie"], "all")
    assert alone.index.name == "patient_id"


def test_ten_one_image_patients_split_exactly_seven_one_two() -> None:
    df = _patients({f"p{i}": 1 for i in range(10)})
    for seed in range(3):
        out = assign_splits(df, [], val=0.1, test=0.2, seed=seed)
        assert out["split"].value_counts().to_dict() == {"train": 7, "test": 2, "val": 1}
    named = assign_splits(df, [], val=0.1, test=0.2, names=("fit", "tune", "hold"))
    assert named["split"].value_counts().to_dict() == {"fit": 7, "hold": 2, "tune": 1}


def test_the_fold_plan_is_the_smallest_fold_count_that_matches_the_fractions() -> None:
    from xraytriage.data.splits import _fold_plan

    assert _fold_plan([0.2, 0.1]) == (10, [2, 1])  # 20 folds match as well: the smaller wins
    assert _fold_plan([0.25, 0.25]) == (4, [1, 1])  # 2 folds would leave no training fold
    assert _fold_plan([0.5, 0.0]) == (2, [1, 0])
    assert _fold_plan([0.9, 0.05]) == (20, [18, 1])  # needs the 20th fold
    assert _fold_plan([0.01, 0.01]) == (20, [1, 1])  # a positive fraction gets at least one fold
    with pytest.raises(SplitError, match=r"fractions \[0.95, 0.04\] leave no patients for training"):
        _fold_plan([0.95, 0.04])


def test_fractions_at_their_limits() -> None:
    df = _patients({f"p{i}": 1 for i in range(4)})
    assert set(assign_splits(df, [], val=0, test=0)["split"]) == {"train"}
    assert set(assign_splits(df, [], val=0, test=0, names=("all", "v", "t"))["split"]) == {"all"}
    only_test = assign_splits(df, [], val=0.0, test=0.5)
    assert only_test["split"].value_counts().to_dict() == {"train": 2, "test": 2}
    for val, test in [(-0.1, 0.2), (0.1, -0.01), (1.0, 0.0), (0.0, 1.0), (0.6, 0.4)]:
        with pytest.raises(SplitError, match=rf"val={val} and test={test} must be in \[0, 1\)"):
            assign_splits(df, [], val=val, test=test)
    with pytest.raises(SplitError, match="leave no patients for training"):
        assign_splits(df, [], val=0.04, test=0.95)


def test_folds_balance_images_largest_patient_first() -> None:
    df = _patients({"p4": 4, "p3": 3, "p2": 2, "p1": 1})
    for seed in range(4):
        for stratify in (True, False):
            out = assign_folds(df, [], k=2, seed=seed, stratify=stratify, holdout=None)
            fold = out.groupby("patient_id")["fold"].first()
            assert fold["p4"] == fold["p1"] != fold["p3"] == fold["p2"], (seed, fold.to_dict())


def test_a_tie_within_a_stratum_goes_to_the_fold_with_fewest_images_overall() -> None:
    df = _patients({"x": 3, "y": 1}, a={"x": 1, "y": 0})
    for seed in range(8):
        fold = assign_folds(df, ["a"], k=2, seed=seed, holdout=None).groupby("patient_id")["fold"].first()
        assert fold["x"] != fold["y"], seed


def _four() -> pd.DataFrame:
    """Two label-a patients (3 and 1 images), two negatives (2 and 2 images)."""
    return _patients({"A3": 3, "A1": 1, "N2": 2, "M2": 2}, a={"A3": 1, "A1": 1, "N2": 0, "M2": 0})


def test_stratified_folds_spread_each_label_unstratified_ones_balance_images() -> None:
    # stratified: A3 and A1 open the two folds, then the negatives do (the first to the emptier fold);
    # unstratified: largest first, 3 | 2, then 2 joins the 2 and 1 joins the 3 (4 images each)
    for seed in range(6):
        strat = (
            assign_folds(_four(), ["a"], k=2, seed=seed, holdout=None).groupby("patient_id")["fold"].first()
        )
        assert strat["A3"] != strat["A1"] and strat["N2"] != strat["M2"], seed
        plain = assign_folds(_four(), ["a"], k=2, seed=seed, stratify=False, holdout=None)
        plain = plain.groupby("patient_id")["fold"].first()
        assert plain["A3"] == plain["A1"] != plain["N2"] == plain["M2"], seed
        split = (
            assign_splits(_four(), ["a"], val=0, test=0.5, seed=seed).groupby("patient_id")["split"].first()
        )
        assert split["A3"] != split["A1"] and split["N2"] != split["M2"], seed  # stratified by default
        split = assign_splits(_four(), ["a"], val=0, test=0.5, seed=seed, stratify=False)
        split = split.groupby("patient_id")["split"].first()
        assert split["A3"] == split["A1"] != split["N2"] == split["M2"], seed


def test_image_counts_follow_their_patient_whatever_the_row_order() -> None:
    # no labels: patients in order of appearance (c, a, b), not sorted; c (3 images) alone balances a + b
    df = _patients({"c": 3, "a": 1, "b": 2})
    for seed in range(4):
        fold = assign_folds(df, [], k=2, seed=seed, holdout=None).groupby("patient_id")["fold"].first()
        assert fold["a"] == fold["b"] != fold["c"], seed


def test_defaults_are_five_stratified_folds_seed_zero_first_fold_val() -> None:
    df = _patients({f"p{i:02d}": 1 for i in range(20)})
    out = assign_folds(df)
    assert sorted(out["fold"].unique()) == [0, 1, 2, 3, 4]
    assert out["fold"].equals(assign_folds(df, seed=0)["fold"])
    assert not out["fold"].equals(assign_folds(df, seed=1)["fold"])  # so the default seed is pinned
    assert out["split"].tolist() == np.where(out["fold"] == 0, "val", "train").tolist()
    strat = assign_folds(_four(), ["a"], k=2, holdout=None).groupby("patient_id")["fold"].first()
    assert strat["A3"] != strat["A1"]
    splits = assign_splits(df, [], val=0.25, test=0.25)["split"]
    assert splits.equals(assign_splits(df, [], val=0.25, test=0.25, seed=0)["split"])
    assert not splits.equals(assign_splits(df, [], val=0.25, test=0.25, seed=1)["split"])


def test_the_same_seed_gives_the_same_folds() -> None:
    df = _patients({f"p{i:02d}": 1 for i in range(30)})
    assert assign_folds(df, [], k=5, seed=7)["fold"].equals(assign_folds(df, [], k=5, seed=7)["fold"])


def test_only_val_or_a_single_patient_without_val_and_test() -> None:
    df = _patients({f"p{i}": 1 for i in range(4)})
    assert assign_splits(df, [], val=0.5, test=0.0)["split"].value_counts().to_dict() == {
        "train": 2,
        "val": 2,
    }
    one = _patients({"only": 2})
    assert assign_splits(one, [], val=0, test=0)["split"].tolist() == ["train", "train"]
    with pytest.raises(SplitError) as caught:
        assign_splits(one, [], val=0.1, test=0.2)
    assert str(caught.value) == (
        "1 patient(s) cannot be divided into 10 patient-disjoint parts; use fewer folds or larger fractions"
    )


def test_k_folds_at_their_limits_and_without_a_holdout() -> None:
    df = _patients({f"p{i}": 1 for i in range(6)})
    out = assign_folds(df, [], k=3, val_fold=2, holdout=None, names=("fit", "tune"))
    assert out["fold"].dtype == "Int64" and out["fold"].value_counts().to_dict() == {0: 2, 1: 2, 2: 2}
    assert (out["split"] == np.where(out["fold"] == 2, "tune", "fit")).all()
    assert assign_folds(df, [], k=2)["fold"].notna().all()  # no split column: nothing held out
    for k, val_fold, message in [(1, 0, r"k >= 2 \(got 1\)"), (3, 3, r"between 0 and 2 \(got 3\)")]:
        with pytest.raises(SplitError, match=message):
            assign_folds(df, [], k=k, val_fold=val_fold)
    with pytest.raises(SplitError, match=r"between 0 and 2 \(got -1\)"):
        assign_folds(df, [], k=3, val_fold=-1)
    held = df.assign(split=["test", "test", "train", "train", "val", "train"])
    out = assign_folds(held, [], k=2, val_fold=1)
    assert out["fold"].isna().tolist() == [True, True, False, False, False, False]
    assert out["split"].tolist()[:2] == ["test", "test"] and set(out["split"][2:]) == {"train", "val"}
    assert (out["split"][2:] == np.where(out["fold"][2:] == 1, "val", "train")).all()


def test_split_summary_counts_images_patients_and_positives_per_split() -> None:
    from xraytriage.data.splits import split_summary

    df = _patients({"a": 2, "b": 1, "c": 1}, finding={"a": "1", "b": "unsure", "c": 1})
    df["split"] = ["train", "train", "test", "train"]
    summary = split_summary(df, ["finding", "absent"])
    assert summary.to_dict("records") == [  # in order of first appearance
        {"split": "train", "images": 3, "patients": 2, "finding+": 3},
        {"split": "test", "images": 1, "patients": 1, "finding+": 0},
    ]
