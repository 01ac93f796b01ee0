"""Validated scope: rules at exact boundaries, the Mahalanobis reference against an independent
computation, config keys, recording at training, the check at scoring (flag / skip, resume, old
bundles, Parquet and studies) and evaluate's in/out-of-scope split."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from support.scoring import make_bundle, read_csv_rows, run_score
from xraytriage.config import ConfigError, ModelConfig, PreprocessConfig, ScopeConfig, load_config
from xraytriage.data.manifest import read_manifest
from xraytriage.data.synthetic import SyntheticSpec, generate_dataset
from xraytriage.models import build_model, load_bundle, save_bundle
from xraytriage.models.features import LogitsAndFeatures
from xraytriage.scope import (
    MahalanobisReference,
    PredicateRule,
    ScanFacts,
    ScopeChecker,
    ValidatedScope,
    reason_rules,
)
from xraytriage.scope.collect import FeaturePass, ScopeRecorder, header_facts
from xraytriage.scope.ood import threshold_at
from xraytriage.scoring.outputs import count_error_rows

CPU = torch.device("cpu")


def _scope(**extra: object) -> ValidatedScope:
    scope = ValidatedScope(
        values={"view": ["AP", "PA"], "modality": ["CR", "DX"]}, ranges={"age": (18.0, 95.0)}, n_scans=10
    )
    for key, value in extra.items():
        setattr(scope, key, value)
    return scope


# ------------------------------------------------------------------ rules and reasons
def test_age_is_in_scope_at_the_validated_bounds_and_out_one_year_beyond() -> None:
    checker = ScopeChecker(_scope())
    assert checker.check(ScanFacts(age=18.0)).in_scope
    assert checker.check(ScanFacts(age=95.0)).in_scope
    below = checker.check(ScanFacts(age=17.0))
    above = checker.check(ScanFacts(age=96.0))
    assert not below.in_scope and below.reason_text == "age 17 below validated 18-95"
    assert not above.in_scope and above.reason_text == "age 96 above validated 18-95"
    assert not checker.check(ScanFacts(age=17.9999)).in_scope


def test_reasons_are_readable_and_parse_back_to_rule_names() -> None:
    checker = ScopeChecker(_scope())
    verdict = checker.check(ScanFacts(view="LL", age=7.0, modality="CT"))
    assert verdict.reason_text == (
        "modality=CT not validated [CR, DX]; view=LL not validated [AP, PA]; age 7 below validated 18-95"
    )
    assert reason_rules(verdict.reason_text) == ["modality", "view", "age"]
    assert reason_rules("") == []
    assert checker.check(ScanFacts(view="pa", modality="dx")).in_scope  # values compare without case


def test_a_scan_without_the_tag_is_not_judged_by_that_rule() -> None:
    checker = ScopeChecker(_scope())
    assert checker.check(ScanFacts()).in_scope  # a PNG: header rules do not apply
    assert checker.check(ScanFacts(view="PA")).in_scope


def test_extra_rules_plug_in_beside_the_recorded_ones(monkeypatch) -> None:
    from xraytriage.scope import check

    rule = PredicateRule("burned_in_text", lambda f: f.manufacturer == "Overlay Inc", "present")
    monkeypatch.setattr(check, "ALWAYS_RULES", (rule,))  # every checker applies it
    assert ScopeChecker(_scope()).rules[-1] is rule
    monkeypatch.setattr(check, "ALWAYS_RULES", ())
    checker = ScopeChecker(_scope(), extra_rules=[rule])
    verdict = checker.check(ScanFacts(manufacturer="Overlay Inc", view="PA"))
    assert verdict.reason_text == "burned_in_text present" and reason_rules(verdict.reason_text) == [
        "burned_in_text"
    ]


def test_facts_come_from_dicom_headers_only(pydicom_test_file) -> None:
    facts = header_facts(pydicom_test_file("CT_small.dcm"))
    assert facts is not None and facts.modality == "CT" and facts.rows == 128 and facts.columns == 128
    assert facts.photometric == "MONOCHROME2" and facts.pixel_spacing is not None


# ------------------------------------------------------------------ not a diagnostic original (#22)
def test_demo_variants_are_out_of_scope_each_by_its_own_input_rule(tmp_path: Path) -> None:
    from xraytriage.data.synthetic import generate_scope_variants

    made = generate_scope_variants(tmp_path, seed=3, size=64)
    expected = {
        "for_processing": "for_processing",
        "derived_secondary_capture": "derived_image",
        "burned_in_annotation": "burned_in_text",
    }
    checker = ScopeChecker(ValidatedScope())  # even a bundle from before scopes applies them
    for name, path in made.items():
        verdict = checker.check(header_facts(path))
        assert not verdict.in_scope and reason_rules(verdict.reason_text) == [expected[name]], name
    assert checker.check(ScanFacts(view="PA", not_original=())).in_scope


def test_input_rules_switch_off_by_config_and_survive_the_bundle_round_trip() -> None:
    burned = ScanFacts(not_original=("burned_in_text",))
    recorded = _scope()
    assert not ScopeChecker(recorded).check(burned).in_scope
    off = recorded.with_config(load_config(None, ["scope.reject_burned_in_text=false"]).scope)
    assert off.input_rules == ("for_processing", "derived_image")
    assert ScopeChecker(off).check(burned).in_scope
    assert not ScopeChecker(off).check(ScanFacts(not_original=("derived_image",))).in_scope
    again = ValidatedScope.from_payload(off.to_payload())
    assert again.input_rules == off.input_rules and again.with_config(ScopeConfig()).input_rules == (
        "for_processing",
        "derived_image",
    )
    back_on = again.with_config(load_config(None, ["scope.reject_burned_in_text=true"]).scope)
    assert not ScopeChecker(back_on).check(burned).in_scope
    old = recorded.to_payload()
    del old["input_rules"]  # a bundle recorded before the input rules: all of them apply
    assert ValidatedScope.from_payload(old).input_rules == (
        "for_processing",
        "derived_image",
        "burned_in_text",
    )


def test_a_model_trained_on_secondary_captures_is_validated_on_them() -> None:
    from xraytriage.scope.record import record_scope

    public = [ScanFacts(view="PA", not_original=("derived_image",)), ScanFacts(view="AP")]
    scope = record_scope(public, ScopeConfig(), ood=None)
    assert scope.input_rules == ("for_processing", "burned_in_text")
    assert ScopeChecker(scope).check(ScanFacts(view="PA", not_original=("derived_image",))).in_scope


def test_real_public_dicoms_state_they_are_secondary_captures() -> None:
    """RSNA, SIIM and NIH's public DICOMs are Secondary Captures: the rule must see it."""
    samples = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_samples"
    files = sorted(samples.glob("*.dcm"))
    if not files:
        pytest.skip("../shared/data/dicom_samples is absent")
    for path in files:
        assert header_facts(path).not_original == ("derived_image",), path.name


# ------------------------------------------------------------------ Mahalanobis reference
def _ledoit_wolf_textbook(x: np.ndarray) -> np.ndarray:
    """Ledoit & Wolf (2004), 'A well-conditioned estimator for large-dimensional covariance matrices'."""
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    m = np.trace(s) / p
    d2 = np.sum((s - m * np.eye(p)) ** 2) / p
    b_bar2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in xc) / n**2 / p
    shrink = min(b_bar2, d2) / d2
    return shrink * m * np.eye(p) + (1 - shrink) * s


def test_mahalanobis_distance_matches_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 60)) @ rng.normal(size=(60, 60)) * 0.3 + 2.0  # n < d: singular sample cov
    val = rng.normal(size=(25, 60)) + 2.0
    ref = MahalanobisReference.fit(train, val, quantile=0.9)
    inverse = np.linalg.inv(_ledoit_wolf_textbook(train))
    centred = val - train.mean(axis=0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", centred, inverse, centred))
    np.testing.assert_allclose(ref.distances(val), expected, rtol=2e-4)
    ranked = np.sort(expected)
    assert ref.threshold == pytest.approx(ranked[int(np.ceil(0.9 * 24))], rel=2e-4)  # 'higher' quantile
    assert threshold_at(np.array([]), 0.9) == float("inf")


def test_ood_threshold_is_inclusive_and_tolerates_engine_rounding() -> None:
    rng = np.random.default_rng(1)
    ref = MahalanobisReference.fit(rng.normal(size=(50, 8)), rng.normal(size=(20, 8)), 0.99)
    checker = ScopeChecker(_scope(ood=ref))
    assert checker.check(ScanFacts(), ref.threshold).in_scope
    assert checker.check(ScanFacts(), ref.threshold * (1 + 1e-6)).in_scope
    far = checker.check(ScanFacts(), ref.threshold * 1.01)
    assert not far.in_scope and reason_rules(far.reason_text) == ["ood_score"]


# ------------------------------------------------------------------ config
def test_scope_keys_are_validated_with_one_line_errors() -> None:
    cfg = load_config(None, ["scope.views=[PA]", "scope.age=[18, 95]", "scope.sites=any"])
    assert cfg.scope.views == ["PA"] and cfg.scope.age == (18.0, 95.0) and cfg.scope.sites == "any"
    for bad in ("scope.age=[95, 18]", "scope.views=[]", "scope.ood_quantile=0.3", "scope.colour=red"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [bad])
        assert "scope." in str(info.value) and "\n" not in str(info.value).strip()
    assert load_config(None, ["score.out_of_scope=skip"]).score.out_of_scope == "skip"
    with pytest.raises(ConfigError):
        load_config(None, ["score.out_of_scope=ignore"])


def test_config_narrows_widens_and_switches_off_only_the_keys_it_names() -> None:
    recorded = _scope()
    cfg = load_config(None, ["scope.views=[PA]", "scope.age=[0, 120]", "scope.modalities=any"]).scope
    narrowed = recorded.with_config(cfg)
    assert narrowed.values == {"view": ["PA"]} and narrowed.ranges == {"age": (0.0, 120.0)}
    assert recorded.with_config(ScopeConfig()).values == recorded.values  # nothing named: unchanged


def test_ood_quantile_retunes_the_threshold_from_the_validation_distances() -> None:
    rng = np.random.default_rng(2)
    ref = MahalanobisReference.fit(rng.normal(size=(50, 8)), rng.normal(size=(20, 8)), 0.99)
    val = list(ref.distances(rng.normal(size=(20, 8))))
    scope = _scope(ood=ref, validation={"ood_scores": val})
    tuned = scope.with_config(load_config(None, ["scope.ood_quantile=0.6"]).scope)
    assert tuned.ood is not None and tuned.ood.threshold == pytest.approx(
        np.sort(val)[int(np.ceil(0.6 * 19))]
    )
    assert scope.with_config(load_config(None, ["scope.ood=false"]).scope).ood is None


# ------------------------------------------------------------------ features and engines
def test_one_forward_pass_gives_the_logits_and_what_the_head_sees() -> None:
    model = build_model(
        ModelConfig(arch="resnet18", weights=None, in_channels=1), 2, load_weights=False
    ).eval()
    seen: list[torch.Tensor] = []
    model.fc.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected_logits = model(x)
        seen.clear()
        logits, features = LogitsAndFeatures(model)(x)
    assert features.shape == (3, 512) and len(seen) == 1  # the head ran once, inside the wrapper
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(features, seen[0])
    assert isinstance(model.fc, torch.nn.Sequential)  # the original network keeps its head


def test_onnxruntime_returns_the_same_features_as_pytorch(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from xraytriage.scoring import engine

    monkeypatch.setenv(engine.CACHE_ENV, str(tmp_path / "cache"))
    bundle = load_bundle(make_bundle(tmp_path / "m.pt"))
    model = engine.prepare_model(bundle.model, CPU)
    kwargs = {"in_channels": 1, "image_size": 32, "weights_id": bundle.model_id}
    runner = engine.select_runner(model, CPU, "onnxruntime", features=True, **kwargs)
    assert runner.features
    x = torch.randn(3, 1, 32, 32)
    logits, features = runner.forward(x)
    with torch.no_grad():
        want_logits, want_features = LogitsAndFeatures(model)(x)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features, want_features, atol=1e-4, rtol=1e-4)
    graphs = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    plain = engine.select_runner(model, CPU, "onnxruntime", **kwargs)  # a graph of its own, not the above
    assert isinstance(plain.forward(x), torch.Tensor)
    assert len(sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))) == len(graphs) + 1


# ------------------------------------------------------------------ recording and scoring
@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("scope_data"), SyntheticSpec(n_patients=16, size=48, seed=5), progress=False
    )


@pytest.fixture(scope="module")
def scoped_bundle(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Path:
    """A resnet18 bundle whose scope was recorded from the synthetic scans (threshold 1.0: nothing in
    scope is ever flagged, so a raised flag can only come from the scope check)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="resnet18", weights=None, task="binary")
    model = build_model(cfg, 1).eval()
    pre = PreprocessConfig(image_size=32)
    frame = read_manifest(demo_data, labels=["finding"])
    train, val = frame[frame["split"] != "val"], frame[frame["split"] == "val"]
    recorder = ScopeRecorder(ScopeConfig(), FeaturePass(model, pre, 1, CPU))
    scope = recorder.record(train, val, {"finding": [0.5] * len(val)})
    path = tmp_path_factory.mktemp("scoped") / "model.pt"
    save_bundle(path, model, cfg, pre, ["finding"], {"finding": 1.0}, "binary", scope=scope.to_payload())
    return path


def test_recorded_scope_holds_the_population_and_the_validation_reference(
    scoped_bundle: Path, demo_data: Path
) -> None:
    bundle = load_bundle(scoped_bundle)
    scope = ValidatedScope.from_payload(bundle.scope)
    manifest = pd.read_csv(demo_data)
    assert scope.values["view"] == sorted(manifest["view"].str.upper().unique())
    assert scope.values["modality"] == ["CR", "DX"] and scope.values["body_part"] == ["CHEST"]
    assert scope.ranges["age"] == (float(manifest["age"].min()), float(manifest["age"].max()))
    assert scope.ranges["rows"] == (48.0, 48.0) and scope.n_scans == len(manifest)
    validation = bundle.scope["validation"]
    n_val = int((manifest["split"] == "val").sum())
    assert validation["n_scans"] == n_val and len(validation["ood_scores"]) == n_val
    assert validation["probabilities"] == {"finding": [0.5] * n_val}
    assert validation["out_of_scope_rate"] == 0.0  # validation scans are inside their own scope
    assert scope.ood is not None and scope.ood.threshold == pytest.approx(max(validation["ood_scores"]))


def _planted(demo_data: Path, dest: Path, pydicom_test_file) -> dict[str, str]:
    """Copies of one in-scope synthetic scan with one header changed, a CT slice and a picture."""
    manifest = pd.read_csv(demo_data)
    source = demo_data.parent / manifest.loc[manifest["split"] == "test", "path"].iloc[0]
    dest.mkdir(parents=True)
    changes = {
        "inscope.dcm": {},
        "lateral.dcm": {"ViewPosition": "LL"},
        "age18.dcm": {"PatientAge": "018Y"},
        "age17.dcm": {"PatientAge": "017Y"},
        "age95.dcm": {"PatientAge": "095Y"},
        "age96.dcm": {"PatientAge": "096Y"},
    }
    for name, tags in changes.items():
        ds = pydicom.dcmread(source)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.SOPInstanceUID = f"1.2.3.{len(name)}.{sum(map(ord, name))}"
        ds.StudyInstanceUID = "1.2.3.99"
        ds.save_as(dest / name)
    shutil.copyfile(pydicom_test_file("CT_small.dcm"), dest / "ct.dcm")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        dest / "photo.png"
    )
    return {
        "lateral.dcm": "view=LL not validated [AP, PA]",
        "age17.dcm": "age 17 below validated 18-95",
        "age96.dcm": "age 96 above validated 18-95",
    }


def _config(tmp_path: Path, *lines: str, ood_threshold: float = 1e9) -> Path:
    """Age rule [18, 95]; the image check's threshold set far out by default, so the header rules
    alone decide (the image check's own boundaries are tested above)."""
    path = tmp_path / f"scope{ood_threshold:g}.yaml"
    text = f"scope:\n  age: [18, 95]\n  ood_threshold: {ood_threshold}\n"
    path.write_text(text + "".join(f"{line}\n" for line in lines))
    return path


def test_flag_policy_scores_out_of_scope_scans_and_never_as_negative(
    tmp_path: Path, scoped_bundle: Path, demo_data: Path, pydicom_test_file, capsys
) -> None:
    expected = _planted(demo_data, tmp_path / "in", pydicom_test_file)
    out = tmp_path / "scores.csv"
    code = run_score(
        tmp_path / "in",
        scoped_bundle,
        out,
        "--engine",
        "torch",
        "--workers",
        "0",
        "--config",
        str(_config(tmp_path)),
        "--studies",
        str(tmp_path / "studies.csv"),
    )
    assert code == 0
    rows = {Path(r["path"]).name: r for r in read_csv_rows(out)}
    assert len(rows) == 8
    for name, reason in expected.items():
        assert rows[name]["in_scope"] == "0" and rows[name]["scope_reasons"].startswith(reason), name
        assert rows[name]["flag_finding"] == "1"  # forced: flagged for a human read
    for name in ("inscope.dcm", "age18.dcm", "age95.dcm"):
        assert rows[name]["in_scope"] == "1" and rows[name]["scope_reasons"] == "", name
        assert rows[name]["flag_finding"] == "0"
    assert reason_rules(rows["ct.dcm"]["scope_reasons"])[:1] == ["modality"]
    assert "modality=CT not validated [CR, DX]" in rows["ct.dcm"]["scope_reasons"]
    photo_rules = reason_rules(rows["photo.png"]["scope_reasons"])
    assert set(photo_rules) <= {"ood_score"} and float(rows["photo.png"]["ood_score"]) > 0  # image check only
    assert rows["lateral.dcm"]["view"] == "LL" and rows["inscope.dcm"]["study_date"] == "2026-01-01"
    n_out = sum(r["in_scope"] == "0" for r in rows.values())
    assert f"out of the validated scope: {n_out} scans (scored" in capsys.readouterr().err
    studies = pd.read_csv(tmp_path / "studies.csv", dtype={"study_instance_uid": str}).set_index(
        "study_instance_uid"
    )
    assert studies.loc["1.2.3.99", "flag_finding"] == 1 and studies.loc["1.2.3.99", "in_scope"] == 0
    # the image check: a threshold below every distance puts every scan out, the picture included
    tiny = _config(tmp_path, ood_threshold=1e-3)
    assert (
        run_score(
            tmp_path / "in",
            scoped_bundle,
            tmp_path / "t.csv",
            "--engine",
            "torch",
            "--workers",
            "0",
            "--config",
            str(tiny),
        )
        == 0
    )
    photo = next(r for r in read_csv_rows(tmp_path / "t.csv") if r["path"].endswith("photo.png"))
    assert photo["in_scope"] == "0" and reason_rules(photo["scope_reasons"]) == ["ood_score"]
    assert photo["scope_reasons"].endswith("above validated 0.00")


def test_skip_policy_lists_them_as_out_of_scope_not_failures_and_resumes(
    tmp_path: Path, scoped_bundle: Path, demo_data: Path, pydicom_test_file, capsys
) -> None:
    expected = _planted(demo_data, tmp_path / "in", pydicom_test_file)
    out, errors = tmp_path / "scores.parquet", tmp_path / "errors.csv"
    args = (
        "--engine",
        "torch",
        "--workers",
        "0",
        "--errors",
        str(errors),
        "--config",
        str(_config(tmp_path, "score:", "  out_of_scope: skip")),
    )
    assert run_score(tmp_path / "in", scoped_bundle, out, *args) == 0
    scored = pd.read_parquet(out)
    names = {Path(p).name for p in scored["path"]}
    assert not names & set(expected) and "ct.dcm" not in names and "inscope.dcm" in names
    assert (scored["in_scope"] == 1).all()
    listed = {Path(r["path"]).name: r for r in read_csv_rows(errors)}
    assert {n for n, r in listed.items() if r["reason"] == "out_of_scope"} >= {*expected, "ct.dcm"}
    assert listed["lateral.dcm"]["message"] == expected["lateral.dcm"]
    assert count_error_rows(errors, ("not_a_scan", "out_of_scope")) == (0, len(listed))
    err = capsys.readouterr().err
    assert "failed 0" in err and "failures in the errors file: 0" in err
    assert f"{len(listed)} in the errors file as out_of_scope" in err
    # resume: nothing is scored twice; --retry-failed re-examines and skips them again, no failure
    assert run_score(tmp_path / "in", scoped_bundle, out, *args) == 0
    assert "scored 0 scans" in capsys.readouterr().err
    assert run_score(tmp_path / "in", scoped_bundle, out, *args, "--retry-failed") == 0
    again = read_csv_rows(errors)
    assert len(again) == len(listed) and {r["reason"] for r in again} == {"out_of_scope"}
    assert len(pd.read_parquet(out)) == len(scored)


def test_a_bundle_from_before_scopes_still_scores_with_config_rules_only(
    tmp_path: Path, demo_data: Path, pydicom_test_file, capsys
) -> None:
    bundle = make_bundle(tmp_path / "old.pt")
    payload = torch.load(bundle, weights_only=True)
    del payload["scope"]  # exactly what an older version wrote
    torch.save(payload, bundle)
    assert load_bundle(bundle).scope == {}
    _planted(demo_data, tmp_path / "in", pydicom_test_file)
    out = tmp_path / "s.csv"
    assert (
        run_score(
            tmp_path / "in",
            bundle,
            out,
            "--engine",
            "torch",
            "--workers",
            "0",
            "--config",
            str(_config(tmp_path)),
        )
        == 0
    )
    rows = {Path(r["path"]).name: r for r in read_csv_rows(out)}
    assert rows["age17.dcm"]["scope_reasons"] == "age 17 below validated 18-95"  # the config's rule
    assert rows["lateral.dcm"]["in_scope"] == "1" and rows["photo.png"]["ood_score"] == ""
    assert "image-based check unavailable" in capsys.readouterr().err


# ------------------------------------------------------------------ evaluate
def _parse_evaluate(argv: list[str]) -> argparse.Namespace:
    from xraytriage.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers())
    return parser.parse_args(["evaluate", *argv])


def test_evaluate_reports_in_and_out_of_scope_scans_apart(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = (rng.random(n) < 0.4).astype(float)
    outside = rng.random(n) < 0.3
    prob = np.clip(0.5 * y + rng.random(n) * 0.5 - 0.3 * (outside & (y == 1)), 0, 1)
    table = pd.DataFrame(
        {
            "patient_id": [f"P{i:04d}" for i in range(n)],
            "split": "test",
            "finding": y,
            "prob_finding": prob,
            "in_scope": (~outside).astype(int),
        }
    )
    table.to_csv(tmp_path / "p.csv", index=False)
    args = _parse_evaluate(
        [
            "--predictions",
            str(tmp_path / "p.csv"),
            "--out",
            str(tmp_path / "e"),
            "--threshold",
            "finding=0.5",
            "--no-tensorboard",
            "evaluation.bootstrap_iterations=0",
            "evaluation.fairness.max_miss_rate_gap=0.01",
        ]
    )
    args.handler(args)
    printed = capsys.readouterr().out
    groups = pd.read_csv(tmp_path / "e" / "subgroups.csv")
    scope = groups[groups["attribute"] == "scope"].set_index("group")
    for group, members in (("scope=in_scope", ~outside), ("scope=out_of_scope", outside)):
        pos = members & (y == 1)
        assert scope.loc[group, "n"] == members.sum() and scope.loc[group, "positives"] == pos.sum()
        assert scope.loc[group, "sensitivity"] == pytest.approx((prob[pos] >= 0.5).mean())
        assert scope.loc[group, "sensitivity_ci_low"] < scope.loc[group, "sensitivity_ci_high"]
        assert f"  {group}: n={members.sum()}" in printed
    assert "scope" not in " ".join(line for line in printed.splitlines() if "gate" in line.lower())
    # one group only: no split
    table.assign(in_scope=1).to_csv(tmp_path / "q.csv", index=False)
    args = _parse_evaluate(
        [
            "--predictions",
            str(tmp_path / "q.csv"),
            "--out",
            str(tmp_path / "f"),
            "--threshold",
            "finding=0.5",
            "--no-tensorboard",
            "evaluation.bootstrap_iterations=0",
        ]
    )
    args.handler(args)
    assert "scope" not in set(pd.read_csv(tmp_path / "f" / "subgroups.csv")["attribute"])


def test_evaluate_on_a_bundle_checks_the_scope_too(
    tmp_path: Path, scoped_bundle: Path, demo_data: Path
) -> None:
    from xraytriage.inference import predict_manifest

    bundle = load_bundle(scoped_bundle)
    frame = read_manifest(demo_data, labels=["finding"])
    scope = ScopeChecker(
        ValidatedScope.from_payload(bundle.scope).with_config(
            load_config(None, ["scope.views=[PA]", "scope.ood_threshold=1e9"]).scope
        )
    )
    out = predict_manifest(bundle, frame, num_workers=0, device="cpu", progress=None, scope=scope)
    views = frame.set_index("path").loc[out["path"], "view"].str.upper().to_numpy()
    assert (out["in_scope"].to_numpy() == 0).tolist() == (views != "PA").tolist()
    assert out["ood_score"].notna().all() and (out["ood_score"] > 0).all()
    assert all(r.startswith("view=AP not validated [PA]") for r in out.loc[views == "AP", "scope_reasons"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_engine_gives_the_cpu_verdicts(
    tmp_path: Path, scoped_bundle: Path, demo_data: Path, pydicom_test_file
) -> None:
    _planted(demo_data, tmp_path / "in", pydicom_test_file)
    config = _config(tmp_path)
    rows = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.csv"
        extra = ["--engine", "torch", "--workers", "0", "--amp", "off", "--device", device]
        assert run_score(tmp_path / "in", scoped_bundle, out, *extra, "--config", str(config)) == 0
        rows[device] = {Path(r["path"]).name: r for r in read_csv_rows(out)}
    assert rows["cpu"].keys() == rows["cuda"].keys()
    for name, cpu in rows["cpu"].items():
        gpu = rows["cuda"][name]
        assert (gpu["in_scope"], gpu["scope_reasons"]) == (cpu["in_scope"], cpu["scope_reasons"]), name
        assert float(gpu["ood_score"]) == pytest.approx(float(cpu["ood_score"]), rel=1e-3), name
