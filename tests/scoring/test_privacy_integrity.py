"""Patient data and bundle integrity: keyed pseudonyms, allow-listed outputs, identifier subgroups,
altered bundles, and the validation gaps a reviewer found (issue 15, items 8, 11, 12, 14, 15)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from support.scoring import make_bundle, run_score, write_pngs
from xraytriage.config import ConfigError, EvaluationConfig, PreprocessConfig, load_config
from xraytriage.data.pseudonyms import KeyFileError, load_site_key


def _oracle(key_file: Path, patient_id: str) -> str:
    secret = bytes.fromhex(key_file.read_text().strip())
    return hmac.new(secret, patient_id.encode(), hashlib.sha256).hexdigest()[:32]


# --- item 11: keyed pseudonyms ---------------------------------------------------------------------


def test_a_site_key_is_created_once_with_a_message_and_private_permissions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "keys" / "site.key"
    with caplog.at_level(logging.WARNING):
        key = load_site_key(key_file)
    assert "created a new site key" in caplog.text and str(key_file) in caplog.text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    caplog.clear()
    again = load_site_key(key_file)
    assert caplog.text == "" and again.pseudonym("MRN-1") == key.pseudonym("MRN-1")
    assert key.pseudonym("MRN-1") == _oracle(key_file, "MRN-1")
    assert key.pseudonym(" MRN-1 ") == key.pseudonym("MRN-1") and key.pseudonym("") is None
    assert key_file.read_text().strip() not in repr(key)


def test_pseudonyms_cannot_be_reversed_without_the_key(tmp_path: Path) -> None:
    """The issue's attack: hash every candidate MRN with the old fixed salt and look it up."""
    a, b = load_site_key(tmp_path / "a.key"), load_site_key(tmp_path / "b.key")
    mrn = "3689538"
    assert a.pseudonym(mrn) != b.pseudonym(mrn)  # another site, another pseudonym
    fixed_salt = {hashlib.sha256(f"xraytriage\x00{m}".encode()).hexdigest()[:16] for m in (mrn,)}
    assert a.pseudonym(mrn) not in fixed_salt and a.pseudonym(mrn)[:16] not in fixed_salt
    brute = {hashlib.sha256(f"{s}\x00{mrn}".encode()).hexdigest()[:32] for s in ("", "xraytriage")}
    assert a.pseudonym(mrn) not in brute


def test_a_damaged_key_file_is_refused_not_replaced(tmp_path: Path) -> None:
    bad = tmp_path / "site.key"
    bad.write_text("not hex at all\n")
    with pytest.raises(KeyFileError, match="64 hex digits"):
        load_site_key(bad)
    assert bad.read_text() == "not hex at all\n"
    with pytest.raises(KeyFileError, match="no site key"):
        load_site_key(tmp_path / "absent.key", create=False)


def test_key_file_comes_from_the_flag_then_the_environment(tmp_path: Path, monkeypatch) -> None:
    from xraytriage.data.pseudonyms import key_file_path

    monkeypatch.setenv("XRAYTRIAGE_KEY_FILE", str(tmp_path / "env.key"))
    assert key_file_path() == tmp_path / "env.key"
    assert key_file_path(tmp_path / "flag.key") == tmp_path / "flag.key"
    monkeypatch.delenv("XRAYTRIAGE_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert key_file_path() == tmp_path / "cfg" / "xraytriage" / "site.key"


def test_prepare_writes_keyed_pseudonyms_and_the_key_goes_nowhere(
    tmp_path: Path, pydicom_test_file, capsys: pytest.CaptureFixture[str]
) -> None:
    from xraytriage.cli import main

    root = tmp_path / "export"
    for i, cls in enumerate(["normal", "normal", "normal", "effusion", "effusion", "effusion"]):
        ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = f"MRN{i:07d}", "Doe^Jane"
        (root / cls).mkdir(parents=True, exist_ok=True)
        ds.save_as(root / cls / f"scan{i}.dcm")
    key_file = tmp_path / "site.key"
    out = tmp_path / "manifest.csv"
    argv = ["prepare", "folder", "--root", str(root), "--out", str(out), "--key-file", str(key_file)]
    assert main([*argv, "--val", "0.2", "--test", "0.2", "--no-stratify"]) == 0
    manifest = pd.read_csv(out, dtype={"patient_id": str})
    expected = sorted(_oracle(key_file, f"MRN{i:07d}") for i in range(6))
    assert sorted(manifest["patient_id"]) == expected
    secret = key_file.read_text().strip()
    written = out.read_text() + capsys.readouterr().out
    assert secret not in written and "MRN000" not in written


def test_no_config_bundle_or_export_carries_a_salt_or_key(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    assert "patient_id_salt" not in cfg.to_yaml_dict()["preprocess"]
    # older configs and bundles that still hold the retired salt load, and it is dropped
    assert "patient_id_salt" not in PreprocessConfig(patient_id_salt="xraytriage").model_dump()
    bundle = make_bundle(tmp_path / "m.pt")
    payload = torch.load(bundle, weights_only=True)
    assert "patient_id_salt" not in payload["preprocess"]


# --- item 12: allow-listed output columns, identifier subgroups ------------------------------------


def _predictions(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    return pd.DataFrame(
        {
            "path": [f"/scans/{i}.png" for i in range(n)],
            "patient_id": [f"P{i // 2:04d}" for i in range(n)],
            "patient_name": [f"Doe^Person{i // 2}" for i in range(n)],
            "birth_date": [f"19{50 + i % 40}0101" for i in range(n)],
            "exam_code": [f"ACC{i:06d}" for i in range(n)],  # nearly one value per scan
            "sex": rng.choice(["F", "M"], n),
            "age": rng.uniform(20, 90, n),
            "site": rng.choice(['=HYPERLINK("http://x")', "north"], n),
            "scanner": rng.choice(["A", "B"], n),
            "finding": y,
            "prob_finding": np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1),
        }
    )


def test_predictions_csv_carries_only_allow_listed_columns(tmp_path: Path) -> None:
    from xraytriage.evaluation.report import evaluate_predictions

    frame = _predictions(120)
    cfg = EvaluationConfig(bootstrap_iterations=10, subgroups=["sex", "site", "scanner"])
    evaluate_predictions(frame, ["finding"], {"finding": 0.5}, cfg, tmp_path)
    written = pd.read_csv(tmp_path / "predictions.csv")
    assert list(written.columns) == [
        "path",
        "patient_id",
        "sex",
        "age",
        "age_band",
        "site",
        "scanner",
        "finding",
        "prob_finding",
        "pred_finding",
    ]
    text = "".join((tmp_path / name).read_text() for name in ("predictions.csv", "subgroups.csv"))
    assert "Doe^" not in text and "19500101" not in text and "ACC0" not in text
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text  # formula neutralised, value kept


def test_identifier_subgroups_are_refused_by_name_and_by_content(tmp_path: Path) -> None:
    from xraytriage.evaluation.identifiers import refuse_identifier_subgroups
    from xraytriage.evaluation.report import evaluate_predictions

    for name in ("patient_name", "PatientBirthDate", "mrn", "home_address", "patient_id"):
        with pytest.raises(ConfigError, match=f"evaluation.subgroups.*'{name}'"):
            load_config(None, [f"evaluation.subgroups=[sex,{name}]"])
    with pytest.raises(ConfigError, match="intersections"):
        load_config(None, ["evaluation.intersections=[[sex,patient_name]]"])
    frame = _predictions(120)
    with pytest.raises(ConfigError, match=r"'exam_code' has 120 different values"):
        refuse_identifier_subgroups(frame, ["sex", "exam_code"])
    refuse_identifier_subgroups(frame, ["sex", "site", "age_band"])  # group attributes pass
    # even if it reaches the report (a config built in code), no value of it is listed
    cfg = EvaluationConfig.model_construct(**{**EvaluationConfig().__dict__, "subgroups": ["exam_code"]})
    cfg.bootstrap_iterations = 10
    evaluate_predictions(frame, ["finding"], {"finding": 0.5}, cfg, tmp_path)
    assert "ACC0" not in (tmp_path / "metrics.json").read_text() + (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("distinct", "rows", "identifying"),
    [
        (21, 41, True),  # more than 20 values and more than half the rows
        (21, 42, False),  # exactly half the rows: a group column with many small groups
        (20, 20, False),  # one value per row, but only 20 of them: e.g. 20 sites
        (5, 6, False),  # nearly one per row, but few values
        (30, 100, False),  # many values, well under half the rows
    ],
)
def test_a_column_is_an_identifier_by_content_past_both_limits(distinct, rows, identifying) -> None:
    from xraytriage.evaluation.identifiers import identifier_reason

    values = [f"v{i % distinct}" for i in range(rows)] + [None] * 50  # blanks do not count as rows
    why = identifier_reason(pd.DataFrame({"code": values}), "code")
    if identifying:
        assert why == f"has {distinct} different values in {rows} rows, nearly one per scan: an identifier"
    else:
        assert why is None


def test_an_identifier_name_is_refused_whatever_its_content() -> None:
    from xraytriage.evaluation.identifiers import identifier_reason, refuse_identifier_subgroups

    frame = pd.DataFrame({"patient_name": ["A", "B"] * 10, "mrn": ["1"] * 20, "sex": ["F", "M"] * 10})
    assert identifier_reason(frame, "patient_name") == "looks like an identifier (its name contains 'name')"
    assert identifier_reason(frame, "sex") is None
    with pytest.raises(ConfigError) as info:
        refuse_identifier_subgroups(frame, ["sex", "mrn"])
    assert str(info.value) == (
        "evaluation.subgroups: column 'mrn' is an identifier column; reports list every group by its "
        "value, so subgroups must be group attributes such as sex, age_band, view or site"
    )


def test_evaluate_refuses_an_identifier_subgroup_before_inference(tmp_path: Path, monkeypatch) -> None:
    from xraytriage import inference
    from xraytriage.cli import main

    frame = _predictions(60).drop(columns=["prob_finding"])
    frame["split"] = "test"
    frame.to_csv(tmp_path / "m.csv", index=False)
    bundle = make_bundle(tmp_path / "model.pt")

    def never(*args, **kwargs):
        raise AssertionError("inference ran")

    monkeypatch.setattr(inference, "predict_manifest", never)
    argv = [
        "evaluate",
        "--model",
        str(bundle),
        "--manifest",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "e"),
    ]
    assert main([*argv, "evaluation.subgroups=[sex,exam_code]"]) == 2
    assert main([*argv, "evaluation.subgroups=[patient_name]"]) == 2
    assert not (tmp_path / "e").exists()


# --- item 14: bundle integrity ---------------------------------------------------------------------


def test_a_bundle_with_one_flipped_weight_byte_is_refused(tmp_path: Path, capfd) -> None:
    from xraytriage.models import load_bundle
    from xraytriage.models.bundle import BundleError

    bundle = make_bundle(tmp_path / "m.pt")
    good_id = load_bundle(bundle).model_id
    payload = torch.load(bundle, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 8)
    raw = payload["state_dict"][name].view(torch.uint8).reshape(-1)
    raw[5] ^= 0x01  # one bit of one weight
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(BundleError, match=f"stored {good_id}, weights hash to"):
        load_bundle(tmp_path / "tampered.pt")
    write_pngs(tmp_path / "in", 1)
    assert run_score(tmp_path / "in", tmp_path / "tampered.pt", tmp_path / "s.csv") == 2
    assert "do not match its model id" in capfd.readouterr().err
    assert not (tmp_path / "s.csv").exists()


# --- item 15: validation gaps ----------------------------------------------------------------------


@pytest.mark.parametrize("edges", ["[0,.nan,200]", "[0,40,.inf]", "[.nan,.nan]"])
def test_age_bands_must_be_finite(edges: str) -> None:
    with pytest.raises(ConfigError, match="age_bands must be finite"):
        load_config(None, [f"evaluation.age_bands={edges}"])


def test_a_misspelt_split_value_is_an_error_naming_the_lines(tmp_path: Path) -> None:
    from xraytriage.data.manifest import ManifestError, check_split_values, read_manifest

    frame = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(5)],
            "patient_id": list("abcde"),
            "split": ["train", "val", "tset", "test", "Tset"],
        }
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    df = read_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match=r"'split'.*line\(s\) 4, 6 \(values: 'tset' x2\)"):
        check_split_values(df, ["train", "val", "test"], "m.csv")
    check_split_values(df.iloc[[0, 1, 3]], ["train", "val", "test"], "m.csv")


def test_training_refuses_a_manifest_with_a_misspelt_split(tmp_path: Path) -> None:
    from xraytriage.data.manifest import ManifestError
    from xraytriage.training.loaders import split_frames

    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "path": ["a.png", "b.png", "c.png"],
            "patient_id": ["1", "2", "3"],
            "finding": [1, 0, 1],
            "split": ["train", "val", "tset"],
        }
    ).to_csv(manifest, index=False)
    cfg = load_config(None, [f"data.manifest={manifest}"])
    with pytest.raises(ManifestError, match="tset"):
        split_frames(cfg, pd.read_csv(manifest), manifest)
    assert os.path.exists(manifest)


def test_manifests_neutralise_formulas_and_keep_naming_the_same_files(tmp_path: Path) -> None:
    from PIL import Image

    from xraytriage.data.manifest import read_manifest, write_manifest

    for name in ("-x.png", "=y.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    frame = pd.DataFrame(
        {
            "path": [str(tmp_path / "-x.png"), str(tmp_path / "=y.png")],
            "patient_id": ["=1+1", "@SUM(A1)"],
            "site": ["+north", "south"],
            "finding": [1.0, -1.0],  # numbers, including a negative one, are left alone
        }
    )
    out = write_manifest(frame, tmp_path / "m.csv", ["finding"])
    text = out.read_text()
    assert "./-x.png" in text and "./=y.png" in text and "'=1+1" in text and "'+north" in text
    assert ",-1" in text
    back = read_manifest(out, labels=["finding"], check_files=True)
    assert list(back["path"]) == [str(tmp_path / "-x.png"), str(tmp_path / "=y.png")]
    assert list(back["finding"]) == [1.0, -1.0]
