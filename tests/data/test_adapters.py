"""Every ``xraytriage prepare`` adapter, run as a user would, on the publisher's real file layout.

Tables are the real published ones from ../shared/data/public_metadata (bounded row counts); images are
tiny placeholders at the published paths, except where real files exist (nih1000, dicom_samples).
MIMIC-CXR-JPG and covid-chestxray tables are not in shared: they are synthetic rows with the real schema.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support.adapters import PUBLIC, chexpert_root, load, nih_root, run_prepare, tiny_dicom, tiny_image
from xraytriage.data.adapters._common import snake
from xraytriage.data.manifest import patient_leakage, read_manifest


# ---------------------------------------------------------------------------------------------- NIH
@pytest.fixture(scope="module")
def nih_rows(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / PUBLIC / "Data_Entry_2017_v2020.csv.gz", nrows=400, dtype=str)


def test_nih_multilabel_demographics_and_split(tmp_path: Path, nih_rows: pd.DataFrame) -> None:
    root = nih_root(tmp_path, nih_rows)
    out = tmp_path / "nih.csv"
    assert run_prepare("nih-cxr14", root, out) == 0
    df = load(out, ["cardiomegaly", "effusion", "pleural_thickening", "no_finding", "finding"])
    assert len(df) == 400 and df["patient_id"].nunique() == nih_rows["Patient ID"].nunique()
    row = df.set_index(df["path"].map(lambda p: Path(p).name)).loc[
        "00000001_001.png"
    ]  # Cardiomegaly|Emphysema
    assert (row["cardiomegaly"], row["emphysema"], row["effusion"], row["finding"]) == (1, 1, 0, 1)
    assert (row["sex"], row["age"], row["view"], row["patient_id"]) == ("M", 58.0, "PA", "1")
    assert "images_002" in df["path"].iloc[-1] or "images_002" in "".join(df["path"])
    # a Pleural_Thickening row, spelled with its underscore in the published table
    pt = nih_rows["Finding Labels"].str.contains("Pleural_Thickening")
    assert df["pleural_thickening"].sum() == pt.sum() > 0
    assert (
        df["no_finding"]
        == (
            nih_rows.set_index("Image Index").loc[df["path"].map(lambda p: Path(p).name), "Finding Labels"]
            == "No Finding"
        ).to_numpy()
    ).all()


def test_nih_missing_images_are_listed_then_dropped(
    tmp_path: Path, nih_rows: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    root = nih_root(tmp_path, nih_rows.head(60))
    gone = sorted(root.rglob("*.png"))[:3]
    for p in gone:
        p.unlink()
    out = tmp_path / "nih.csv"
    assert run_prepare("nih-cxr14", root, out) == 1
    err = capsys.readouterr().err
    assert "3 of 60 image files do not exist" in err and gone[0].name in err and "--drop-missing" in err
    assert not out.exists()
    assert run_prepare("nih-cxr14", root, out, drop_missing=True) == 0
    assert len(load(out, ["finding"])) == 57


def test_nih_official_lists_kept_with_val_carved_by_patient(tmp_path: Path, nih_rows: pd.DataFrame) -> None:
    root = nih_root(tmp_path, nih_rows)
    patients = nih_rows["Patient ID"].drop_duplicates()
    test_patients = set(patients.iloc[::4])  # NIH's official lists are patient-disjoint
    is_test = nih_rows["Patient ID"].isin(test_patients)
    (root / "test_list.txt").write_text("\n".join(nih_rows.loc[is_test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(nih_rows.loc[~is_test, "Image Index"]) + "\n")
    out = tmp_path / "official.csv"
    assert run_prepare("nih-cxr14", root, out, keep_split=True, val=0.1) == 0
    df = load(out, ["finding"])
    names = df["path"].map(lambda p: Path(p).name)
    assert set(names[df["split"] == "test"]) == set(nih_rows.loc[is_test, "Image Index"])
    assert 0.05 < (df["split"] == "val").sum() / (df["split"] != "test").sum() < 0.15  # --val of train


# --------------------------------------------------------------------------------------------- RSNA
def test_rsna_several_rows_per_patient_and_dicom_demographics(shared_data: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(shared_data / PUBLIC / "kaggle_stage_2_train_labels.csv.zip", nrows=120)
    headers = pd.read_csv(
        shared_data / PUBLIC / "kaggle_stage_2_train_images_dicom_headers.csv.gz", nrows=20000
    )
    headers = headers.set_index("PatientID")
    sample = next((shared_data / "dicom_samples").glob("rsna_*.dcm"))
    sample_id = sample.stem.removeprefix("rsna_")
    labels = pd.concat([labels, pd.DataFrame({"patientId": [sample_id], "Target": [0]})], ignore_index=True)
    root = tmp_path / "rsna-pneumonia-detection-challenge"
    root.mkdir()
    labels.to_csv(root / "stage_2_train_labels.csv", index=False)
    images = root / "stage_2_train_images"
    ids = labels["patientId"].unique()
    for pid in ids:
        if pid == sample_id:
            images.mkdir(exist_ok=True)
            shutil.copy(sample, images / f"{pid}.dcm")  # a real RSNA DICOM
            continue
        h = headers.loc[pid] if pid in headers.index else None
        tiny_dicom(
            images / f"{pid}.dcm",
            PatientID=pid,
            PatientSex=None if h is None else h["PatientSex"],
            PatientAge=None if h is None else str(h["PatientAge"]),
            ViewPosition=None if h is None else h["ViewPosition"],
        )
    out = tmp_path / "rsna.csv"
    assert run_prepare("rsna-pneumonia", root, out) == 0
    df = load(out, ["pneumonia", "finding"]).set_index("patient_id")
    assert len(df) == len(ids) < len(labels)  # several box rows per positive patient, one manifest row
    multi = labels["patientId"].value_counts()
    multi = multi[multi > 1].index[0]
    assert df.loc[multi, "pneumonia"] == 1 and df.loc[multi, "n_boxes"] == 2
    assert (df["pneumonia"] == labels.groupby("patientId")["Target"].max().reindex(df.index)).all()
    known = [p for p in ids if p in headers.index]
    assert known, "the first rows of the labels table should have header rows"
    for pid in known[:20]:
        assert df.loc[pid, "sex"] == headers.loc[pid, "PatientSex"]
        assert df.loc[pid, "age"] == float(headers.loc[pid, "PatientAge"])
        assert df.loc[pid, "view"] == headers.loc[pid, "ViewPosition"]
    real = df.loc[sample_id]  # read from the real file's header
    assert real["sex"] in {"F", "M"} and real["age"] > 0 and real["view"] in {"AP", "PA"}


# ----------------------------------------------------------------------------------------- CheXpert
@pytest.fixture(scope="module")
def chexpert_rows(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / PUBLIC / "chexpert_train.csv.gz", nrows=300)


@pytest.mark.parametrize(
    ("policy", "expected"), [("ignore", np.nan), ("zeros", 0.0), ("ones", 1.0), ("keep", -1.0)]
)
def test_chexpert_uncertain_policy(
    tmp_path: Path, chexpert_rows: pd.DataFrame, policy: str, expected: float
) -> None:
    root = chexpert_root(tmp_path, chexpert_rows)
    out = tmp_path / "chexpert.csv"
    assert run_prepare("chexpert", root, out, uncertain=policy, keep_split=True) == 0
    df = load(out, ["cardiomegaly", "pleural_effusion", "no_finding", "support_devices", "finding"])
    row = df.loc[df["path"].str.endswith("patient00002/study2/view1_frontal.jpg")].iloc[0]
    # published row: Cardiomegaly -1, Lung Opacity 1, No Finding blank, Pneumothorax blank
    assert row["lung_opacity"] == 1 and row["pneumothorax"] == 0 and row["finding"] == 1
    assert (np.isnan(row["cardiomegaly"]) and np.isnan(expected)) or row["cardiomegaly"] == expected
    assert (row["patient_id"], row["study_id"], row["sex"], row["age"], row["view"]) == (
        "patient00002",
        "patient00002/study2",
        "F",
        87.0,
        "AP",
    )
    lateral = df["path"].str.contains("lateral")
    assert lateral.any() and (df.loc[lateral, "view"] == "LATERAL").all()
    assert set(df.loc[df["path"].str.contains("/valid/"), "split"]) == {"val"}
    n_uncertain = (chexpert_rows["Cardiomegaly"] == -1).sum() + (
        chexpert_rows.tail(20)["Cardiomegaly"] == -1
    ).sum()
    assert (df["cardiomegaly"] == -1).sum() == (n_uncertain if policy == "keep" else 0)


def test_chexpert_resplit_and_view_filter(tmp_path: Path, chexpert_rows: pd.DataFrame) -> None:
    root = chexpert_root(tmp_path, chexpert_rows)
    out = tmp_path / "frontal.csv"
    assert run_prepare("chexpert", root, out, views="AP,PA", folds=3) == 0
    df = load(out, ["finding"])
    assert set(df["view"]) <= {"AP", "PA"} and patient_leakage(df, "fold") == {}
    assert (
        len(df)
        == (chexpert_rows["Frontal/Lateral"] == "Frontal").sum()
        + 20
        - (chexpert_rows.tail(20)["Frontal/Lateral"] == "Lateral").sum()
    )


# ----------------------------------------------------------------------------------- MIMIC-CXR-JPG
CHEXPERT_LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]


def test_mimic_cxr_jpg_synthetic_rows_real_schema(tmp_path: Path) -> None:
    root = tmp_path / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
    root.mkdir(parents=True)
    meta = pd.DataFrame(
        {
            "dicom_id": [
                "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
                "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
                "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab",
                "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714",
                "fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818",
            ],
            "subject_id": [10000032, 10000032, 10000032, 10000764, 19999987],
            "study_id": [50414267, 50414267, 53189527, 57375967, 58971208],
            "PerformedProcedureStepDescription": ["CHEST (PA AND LAT)"] * 2 + ["CHEST (PORTABLE AP)"] * 3,
            "ViewPosition": ["PA", "LATERAL", "AP", "AP", np.nan],
            "Rows": [3056] * 5,
            "Columns": [2544] * 5,
            "StudyDate": [21800506, 21800506, 21800626, 21320723, 21451110],
            "StudyTime": [213014.531] * 5,
            "ProcedureCodeSequence_CodeMeaning": ["CHEST (PA AND LAT)"] * 5,
            "ViewCodeSequence_CodeMeaning": [
                "postero-anterior",
                "lateral",
                "antero-posterior",
                "antero-posterior",
                "",
            ],
            "PatientOrientationCodeSequence_CodeMeaning": ["Erect"] * 5,
        }
    )
    labels = pd.DataFrame(
        {"subject_id": [10000032, 10000032, 10000764], "study_id": [50414267, 53189527, 57375967]}
    )  # 58971208: no labels
    for name in CHEXPERT_LABELS:
        labels[name] = np.nan
    labels.loc[0, "No Finding"] = 1.0
    labels.loc[1, ["Pneumonia", "Edema"]] = [-1.0, 1.0]
    labels.loc[2, ["Pleural Effusion", "Cardiomegaly"]] = [1.0, 0.0]
    split = meta[["dicom_id", "study_id", "subject_id"]].assign(
        split=["train", "train", "train", "validate", "test"]
    )
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    split.to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    patients = tmp_path / "patients.csv.gz"
    pd.DataFrame(
        {
            "subject_id": [10000032, 10000764, 19999987],
            "gender": ["F", "M", "F"],
            "anchor_age": [52, 86, 91],
            "anchor_year": [2180, 2132, 2145],
            "anchor_year_group": ["2014 - 2016"] * 3,
            "dod": [np.nan] * 3,
        }
    ).to_csv(patients, index=False)
    for s, st, d in zip(meta["subject_id"], meta["study_id"], meta["dicom_id"]):
        tiny_image(root / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg")
    out = tmp_path / "mimic.csv"
    assert run_prepare("mimic-cxr-jpg", root, out, patients=patients, keep_split=True) == 0
    df = load(out, ["pneumonia", "edema", "no_finding", "finding"]).set_index("path")
    df.index = [Path(p).stem for p in df.index]
    first = df.loc["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"]
    assert (first["patient_id"], first["study_id"], first["no_finding"], first["finding"]) == (
        "10000032",
        "50414267",
        1,
        0,
    )
    assert (first["sex"], first["age"], first["view"], first["split"]) == ("F", 52.0, "PA", "train")
    second = df.loc["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]
    assert np.isnan(second["pneumonia"]) and second["edema"] == 1 and second["finding"] == 1
    later = df.loc["68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"]
    assert (later["sex"], later["age"], later["split"]) == ("M", 86.0, "val")
    unlabelled = df.loc["fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818"]
    assert np.isnan(unlabelled["finding"]) and unlabelled["split"] == "test"


# -------------------------------------------------------------------------------------------- SIIM
def test_siim_rle_table_and_dicom_tree(shared_data: Path, tmp_path: Path) -> None:
    rle = pd.read_csv(shared_data / PUBLIC / "siim-pneumothorax-train-rle.csv.gz", nrows=3000)
    assert " EncodedPixels" in rle.columns  # the published header has a leading space
    counts = rle["ImageId"].value_counts()
    multi = counts[counts > 1].index[0]
    chosen = list(dict.fromkeys([*rle["ImageId"].head(30), multi]))
    rle = rle[rle["ImageId"].isin(chosen)]
    root = tmp_path / "siim"
    root.mkdir()
    rle.to_csv(root / "train-rle.csv", index=False)
    sample = next((shared_data / "dicom_samples").glob("siim_*.dcm"))
    for i, image_id in enumerate(chosen):
        target = root / "dicom-images-train" / f"1.2.3.{i}" / f"1.2.3.{i}.1" / f"{image_id}.dcm"
        if sample.stem.endswith(image_id):
            target.parent.mkdir(parents=True)
            shutil.copy(sample, target)  # the real SIIM file for this ImageId
        else:
            tiny_dicom(
                target,
                PatientID=f"anon-{i // 2}",
                PatientSex="MF"[i % 2],
                PatientAge=str(20 + i),
                ViewPosition="PA",
                StudyInstanceUID=f"1.2.3.{i}",
            )
    out = tmp_path / "siim.csv"
    assert run_prepare("siim-pneumothorax", root, out) == 0
    df = load(out, ["pneumothorax", "finding"])
    df.index = [Path(p).stem for p in df["path"]]
    truth = rle.assign(pos=rle[" EncodedPixels"].str.strip() != "-1").groupby("ImageId")["pos"].any()
    assert (df["pneumothorax"] == truth.reindex(df.index).astype(float)).all()
    assert df.loc[multi, "pneumothorax"] == 1 and df.loc[multi, "n_masks"] == counts[multi]
    assert df["patient_id"].nunique() < len(df)  # patients grouped by DICOM PatientID
    real = df.loc[[i for i in chosen if sample.stem.endswith(i)]]
    assert len(real) == 1 and real["sex"].iloc[0] in {"F", "M"} and real["age"].iloc[0] > 0


# ------------------------------------------------------------------------------------------- VinDr
def test_vindr_kaggle_box_table_votes_and_headers(shared_data: Path, tmp_path: Path) -> None:
    boxes = pd.read_csv(shared_data / PUBLIC / "vinbigdata-train.csv.gz")  # rows of an image are scattered
    ids = boxes["image_id"].drop_duplicates().head(40)
    boxes = boxes[boxes["image_id"].isin(ids)]
    root = tmp_path / "vinbigdata-chest-xray-abnormalities-detection"
    root.mkdir()
    boxes.to_csv(root / "train.csv", index=False)
    for i, image_id in enumerate(ids):
        tiny_dicom(
            root / "train" / f"{image_id}.dicom",
            PatientSex=["F", "M", "O"][i % 3],
            PatientAge="" if i % 5 == 0 else f"{30 + i:03d}Y",
            Manufacturer="DDR",
        )
    out_any, out_maj = tmp_path / "any.csv", tmp_path / "majority.csv"
    assert run_prepare("vindr-cxr", root, out_any) == 0
    assert run_prepare("vindr-cxr", root, out_maj, vote="majority") == 0
    any_ = load(out_any, ["cardiomegaly", "aortic_enlargement", "nodule_mass", "no_finding", "finding"])
    maj = load(out_maj, ["cardiomegaly", "finding"])
    assert len(any_) == 40 and any_["patient_id"].is_unique
    readers = boxes.groupby(["image_id", "class_name"])["rad_id"].nunique().unstack(fill_value=0)
    any_ = any_.set_index("patient_id")
    maj = maj.set_index("patient_id")
    if "Cardiomegaly" in readers.columns:
        assert (any_["cardiomegaly"] == (readers["Cardiomegaly"].reindex(any_.index) > 0)).all()
        n_readers = boxes.groupby("image_id")["rad_id"].nunique()
        assert (maj["cardiomegaly"] == (readers["Cardiomegaly"] / n_readers > 0.5).reindex(maj.index)).all()

    normal = (readers["No finding"] == boxes.groupby("image_id")["rad_id"].nunique()).reindex(any_.index)
    assert normal.any() and not normal.all()
    shared = [snake(c) for c in readers.columns if c != "No finding"]
    assert (maj[shared] <= any_[shared]).all().all() and (maj[shared] < any_[shared]).any().any()
    assert (any_.loc[normal, "finding"] == 0).all() and (any_.loc[~normal, "finding"] == 1).all()
    assert set(any_["sex"]) == {"F", "M", "unknown"} and any_["age"].isna().sum() == 8
    assert (any_["manufacturer"] == "DDR").all()


def test_vindr_physionet_layout(tmp_path: Path) -> None:
    """PhysioNet VinDr-CXR 1.0.0 image_labels_*.csv (synthetic rows, published column names)."""
    cols = [
        "Aortic enlargement",
        "Atelectasis",
        "Cardiomegaly",
        "Nodule/Mass",
        "Pleural effusion",
        "Lung tumor",
        "Pneumonia",
        "Tuberculosis",
        "Other diseases",
        "No finding",
    ]
    root = tmp_path / "vindr-cxr" / "1.0.0"
    (root / "annotations").mkdir(parents=True)
    train = pd.DataFrame(0, index=range(6), columns=["image_id", "rad_id", *cols]).astype(
        {"image_id": str, "rad_id": str}
    )
    train["image_id"] = ["a1", "a1", "a1", "b2", "b2", "b2"]
    train["rad_id"] = ["R1", "R2", "R3", "R4", "R5", "R6"]
    train.loc[0, "Pneumonia"] = 1
    train.loc[3:, "No finding"] = 1
    test = pd.DataFrame(0, index=[0], columns=["image_id", "rad_id", *cols]).astype(
        {"image_id": str, "rad_id": str}
    )
    test.loc[0, ["image_id", "rad_id", "Nodule/Mass"]] = ["c3", "R1", 1]
    train.to_csv(root / "annotations" / "image_labels_train.csv", index=False)
    test.to_csv(root / "annotations" / "image_labels_test.csv", index=False)
    for image_id, split in (("a1", "train"), ("b2", "train"), ("c3", "test")):
        tiny_dicom(root / split / f"{image_id}.dicom", PatientSex="F", PatientAge="045Y")
    out = tmp_path / "vindr.csv"
    assert run_prepare("vindr-cxr", root, out, keep_split=True, val=0) == 0
    df = pd.read_csv(out).set_index("patient_id")
    assert df.loc["a1", "pneumonia"] == 1 and df.loc["a1", "finding"] == 1 and df.loc["b2", "no_finding"] == 1
    assert df.loc["c3", "nodule_mass"] == 1 and df.loc["c3", "split"] == "test" and df.loc["c3", "age"] == 45


# ------------------------------------------------------------------------------------ covid-chestxray
def test_covid_chestxray_metadata(tmp_path: Path) -> None:
    """ieee8023/covid-chestxray-dataset metadata.csv (synthetic rows, the published column names)."""
    columns = [
        "patientid",
        "offset",
        "sex",
        "age",
        "finding",
        "RT_PCR_positive",
        "survival",
        "intubated",
        "intubation_present",
        "went_icu",
        "in_icu",
        "needed_supplemental_O2",
        "extubated",
        "temperature",
        "pO2_saturation",
        "leukocyte_count",
        "neutrophil_count",
        "lymphocyte_count",
        "view",
        "modality",
        "date",
        "location",
        "folder",
        "filename",
        "doi",
        "url",
        "license",
        "clinical_notes",
        "other_notes",
        "Unnamed: 29",
    ]
    rows = [
        (
            "2",
            0,
            "M",
            65,
            "Pneumonia/Viral/COVID-19",
            "Y",
            "Y",
            "N",
            "PA",
            "X-ray",
            "January 22, 2020",
            "Cho Ray Hospital, Ho Chi Minh City, Vietnam",
            "images",
            "nejmc2001272_f1a.jpeg",
        ),
        (
            "2",
            3,
            "M",
            65,
            "Pneumonia/Viral/COVID-19",
            "Y",
            "Y",
            "N",
            "PA",
            "X-ray",
            "January 25, 2020",
            "Cho Ray Hospital, Ho Chi Minh City, Vietnam",
            "images",
            "nejmc2001272_f1b.jpeg",
        ),
        (
            "11",
            np.nan,
            "F",
            np.nan,
            "Pneumonia/Bacterial/Streptococcus",
            "",
            "",
            "",
            "AP Supine",
            "X-ray",
            "2017",
            "",
            "images",
            "streptococcus-pneumoniae-pneumonia-1.jpg",
        ),
        (
            "12",
            5,
            "F",
            41,
            "No Finding",
            "",
            "",
            "",
            "L",
            "X-ray",
            "",
            "Italy",
            "images",
            "lateral-normal.png",
        ),
        (
            "13",
            8,
            "M",
            70,
            "Pneumonia/Viral/COVID-19",
            "Y",
            "",
            "",
            "Axial",
            "CT",
            "",
            "Wuhan",
            "images",
            "ct-slice.jpg",
        ),
        ("14", 0, "F", 55, "todo", "", "", "", "AP", "X-ray", "", "Spain", "images", "todo.jpg"),
    ]
    table = pd.DataFrame(columns=columns)
    for r in rows:
        (
            pid,
            offset,
            sex,
            age,
            finding,
            pcr,
            survival,
            intubated,
            view,
            modality,
            date,
            location,
            folder,
            fn,
        ) = r
        table.loc[len(table)] = {
            "patientid": pid,
            "offset": offset,
            "sex": sex,
            "age": age,
            "finding": finding,
            "RT_PCR_positive": pcr,
            "survival": survival,
            "intubated": intubated,
            "view": view,
            "modality": modality,
            "date": date,
            "location": location,
            "folder": folder,
            "filename": fn,
        }
    root = tmp_path / "covid-chestxray-dataset"
    root.mkdir()
    table.to_csv(root / "metadata.csv", index=False)
    for fn in table["filename"]:
        tiny_image(root / "images" / fn)
    out = tmp_path / "covid.csv"
    assert run_prepare("covid-chestxray", root, out, val=0.0, test=0.34, no_stratify=True) == 0
    df = load(out, ["covid_19", "pneumonia", "viral", "bacterial", "no_finding", "finding"])
    df.index = [Path(p).name for p in df["path"]]
    assert len(df) == 5 and "ct-slice.jpg" not in df.index  # CT left out
    covid = df.loc["nejmc2001272_f1a.jpeg"]
    assert (covid["covid_19"], covid["pneumonia"], covid["viral"], covid["bacterial"]) == (1, 1, 1, 0)
    assert (covid["sex"], covid["age"], covid["view"]) == ("M", 65.0, "PA")
    assert df.loc["streptococcus-pneumoniae-pneumonia-1.jpg", "streptococcus"] == 1
    assert df.loc["lateral-normal.png", "no_finding"] == 1 and df.loc["lateral-normal.png", "finding"] == 0
    assert df.loc["todo.jpg", ["covid_19", "finding"]].isna().all()
    assert df.loc["nejmc2001272_f1a.jpeg", "split"] == df.loc["nejmc2001272_f1b.jpeg", "split"]


# ------------------------------------------------------------------------------------------ folder
def test_folder_nih1000_published_split_leaks_and_resplit_is_disjoint(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared_data / "nih1000_64px"
    demo = src / "labels_with_demographics.csv"
    kept = tmp_path / "kept.csv"
    assert run_prepare("folder", src, kept, demographics=demo, keep_split=True) == 1
    assert "not patient-disjoint: 30 patient(s) appear in more than one split" in capsys.readouterr().err
    out = tmp_path / "resplit.csv"
    assert run_prepare("folder", src, out, demographics=demo, seed=1) == 0
    df = load(out, ["abnormal", "finding"])
    assert len(df) == 1000 and df["patient_id"].nunique() == 264
    assert (df["finding"] == df["path"].str.contains("1_abnormal")).all()
    table = pd.read_csv(demo).set_index("Image Index")
    names = df["path"].map(lambda p: Path(p).name)
    assert (df["age"].to_numpy() == table.loc[names, "Patient Age"].to_numpy()).all()
    assert (df["sex"].to_numpy() == table.loc[names, "Patient Gender"].to_numpy()).all()


def test_folder_patient_regex_without_demographics(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "regex.csv"
    assert run_prepare("folder", shared_data / "nih1000_64px", out, patient_regex=r"^(\d+)_") == 0
    df = load(out, ["finding"])
    assert df["patient_id"].nunique() == 264 and set(df["sex"]) == {"unknown"}


def test_folder_dicom_tags_from_real_files(shared_data: Path, tmp_path: Path) -> None:
    import pydicom

    root = tmp_path / "export"
    samples = sorted((shared_data / "dicom_samples").glob("*.dcm"))
    for i, f in enumerate(samples):
        cls = "normal" if i < 2 else "pneumothorax"
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / cls / f"scan{i}")  # hospital exports often have no extension
    out = tmp_path / "dicom.csv"
    assert run_prepare("folder", root, out, val=0.0, test=0.34, no_stratify=True) == 0
    df = load(out, ["normal", "pneumothorax", "finding"])
    assert len(df) == 3 and df["finding"].sum() == 1
    site_key = bytes.fromhex(Path(os.environ["XRAYTRIAGE_KEY_FILE"]).read_text().strip())
    for path, row in df.set_index("path").iterrows():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert row["sex"] == {"F": "F", "M": "M"}.get(str(ds.get("PatientSex", "")), "unknown")
        # stored only as the keyed pseudonym: HMAC-SHA256 under the site key, computed independently
        expected = hmac.new(site_key, str(ds.PatientID).strip().encode(), hashlib.sha256).hexdigest()[:32]
        assert row["patient_id"] == expected != str(ds.PatientID)
        if ds.get("ViewPosition"):
            assert row["view"] == ds.ViewPosition


# ------------------------------------------------------------------------- adapter manifest -> config
def test_adapter_manifest_is_a_valid_training_config(tmp_path: Path, nih_rows: pd.DataFrame) -> None:
    from xraytriage.config import load_config

    root = nih_root(tmp_path, nih_rows.head(120))
    out = tmp_path / "m" / "manifest.csv"
    assert run_prepare("nih-cxr14", root, out) == 0
    cfg = load_config(None, [f"data.manifest={out}", "data.labels=[finding, effusion]"])
    df = read_manifest(cfg.data.manifest, cfg.data.root, cfg.data.labels, check_files=True)
    assert {"train", "val", "test"} == set(df["split"])


@pytest.mark.slow
def test_train_runs_from_an_adapter_manifest_without_edits(tmp_path: Path, nih_rows: pd.DataFrame) -> None:
    """Issue #8's done-criterion: `xraytriage train` on what `xraytriage prepare` wrote, config untouched."""
    pytest.importorskip("torch")
    from xraytriage.cli import main

    root = nih_root(tmp_path, nih_rows.head(160))
    out = tmp_path / "manifest.csv"
    assert run_prepare("nih-cxr14", root, out) == 0
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {manifest: manifest.csv, labels: [finding, effusion], num_workers: 0}\n"
        "preprocess: {image_size: 16, resize_mode: stretch, normalization: minmax}\n"
        "model: {arch: resnet18, weights: null, task: multilabel}\n"
        "train: {epochs: 1, batch_size: 8, max_steps_per_epoch: 1, device: cpu, histogram_every_epochs: 0}\n"
        "evaluation: {bootstrap_iterations: 0}\n"
    )
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()
