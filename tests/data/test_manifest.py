"""Manifest validation: the errors a user with a hand-made or exported manifest will hit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from xraytriage.data.manifest import (
    ManifestError,
    guess_label_columns,
    patient_leakage,
    read_manifest,
    write_manifest,
)


def _write(tmp_path: Path, rows: list[dict], name: str = "m.csv", files: bool = True) -> Path:
    df = pd.DataFrame(rows)
    if files:
        for p in df["path"]:
            (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / p).write_bytes(b"x")
    out = tmp_path / name
    df.to_csv(out, index=False)
    return out


def _rows(n: int = 4, **extra: object) -> list[dict]:
    rows = [
        {
            "path": f"img/{i}.png",
            "patient_id": f"p{i // 2}",
            "finding": i % 2,
            "split": "train",
            "sex": "Female",
            "age": "058Y",
        }
        for i in range(n)
    ]
    for r in rows:
        r.update(extra)
    return rows


@pytest.fixture(scope="module")
def nih_folder_split(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published nih1000 folder split, as a manifest: its patients are NOT disjoint across folders."""
    src = shared_data / "nih1000_64px"
    table = pd.read_csv(src / "labels_with_demographics.csv")
    df = pd.DataFrame(
        {
            "path": [str(src / p) for p in table["path"]],
            "patient_id": table["Patient ID"].astype(str),
            "finding": (table["Finding Labels"] != "No Finding").astype(int),
            "split": table["split"],
            "sex": table["Patient Gender"],
            "age": table["Patient Age"],
            "view": table["View Position"],
        }
    )
    out = tmp_path_factory.mktemp("nih") / "published_split.csv"
    df.to_csv(out, index=False)
    return out


def test_published_nih1000_split_leaks_patients_and_is_refused(nih_folder_split: Path) -> None:
    with pytest.raises(ManifestError) as err:
        read_manifest(nih_folder_split, labels=["finding"])
    message = str(err.value)
    assert "30 patient(s) appear in more than one split" in message
    assert "xraytriage split" in message  # the fix
    df = read_manifest(nih_folder_split, labels=["finding"], leakage="warn", check_files=True)
    leaks = patient_leakage(df)
    assert len(leaks) == 30
    # The shared README: 8 patients are in both train and test.
    assert sum(1 for s in leaks.values() if {"train", "test"} <= set(s)) == 8
    assert set(df["sex"]) == {"F", "M"} and df["age"].between(1, 95).all()


def test_relative_paths_resolve_against_manifest_folder_or_root(tmp_path: Path) -> None:
    manifest = _write(tmp_path, _rows())
    df = read_manifest(manifest, labels=["finding"], check_files=True)
    assert df["path"].iloc[0] == str(tmp_path / "img" / "0.png")
    other = tmp_path / "elsewhere"
    df = read_manifest(manifest, root=other, labels=["finding"])
    assert df["path"].iloc[0] == str(other / "img" / "0.png")
    assert list(df["sex"].unique()) == ["F"] and df["age"].iloc[0] == 58.0
    assert df["finding"].dtype == float


def test_missing_files_are_counted_listed_and_can_be_dropped(tmp_path: Path) -> None:
    manifest = _write(tmp_path, _rows(6))
    (tmp_path / "img" / "1.png").unlink()
    (tmp_path / "img" / "4.png").unlink()
    assert len(read_manifest(manifest)) == 6  # not checked by default: stat() on 1M files is slow
    with pytest.raises(ManifestError, match=r"2 of 6 image files do not exist") as err:
        read_manifest(manifest, check_files=True)
    assert "1.png" in str(err.value) and "4.png" in str(err.value) and "--drop-missing" in str(err.value)
    kept = read_manifest(manifest, check_files=True, drop_missing=True)
    assert len(kept) == 4 and not kept["path"].str.endswith(("1.png", "4.png")).any()


@pytest.mark.parametrize(
    ("value", "shown"), [("2", "'2'"), ("yes", "'yes'"), ("0.5", "'0.5'"), ("positive", "'positive'")]
)
def test_label_values_outside_the_allowed_set_are_named(tmp_path: Path, value: str, shown: str) -> None:
    rows = _rows()
    rows[2]["finding"] = value
    manifest = _write(tmp_path, rows)
    with pytest.raises(
        ManifestError, match=r"column 'finding' has values outside \{1, 0, -1, blank\} at line\(s\) 4"
    ) as err:
        read_manifest(manifest, labels=["finding"])
    assert shown in str(err.value)


def test_uncertain_blank_and_decimal_spellings_are_accepted(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["finding"], rows[1]["finding"], rows[2]["finding"] = "-1", "", "1.0"
    df = read_manifest(_write(tmp_path, rows), labels=["finding"])
    assert df["finding"].iloc[0] == -1 and pd.isna(df["finding"].iloc[1]) and df["finding"].iloc[2] == 1


def test_duplicate_paths_missing_patients_and_columns(tmp_path: Path) -> None:
    rows = _rows()
    rows[3]["path"] = rows[0]["path"]
    with pytest.raises(ManifestError, match=r"repeats the same file at line\(s\) 2, 5"):
        read_manifest(_write(tmp_path, rows, "dup.csv"))
    rows = _rows()
    rows[1]["patient_id"] = ""
    with pytest.raises(ManifestError, match=r"'patient_id' is empty at line\(s\) 3"):
        read_manifest(_write(tmp_path, rows, "pid.csv"))
    upper = pd.DataFrame(_rows()).rename(columns={"patient_id": "Patient_ID"})
    upper.to_csv(tmp_path / "upper.csv", index=False)
    with pytest.raises(ManifestError, match=r"'patient_id' is missing .found 'Patient_ID'"):
        read_manifest(tmp_path / "upper.csv")
    with pytest.raises(ManifestError, match="label column 'pneumonia' is missing"):
        read_manifest(_write(tmp_path, _rows(), "lab.csv"), labels=["pneumonia"])


def test_user_supplied_folds_are_checked_for_leakage(tmp_path: Path) -> None:
    rows = _rows(6)
    for i, r in enumerate(rows):
        r["fold"] = i % 3  # patient p0 = rows 0,1 -> folds 0,1: leak
    with pytest.raises(ManifestError, match="more than one fold"):
        read_manifest(_write(tmp_path, rows))


def test_leakage_message_gives_counts_and_lines_not_patient_ids(tmp_path: Path) -> None:
    rows = _rows(4)
    for r in rows:
        r["patient_id"] = "MRN-7731942"
    rows[3]["split"] = "test"
    with pytest.raises(ManifestError) as err:
        read_manifest(_write(tmp_path, rows))
    assert "1 patient(s)" in str(err.value) and "MRN-7731942" not in str(err.value)


def test_write_manifest_round_trip_keeps_relative_paths(tmp_path: Path) -> None:
    df = read_manifest(_write(tmp_path, _rows()), labels=["finding"])
    out = write_manifest(df, tmp_path / "copy.csv", ["finding"])
    text = out.read_text().splitlines()
    assert text[0].startswith("path,patient_id,finding,split,sex,age")
    assert text[1].startswith("img/0.png,p0,0,train,F,58")
    again = read_manifest(out, labels=["finding"])
    pd.testing.assert_frame_equal(again, df)
    assert guess_label_columns(again) == ["finding"]


def test_parquet_manifest(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    df = read_manifest(_write(tmp_path, _rows()), labels=["finding"])
    out = write_manifest(df, tmp_path / "m.parquet", ["finding"])
    assert read_manifest(out, labels=["finding"])["path"].tolist() == df["path"].tolist()
