"""``prepare`` on tables that repeat themselves (the published covid-chestxray metadata.csv lists files
twice under two patient ids), and ``--views`` with each dataset's own view vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support.adapters import load, run_prepare, tiny_image
from xraytriage.commands.prepare import duplicates_report_path
from xraytriage.data.duplicates import merge_duplicate_files
from xraytriage.data.views import view_matches

COVID_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "view", "modality", "date", "location"]
COVID_COLUMNS += ["folder", "filename"]


def covid_root(tmp_path: Path, rows: list[tuple[object, ...]]) -> Path:
    root = tmp_path / "covid-chestxray-dataset"
    root.mkdir()
    table = pd.DataFrame(rows, columns=COVID_COLUMNS)
    table.to_csv(root / "metadata.csv", index=False)
    for name in table["filename"].unique():
        tiny_image(root / "images" / name)
    return root


def row(pid: str, fn: str, finding: str = "Pneumonia/Viral/COVID-19", view: str = "PA", offset: object = 0):
    return (pid, offset, "M", 50, finding, view, "X-ray", "2020", "Italy", "images", fn)


# The quirk as published: a.jpg under patients 7 and 8; b.jpg under 8 and 9 (a chain: 7, 8 and 9 are one
# person); c.jpg twice, word for word; d.jpg twice with labels that disagree; 10 and 11 untouched.
QUIRK_ROWS = [
    row("7", "a.jpg"),
    row("8", "a.jpg", offset=2),
    row("8", "b.jpg"),
    row("9", "b.jpg"),
    row("9", "nine-alone.jpg", view="L"),
    row("10", "c.jpg", view="AP Supine"),
    row("10", "c.jpg", view="AP Supine"),
    row("11", "d.jpg"),
    row("11", "d.jpg", finding="No Finding"),
    row("12", "e.jpg", finding="No Finding", view="AP"),
    row("13", "f.jpg", finding="No Finding", view="PA"),
]


def test_merge_duplicate_files_oracle() -> None:
    """Union of ids by shared files, computed here by hand: {7, 8, 9} is one patient, 10 and 11 stay."""
    table = pd.DataFrame(
        {
            "path": ["a", "a", "b", "b", "n", "c", "c", "d", "d"],
            "patient_id": ["7", "8", "8", "9", "9", "10", "10", "11", "11"],
            "finding": [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0],
        }
    )
    merged, report = merge_duplicate_files(table, ["finding"])
    assert list(merged["path"]) == ["a", "b", "n", "c", "d"]
    assert list(merged["patient_id"]) == ["7+8+9", "7+8+9", "7+8+9", "10", "11"]
    assert report.identical_rows_dropped == 1 and report.patients_merged == 2
    by_path = {f.path: f for f in report.files}
    assert set(by_path) == {"a", "b", "d"}  # c's rows were identical: dropped, not a conflict
    assert by_path["a"].patient_ids == ("7", "8") and by_path["a"].merged_patient_id == "7+8+9"
    assert by_path["d"].blanked_labels == ("finding",) and np.isnan(merged.loc[4, "finding"])
    assert by_path["a"].blanked_labels == ()


def test_merge_without_repeats_changes_nothing() -> None:
    table = pd.DataFrame({"path": ["a", "b"], "patient_id": ["1", "1"], "finding": [1.0, 0.0]})
    merged, report = merge_duplicate_files(table, ["finding"])
    assert not report.changed and merged.equals(table.astype({"patient_id": "string"}))


def test_prepare_covid_quirk_merges_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = covid_root(tmp_path, QUIRK_ROWS)
    out = tmp_path / "covid.csv"
    assert run_prepare("covid-chestxray", root, out, val=0.0, test=0.34, no_stratify=True) == 0
    printed = capsys.readouterr().out
    assert "3 file(s) listed more than once: 1 identical row(s) dropped, 2 patient id(s) merged" in printed
    df = load(out, ["finding"])  # load() asserts no patient is in two splits
    df.index = [Path(p).name for p in df["path"]]
    assert len(df) == 7 and df.index.is_unique
    assert set(df.loc[["a.jpg", "b.jpg", "nine-alone.jpg"], "patient_id"]) == {"7+8+9"}
    assert df.loc[["a.jpg", "b.jpg", "nine-alone.jpg"], "split"].nunique() == 1
    assert np.isnan(df.loc["d.jpg", "finding"])  # COVID-19 vs No Finding: unknown, not a guess
    details = pd.read_csv(duplicates_report_path(out), dtype=str)
    assert set(details["path"].map(lambda p: Path(p).name)) == {"a.jpg", "b.jpg", "d.jpg"}
    assert details.set_index(details["path"].map(lambda p: Path(p).name)).loc["b.jpg", "patient_ids"] == "8 9"


def test_stale_duplicates_report_is_removed(tmp_path: Path) -> None:
    root = covid_root(tmp_path, [row("1", "x.jpg"), row("2", "y.jpg"), row("3", "z.jpg")])
    out = tmp_path / "covid.csv"
    duplicates_report_path(out).write_text("path\nold\n")
    assert run_prepare("covid-chestxray", root, out, val=0.0, test=0.34, no_stratify=True) == 0
    assert not duplicates_report_path(out).exists()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("frontal", {"a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"}),
        ("PA,AP", {"a.jpg", "b.jpg", "d.jpg", "e.jpg", "f.jpg"}),  # exact: 'AP SUPINE' is not 'AP'
        ("lateral", {"nine-alone.jpg"}),
        ("ap supine", {"c.jpg"}),
    ],
)
def test_prepare_views(tmp_path: Path, spec: str, expected: set[str]) -> None:
    root = covid_root(tmp_path, QUIRK_ROWS)
    out = tmp_path / "covid.csv"
    assert run_prepare("covid-chestxray", root, out, views=spec, val=0.0, test=0.0, no_stratify=True) == 0
    df = pd.read_csv(out, dtype=str)
    assert {Path(p).name for p in df["path"]} == expected


def test_view_vocabularies() -> None:
    """MIMIC-CXR ViewPosition, CheXpert's AP/PA column (which holds LL/RL on 17 'Frontal' rows),
    covid-chestxray spellings, DICOM codes."""
    spellings = ["PA", "AP", "AP AXIAL", "PA LLD", "AP Supine", "LATERAL", "LL", "RL", "L"]
    views = pd.Series([*spellings, "XTABLE LATERAL", "LAO", None, "", "Frontal", "ap_semi_erect"])
    frontal = views[view_matches(views, "frontal")].tolist()
    assert frontal == ["PA", "AP", "AP AXIAL", "PA LLD", "AP Supine", "Frontal", "ap_semi_erect"]
    lateral = views[view_matches(views, "lateral")].tolist()
    assert lateral == ["LATERAL", "LL", "RL", "L", "XTABLE LATERAL"]
    assert views[view_matches(views, "LAO,pa")].tolist() == ["PA", "LAO"]


def test_chexpert_frontal_alias(shared_data: Path, tmp_path: Path) -> None:
    from support.adapters import chexpert_root

    rows = pd.read_csv(shared_data / "public_metadata" / "chexpert_train.csv.gz", nrows=120)
    root = chexpert_root(tmp_path, rows)
    out = tmp_path / "frontal.csv"
    assert run_prepare("chexpert", root, out, views="frontal", keep_split=True) == 0
    df = load(out, ["finding"])
    assert set(df["view"]) <= {"AP", "PA"} and not df["path"].str.contains("lateral").any()


def test_real_covid_metadata_prepares(shared_data: Path, tmp_path: Path) -> None:
    """The published metadata.csv, when a copy is in shared (skips otherwise)."""
    found = sorted(shared_data.rglob("covid*/metadata.csv"))
    if not found:
        pytest.skip("no covid-chestxray metadata.csv under ../shared/data")
    published = pd.read_csv(found[0], dtype=str)
    root = tmp_path / "covid-chestxray-dataset"
    root.mkdir()
    published.to_csv(root / "metadata.csv", index=False)
    for folder, name in zip(published["folder"].fillna("images"), published["filename"]):
        tiny_image(root / folder / name) if str(name).lower().endswith((".png", ".jpg", ".jpeg")) else None
    out = tmp_path / "covid.csv"
    assert run_prepare("covid-chestxray", root, out, views="frontal", drop_missing=True) == 0
    load(out, ["finding"])


def test_nih_table_with_a_repeated_row_and_a_file_under_two_patients(
    shared_data: Path, tmp_path: Path
) -> None:
    """The same class of quirk in another adapter: the real NIH table with one row repeated verbatim
    and one image re-listed under another patient's ID."""
    from support.adapters import nih_root

    rows = pd.read_csv(shared_data / "public_metadata" / "Data_Entry_2017_v2020.csv.gz", nrows=120, dtype=str)
    moved = rows.iloc[[5]].copy()
    other = rows["Patient ID"].iloc[60]
    assert other != moved["Patient ID"].iloc[0]
    moved["Patient ID"] = other
    root = nih_root(tmp_path, pd.concat([rows, rows.iloc[[3]], moved], ignore_index=True))
    out = tmp_path / "nih.csv"
    assert run_prepare("nih-cxr14", root, out, val=0.1, test=0.2) == 0
    df = load(out, ["finding"])
    assert len(df) == 120 and df["path"].is_unique
    image5, image60 = rows["Image Index"].iloc[5], rows["Image Index"].iloc[60]
    pid = df.set_index(df["path"].map(lambda p: Path(p).name))["patient_id"]
    merged = "+".join(sorted([rows["Patient ID"].iloc[5], other]))
    assert pid[image5] == pid[image60] == merged
    details = pd.read_csv(duplicates_report_path(out), dtype=str)
    assert len(details) == 1 and details["merged_patient_id"].iloc[0] == merged
